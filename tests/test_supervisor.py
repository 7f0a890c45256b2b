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
        assert time.monotonic() - started < 10  # it waits 1.5 s at most, then kills
    assert steady.state == "stopped" and steady.proc is None


def test_a_source_whose_options_cannot_work_is_failed_once_and_not_restarted(tmp_path: Path):
    """A missing CSV column will not appear by retrying: the source says so and exits with
    EX_CONFIG, and the supervisor leaves it failed."""
    import subprocess

    from fusiond.sources.runner import EXIT_CONFIG

    csv = tmp_path / "imu.csv"
    csv.write_text("t_s,ax\n0.0,1\n0.01,2\n0.02,3\n")
    argv = [
        sys.executable,
        "-m",
        "fusiond",
        "source",
        "csvfile",
        "--connect",
        "tcp://127.0.0.1:9",
        "--set",
        f"path='{csv}'",
        "--set",
        "columns=['ay']",
    ]
    alone = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert alone.returncode == EXIT_CONFIG, alone.stderr
    assert "no columns ['ay']" in alone.stderr and "not retried" in alone.stderr
    assert alone.stderr.count("no columns") == 1 and "retrying in" not in alone.stderr
    child = Child("r/imu", argv, tmp_path, Backoff(0.05, 0.1))
    supervisor = Supervisor([child])
    try:
        deadline = time.monotonic() + 60
        while child.state != "failed" and time.monotonic() < deadline:
            supervisor.poll()
            time.sleep(0.05)
        assert child.state == "failed" and child.exit_codes == [EXIT_CONFIG]
        for _ in range(20):
            supervisor.poll()
            time.sleep(0.05)
        assert child.proc is None and child.restarts == 0
    finally:
        supervisor.stop()


def test_backoff_doubles_to_its_cap_less_a_random_quarter_so_hosts_do_not_retry_in_step():
    backoff = Backoff(first_s=0.5, cap_s=30.0)
    for attempt, base in [(0, 0.5), (1, 1.0), (3, 4.0), (10, 30.0), (10**6, 30.0)]:
        delays = [backoff.delay(attempt) for _ in range(200)]
        assert all(0.75 * base <= d <= base for d in delays), (attempt, min(delays), max(delays))
        assert max(delays) - min(delays) > 0.1 * base  # spread out, not one instant
    assert Backoff(jitter=0.0).delay(2) == 2.0
