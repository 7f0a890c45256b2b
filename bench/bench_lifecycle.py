"""Start-up and stop of the real daemon: prints figures, asserts nothing.

    python bench/bench_lifecycle.py [--runs 5] [--workers 1] [--load]

Each run starts ``fusiond run`` on the demo config (fresh ports) and measures, from the
moment the process is started:

- ``ready``: until the daemon logs READY (model warm, every source delivered a sample);
- ``late``: how many sources logged that they found no bus (each costs up to 5 s of
  masked windows at start);

then sends SIGTERM and measures ``stop``: until the process has exited, every source and
component with it (the promise: 2 s). ``--load`` runs one CPU-bound process per core for
the whole benchmark, as a busy host has.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers import DaemonProcess, demo_config, free_port  # noqa: E402


def hogs(count: int) -> list[subprocess.Popen[bytes]]:
    """``count`` processes that spin a core each."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def one_run(tmp: Path, workers: str) -> tuple[float, int, float]:
    """``(seconds to READY, sources that found no bus, seconds to stop)``."""
    endpoints = (f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}")
    config = demo_config(tmp, *endpoints, **{"workers = 1": f"workers = {workers}"})
    started = time.monotonic()
    daemon = DaemonProcess(config, tmp / "daemon.log")
    try:
        daemon.wait_for(r"fusiond ready", timeout_s=120)
        ready = time.monotonic() - started
        late = daemon.text().count("no bus at")
        stop = daemon.stop()
    finally:
        daemon.close()
    return ready, late, stop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--workers", default="1", help='1, 2 or "auto" (give it quoted: \'"auto"\')')
    parser.add_argument("--load", action="store_true", help="one CPU-bound process per core meanwhile")
    args = parser.parse_args()
    spinning = hogs(os.cpu_count() or 1) if args.load else []
    rows = []
    try:
        for i in range(args.runs):
            with tempfile.TemporaryDirectory() as tmp:
                rows.append(one_run(Path(tmp), args.workers))
            print(
                f"run {i + 1}: ready {rows[-1][0]:.2f} s, sources without a bus {rows[-1][1]}, "
                f"stop {rows[-1][2]:.2f} s",
                flush=True,
            )
    finally:
        for hog in spinning:
            hog.send_signal(signal.SIGKILL)
            hog.wait()
    ready, late, stop = zip(*rows, strict=True)
    load = f"{len(spinning)} CPU hogs" if spinning else "quiet"
    print(f"\nworkers = {args.workers}, {load}, {args.runs} runs, load average now {os.getloadavg()[0]:.1f}")
    print(f"{'':<8}{'median':>8}{'max':>8}")
    print(f"{'ready s':<8}{statistics.median(ready):8.2f}{max(ready):8.2f}")
    print(f"{'stop s':<8}{statistics.median(stop):8.2f}{max(stop):8.2f}")
    print(f"sources that found no bus: {sum(late)} in {args.runs} runs")


if __name__ == "__main__":
    main()
