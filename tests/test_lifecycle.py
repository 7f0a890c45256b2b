"""Start-up and shutdown: sources find the bus at once, stop within their grace, and no
process a test starts outlives it. (The seconds themselves: bench/bench_lifecycle.py.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from . import processes
from .helpers import ROOT, DaemonProcess, demo_config

pytestmark = pytest.mark.slow


def test_sources_find_a_bus_that_is_already_bound(tmp_path, endpoints):
    """The daemon binds before it starts its sources: none may report a missing bus (the
    handshake used to be missed when it completed before the monitor was attached)."""
    with DaemonProcess(demo_config(tmp_path, *endpoints), tmp_path / "daemon.log") as d:
        d.wait_for(r"fusiond ready", timeout_s=120)
        for stream in ("cam", "mic", "imu"):
            d.wait_for(rf"source demo/{stream} \(", timeout_s=60)
        assert "no bus at" not in d.text()
        d.stop()
    assert d.proc.returncode == 0, d.text()


def test_a_source_stuck_in_a_long_call_is_ended_by_its_grace_timer(bus):
    """A source that cannot see its stop event (a long call into a library) still exits
    after SIGTERM: by force, with a traceback that shows where it was stuck."""
    endpoint, sock = bus
    script = Path(__file__).parent / "scripts/stuck_source.py"
    proc = subprocess.Popen(
        [sys.executable, str(script), endpoint], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "blocking"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert "Timeout" in err and "in read" in err, err


def test_a_failing_test_leaves_no_process_behind(tmp_path, endpoints):
    """A test that starts the daemon and fails without stopping it: the guard kills the
    daemon, its sources and components, and says so; none of them survives."""
    pids = tmp_path / "pids"
    config = demo_config(tmp_path, *endpoints, **{"workers = 1": "workers = 2"})
    inner = tmp_path / "test_inner.py"
    inner.write_text(
        textwrap.dedent(f"""
        from pathlib import Path
        from tests import processes
        from tests.helpers import DaemonProcess

        def test_starts_the_daemon_then_fails():
            d = DaemonProcess(Path({str(config)!r}), Path({str(tmp_path / "inner.log")!r}))
            d.wait_for(r"fusiond ready", timeout_s=120)
            Path({str(pids)!r}).write_text(" ".join(map(str, processes.descendants())))
            assert False, "deliberately"
    """)
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider", str(inner)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "deliberately" in result.stdout and "processes outlived the test" in result.stdout, result.stdout
    started = [int(p) for p in pids.read_text().split()]
    # The daemon, its three sources, an ingest worker (one rig) and the inference server.
    assert len(started) >= 1 + 3 + 2, started
    alive = [p for p in started if _alive(p)]
    assert not alive, [processes.describe(p) for p in alive]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_this_session_reaps_orphans():
    """The guard relies on orphans coming back to the session."""
    from .conftest import SUBREAPER

    assert SUBREAPER, "PR_SET_CHILD_SUBREAPER was refused: leaked grandchildren cannot be found"
    child = subprocess.Popen([sys.executable, "-c", "import os, time\nif os.fork() == 0: time.sleep(60)"])
    child.wait(30)
    orphans = processes.settle(set(), wait_s=0)
    assert orphans, "the grandchild was not re-parented to this session"
    processes.kill(orphans)
    os.waitpid(-1, os.WNOHANG)
