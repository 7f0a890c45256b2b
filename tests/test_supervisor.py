from __future__ import annotations

import sys
import time
from pathlib import Path

from fusiond.sources.runner import Backoff
from fusiond.sources.supervisor import FAIL_AFTER, Child, Supervisor


def test_a_source_that_keeps_failing_backs_off_and_is_marked_failed(tmp_path: Path):
    crash = Child("r/bad", [sys.executable, "-c", "raise SystemExit(3)"], tmp_path, Backoff(0.05, 0.4))
    steady = Child("r/good", [sys.executable, "-c", "import time; time.sleep(30)"], tmp_path, Backoff())
    supervisor = Supervisor([crash, steady])
    starts: list[float] = []
    deadline = time.monotonic() + 15
    try:
        while crash.restarts < FAIL_AFTER + 2 and time.monotonic() < deadline:
            before = crash.proc
            supervisor.poll()
            if crash.proc is not None and crash.proc is not before:
                starts.append(time.monotonic())
            time.sleep(0.01)
        assert crash.state == "failed" and crash.exit_codes[-1] == 3
        gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
        # 0.05, 0.1, 0.2, 0.4, 0.4, ...: exponential, then capped; never a tight loop.
        assert all(g >= 0.04 for g in gaps) and max(gaps) >= 0.35, gaps
        pid = steady.proc.pid
        assert steady.state == "running" and steady.restarts == 0 and steady.proc.pid == pid
    finally:
        started = time.monotonic()
        supervisor.stop(timeout_s=1.5)
        assert time.monotonic() - started < 2.0
    assert steady.state == "stopped" and steady.proc is None
