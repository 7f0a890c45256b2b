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
        (
            GOOD.replace('path = "m.pt"', 'path = "m.pt"\nmax_batch = 0'),
            "model.max_batch: must be >= 1 (got 0)",
        ),
        (
            GOOD.replace('path = "m.pt"', 'path = "m.pt"\ndevice = "tpu"'),
            "model.device: must be auto, cpu or cuda[:N] (got 'tpu')",
        ),
        (GOOD + "[window]\nhop_ms = 'fast'\n", "window.hop_ms: expected a number, got 'fast' (a string)"),
        (
            GOOD + "[bus]\npublish = 'http://x'\n",
            "bus.publish: must be a tcp://, ipc:// or inproc:// endpoint (got 'http://x')",
        ),
        (GOOD + "[bus]\npublish = 'tcp://127.0.0.1'\n", "bus.publish: a tcp:// endpoint needs a port"),
        (GOOD.replace('[model]\npath = "m.pt"\n', ""), "model: required key is missing"),
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
        (
            GOOD.replace('kind = "camera"', 'kind = "lidar"'),
            "rigs.lab.sources.cam.kind: unknown source kind 'lidar' (known: asr, audiofile, camera",
        ),
        (GOOD + "fps = 'many'\n", "rigs.lab.sources.cam.fps: expected a number, got 'many' (a string)"),
        (GOOD + "jpeg_qualty = 3\n", "cam.jpeg_qualty: unknown key (value 3); did you mean 'jpeg_quality'?"),
        (GOOD + "exposure = 3\n", "rigs.lab.sources.cam.exposure: unknown key (value 3)"),
        (GOOD.replace('uri = "x.mp4"', ""), "rigs.lab.sources.cam.uri: required key is missing"),
    ],
)
def test_source_options_are_checked_against_their_kind(tmp_path, edit, expected):
    cfg = config.load(write(tmp_path, edit))
    with pytest.raises(ConfigError) as info:
        cfg.source_options(load_plugins().sources)
    assert expected in str(info.value)
    assert str(info.value).startswith(f"{tmp_path / 'c.toml'}: rigs.lab.sources.cam")


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        # A number or a bool is never read from a string, nor a bool from a number.
        ("[window]\nhop_ms = '500'\n", "window.hop_ms: expected a number, got '500' (a string)"),
        ("[log]\nsummary_s = '5'\n", "log.summary_s: expected a number, got '5' (a string)"),
        ("[window]\nlateness_ms = true\n", "window.lateness_ms: expected a number, got True (a bool)"),
        ("[runtime]\nworkers = '3'\n", "workers: expected an integer or \"auto\", got '3' (a string)"),
        ("[runtime]\nworkers = 2.5\n", 'workers: expected an integer or "auto", got 2.5 (a number)'),
        ("[bus.security]\nallow_insecure = 1\n", "security.allow_insecure: expected true or false, got 1"),
        ("[window]\nstagger = 'yes'\n", "window.stagger: expected true or false, got 'yes'"),
        # Misspelled keys get the nearest known one.
        ("[window]\nlenght_ms = 900\n", "lenght_ms: unknown key (value 900); did you mean 'length_ms'?"),
        ("[ingest]\nmax_clock_skew = 9\n", "did you mean 'max_clock_skew_ms'?"),
        ("[bus.security]\nmod = 'curve'\n", "security.mod: unknown key (value 'curve'); did you mean"),
        # Values that would only fail later, or silently do the wrong thing.
        ("[window]\nhop_ms = 0.0000001\n", "window.hop_ms: must be >= 1 (got 1e-07)"),
        ("[window]\nhop_ms = 2000\n", "window: hop_ms (2000) is longer than length_ms (1000)"),
        ("[window]\nlateness_ms = 1e15\n", "window.lateness_ms: must be <= 600000 (got 1000000000000000.0)"),
        (
            "[bus]\ncontrol = 'tcp://127.0.0.1:7710'\n",
            "bus.control = 'tcp://127.0.0.1:7710' is also bus.publish: each needs its own address",
        ),
        ("[metrics]\nlisten = '127.0.0.1:7711'\n", "takes the port of bus.subscribe"),
    ],
)
def test_strict_types_and_suggestions(tmp_path, edit, expected):
    with pytest.raises(ConfigError) as info:
        config.load(
            write(
                tmp_path,
                GOOD.replace("[model]", edit + "[model]", 1) if edit.startswith("[") else GOOD + edit,
            )
        )
    assert expected in str(info.value)
    assert str(info.value).startswith(f"{tmp_path / 'c.toml'}: ")
    assert "\n" not in str(info.value)


def test_model_key_misspelled_gets_a_suggestion(tmp_path):
    with pytest.raises(ConfigError, match="max_bacth: unknown key \\(value 32\\); did you mean 'max_batch'"):
        config.load(write(tmp_path, GOOD.replace('path = "m.pt"', 'path = "m.pt"\nmax_bacth = 32')))


def test_bools_in_source_options_are_strict(tmp_path):
    for value in ("'yes'", "'no'", "1"):
        cfg = config.load(write(tmp_path, GOOD + f"loop = {value}\n"))
        with pytest.raises(ConfigError, match="rigs.lab.sources.cam.loop: expected true or false"):
            cfg.source_options(load_plugins().sources)


def test_legal_but_doubtful_settings_are_warned_about(tmp_path):
    cfg = config.load(write(tmp_path, "[window]\nlateness_ms = 120000\nhop_ms = 5\n" + GOOD))
    warnings = cfg.warnings()
    assert any("window.lateness_ms = 120000" in w for w in warnings)
    assert any("window.hop_ms = 5: each sample is in 200 windows" in w for w in warnings)
    assert config.load(write(tmp_path, GOOD)).warnings() == []
    many = GOOD + "".join(f'[rigs.r{i}.sources.imu]\nkind = "csvfile"\npath = "x.csv"\n' for i in range(63))
    assert any(
        "window.stagger = false with 64 rigs" in w for w in config.load(write(tmp_path, many)).warnings()
    )
    staggered = config.load(write(tmp_path, "[window]\nstagger = true\n" + many))
    assert staggered.warnings() == []


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        config.load(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(write(tmp_path, "[model\npath="))
    with pytest.raises(ConfigError, match="'hop_ms = 2' \\(the key 'hop_ms' is given twice\\?\\)"):
        config.load(write(tmp_path, GOOD + "[window]\nhop_ms = 1\nhop_ms = 2\n"))


def test_check_config_command(tmp_path):
    ok = fusiond("check-config", "--config", str(ROOT / "config.toml"), "--no-ports")
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


def absolute_demo(tmp_path: Path, *edits: tuple[str, str]) -> Path:
    text = (ROOT / "config.toml").read_text().replace('"demo/', f'"{ROOT}/demo/')
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new)
    return write(tmp_path, text)


def _cuda_missing() -> str:
    import torch

    return "cuda:63" if torch.cuda.is_available() else "cuda"


@pytest.mark.parametrize(
    ("edits", "expected"),
    [
        (
            [("demo/digits.mp4", "demo/digitz.mp4")],
            f"rigs.demo.sources.cam.uri: no such video file: {ROOT}/demo/digitz.mp4",
        ),
        ([("demo/digits.wav", "demo/digitz.wav")], f"sources.mic.path: no such file: {ROOT}/demo/digitz.wav"),
        ([("demo/imu.csv", "demo/imu2.csv")], f"sources.imu.path: no such recording: {ROOT}/demo/imu2.csv"),
        ([('device = "auto"', f'device = "{_cuda_missing()}"')], "model.device: '"),
        ([("demo/model.pt", "demo/imu.csv")], f"model.path: {ROOT}/demo/imu.csv is not a fusiond checkpoint"),
        ([("demo/model.pt", "demo/absent.pt")], f"model.path: no such model file: {ROOT}/demo/absent.pt"),
        (
            [("length_ms = 1000", "length_ms = 2000")],
            "window.length_ms: 2000, but model demo-digits was trained on 1000 ms windows",
        ),
    ],
)
def test_check_config_finds_what_would_fail_later_in_one_line(tmp_path, edits, expected):
    path = absolute_demo(tmp_path, *edits)
    result = fusiond("check-config", "--config", str(path), "--no-ports")
    assert result.returncode == 2, result.stdout
    assert result.stderr.startswith(f"fusiond: error: {path}: "), result.stderr
    assert expected in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_check_config_prints_warnings_and_still_passes(tmp_path):
    path = absolute_demo(tmp_path, ("lateness_ms = 300", "lateness_ms = 60000"))
    result = fusiond("check-config", "--config", str(path), "--no-ports")
    assert result.returncode == 0, result.stderr
    assert f"fusiond: warning: {path}: window.lateness_ms = 60000" in result.stderr
    text = path.read_text()
    path.write_text(text[: text.index("[rigs.demo.sources.imu]")])
    result = fusiond("check-config", "--config", str(path), "--no-ports")
    assert result.returncode == 0, result.stderr
    assert "rigs.demo: no source for the model's 'imu' input: it is masked in every window" in result.stderr


def test_a_port_that_is_taken_is_one_line_from_check_config_and_from_run(tmp_path):
    """The daemon binds its ports first thing; check-config tries them too."""
    import socket

    from .helpers import free_port

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = absolute_demo(
            tmp_path,
            ('listen = ""', f'listen = "127.0.0.1:{port}"'),
            ("tcp://127.0.0.1:7710", f"tcp://127.0.0.1:{free_port()}"),
            ("tcp://127.0.0.1:7711", f"tcp://127.0.0.1:{free_port()}"),
            ("tcp://127.0.0.1:7712", f"tcp://127.0.0.1:{free_port()}"),
        )
        checked = fusiond("check-config", "--config", str(path))
        assert checked.returncode == 2 and f"metrics.listen: cannot bind 127.0.0.1:{port}" in checked.stderr
        run = fusiond("run", "--config", str(path), timeout=120)
    assert run.returncode == 2, run.stderr
    assert f"metrics.listen: cannot serve metrics on 127.0.0.1:{port}" in run.stderr
    assert "Traceback" not in run.stderr and "terminate called" not in run.stderr, run.stderr


def test_each_kind_checks_what_it_can_without_opening(tmp_path):
    import os

    sources = load_plugins().sources

    def problems(kind, **options):
        cls = sources.get(kind)
        return cls.check(cls.Config.model_validate(options), tmp_path)

    assert problems("camera", uri="/dev/video97") == ["uri: no such device: /dev/video97"]
    assert problems("camera", uri="97") == ["uri: no such device: /dev/video97"]
    assert problems("camera", uri="clip.mp4") == [f"uri: no such video file: {tmp_path}/clip.mp4"]
    assert problems("camera", uri="rtsp://cam.local/stream") == []  # only opening tells
    (tmp_path / "noise.wav").write_bytes(b"RIFF not really")
    assert problems("audiofile", path="absent.wav") == [f"path: no such file: {tmp_path}/absent.wav"]
    assert "is not an audio file libsndfile reads" in problems("audiofile", path="noise.wav")[0]
    assert problems("audiofile", path=str(ROOT / "demo/digits.wav")) == []
    assert problems("csvfile", path="imu.csv") == [f"path: no such recording: {tmp_path}/imu.csv"]
    assert problems("serial", port="/dev/ttyNOPE", values=["ax"], format="keyvalue", rate_hz=10.0) == [
        "port: no such serial port: /dev/ttyNOPE"
    ]
    leader, follower = os.openpty()
    try:
        assert problems("serial", port=os.ttyname(follower), values=["ax"], columns=["ax"], rate_hz=9.0) == []
    finally:
        os.close(leader)
        os.close(follower)
    assert problems("lines", path="-", values=["ax"], rate_hz=10.0, columns=["t"]) == [
        "columns: fields ['ax'] are not among the CSV columns ['t']"
    ]
    assert problems("microphone", device="no such microphone anywhere")[0].startswith(
        "device: no input device 'no such microphone anywhere'"
    )


def test_a_checkpoint_whose_weights_do_not_fit_its_model_is_one_line_before_anything_starts(tmp_path):
    """Loaded as the server will load it, with a warm-up batch: check-config and run refuse it
    in one line (the server used to fail to start for ever, and the daemon never got ready)."""
    import torch

    model = tmp_path / "model.pt"
    payload = torch.load(ROOT / "demo/model.pt", weights_only=False)
    name = next(k for k, v in payload["state_dict"].items() if v.ndim == 2)
    payload["state_dict"][name] = torch.zeros(3, 3)
    torch.save(payload, model)
    from .helpers import free_port

    path = absolute_demo(
        tmp_path,
        (f"{ROOT}/demo/model.pt", str(model)),
        ("tcp://127.0.0.1:7710", f"tcp://127.0.0.1:{free_port()}"),
        ("tcp://127.0.0.1:7711", f"tcp://127.0.0.1:{free_port()}"),
        ("tcp://127.0.0.1:7712", f"tcp://127.0.0.1:{free_port()}"),
    )
    for args in (["check-config", "--config", str(path)], ["run", "--config", str(path)]):
        result = fusiond(*args, timeout=120)
        assert result.returncode == 2, result.stderr
        assert "model.path: cannot serve this model: " in result.stderr and "Traceback" not in result.stderr
