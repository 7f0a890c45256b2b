"""Every process a test starts dies with it.

The test session makes itself a child subreaper (Linux ``PR_SET_CHILD_SUBREAPER``): a
process whose parent dies is re-parented to the session instead of to init, so whatever a
test starts (a daemon, its sources and components, a Ray node, a process that daemonised)
stays a descendant of the session and can be found through ``/proc``. After each test, the
guard in ``conftest.py`` waits a little for what is still exiting, then kills what is left,
each whole process group, and fails the test that left it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants; False where Linux says no."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _stat(pid: int) -> tuple[int, str, int] | None:
    """``(parent pid, state, process group)`` of a process, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name, in parentheses, may hold spaces and parentheses itself.
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), fields[0], int(fields[2])


def descendants(root: int | None = None) -> dict[int, int]:
    """Live (not zombie) descendants of ``root`` (this process): ``{pid: process group}``."""
    root = os.getpid() if root is None else root
    children: dict[int, list[int]] = {}
    groups: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _stat(int(entry))
        if stat is None or stat[1] == "Z":
            continue
        children.setdefault(stat[0], []).append(int(entry))
        groups[int(entry)] = stat[2]
    found: dict[int, int] = {}
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found[child] = groups[child]
            todo.append(child)
    return found


def describe(pid: int) -> str:
    """``pid: command line`` (short)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        argv = "?"
    return f"{pid}: {argv.strip()[:160]}"


def settle(before: set[int], wait_s: float) -> dict[int, int]:
    """The descendants not in ``before`` still alive after up to ``wait_s`` seconds (a
    process told to stop may still be on its way out on a busy machine)."""
    deadline = time.monotonic() + wait_s
    while True:
        left = {pid: group for pid, group in descendants().items() if pid not in before}
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.1)


def kill(processes: dict[int, int]) -> None:
    """SIGKILL each process and every member of a group one of them leads."""
    own = os.getpgrp()
    for pid, group in processes.items():
        try:
            if group == pid and group != own:
                os.killpg(group, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(
        (stat := _stat(pid)) is not None and stat[1] != "Z" for pid in processes
    ):
        time.sleep(0.05)


def reap_orphans() -> int:
    """Collect the exit status of dead orphans re-parented to this process (zombies no
    ``Popen`` owns: their parent died first); how many."""
    me, reaped = os.getpid(), 0
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None and stat[0] == me and stat[1] == "Z":
            try:
                os.waitpid(int(entry), os.WNOHANG)
                reaped += 1
            except ChildProcessError:
                pass
    return reaped
