"""The example plugin in examples/ installs with pip into a fresh virtual environment and
works with no change to fusiond.

The fresh environment gets fusiond and the plugin from ``pip install``; the heavy
third-party dependencies (torch, numpy, pyzmq...) come from this environment through a
.pth file, so the test needs no network and no second copy of torch.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from fusiond.align import InputSpec, ModalitySpec
from fusiond.testing import RecordedStream, tiny_model, write_labels, write_recording

from .helpers import ROOT, free_port

pytestmark = pytest.mark.slow


def _venv_with_plugin(tmp_path: Path) -> Path:
    """A fresh virtual environment with fusiond and the example plugin installed by pip;
    returns its ``fusiond`` command."""
    env_dir = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True)
    python = env_dir / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(site, "shared-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # Build with this environment's setuptools, not the older one venv seeds.
    subprocess.run([python, "-m", "pip", "uninstall", "-q", "-y", "setuptools"], check=True)
    pip = [python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
    for package in (ROOT, ROOT / "examples" / "fusiond-sine"):
        result = subprocess.run([*pip, str(package)], capture_output=True, text=True, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    return env_dir / "bin" / "fusiond"


def _serve(fusiond: Path, cwd: Path, model: str, rigs: str, count: int) -> tuple[list[dict], str]:
    """Start ``fusiond run`` on a config of ``rigs`` serving ``model``, read ``count``
    predictions with ``fusiond echo``, stop it; returns them and the daemon's log."""
    pub, sub, control = (f"tcp://127.0.0.1:{free_port()}" for _ in range(3))
    bus = f'[bus]\npublish = "{pub}"\nsubscribe = "{sub}"\ncontrol = "{control}"\n'
    (cwd / "daemon.toml").write_text(f'{bus}[model]\npath = "{model}"\n{rigs}')
    daemon = subprocess.Popen(
        [fusiond, "run", "--config", "daemon.toml"],
        cwd=cwd,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        args = ["echo", "--connect", sub, "--json", "--count", str(count), "--timeout", "30"]
        echo = subprocess.run([fusiond, *args], capture_output=True, text=True, cwd=cwd, timeout=60)
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        _, log = daemon.communicate(timeout=10)
    assert echo.returncode == 0, log
    return [json.loads(line) for line in echo.stdout.splitlines()], log


def test_the_example_plugin_installs_with_pip_and_streams(tmp_path):
    fusiond = _venv_with_plugin(tmp_path)

    listed = subprocess.run([fusiond, "plugins", "--json"], capture_output=True, text=True, cwd=tmp_path)
    rows = {(r["type"], r["name"]): r for r in json.loads(listed.stdout)}
    assert rows["source", "sine"]["from"] == "fusiond-sine 0.1.0 (fusiond_sine)"
    assert rows["kind", "spectrum"]["from"] == "fusiond-sine 0.1.0 (fusiond_sine)"
    assert rows["fusion", "maxpool"]["from"] == "fusiond-sine 0.1.0 (fusiond_sine.fusion)"
    assert rows["source", "camera"]["from"].startswith("fusiond ")

    tiny_model(tmp_path / "tiny.pt", InputSpec({"imu": ModalitySpec("series", length=32, channels=3)}))
    wave = '[rigs.lab.sources.wave]\nkind = "sine"\nfreq_hz = 2.0\n'
    predictions, log = _serve(fusiond, tmp_path, "tiny.pt", wave, 3)
    assert all(p["rig"] == "lab" and p["present"] == ["imu"] for p in predictions)
    assert "source lab/wave (sine): sine 2 Hz x3 at 100 Hz" in log


TONES_RECIPE = """
name = "tones"
fusion = "maxpool"
dim = 16
[inputs.tone]
kind = "spectrum"
length = 32
[train]
epochs = 12
batch_size = 16
val_fraction = 0.0
test_fraction = 0.25
"""


def test_a_plugin_modality_kind_and_fusion_train_and_are_served(tmp_path):
    """The example plugin's ``spectrum`` kind and ``maxpool`` fusion, trained with
    ``fusiond train`` on a recording of two tones, then served by a daemon that streams
    the plugin's own ``sine`` source at each pitch, one rig each."""
    fusiond = _venv_with_plugin(tmp_path)
    t0, segment = 1_700_000_000_000_000_000, 4_000_000_000
    rng = np.random.default_rng(0)
    pitches = [("low", 2.0), ("high", 8.0)] * 8
    seconds = np.arange(400) / 100.0
    tone = np.concatenate([np.sin(2 * np.pi * f * seconds + rng.uniform(0, 6)) for _, f in pitches])
    tone = (tone + rng.normal(0, 0.2, len(tone)))[:, None].astype(np.float32)
    write_recording(tmp_path / "tones.mcap", {"wave": RecordedStream("tone", t0, 100.0, tone, 10)}, rig="lab")
    write_labels(
        tmp_path / "tones.labels.csv",
        [(t0 + i * segment, t0 + (i + 1) * segment, label) for i, (label, _) in enumerate(pitches)],
    )
    (tmp_path / "tones.toml").write_text(TONES_RECIPE)
    trained = subprocess.run(
        [fusiond, "train", "tones.toml", "--data", "tones.mcap", "-o", "tones.pt"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert trained.returncode == 0, trained.stderr
    assert re.search(r"test: \d+ windows: accuracy (0\.9\d*|1\.000)", trained.stdout), trained.stdout

    tones = "".join(
        f'[rigs.{rig}.sources.wave]\nkind = "sine"\nmodality = "tone"\nfreq_hz = {hz}\n'
        "channels = 1\nnoise = 0.2\n"
        for rig, hz in (("lab", 8.0), ("yard", 2.0))
    )
    predictions, log = _serve(fusiond, tmp_path, "tones.pt", tones, 12)
    labels: dict[str, list[str]] = {"lab": [], "yard": []}
    for p in predictions:
        labels[p["rig"]].append(p["label"])
    assert labels["lab"] and labels["yard"], log
    assert labels["lab"].count("high") >= 0.8 * len(labels["lab"]), labels
    assert labels["yard"].count("low") >= 0.8 * len(labels["yard"]), labels
