"""Run each configured source in its own process; restart it with backoff when it dies."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from fusiond.bus.sockets import local_endpoint
from fusiond.sources.runner import EXIT_CONFIG, Backoff

if TYPE_CHECKING:
    from fusiond.config import Config

__all__ = [
    "output_children",
    "Child",
    "die_with_parent",
    "FAIL_AFTER",
    "fusiond_argv",
    "source_children",
    "STABLE_S",
    "STOP_GRACE_S",
    "Supervisor",
]

log = logging.getLogger(__name__)
STABLE_S = 10.0
FAIL_AFTER = 5
STOP_GRACE_S = 0.7
"""A source or component still running this long after SIGTERM exits by force (it is
stuck in a call that cannot see its stop): every child ends within 1 s of its SIGTERM."""


@dataclass
class Child:
    """One source process and its restart state."""

    name: str
    argv: list[str]
    cwd: Path
    backoff: Backoff
    proc: subprocess.Popen[bytes] | None = None
    state: str = "waiting"
    restarts: int = 0
    attempt: int = 0
    started: float = 0.0
    next_start: float = 0.0
    exit_codes: list[int] = field(default_factory=list)
    argv_fn: Callable[[], list[str]] | None = None
    """Makes the command line at each start (a restarted component gets fresh state)."""
    role: str = "source"
    env: dict[str, str] = field(default_factory=dict)
    """Added to the daemon's environment (the bus keys, on a secured bus)."""


class Supervisor:
    """Owns the source processes; ``poll`` is called from the daemon's loop."""

    def __init__(self, children: Sequence[Child]) -> None:
        self.children = list(children)
        self._stopping = False

    def poll(self, now: float | None = None) -> None:
        """Reap dead children and start the ones whose time has come."""
        now = time.monotonic() if now is None else now
        for child in self.children:
            if child.proc is not None and child.proc.poll() is not None:
                self._reaped(child, child.proc.returncode, now)
            if child.proc is None and child.state in ("waiting", "failed") and now >= child.next_start:
                self._spawn(child, now)

    def _spawn(self, child: Child, now: float) -> None:
        try:
            argv = child.argv_fn() if child.argv_fn is not None else child.argv
            env = {**os.environ, **child.env} if child.env else None
            child.proc = subprocess.Popen(argv, cwd=child.cwd, env=env)
        except OSError as exc:
            log.error("%s %s: cannot start: %s", child.role, child.name, exc)
            self._schedule(child, now)
            return
        child.state, child.started = "running", now

    def _reaped(self, child: Child, code: int, now: float) -> None:
        child.proc = None
        child.exit_codes = [*child.exit_codes[-9:], code]
        if self._stopping:
            child.state = "stopped"
            return
        if code == 0:
            child.state = "finished"
            log.info("%s %s finished (end of its data)", child.role, child.name)
            return
        if code == EXIT_CONFIG:
            child.state = "failed"
            child.next_start = float("inf")
            log.error(
                "%s %s cannot work with its options (it said why above); not restarted: fix the "
                "config and restart the daemon",
                child.role,
                child.name,
            )
            return
        if now - child.started >= STABLE_S:
            child.attempt = 0
        how = f"signal {-code}" if code < 0 else f"exit code {code}"
        delay = self._schedule(child, now)
        if child.attempt >= FAIL_AFTER:
            # Still retried (at the backoff cap), but reported as failed until it runs stably.
            child.state = "failed"
            log.error(
                "%s %s failed %d times in a row (%s); next try in %.1f s",
                child.role,
                child.name,
                child.attempt,
                how,
                delay,
            )
        else:
            log.error("%s %s died (%s); restarting in %.1f s", child.role, child.name, how, delay)

    def _schedule(self, child: Child, now: float) -> float:
        delay = child.backoff.delay(child.attempt)
        child.attempt += 1
        child.restarts += 1
        child.state, child.next_start = "waiting", now + delay
        return delay

    def stop(self, timeout_s: float = 1.0) -> None:
        """SIGTERM every child, then SIGKILL what is left after ``timeout_s``."""
        self.terminate()
        self.reap(time.monotonic() + timeout_s)

    def terminate(self) -> None:
        """SIGTERM every running child and restart none from now on; :meth:`reap` waits."""
        self._stopping = True
        for child in self.children:
            if child.proc is not None and child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)

    def reap(self, deadline: float) -> None:
        """Wait for the children until ``deadline`` (``time.monotonic()``), then SIGKILL the
        ones still there: a child busy in code that cannot see its stop is abandoned, not
        waited for."""
        running = [c.proc for c in self.children if c.proc is not None]
        for proc in running:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("child pid %d did not stop in time after SIGTERM; killing it", proc.pid)
                proc.kill()
                proc.wait()
        for child in self.children:
            child.proc, child.state = None, "stopped"


def die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGTERM this process when its parent dies (no orphans on kill -9)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGTERM)


def fusiond_argv(*args: str) -> list[str]:
    """``python -P -m fusiond ARGS --parent-pid PID``: a child of this process, which ends
    with it (``-P``: the working folder must not shadow the installed package)."""
    return [sys.executable, "-P", "-m", "fusiond", *args, "--parent-pid", str(os.getpid())]


def source_children(
    config: Config,
    streams: Mapping[tuple[str, str], str],
    env: Mapping[str, str],
    anchor_ns: int | None = None,
) -> list[Child]:
    """One child per source the daemon starts (external ones are fed from elsewhere).

    File sources map media position p to ``anchor_ns + p`` (logged), so a rig's files play
    in step.
    ``env`` is added to each child's environment (the bus keys, on a secured bus)."""
    if anchor_ns is None:  # a second from now, on a whole millisecond
        anchor_ns = (time.time_ns() // 1_000_000 + 1000) * 1_000_000
    log.info("media anchor: file sources start at %d (realtime ns)", anchor_ns)
    connect = local_endpoint(config.bus.publish)
    children = []
    for rig, section in config.rigs.items():
        for name, source in section.sources.items():
            if source.external:
                continue
            argv = fusiond_argv(
                "source",
                source.kind,
                "--connect",
                connect,
                "--rig",
                rig,
                "--stream",
                name,
                "--modality",
                streams[rig, name],
                "--anchor-ns",
                str(anchor_ns),
                "--options-json",
                json.dumps(source.options),
            )
            backoff = Backoff(cap_s=source.restart_max_s)
            children.append(Child(f"{rig}/{name}", argv, config.base_dir, backoff, env=dict(env)))
    return children


def output_children(config: Config, env: Mapping[str, str]) -> list[Child]:
    """One bridge process per ``[outputs.N]``, subscribed to the bus's predictions."""
    subscribe, publish = local_endpoint(config.bus.subscribe), local_endpoint(config.bus.publish)
    children = []
    for name, output in config.outputs.items():
        argv = fusiond_argv(
            "output",
            output.kind,
            "--name",
            name,
            "--connect",
            subscribe,
            "--publish",
            publish,
            "--queue",
            str(output.queue),
            "--options-json",
            json.dumps(output.options),
        )
        backoff = Backoff(cap_s=output.restart_max_s)
        children.append(Child(name, argv, config.base_dir, backoff, env=dict(env), role="output"))
    return children
