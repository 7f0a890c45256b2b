"""The README's commands, run as written (those a test can run; the others say why not)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest

from .helpers import ROOT

README = (ROOT / "README.md").read_text()

# Commands a test does not run, and why. Every other command block of the README runs below.
NOT_RUN = {
    '.venv/bin/python -m pytest -q -n 2 --dist loadfile -m "not alone"': "the suite; .ci/run runs it",
    ".venv/bin/python -m pytest -q -m alone": "the tests that run by themselves; .ci/run runs them",
    "bash scripts/loaded-tests.sh": "the suite's timing-sensitive half again, under load; .ci/run runs it",
    ".venv/bin/ruff check fusiond plugins tests bench scripts examples && .venv/bin/mypy": "lint; .ci/run",
}


def shell_blocks() -> list[str]:
    """The README's indented command blocks (the diagram excluded), one string each."""
    blocks, current, fenced = [], [], False
    for line in [*README.splitlines(), ""]:
        fenced ^= line.startswith("```")
        if not fenced and line.startswith("    ") and "─" not in line and "┘" not in line:
            current.append(line[4:])
        elif current:
            blocks.append("\n".join(current))
            current = []
    return blocks


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, re.S)


def test_every_readme_command_is_run_here_or_said_why_not():
    ran = {
        "bash scripts/setup.sh && .venv/bin/fusiond run --config config.toml",
        ".venv/bin/fusiond echo --json --count 5",
    }
    assert set(shell_blocks()) == ran | set(NOT_RUN)
    assert len(python_blocks()) == 1


def test_ci_runs_exactly_the_readmes_commands():
    """Set-up, the suite, lint: nothing CI does is missing here (the loaded run is by hand)."""
    lines = (ROOT / ".ci/run").read_text().splitlines()
    commands = [line for line in lines if line and not line.startswith(("#", "set ", "cd "))]
    wanted = [b for b in shell_blocks() if b in NOT_RUN and "loaded-tests" not in b]
    assert commands == ["bash scripts/setup.sh", *wanted], commands


def test_fetch_footage_works_on_a_fresh_clone_and_leaves_nothing_behind(tmp_path):
    clone = tmp_path / "fusiond"
    (clone / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts/fetch-footage.sh", clone / "scripts")
    command = "bash scripts/fetch-footage.sh"  # what scripts/setup.sh runs
    result = subprocess.run(command, shell=True, cwd=clone, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert (clone / ".cache/opencv-doc/usr/share/doc/opencv-doc/examples/data/vtest.avi").stat().st_size > 1e6
    assert sorted(p.name for p in clone.iterdir()) == [".cache", "scripts"]
    assert sorted(p.name for p in (clone / ".cache").iterdir()) == ["opencv-doc"]
    again = subprocess.run(command, shell=True, cwd=clone, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and again.stdout == ""  # already there: nothing fetched


@pytest.mark.slow
def test_try_it_runs_as_written(tmp_path):
    """ "Try it": the daemon on the repository's config.toml (default endpoints), five
    predictions from `fusiond echo`, the client snippet, then Ctrl-C stops it all."""
    run_block = next(b for b in shell_blocks() if "fusiond run" in b)
    setup, run = run_block.split(" && ")
    assert setup == "bash scripts/setup.sh"  # what .ci/run does first on every clean clone
    log = (tmp_path / "daemon.log").open("w")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    daemon = subprocess.Popen(
        shlex.split(run), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    try:
        echo = subprocess.run(
            next(b for b in shell_blocks() if "fusiond echo" in b),
            shell=True,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert echo.returncode == 0, echo.stderr + (tmp_path / "daemon.log").read_text()
        lines = echo.stdout.strip().splitlines()
        assert len(lines) == 5 and all(json.loads(line)["type"] == "prediction" for line in lines)
        with subprocess.Popen(
            [sys.executable, "-c", python_blocks()[0]], cwd=tmp_path, stdout=subprocess.PIPE, text=True
        ) as snippet:
            first = snippet.stdout.readline().split()  # rig label score missing latency
            snippet.kill()
        assert first[0] == "demo" and first[1].isdigit() and 0 < float(first[2]) <= 1, first
        deadline = time.monotonic() + 20  # READY follows once every source's counters came in
        while "fusiond ready" not in (tmp_path / "daemon.log").read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        os.killpg(daemon.pid, signal.SIGINT)  # Ctrl-C in a terminal reaches the whole group
        code = daemon.wait(30)  # a guard against a hang; the stop's time is bench_lifecycle's
        log.close()
    text = (tmp_path / "daemon.log").read_text()
    assert code == 0, text
    assert "fusiond ready" in text and "Traceback" not in text
