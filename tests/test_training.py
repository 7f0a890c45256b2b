"""fusiond train / eval: real recordings, real training runs, the daemon serving the result."""

from __future__ import annotations

import json
import re

import cv2
import numpy as np
import pytest
import torch

from fusiond.client import Subscriber
from fusiond.errors import ConfigError, ModelError
from fusiond.models import load
from fusiond.models.runner import ModelRunner
from fusiond.plugin import hookimpl, load_plugins
from fusiond.publish import PredictionBuilder
from fusiond.testing import RecordedText, write_labels, write_recording
from fusiond.training.data import (
    WindowSet,
    cut,
    label_windows,
    read_labels,
    recording_messages,
    recording_streams,
    split,
)
from fusiond.training.loop import drop_modalities
from fusiond.training.recipe import load_recipe
from fusiond.training.streams import RecordedStream
from fusiond.training.train import DataItem, data_items, train
from tests.helpers import ROOT, DaemonProcess, demo_config, free_port, fusiond

T0 = 1_700_000_000_000_000_000
SEG_NS = 2_000_000_000

RECIPE = """
name = "tones"
fusion = "{fusion}"
dim = 16
{task}

[window]
length_ms = 1000
hop_ms = 500
lateness_ms = 300

[inputs.video]
kind = "frames"
length = 2
channels = 1
height = 8
width = 8
encoder = "frames_cnn"
encoder_args = {{ width = 8 }}

[inputs.imu]
kind = "series"
length = 100
channels = 1
encoder = "series_cnn"

[train]
epochs = {epochs}
batch_size = 16
lr = 5e-3
modality_dropout = 0.3
seed = 0
"""


def recipe(tmp_path, fusion="attention", epochs=6, task=""):
    path = tmp_path / f"{fusion}.toml"
    path.write_text(RECIPE.format(fusion=fusion, epochs=epochs, task=task))
    return path


def tones(path, seed, segments=16, t0=T0):
    """A rig whose IMU hums at ``freq`` Hz and whose camera is dark (<4.5 Hz) or bright:
    labels ``low``/``high`` and the frequency itself, 2 s a segment."""
    rng = np.random.default_rng(seed)
    freqs = rng.uniform(1.0, 8.0, segments)
    t = np.arange(200) / 100.0
    imu = np.concatenate([np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) for f in freqs])
    imu = (imu + rng.normal(0, 0.3, imu.shape)).astype(np.float32)[:, None]
    frames = np.concatenate([np.full((20, 8, 8, 1), 60 if f < 4.5 else 180, np.float32) for f in freqs])
    frames = np.clip(frames + rng.normal(0, 25, frames.shape), 0, 255).astype(np.uint8)
    write_recording(
        path,
        {
            "cam": RecordedStream("video", t0, 10.0, frames, 1),
            "imu": RecordedStream("imu", t0, 100.0, imu, 10),
        },
    )
    rows = [
        (t0 + i * SEG_NS, t0 + (i + 1) * SEG_NS, "low" if f < 4.5 else "high") for i, f in enumerate(freqs)
    ]
    write_labels(path.with_name(path.stem + ".labels.csv"), rows)
    lines = ["start_ns,end_ns,freq", *(f"{a},{b},{f:.3f}" for (a, b, _), f in zip(rows, freqs, strict=True))]
    path.with_name(path.stem + ".freq.csv").write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tones")
    (folder / "train").mkdir()
    for n in range(4):
        tones(folder / "train" / f"t{n}.mcap", seed=n, t0=T0 + n * 10**12)
    tones(folder / "test.mcap", seed=99)
    return folder


def test_a_short_training_run_learns_and_eval_scores_it(data, tmp_path):
    model = tmp_path / "m.pt"
    result = fusiond(
        "train",
        str(recipe(tmp_path)),
        "--data",
        str(data / "train"),
        "--test",
        str(data / "test.mcap"),
        "-o",
        str(model),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    losses = [float(x) for x in re.findall(r"epoch \d+/6: loss ([\d.]+)", result.stdout)]
    assert len(losses) == 6 and losses[-1] < 0.8 * losses[0], result.stdout
    scored = fusiond(
        "eval", str(model), "--data", str(data / "test.mcap"), "--json", "--report", str(tmp_path / "r")
    )
    assert scored.returncode == 0, scored.stderr
    sheet = json.loads(scored.stdout)
    assert sheet["accuracy"] > 0.8, sheet  # chance is 0.5
    assert set(sheet["per_class"]) == {"high", "low"} and 0 <= sheet["macro_f1"] <= 1
    assert set(sheet["ablation"]) == {"video", "imu"} and set(sheet["noisy"]) == {"video", "imu"}
    assert sum(map(sum, sheet["confusion"])) == sheet["windows"] == 16 * 3
    png = cv2.imread(str(tmp_path / "r" / "confusion.png"))
    assert png is not None and png.shape[0] > 100
    assert json.loads((tmp_path / "r" / "report.json").read_text())["accuracy"] == sheet["accuracy"]
    # The checkpoint carries its own test scores, the split sizes and the data hash.
    ck = load(model)
    assert ck.metrics["test"]["accuracy"] == pytest.approx(sheet["accuracy"])
    assert ck.metrics["windows"]["test"] == 48 and len(ck.data_hash) == 16
    assert ck.window["length_ns"] == 10**9 and ck.classes == ["high", "low"]
    saved = fusiond("eval", str(model), "--json")
    assert json.loads(saved.stdout)["accuracy"] == pytest.approx(sheet["accuracy"])


def test_the_same_seed_gives_the_same_model(data, tmp_path):
    plugins = load_plugins()
    items = data_items([data / "train" / "t0.mcap"])
    scores = {
        train(load_recipe(recipe(tmp_path, "late", epochs=1)), items, tmp_path / f"{i}.pt", plugins).metrics[
            "validation"
        ]
        for i in range(2)
    }
    a, b = load(tmp_path / "0.pt"), load(tmp_path / "1.pt")
    assert len(scores) == 1 and a.data_hash == b.data_hash
    for key, value in a.state_dict.items():
        torch.testing.assert_close(value, b.state_dict[key])


def test_windows_cut_for_training_are_the_daemons_and_stay_inside_one_label(data):
    demo = load_recipe(ROOT / "demo" / "train.toml")  # video, audio and imu
    spec, path = demo.spec, data / "test.mcap"
    assert recording_streams(path) == {("rig", "cam"): "video", ("rig", "imu"): "imu"}
    windows = list(cut(recording_messages(path), recording_streams(path), spec, demo.window.to_config()))
    assert [w.index for w in windows] == list(range(windows[0].index, windows[0].index + len(windows)))
    labelled = label_windows(
        windows, read_labels(path.with_name("test.labels.csv"), 0), spec, ["high", "low"]
    )
    # 1 s windows every 0.5 s over 2 s segments: three fit inside each, one straddles each of
    # the 15 boundaries and one runs past the end of the labels.
    assert labelled.counts["used"] == 16 * 3 and labelled.counts["across_boundary"] == 16
    assert not labelled.mask[:, list(spec.modalities).index("audio")].any()  # no microphone in this rig


def test_split_keeps_each_label_range_on_one_side():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(60), 3)
    targets = np.repeat(rng.integers(0, 3, 60), 3)
    data = WindowSet(["x"], {"x": np.zeros((180, 1), np.float32)}, np.ones((180, 1), bool), targets, groups)
    val, test, rest = split(data, [0.2, 0.2], seed=1)
    assert len(val) + len(test) + len(rest) == 180
    sides = [set(groups[i]) for i in (val, test, rest)]
    assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])
    for part in (val, test):  # stratified: every class on every side
        assert set(targets[part]) == {0, 1, 2}


def test_modality_dropout_never_hides_everything():
    gen = torch.Generator().manual_seed(0)
    mask = torch.ones(2000, 3, dtype=torch.bool)
    mask[:1000, 1] = False
    dropped = drop_modalities(mask, 0.6, gen)
    assert dropped.any(dim=1).all()
    assert not (dropped & ~mask).any()  # never reveals a missing modality
    assert 0.3 < 1 - dropped[1000:].float().mean() < 0.6


def test_a_regression_model_learns_and_publishes_values(data, tmp_path):
    path = recipe(tmp_path, "intermediate", epochs=8, task='task = "regression"\ntargets = ["freq"]')
    plugins = load_plugins()
    items = [DataItem(p, p.with_name(p.stem + ".freq.csv")) for p in sorted((data / "train").glob("*.mcap"))]
    test = [DataItem(data / "test.mcap", data / "test.freq.csv")]
    trained = train(load_recipe(path), items, tmp_path / "reg.pt", plugins, test=test)
    sheet = trained.metrics["test"]
    freqs = np.array([float(line.split(",")[2]) for line in (data / "test.freq.csv").read_text().split()[1:]])
    baseline = np.abs(freqs - freqs.mean()).mean()  # always answering the mean
    assert sheet["task"] == "regression" and sheet["mae"] < 0.7 * baseline, (sheet, baseline)
    ck = load(tmp_path / "reg.pt")
    assert ck.task == "regression" and ck.classes == ["freq"]
    windows = list(
        cut(
            recording_messages(data / "test.mcap"),
            recording_streams(data / "test.mcap"),
            ck.spec,
            load_recipe(path).window.to_config(),
        )
    )[4:8]
    result = ModelRunner(ck, plugins.parts, "cpu").run(windows)
    out = PredictionBuilder(ck.classes, {"name": ck.name, "hash": ck.content_hash}, ck.task).build(result, 0)
    assert all(p.label == "" and p.extra["task"] == "regression" and 0.0 < p.scores[0] < 10.0 for p in out)


class PressurePlugin:
    """A third-party encoder for a modality fusiond has never heard of."""

    class PressureEncoder(torch.nn.Module):
        def __init__(self, spec, dim=64):
            super().__init__()
            self.net = torch.nn.Sequential(
                torch.nn.Flatten(), torch.nn.Linear(spec.length * spec.channels, dim)
            )

        def forward(self, x):
            return self.net(x - x.mean(dim=1, keepdim=True))

    @hookimpl
    def fusiond_add_encoders(self, registry):
        registry.add("pressure_mlp", self.PressureEncoder)


def test_a_plugin_encoder_trains_and_serves_a_new_modality(tmp_path):
    rng = np.random.default_rng(3)
    levels = rng.integers(0, 2, 12)
    signal = np.concatenate([np.sin(np.arange(50) / (2 + 6 * k)) for k in levels for _ in range(2)])
    pressure = (signal[:, None] + rng.normal(0, 0.1, (len(signal), 1))).astype(np.float32)
    path = write_recording(tmp_path / "p.mcap", {"baro": RecordedStream("pressure", T0, 50.0, pressure, 5)})
    write_labels(
        tmp_path / "p.labels.csv",
        [(T0 + i * SEG_NS, T0 + (i + 1) * SEG_NS, f"k{k}") for i, k in enumerate(levels)],
    )
    (tmp_path / "r.toml").write_text(
        'name = "baro"\nfusion = "late"\ndim = 8\n[inputs.pressure]\nkind = "series"\nlength = 50\n'
        'encoder = "pressure_mlp"\n[train]\nepochs = 2\nbatch_size = 8\nval_fraction = 0.0\n'
    )
    plugins = load_plugins(extra=[PressurePlugin()])
    trained = train(load_recipe(tmp_path / "r.toml"), data_items([path]), tmp_path / "baro.pt", plugins)
    ck = load(tmp_path / "baro.pt")
    assert ck.encoders["pressure"]["name"] == "pressure_mlp" and trained.metrics["windows"]["train"] > 0
    model = ck.build(plugins.parts)
    x = torch.randn(2, 50, 1)
    assert model({"pressure": x}, torch.ones(2, 1, dtype=torch.bool)).shape == (2, 2)
    with pytest.raises(Exception, match="pressure_mlp"):
        ck.build(load_plugins().parts)  # without the plugin: a clear error


def test_a_bad_recipe_names_the_key_and_value(tmp_path):
    bad = recipe(tmp_path).read_text().replace("epochs = 6", "epochs = -2")
    (tmp_path / "bad.toml").write_text(bad)
    with pytest.raises(ConfigError, match=r"train\.epochs.*-2"):
        load_recipe(tmp_path / "bad.toml")
    result = fusiond(
        "train", str(tmp_path / "bad.toml"), "--data", str(tmp_path), "-o", str(tmp_path / "x.pt")
    )
    assert result.returncode == 2 and "train.epochs" in result.stderr


def test_train_on_the_demo_media_and_the_daemon_serves_the_model(tmp_path):
    """Training straight from a config of file sources, then serving the checkpoint live."""
    model = tmp_path / "demo.pt"
    demo = ROOT / "demo"
    result = fusiond(
        "train",
        str(demo / "train.toml"),
        "--data",
        str(ROOT / "config.toml"),
        "--labels",
        str(demo / "labels.csv"),
        "--epochs",
        "1",
        "-o",
        str(model),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "60 labelled windows" in result.stderr  # 30 segments of 2 s, 2 windows wholly inside each
    digest = load(model).content_hash
    sub = f"tcp://127.0.0.1:{free_port()}"
    config = demo_config(
        tmp_path,
        f"tcp://127.0.0.1:{free_port()}",
        sub,
        **{f'path = "{ROOT}/demo/model.pt"': f'path = "{model}"'},
    )
    daemon = DaemonProcess(config, tmp_path / "d.log")
    try:
        with Subscriber(sub, timeout_s=30) as predictions:
            got = predictions.next()
        assert got is not None and got.model["hash"] == digest
    finally:
        daemon.close()


def test_labels_that_miss_the_data_are_reported_not_trained_on(data, tmp_path):
    # Relative times where the data's clock is absolute: a common slip.
    (tmp_path / "far.csv").write_text("start_ns,end_ns,label\n0,2000000000,low\n2000000000,4000000000,high\n")
    result = fusiond(
        "train",
        str(recipe(tmp_path)),
        "--data",
        str(data / "test.mcap"),
        "--labels",
        str(tmp_path / "far.csv"),
        "-o",
        str(tmp_path / "x.pt"),
    )
    assert result.returncode == 2 and not (tmp_path / "x.pt").exists()
    assert "no window lies inside a labelled range" in result.stderr
    assert "no labelled training windows" in result.stderr


WORDS_RECIPE = """
name = "said"
fusion = "late"
dim = 16
[inputs.words]
kind = "tokens"
length = 8
encoder_args = { embed = 16, hidden = 16 }
[inputs.imu]
kind = "series"
length = 50
augment = ["scale", "warp", "noise"]
[train]
epochs = 30
modality_swap = 0.0
batch_size = 16
val_fraction = 0.0
test_fraction = 0.25
"""


def test_a_text_and_imu_recipe_builds_its_vocabulary_and_trains(tmp_path):
    """Words heard during each segment (noisy: fillers and misheard words) fused with an
    IMU that says little: the vocabulary comes from the data, travels in the checkpoint,
    and the text carries the score."""
    rng = np.random.default_rng(5)
    labels = [str(d) for d in rng.integers(0, 3, 60)]
    names = {"0": "zero", "1": "one", "2": "two"}
    fillers = ["um", "okay", "the", "so"]
    events = []
    for i, label in enumerate(labels):
        for k in range(3):
            t = T0 + i * SEG_NS + (150 + 600 * k) * 1_000_000
            heard = names[label] if rng.random() > 0.1 else rng.choice(["zero", "one", "two"])
            events.append((t, f"{rng.choice(fillers)} {heard}"))
    # The IMU says a little: its level moves with the class, under much noise.
    imu = np.concatenate([0.5 * int(label) + rng.normal(0, 4, 100) for label in labels])[:, None]
    imu = imu.astype(np.float32)
    path = write_recording(
        tmp_path / "said.mcap",
        {
            "speech": RecordedText("words", events),
            "imu": RecordedStream("imu", T0, 50.0, imu, 10),
        },
    )
    write_labels(
        tmp_path / "said.labels.csv",
        [(T0 + i * SEG_NS, T0 + (i + 1) * SEG_NS, label) for i, label in enumerate(labels)],
    )
    (tmp_path / "said.toml").write_text(WORDS_RECIPE)
    plugins = load_plugins()
    trained = train(load_recipe(tmp_path / "said.toml"), data_items([path]), tmp_path / "said.pt", plugins)
    ck = load(tmp_path / "said.pt")
    vocab = ck.spec.modalities["words"].vocab
    assert set(vocab) == {"zero", "one", "two", "um", "okay", "the", "so"}
    assert ck.encoders["words"]["name"] == "text_gru"  # the tokens kind's default encoder
    sheet = trained.metrics["test"]
    assert sheet["accuracy"] >= 0.7, sheet
    assert sheet["only"]["words"] >= 0.8 and sheet["ablation"]["words"] < sheet["only"]["words"], sheet
    assert sheet["heads"]["words"] >= 0.8, sheet  # the words head alone, calibrated
    assert set(trained.metrics["temperatures"]) == {"words", "imu"}


def test_a_pretrained_encoder_reads_local_weights_and_frozen_stays_as_read(tmp_path):
    """resnet18 (named as timm names it) reads a state dict saved from a randomly
    initialised network, classifier included, from a file beside the recipe; frozen, the
    trained checkpoint's backbone is exactly the file's; unfrozen, training moves it."""
    from fusiond.align import ModalitySpec
    from fusiond.models.pretrained import ResNet18Encoder

    torch.manual_seed(7)
    spec = ModalitySpec("frames", length=2, channels=1, height=16, width=16)
    saved = ResNet18Encoder(spec).backbone.state_dict()
    torch.save(
        {**saved, "fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)},
        tmp_path / "resnet18.pth",
    )
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 16)
    frames = np.concatenate([np.full((20, 16, 16, 1), 40 + 160 * k, np.uint8) for k in labels])
    frames = np.clip(frames + rng.normal(0, 20, frames.shape), 0, 255).astype(np.uint8)
    path = write_recording(tmp_path / "cards.mcap", {"cam": RecordedStream("video", T0, 10.0, frames, 1)})
    write_labels(
        tmp_path / "cards.labels.csv",
        [(T0 + i * SEG_NS, T0 + (i + 1) * SEG_NS, f"k{k}") for i, k in enumerate(labels)],
    )
    plugins = load_plugins()
    for freeze in ("true", "false"):
        (tmp_path / "cards.toml").write_text(
            'name = "cards"\nfusion = "late"\ndim = 8\n[inputs.video]\nkind = "frames"\nlength = 2\n'
            'channels = 1\nheight = 16\nwidth = 16\nencoder = "timm:resnet18"\n'
            f'encoder_args = {{ weights = "resnet18.pth", freeze = {freeze} }}\n'
            "[train]\nepochs = 2\nbatch_size = 8\nval_fraction = 0.0\ntest_fraction = 0.0\n"
        )
        out = tmp_path / f"cards-{freeze}.pt"
        train(load_recipe(tmp_path / "cards.toml"), data_items([path]), out, plugins)
        backbone = load(out).build(plugins.parts).encoders["video"].backbone.state_dict()
        same = all(torch.equal(backbone[k], v) for k, v in saved.items())
        assert same == (freeze == "true"), freeze
    with pytest.raises(ModelError, match="no such weights file"):
        recipe = (tmp_path / "cards.toml").read_text()
        (tmp_path / "cards.toml").write_text(recipe.replace("resnet18.pth", "x.pth"))
        train(load_recipe(tmp_path / "cards.toml"), data_items([path]), tmp_path / "x.pt", plugins)


def test_separate_validation_recordings_pick_the_epoch_and_calibrate_the_heads(data, tmp_path):
    val = tones(tmp_path / "val.mcap", seed=50, t0=T0 + 77 * 10**12)
    model = tmp_path / "m.pt"
    result = fusiond(
        "train",
        str(recipe(tmp_path, "consensus", epochs=2)),
        "--data",
        str(data / "train"),
        "--val",
        str(val),
        "--test",
        str(data / "test.mcap"),
        "-o",
        str(model),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    metrics = load(model).metrics
    # Every training window trains: none is split off for validation or test.
    assert metrics["windows"] == {"train": 4 * 48, "validation": 48, "test": 48}, metrics["windows"]
    assert set(metrics["temperatures"]) == {"video", "imu"}, metrics  # fitted on the validation windows
    assert metrics["temperatures"] != {"video": 1.0, "imu": 1.0}, metrics
    assert metrics["test"]["accuracy"] > 0.8, metrics["test"]  # chance is 0.5
    # The reject thresholds, chosen on the validation windows for 99 % right on what is kept.
    reject = metrics["reject"]
    assert reject["windows"] == 48 and 0 <= reject["confidence"] <= 1 and 0 <= reject["disagreement"] <= 1
    if reject["reached"]:
        assert reject["accuracy"] >= 0.99 and reject["coverage"] > 0
    curve = reject["test"]["curve"]
    assert [row["confidence"] for row in curve] == sorted(row["confidence"] for row in curve)
    assert [row["coverage"] for row in curve] == sorted((row["coverage"] for row in curve), reverse=True)
    assert curve[0]["coverage"] == 1.0 and curve[0]["accuracy"] == pytest.approx(
        metrics["test"]["accuracy"], abs=1e-3
    )
    scored = fusiond("eval", str(model), "--data", str(data / "test.mcap"), "--json")
    sheet = json.loads(scored.stdout)["reject"]
    assert sheet["confidence"] == reject["confidence"] and sheet["coverage"] == reject["test"]["coverage"]
    assert (
        "coverage at accuracy by confidence"
        in fusiond("eval", str(model), "--data", str(data / "test.mcap")).stdout
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ("{ unreliability = 2.0 }", r"fusion_args: unreliability must lie in \(0, 1\), got 2.0"),
        ("{ unreliabilty = 0.2 }", r"fusion_args: .*unexpected keyword argument 'unreliabilty'"),
    ],
)
def test_bad_fusion_args_are_named_not_a_traceback(data, tmp_path, args, message):
    text = recipe(tmp_path, "consensus", epochs=1).read_text()
    text = text.replace('fusion = "consensus"', f'fusion = "consensus"\nfusion_args = {args}')
    (tmp_path / "bad.toml").write_text(text)
    result = fusiond(
        "train",
        str(tmp_path / "bad.toml"),
        "--data",
        str(data / "train" / "t0.mcap"),
        "-o",
        str(tmp_path / "x.pt"),
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    assert re.search(message, result.stderr), result.stderr
