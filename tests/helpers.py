"""Helpers for tests that run the real daemon and commands."""

from __future__ import annotations

import contextlib
import csv
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fusiond(*args: str, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess[str]:
    """Run the real ``fusiond`` command."""
    return subprocess.run(
        [sys.executable, "-m", "fusiond", *args], capture_output=True, text=True, timeout=timeout, **kwargs
    )


def demo_config(tmp_path: Path, publish: str, subscribe: str, control: str = "", **replace: str) -> Path:
    """The repository's config.toml on fresh ports, with absolute paths and edits."""
    text = (ROOT / "config.toml").read_text()
    text = text.replace("tcp://127.0.0.1:7710", publish).replace("tcp://127.0.0.1:7711", subscribe)
    text = text.replace("tcp://127.0.0.1:7712", control or f"tcp://127.0.0.1:{free_port()}")
    text = text.replace('"demo/', f'"{ROOT}/demo/').replace("summary_s = 5", "summary_s = 1")
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def _segments() -> list[tuple[float, int]]:
    rows = csv.DictReader((ROOT / "demo/labels.csv").read_text().splitlines())
    return [(float(r["start_s"]), int(r["label"])) for r in rows]


SEGMENTS = _segments()
SEGMENT_NS = 2_000_000_000
LOOP_NS = len(SEGMENTS) * SEGMENT_NS


def truth(anchor_ns: int, start_ns: int) -> int | None:
    """The digit of the demo segment that holds the whole window, or None."""
    offset = (start_ns - anchor_ns) % LOOP_NS
    segment = offset // SEGMENT_NS
    if offset + 1_000_000_000 > (segment + 1) * SEGMENT_NS:
        return None
    return SEGMENTS[segment][1]


def opencv_data(name: str) -> Path:
    """A file of opencv-doc's sample data (.ci/run fetches it into .cache/)."""
    for folder in (
        ROOT / ".cache/opencv-doc/usr/share/doc/opencv-doc/examples/data",
        Path("/usr/share/doc/opencv-doc/examples/data"),
    ):
        if (folder / name).exists():
            return folder / name
    msg = f"{name} not found: apt-get download opencv-doc && dpkg -x opencv-doc_*.deb .cache/opencv-doc"
    raise FileNotFoundError(msg)


class DaemonProcess:
    """``fusiond run`` as a subprocess in its own process group, its log in a file."""

    def __init__(
        self, config: Path, log: Path, env: dict[str, str] | None = None, prefix: tuple[str, ...] = ()
    ) -> None:
        """``prefix``: a command to run it under (``prlimit --nofile=256:256 --``, say)."""
        self.log = log
        with log.open("w") as out:  # the child has its own copy; none is left open here
            self.proc = subprocess.Popen(
                [*prefix, sys.executable, "-m", "fusiond", "run", "--config", str(config)],
                stdout=subprocess.DEVNULL,
                stderr=out,
                env={**os.environ, **(env or {})},
                start_new_session=True,
            )

    def text(self) -> str:
        return self.log.read_text()

    def wait_for(self, pattern: str, timeout_s: float = 30) -> re.Match[str]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if m := re.search(pattern, self.text()):
                return m
            assert self.proc.poll() is None, self.text()
            time.sleep(0.1)
        raise AssertionError(f"{pattern!r} not in log:\n{self.text()}")

    def source_pids(self) -> set[int]:
        return {int(p) for p in re.findall(r"fusiond\.sources\.runner\[(\d+)\]", self.text())}

    def stop(self, sig: int = signal.SIGTERM, group: bool = False) -> float:
        """Signal the daemon (or its whole group, as a terminal's Ctrl-C does); seconds to exit.

        The wait is a guard against a hang, not a measure: how fast it stops is
        ``bench/bench_lifecycle.py``'s figure.
        """
        started = time.monotonic()
        if group:
            os.killpg(self.proc.pid, sig)
        else:
            self.proc.send_signal(sig)
        self.proc.wait(60)
        return time.monotonic() - started

    def close(self) -> None:
        """Kill the daemon's whole process group (its sources and components too)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        else:
            with contextlib.suppress(ProcessLookupError):  # a child that outlived the daemon
                os.killpg(self.proc.pid, signal.SIGKILL)

    def __enter__(self) -> DaemonProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
