"""The example plugin in examples/ installs with pip into a fresh virtual environment and
works with no change to fusiond.

The fresh environment gets fusiond and the plugin from ``pip install``; the heavy
third-party dependencies (torch, numpy, pyzmq...) come from this environment through a
.pth file, so the test needs no network and no second copy of torch.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from fusiond.align import InputSpec, ModalitySpec
from fusiond.testing import tiny_model

from .helpers import ROOT, free_port

pytestmark = pytest.mark.slow


def test_the_example_plugin_installs_with_pip_and_streams(tmp_path):
    env_dir = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True)
    python = env_dir / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    Path(site, "shared-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # Build with this environment's setuptools, not the older one venv seeds.
    subprocess.run([python, "-m", "pip", "uninstall", "-q", "-y", "setuptools"], check=True)
    pip = [python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
    for package in (ROOT, ROOT / "examples" / "fusiond-sine"):
        result = subprocess.run([*pip, str(package)], capture_output=True, text=True, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    fusiond = env_dir / "bin" / "fusiond"

    listed = subprocess.run([fusiond, "plugins", "--json"], capture_output=True, text=True, cwd=tmp_path)
    rows = {r["name"]: r for r in json.loads(listed.stdout) if r["type"] == "source"}
    assert rows["sine"]["from"] == "fusiond-sine 0.1.0 (fusiond_sine)"
    assert rows["camera"]["from"].startswith("fusiond ")

    tiny_model(tmp_path / "tiny.pt", InputSpec({"imu": ModalitySpec("series", length=32, channels=3)}))
    pub, sub = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    control = f"tcp://127.0.0.1:{free_port()}"
    (tmp_path / "config.toml").write_text(f"""
[bus]
publish = "{pub}"
subscribe = "{sub}"
control = "{control}"
[model]
path = "tiny.pt"
[rigs.lab.sources.wave]
kind = "sine"
freq_hz = 2.0
""")
    daemon = subprocess.Popen([fusiond, "run", "--config", "config.toml"], cwd=tmp_path,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    try:
        args = ["echo", "--connect", sub, "--json", "--count", "3", "--timeout", "30"]
        echo = subprocess.run([fusiond, *args], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        _, log = daemon.communicate(timeout=10)
    assert echo.returncode == 0, log
    predictions = [json.loads(line) for line in echo.stdout.splitlines()]
    assert all(p["rig"] == "lab" and p["present"] == ["imu"] for p in predictions)
    assert "source lab/wave (sine): sine 2 Hz x3 at 100 Hz" in log
