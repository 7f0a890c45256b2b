from __future__ import annotations

from pathlib import Path

import pytest

from fusiond import config
from fusiond.errors import ConfigError
from fusiond.plugin import load_plugins

from .helpers import ROOT, fusiond

GOOD = """
[model]
path = "m.pt"
[rigs.lab.sources.cam]
kind = "camera"
uri = "x.mp4"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_the_demo_config_is_valid():
    cfg = config.load(ROOT / "config.toml")
    assert cfg.model.path == ROOT / "demo" / "model.pt"
    assert set(cfg.rigs["demo"].sources) == {"cam", "mic", "imu"}
    options = cfg.source_options(load_plugins().sources)
    assert options["demo", "cam"].loop is True


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        ("colour = 'red'\n" + GOOD, "colour: unknown key (value 'red')"),
        (GOOD.replace('path = "m.pt"', 'path = "m.pt"\nmax_batch = 0'),
         "model.max_batch: Input should be greater than or equal to 1 (got 0)"),
        (GOOD.replace('path = "m.pt"', 'path = "m.pt"\ndevice = "tpu"'),
         "model.device: must be auto, cpu or cuda[:N] (got 'tpu')"),
        (GOOD + "[window]\nhop_ms = 'fast'\n", "window.hop_ms: Input should be a valid number"),
        (GOOD + "[bus]\npublish = 'http://x'\n",
         "bus.publish: must be a tcp://, ipc:// or inproc:// endpoint (got 'http://x')"),
        (GOOD.replace("[model]\npath = \"m.pt\"\n", ""), "model: required key is missing"),
        (GOOD.replace("rigs.lab", "rigs.'my lab'"), "rigs.my lab: rig name must be"),
    ],
)
def test_errors_name_the_toml_path_and_the_value(tmp_path, edit, expected):
    with pytest.raises(ConfigError) as info:
        config.load(write(tmp_path, edit))
    assert expected in str(info.value)
    assert str(tmp_path / "c.toml") in str(info.value)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (GOOD.replace('kind = "camera"', 'kind = "lidar"'),
         "rigs.lab.sources.cam.kind: unknown source kind 'lidar' (known: audiofile, camera"),
        (GOOD + "fps = 'many'\n", "rigs.lab.sources.cam.fps: Input should be a valid number"),
        (GOOD + "exposure = 3\n", "rigs.lab.sources.cam.exposure: unknown key (value 3)"),
        (GOOD.replace('uri = "x.mp4"', ""), "rigs.lab.sources.cam.uri: required key is missing"),
    ],
)
def test_source_options_are_checked_against_their_kind(tmp_path, edit, expected):
    cfg = config.load(write(tmp_path, edit))
    with pytest.raises(ConfigError) as info:
        cfg.source_options(load_plugins().sources)
    assert expected in str(info.value)


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        config.load(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(write(tmp_path, "[model\npath="))


def test_check_config_command(tmp_path):
    ok = fusiond("check-config", "--config", str(ROOT / "config.toml"))
    assert ok.returncode == 0, ok.stderr
    assert "OK (1 rig(s), 3 source(s), model demo-digits" in ok.stdout
    bad = write(tmp_path, (ROOT / "config.toml").read_text().replace('kind = "camera"', 'kind = "kamera"'))
    result = fusiond("check-config", "--config", str(bad))
    assert result.returncode == 2
    assert "rigs.demo.sources.cam.kind: unknown source kind 'kamera'" in result.stderr
    assert "Traceback" not in result.stderr
    missing = fusiond("check-config", "--config", str(tmp_path / "absent.toml"))
    assert missing.returncode == 2 and "config file not found" in missing.stderr


def test_a_modality_the_model_lacks_is_a_config_error(tmp_path):
    text = (ROOT / "config.toml").read_text().replace('"demo/', f'"{ROOT}/demo/')
    text = text.replace('kind = "csvfile"', 'kind = "csvfile"\nmodality = "lidar"')
    result = fusiond("check-config", "--config", str(write(tmp_path, text)))
    assert result.returncode == 2
    assert "rigs.demo.sources.imu.modality: model 'demo-digits' has no 'lidar' input" in result.stderr
