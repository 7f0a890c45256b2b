"""Anomaly models (task = "anomaly"): trained on normal data, calibrated to a false-alarm
rate, served with per-modality contributions under every runtime, and evaluated on what
they never saw."""

from __future__ import annotations

import json
import re

import msgpack
import numpy as np
import pytest
import torch

from fusiond.bus import wire
from fusiond.errors import ConfigError
from fusiond.events import Debouncer
from fusiond.models import load
from fusiond.models.onnx import OnnxRunner
from fusiond.models.runner import ModelRunner
from fusiond.plugin import load_plugins
from fusiond.publish import PredictionBuilder
from fusiond.testing import write_labels, write_recording
from fusiond.training.anomaly import auroc, evaluate_anomaly
from fusiond.training.data import cut, recording_messages, recording_streams
from fusiond.training.recipe import load_recipe
from fusiond.training.streams import RecordedStream
from fusiond.training.train import checkpoint_window, data_items, load_windows, train
from tests.helpers import ROOT, DaemonProcess, demo_config, free_port, fusiond
from tests.test_training import RECIPE, SEG_NS, T0, tones

ANOMALY = '\n[anomaly]\nmethod = "{method}"\nfalse_alarm = 0.05\n'


def anomaly_recipe(tmp_path, method="embedding", classes='classes = ["high", "low"]'):
    path = tmp_path / f"anomaly-{method}.toml"
    text = RECIPE.format(fusion="late", epochs=6, task=f'task = "anomaly"\n{classes}')
    path.write_text(text + ANOMALY.format(method=method))
    return path


def strange(path, segments=6, t0=T0 + 50 * 10**12):
    """A rig unlike the tones: a square wave at 12 Hz on the IMU and a striped camera."""
    t = np.arange(200 * segments) / 100.0
    imu = (np.sign(np.sin(2 * np.pi * 12 * t)) * 2.0).astype(np.float32)[:, None]
    frames = np.zeros((20 * segments, 8, 8, 1), np.uint8)
    frames[:, ::2] = 250
    write_recording(
        path,
        {
            "cam": RecordedStream("video", t0, 10.0, frames, 1),
            "imu": RecordedStream("imu", t0, 100.0, imu, 10),
        },
    )
    rows = [(t0 + i * SEG_NS, t0 + (i + 1) * SEG_NS, "strange") for i in range(segments)]
    write_labels(path.with_name(path.stem + ".labels.csv"), rows)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("anomaly")
    (folder / "train").mkdir()
    for n in range(4):
        tones(folder / "train" / f"t{n}.mcap", seed=n, t0=T0 + n * 10**12)
    (folder / "val").mkdir()
    for n in range(2):
        tones(folder / "val" / f"v{n}.mcap", seed=50 + n, t0=T0 + (20 + n) * 10**12)
    tones(folder / "test.mcap", seed=99)
    strange(folder / "strange.mcap")
    return folder


@pytest.fixture(scope="module")
def model(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "anomaly.pt"
    result = fusiond(
        "train",
        str(anomaly_recipe(out.parent)),
        "--data",
        str(data / "train"),
        "--val",
        str(data / "val"),
        "--test",
        str(data / "test.mcap"),
        "-o",
        str(out),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return out


def test_a_model_of_normal_tones_flags_what_it_never_saw_and_keeps_its_false_alarm_rate(data, model):
    ck = load(model)
    chosen = ck.metrics["anomaly"]
    assert ck.task == "anomaly" and ck.anomaly == "embedding" and ck.classes == ["high", "low"]
    assert chosen["threshold"] > 0 and chosen["validation_false_alarm"]["all"] <= 0.05
    assert set(chosen["validation_false_alarm"]) == {"all", "without video", "without imu"}
    scored = fusiond(
        "eval", str(model), "--data", str(data / "test.mcap"), str(data / "strange.mcap"), "--json"
    )
    assert scored.returncode == 0, scored.stderr
    sheet = json.loads(scored.stdout)
    assert sheet["task"] == "anomaly" and sheet["normal"] == 48 and sheet["novel"] == 6 * 3
    assert sheet["auroc"] > 0.9 and sheet["detection"] > 0.8, sheet
    # 5 % asked, on recordings other than validation's: 96 validation windows (32 segments)
    # pin a 95 % quantile only roughly.
    assert sheet["false_alarm"] <= 0.25, sheet
    assert sheet["per_label"] == {"strange": sheet["detection"]}
    assert sheet["nearest_is_label"] > 0.8  # the normal class a window is nearest is its own
    # A dead IMU is flagged, and the IMU is the sensor blamed.
    dead = sheet["faults"]["imu"]["zeros"]
    assert dead["detection"] > 0.9 and dead["blamed"] > 0.9 and dead["contribution"] > 0.6, dead
    assert set(sheet["missing"]) == {"video", "imu"}
    text = fusiond("eval", str(model), "--data", str(data / "strange.mcap"), str(data / "test.mcap"))
    assert "AUROC" in text.stdout and "imu broken: zeros" in text.stdout, text.stdout
    assert "1% of these normal windows score over" in text.stdout
    # That threshold, as [model] anomaly_threshold, lets at most 1 % of them through.
    plugins, ck = load_plugins(), load(model)
    items = data_items([data / "test.mcap"])
    windows, labels = load_windows(items, ck.spec, checkpoint_window(ck), plugins, None)
    again = evaluate_anomaly(
        ck.build(plugins.parts), windows, labels, torch.device("cpu"), sheet["threshold_for_1pct"]
    )
    assert again["false_alarm"] <= 0.01 and again["threshold"] == sheet["threshold_for_1pct"]
    novel_only = fusiond("eval", str(model), "--data", str(data / "strange.mcap"))
    assert novel_only.returncode == 0 and "18 novel" in novel_only.stdout, novel_only.stderr


def windows_of(path, ck, count=12):
    window = load_recipe(anomaly_recipe(path.parent.parent)).window.to_config()
    return list(cut(recording_messages(path), recording_streams(path), ck.spec, window))[2 : 2 + count]


def test_torch_and_onnx_serve_the_same_scores_with_contributions_of_present_sensors(data, model, tmp_path):
    ck = load(model)
    plugins = load_plugins()
    windows = windows_of(data / "test.mcap", ck) + windows_of(data / "strange.mcap", ck)
    hidden = windows[1]
    hidden.present["imu"] = False  # one window without its IMU: no contribution for it
    glitch = windows[2]  # one IMU value far past anything float32 sums: still a message, IMU blamed
    glitch.inputs["imu"] = glitch.inputs["imu"].copy()
    glitch.inputs["imu"][5] = 1e20
    torch_out = ModelRunner(ck, plugins.parts, "cpu").run(windows)
    onnx_runner = OnnxRunner(ck, plugins.parts)
    onnx_out = onnx_runner.run(windows)
    exported = json.loads(onnx_runner.session.get_modelmeta().custom_metadata_map["fusiond.card"])
    assert exported["task"] == "anomaly" and "threshold" in exported["outputs"]["out"]
    np.testing.assert_allclose(torch_out.probs, onnx_out.probs, rtol=1e-4, atol=1e-4)
    out = PredictionBuilder(ck.classes, {"name": ck.name, "hash": "h"}, ck.task).build(onnx_out, 0)
    for p in out:
        decoded = wire.decode_prediction(wire.encode_prediction(p))  # as every reader gets it
        extra = decoded.extra
        assert extra["task"] == "anomaly" and decoded.classes == ["normal", "anomaly"]
        assert decoded.label == ("anomaly" if extra["is_anomaly"] else "normal")
        assert extra["is_anomaly"] == (extra["anomaly_score"] > extra["threshold"])
        assert (decoded.scores[1] > 0.5) == extra["is_anomaly"]  # 0.5 at the threshold
        assert set(extra["contributions"]) == set(decoded.present)
        assert sum(extra["contributions"].values()) == pytest.approx(1.0, abs=1e-3)
        assert extra["nearest"] in ck.classes
    assert set(out[1].extra["contributions"]) == {"video"}
    assert out[2].extra["is_anomaly"] and out[2].extra["anomaly_score"] <= 1e30
    assert max(out[2].extra["contributions"], key=out[2].extra["contributions"].get) == "imu"
    out = out[:2] + out[3:]  # the glitch aside, for what follows
    normal, novel = out[:11], out[11:]
    assert min(p.extra["anomaly_score"] for p in novel) > max(p.extra["anomaly_score"] for p in normal)
    assert sum(p.extra["is_anomaly"] for p in novel) >= 10
    # Events follow the anomaly flag: the strange windows make the rig's state "anomaly".
    debounce, events = Debouncer(500, 0.5, 0.3), []
    for p in out:
        event = debounce.take(p)
        if event is not None:
            events.append(event["state"])
    assert events[0] == "normal" and events[-1] == "anomaly", events


def test_the_stats_baseline_needs_one_label_and_no_training_and_finds_a_frozen_sensor(data, tmp_path):
    plugins = load_plugins()
    recipe = load_recipe(anomaly_recipe(tmp_path, "stats", classes=""))
    items = [
        data_items([p], p.with_name("one.labels.csv"))[0] for p in sorted((data / "train").glob("*.mcap"))
    ]
    for item in items:  # every training window is just "normal"
        write_labels(item.labels, [(T0 - 10**12, T0 + 10 * 10**12, "normal")])
    trained = train(recipe, items, tmp_path / "stats.pt", plugins)
    assert trained.metrics["epochs"] == 0 and load(tmp_path / "stats.pt").anomaly == "stats"
    sheet = trained.metrics["test"]  # split off the training recordings
    assert sheet["faults"]["imu"]["frozen"]["detection"] == 1.0, sheet["faults"]
    assert sheet["faults"]["imu"]["frozen"]["blamed"] == 1.0
    assert sheet["faults"]["video"]["zeros"]["detection"] == 1.0
    assert "nearest_is_label" not in sheet  # one Gaussian for all normal data: nothing is nearest
    ck = load(tmp_path / "stats.pt")
    windows = windows_of(data / "test.mcap", ck, 4)
    result = ModelRunner(ck, plugins.parts, "cpu").run(windows)
    assert (result.probs[:, 1] == -1).all()
    built = PredictionBuilder(ck.classes, {}, ck.task).build(result, 0)
    assert all("nearest" not in p.extra for p in built)
    # Each window has the threshold of what it has: every modality, or all but one.
    chosen = trained.metrics["anomaly"]["thresholds"]
    assert {p.extra["threshold"] for p in built} == {chosen["all"]}
    hidden = windows_of(data / "test.mcap", ck, 1)[0]
    hidden.present["video"] = False
    alone = PredictionBuilder(ck.classes, {}, ck.task).build(
        ModelRunner(ck, plugins.parts, "cpu").run([hidden]), 0
    )
    assert alone[0].extra["threshold"] == chosen["without video"]
    forced = PredictionBuilder(ck.classes, {}, ck.task, threshold=1e-6).build(result, 0)
    assert all(p.extra["is_anomaly"] and p.label == "anomaly" for p in forced)  # [model] anomaly_threshold
    # The embedding method cannot train encoders on one class: said, with the TOML path.
    with pytest.raises(ConfigError, match="anomaly.method.*two or more normal classes"):
        train(load_recipe(anomaly_recipe(tmp_path, classes="")), items, tmp_path / "e.pt", plugins)
    ghost = load_recipe(anomaly_recipe(tmp_path, "embedding", classes='classes = ["normal", "nope"]'))
    with pytest.raises(ConfigError, match=r"classes.*\['nope'\] have no training windows"):
        train(ghost, items, tmp_path / "g.pt", plugins)
    with pytest.raises(ConfigError, match="targets are for task = 'regression'"):
        load_recipe(anomaly_recipe(tmp_path, classes='targets = ["freq"]'))
    for method, false_alarm, where in (
        ("odd", "0.01", "anomaly.method"),
        ("stats", "0", "anomaly.false_alarm"),
        ("stats", "0.5", "anomaly.false_alarm"),
        ("stats", "'x'", "anomaly.false_alarm"),
    ):
        path = anomaly_recipe(tmp_path, method)
        path.write_text(path.read_text().replace("false_alarm = 0.05", f"false_alarm = {false_alarm}"))
        with pytest.raises(ConfigError, match=where):
            load_recipe(path)


def test_faults_and_auroc_are_what_they_say():
    assert auroc(np.array([1.0, 2.0]), np.array([3.0, 4.0])) == 1.0
    assert auroc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 0.0
    assert auroc(np.array([1.0, 1.0]), np.array([1.0])) == 0.5  # ties count half
    assert auroc(np.array([1.0]), np.array([])) is None


@pytest.mark.slow
def test_the_daemon_serves_an_anomaly_model_on_onnx_with_events(tmp_path, sockets):
    """The stats baseline of the demo rig, trained from the demo media, served live by the
    daemon on onnxruntime with events: predictions carry the anomaly fields, and the rig's
    first state is an event."""
    import zmq

    model = tmp_path / "stats.pt"
    recipe = tmp_path / "stats.toml"
    text = (ROOT / "demo" / "anomaly.toml").read_text().replace('method = "embedding"', 'method = "stats"')
    recipe.write_text(text)
    trained = fusiond(
        "train", str(recipe), "--data", str(ROOT / "config.toml"), "--labels", str(ROOT / "demo/labels.csv"),
        "-o", str(model), timeout=300,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    sub = f"tcp://127.0.0.1:{free_port()}"
    config = demo_config(
        tmp_path,
        f"tcp://127.0.0.1:{free_port()}",
        sub,
        **{
            f'path = "{ROOT}/demo/model.pt"': f'path = "{model}"',
            'runtime = "auto"': 'runtime = "onnx"',
            "enabled = false\nhold_ms": "enabled = true\nhold_ms",
        },
    )
    bus = sockets.make(zmq.SUB, subscribe=(b"p/", b"ev/"))
    bus.connect(sub)
    got, events = None, []
    with DaemonProcess(config, tmp_path / "d.log"):
        while (got is None or not events) and bus.poll(60_000):
            topic, body = bus.recv_multipart()[:2]
            if topic.startswith(b"ev/"):
                events.append(msgpack.unpackb(body))
            elif got is None:
                got = wire.decode_prediction([topic, body])
        echo = fusiond("echo", "p/demo", "--count", "1", "--timeout", "60", "--connect", sub, timeout=90)
    assert got is not None and events, (got, events)
    assert got.extra["task"] == "anomaly" and got.classes == ["normal", "anomaly"]
    assert set(got.extra["contributions"]) == set(got.present) and "nearest" not in got.extra
    assert got.extra["threshold"] in load(model).metrics["anomaly"]["thresholds"].values()
    assert events[0]["state"] in ("normal", "anomaly") and events[0]["previous"] is None
    # fusiond echo says the score, the threshold and each sensor's share.
    assert re.search(
        r"p/demo #\d+ (normal|anomaly) .* score=[\d.]+/[\d.]+ share\[(video|audio|imu):", echo.stdout
    ), echo.stdout + echo.stderr
