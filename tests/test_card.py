"""The serving contract: a model's card, read without torch, and a model fusiond never saw
(examples/own-model: plain PyTorch, exported to ONNX, with a card.toml) served by the daemon."""

from __future__ import annotations

import io
import json
import pickle
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from fusiond.errors import ModelError
from fusiond.models.card import read_card

from .helpers import ROOT, DaemonProcess, free_port, fusiond, truth

OWN = ROOT / "examples/own-model"


def test_a_checkpoints_card_is_read_without_torch_and_equals_the_loaded_checkpoints():
    probe = (
        "import json, sys; from pathlib import Path; from fusiond.models.card import read_card, card_dict\n"
        f"card = read_card(Path({str(ROOT / 'demo/model.pt')!r}))\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'card': card_dict(card)}))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    got = json.loads(out.stdout)
    assert got["torch"] is False
    from fusiond.models import load
    from fusiond.models.card import card_dict

    loaded = json.loads(json.dumps(card_dict(load(ROOT / "demo/model.pt").card)))
    assert got["card"] == loaded and got["card"]["classes"] == [str(d) for d in range(10)]


def test_a_checkpoint_that_would_run_code_is_refused_not_run(tmp_path):
    """The metadata reader imports nothing outside its allow-list: a pickle calling
    os.system is an error naming the file, and the command never runs."""

    class Evil:
        def __reduce__(self):
            return (__import__("os").system, (f"touch {tmp_path / 'ran'}",))

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"format": 1, "name": Evil()}))
    (tmp_path / "evil.pt").write_bytes(buffer.getvalue())
    with pytest.raises(ModelError, match=r"evil\.pt is not a fusiond checkpoint"):
        read_card(tmp_path / "evil.pt")
    assert not (tmp_path / "ran").exists()


def test_an_export_carries_its_card_and_is_served_on_its_own(tmp_path):
    """``fusiond export --onnx`` writes a file that ``[model] path`` takes alone: its card
    says what the checkpoint's says, and onnxruntime gives the checkpoint's scores."""
    from fusiond.models import load
    from fusiond.models.onnx import OnnxRunner
    from fusiond.models.runner import ModelRunner
    from fusiond.plugin import load_plugins
    from fusiond.testing import random_windows

    model = tmp_path / "demo.pt"
    shutil.copy(ROOT / "demo/model.pt", model)
    assert fusiond("export", str(model), "--onnx").returncode == 0
    alone = tmp_path / "alone" / "digits.onnx"
    alone.parent.mkdir()
    shutil.move(tmp_path / "demo.onnx", alone)
    card, checkpoint = read_card(alone), load(model)
    assert card.format == "onnx" and card.mask and card.output == "probabilities"
    assert (card.name, card.classes, card.spec) == (
        checkpoint.name,
        tuple(checkpoint.classes),
        checkpoint.spec,
    )
    windows = random_windows(card.spec, 5, seed=2)
    want = ModelRunner(checkpoint, load_plugins().parts, "cpu").run(windows)
    got = OnnxRunner(card, providers=["CPUExecutionProvider"]).run(windows)
    np.testing.assert_allclose(got.probs, want.probs, atol=1e-4)


def _own(tmp_path, card: str | None = None):
    """The example's model in a folder of its own, with its card (or an edited one)."""
    folder = tmp_path / "own"
    folder.mkdir(exist_ok=True)
    shutil.copy(OWN / "model.onnx", folder / "model.onnx")
    (folder / "card.toml").write_text(card if card is not None else (OWN / "card.toml").read_text())
    return folder / "model.onnx"


def test_the_example_models_card_matches_its_graph_and_logits_become_probabilities(tmp_path):
    from fusiond.models.onnx import OnnxRunner
    from fusiond.testing import random_windows

    card = read_card(_own(tmp_path))
    assert card.format == "onnx" and not card.mask and card.output == "logits"
    assert list(card.spec.modalities) == ["video", "imu"] and card.window["length_ns"] == 10**9
    result = OnnxRunner(card, providers=["CPUExecutionProvider"]).run(random_windows(card.spec, 4, seed=1))
    assert result.probs.shape == (4, 10)
    np.testing.assert_allclose(result.probs.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize(
    ("edit", "says"),
    [
        (
            ("length = 100", "length = 50"),
            r"input 'imu' is \['batch', 100, 1\] in the graph, but its card makes",
        ),
        (
            ("[inputs.imu]", "[inputs.accel]"),
            r"the card's inputs \['video', 'accel'\] do not match the graph's",
        ),
        (("mask = false", "mask = true"), r"do not match the graph's \['video', 'imu'\]"),
        (('"8", "9"]', '"8"]'), "has 10 columns; the card names 9"),
        (('kind = "frames"', 'kind = "pictures"'), r"card\.toml: inputs: unknown modality kind 'pictures'"),
        (('output = "logits"', 'output = "odds"'), r"card\.toml: output: .*'odds'"),
        (('classes = ["0",', 'classes = ["0"] #'), "two or more classes"),
    ],
)
def test_a_card_that_does_not_fit_its_graph_is_one_line_naming_the_mismatch(tmp_path, edit, says):
    from fusiond.models.onnx import OnnxRunner

    text = (OWN / "card.toml").read_text()
    assert edit[0] in text
    path = _own(tmp_path, text.replace(edit[0], edit[1], 1))
    with pytest.raises(ModelError, match=says):
        OnnxRunner(read_card(path), providers=["CPUExecutionProvider"])


def test_an_onnx_file_with_no_card_says_where_one_goes(tmp_path):
    path = _own(tmp_path)
    (path.parent / "card.toml").unlink()
    with pytest.raises(
        ModelError, match=r"no fusiond card in its metadata and there is no model\.card\.toml"
    ):
        read_card(path)
    (path.parent / "model.onnx").write_bytes(b"not a graph")
    (path.parent / "card.toml").write_text((OWN / "card.toml").read_text())
    from fusiond.models.onnx import OnnxRunner

    with pytest.raises(ModelError, match="not an ONNX model onnxruntime can load"):
        OnnxRunner(read_card(path), providers=["CPUExecutionProvider"])


def _config(tmp_path, endpoints, model, runtime="auto", control=""):
    """examples/own-model/config.toml on fresh ports, serving ``model``."""
    text = (OWN / "config.toml").read_text().replace('"../../demo/', f'"{ROOT}/demo/')
    text = text.replace("tcp://127.0.0.1:7710", endpoints[0]).replace("tcp://127.0.0.1:7711", endpoints[1])
    text = text.replace("tcp://127.0.0.1:7712", control or f"tcp://127.0.0.1:{free_port()}")
    text = text.replace('path = "model.onnx"', f'path = "{model}"').replace('"auto"', f'"{runtime}"')
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_check_config_takes_the_example_and_names_what_does_not_fit(tmp_path, endpoints):
    model = _own(tmp_path)
    ok = fusiond("check-config", "--config", str(_config(tmp_path, endpoints, model)), "--no-ports")
    assert ok.returncode == 0, ok.stderr
    assert "model own-digits" in ok.stdout
    assert ok.stderr.count("takes no mask: a missing modality reaches it as zeros") == 1, ok.stderr
    torch = fusiond(
        "check-config", "--config", str(_config(tmp_path, endpoints, model, "torch")), "--no-ports"
    )
    assert torch.returncode != 0 and "model.runtime" in torch.stderr and "torch cannot run it" in torch.stderr
    card = (OWN / "card.toml").read_text()
    for edit, says in [
        (
            ("[inputs.imu]", "[inputs.gyro]"),
            "rigs.demo.sources.imu.modality: model 'own-digits' has no 'imu' input",
        ),
        (("length = 100", "length = 50"), "model.path: cannot serve this model: "),
    ]:
        (model.parent / "card.toml").write_text(card.replace(*edit))
        bad = fusiond("check-config", "--config", str(_config(tmp_path, endpoints, model)), "--no-ports")
        assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
        assert says in bad.stderr, bad.stderr


def test_serving_an_onnx_model_never_imports_torch(tmp_path, endpoints):
    """What the daemon runs before it starts anything (the card, the checks, the server's
    load and warm-up, the pipeline) and the server loop itself import no torch."""
    config = _config(tmp_path, endpoints, _own(tmp_path))
    probe = (
        "import sys; from collections import Counter; from pathlib import Path\n"
        "from fusiond import config as c; from fusiond.plugin import load_plugins\n"
        "from fusiond.prepare import prepare; from fusiond.pipeline import Pipeline\n"
        "from fusiond.runtime.server import load_serving\n"
        f"cfg, plugins = c.load(Path({str(config)!r})), load_plugins()\n"
        "prepared = prepare(cfg, plugins, serve=True)\n"
        "Pipeline.from_config(cfg, plugins.sources, prepared.card)\n"
        "s = load_serving(cfg.model.path, plugins, 'auto', 'auto', 0, 4, Counter())\n"
        "print(s.runner.runtime, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["onnx", "False"], out.stderr


@pytest.mark.slow
def test_the_daemon_serves_a_plain_pytorch_model_on_the_demo_rig_with_the_right_digits(tmp_path, endpoints):
    from fusiond.client import Subscriber

    control = f"tcp://127.0.0.1:{free_port()}"
    d = DaemonProcess(_config(tmp_path, endpoints, _own(tmp_path), control=control), tmp_path / "daemon.log")
    try:
        with Subscriber(endpoints[1], rigs=["demo"], timeout_s=30) as predictions:
            anchor = int(d.wait_for(r"media anchor: file sources start at (\d+)").group(1))
            got = [p for _, p in zip(range(24), predictions, strict=False)]
        assert len(got) == 24 and all(p.model["name"] == "own-digits" for p in got)
        assert all(abs(sum(p.scores) - 1) < 1e-3 for p in got)  # logits became probabilities
        inside = [(p, truth(anchor, p.window_start_ns)) for p in got]
        inside = [(p, digit) for p, digit in inside if digit is not None and not p.missing]
        assert len(inside) >= 8
        right = sum(p.label == str(digit) for p, digit in inside)
        assert right / len(inside) >= 0.8, [(p.label, digit) for p, digit in inside]
        assert "takes no mask: a missing modality reaches it as zeros" in d.text()
        status = fusiond("status", "--json", "--connect", control)
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["model"]["runtime"] == "onnx"
        d.stop()
        assert d.proc.returncode == 0, d.text()
    finally:
        d.close()


def _graph(tmp_path, module, inputs, names, dynamic=True, out="model.onnx"):
    """``module`` exported to ONNX (batch axis dynamic unless ``dynamic`` is False)."""
    import warnings

    import torch

    path = tmp_path / out
    axes = {n: {0: "b"} for n in [*names, "out"]} if dynamic else None
    with warnings.catch_warnings():  # the exporter's notes on itself
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            inputs,
            str(path),
            input_names=names,
            output_names=["out"],
            dynamic_axes=axes,
            dynamo=False,
        )
    return path


def _imu_graph(tmp_path, kind="ok", dynamic=True):
    """A graph over one IMU input ``[b, 100, 1]``: its output ``[b, 10]`` (``ok``), ``[b]``
    (``rank1``) or ``[b, 20]`` with a width known only when it runs (``wide``)."""
    import torch

    class Mean(torch.nn.Module):
        def forward(self, imu):
            x = imu.mean(dim=(1, 2))
            if kind == "rank1":
                return x
            if kind == "wide":
                return x[:, None].repeat(1, imu.shape[1] // 5)
            return x[:, None].repeat(1, 10)

    return _graph(tmp_path, Mean(), (torch.zeros(2, 100, 1),), ["imu"], dynamic)


DIGITS = ", ".join(f'"{d}"' for d in range(10))
IMU_CARD = f'name = "m"\nclasses = [{DIGITS}]\nmask = false\n[inputs.imu]\nkind = "series"\nlength = 100\n'


@pytest.mark.parametrize(
    ("kind", "dynamic", "says"),
    [
        ("rank1", True, r"first output 'out' is \['b'\]; fusiond reads \[batch, K\]"),
        ("wide", True, r"warming up on 2 window\(s\), the model gave float32 \[2, 20\], not float \[2, 10\]"),
        ("ok", False, r"input 'imu' has a fixed batch size \(2\) in the graph: export it with a dynamic"),
    ],
)
def test_a_graph_whose_output_or_batch_axis_does_not_fit_is_refused(tmp_path, kind, dynamic, says):
    from fusiond.models.onnx import OnnxRunner

    path = _imu_graph(tmp_path, kind, dynamic)
    (tmp_path / "card.toml").write_text(IMU_CARD)
    with pytest.raises(ModelError, match=says):
        OnnxRunner(read_card(path), providers=["CPUExecutionProvider"]).warm_up(2)


def test_a_card_toml_beside_an_export_does_not_replace_its_own_card_but_model_card_toml_does(tmp_path):
    import onnx

    from fusiond.models.card import CARD_KEY

    path = _imu_graph(tmp_path)
    (tmp_path / "card.toml").write_text(IMU_CARD)
    assert read_card(path).name == "m"  # no card of its own: the folder's
    model = onnx.load(str(path))
    embedded = {
        "name": "embedded",
        "task": "classification",
        "classes": [str(d) for d in range(10)],
        "window": {},
        "inputs": [{"name": "imu", "kind": "series", "length": 100, "channels": 1}],
        "mask": False,
    }
    onnx.helper.set_model_props(model, {CARD_KEY: json.dumps(embedded)})
    onnx.save(model, str(path))
    card = read_card(path)
    assert card.name == "embedded" and card.mask is False  # "mask": false is no mask
    (tmp_path / "model.card.toml").write_text(IMU_CARD.replace('name = "m"', 'name = "own"'))
    assert read_card(path).name == "own"
    before = read_card(path).content_hash
    (tmp_path / "model.card.toml").write_text(IMU_CARD.replace('name = "m"', 'name = "own2"'))
    assert read_card(path).content_hash != before  # the card is part of the model's identity
    (tmp_path / "model.card.toml").unlink()
    imu = {"name": "imu", "kind": "series", "length": 100, "channels": 1}
    for bad, says in [
        ({"task": "banana"}, "names task 'banana'"),
        ({"window": {"length_ns": -5}}, "a window of"),
        ({"name": "a\x1b[31m"}, "is not 1-64 printable characters"),
        ({"classes": [str(i) for i in range(5000)]}, "1 to 4096 classes"),
        ({"classes": ["0", "0", *map(str, range(2, 10))]}, "must be distinct"),
        ({"inputs": [{**imu, "name": "a.b"}]}, "inputs the bus cannot name"),
        ({"inputs": [{**imu, "length": 10**9, "channels": 2}]}, "would hold 2,000,000,000 values"),
    ]:
        onnx.helper.set_model_props(model, {CARD_KEY: json.dumps({**embedded, **bad})})
        onnx.save(model, str(path))
        with pytest.raises(ModelError, match=says):
            read_card(path)


@pytest.mark.parametrize(
    ("card", "says"),
    [
        (IMU_CARD.replace('"1", "2"', '"1", "1"'), "must be distinct"),
        (IMU_CARD.replace("[inputs.imu]", "[inputs.mask]"), "'mask' is taken"),
        (IMU_CARD.replace('name = "m"', 'name = "a\\u001b[31m"'), "must be 1-64 letters"),
        (
            IMU_CARD.replace("length = 100", "length = 90000000\nchannels = 2"),
            "would hold 180,000,000 values",
        ),
        (IMU_CARD.replace("length = 100", "length = 100\nchannels = 100000"), r"channels: must be <= 65536"),
        (IMU_CARD.replace("mask = false", "mask = false\nwindow_ms = 100\nhop_ms = 200"), "must not exceed"),
    ],
)
def test_a_card_toml_out_of_range_is_one_short_line_naming_it(tmp_path, card, says):
    path = _imu_graph(tmp_path)
    (tmp_path / "card.toml").write_text(card)
    with pytest.raises(ModelError, match=says) as caught:
        read_card(path)
    assert len(str(caught.value).splitlines()) == 1 and len(str(caught.value)) < 1000


def _zip(tmp_path, name, payload: bytes):
    path = tmp_path / name
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", payload)
    return path


def test_broken_and_hostile_checkpoints_are_one_line_each_and_cost_little(tmp_path):
    import resource

    odd = pickle.dumps({"format": 1, "name": "x", "spec": "x", "classes": [], "window": {}})
    cases = [
        (_zip(tmp_path, "spec.pt", odd), "cannot read its card"),
        (_zip(tmp_path, "deep.pt", b"(" * 100_000 + b"."), "not a fusiond checkpoint|cannot read its card"),
        (_zip(tmp_path, "bomb.pt", b"\0" * (40 * 2**20)), "unpacks to over 16 MiB"),
        (_zip(tmp_path, "other.pt", pickle.dumps(zipfile.ZipInfo("x"))), "holds no zipfile.ZipInfo"),
    ]
    corrupt = tmp_path / "corrupt.pt"
    data = bytearray(_zip(tmp_path, "ok.pt", pickle.dumps({"format": 1}) * 100).read_bytes())
    data[60:80] = b"\xff" * 20  # inside the deflated stream
    corrupt.write_bytes(bytes(data))
    cases.append((corrupt, "not a fusiond checkpoint|cannot read its card"))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for path, says in cases:
        with pytest.raises(ModelError, match=says):
            read_card(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB: no bomb unpacked


def test_a_checkpoint_whose_inputs_would_not_fit_in_memory_is_refused_at_its_card(tmp_path):
    """The same bounds for every format: a checkpoint's spec is not served on trust."""
    spec = {"imu": {"kind": "series", "length": 10**9, "channels": 3, "height": 0, "width": 0, "vocab": []}}
    payload = {"format": 1, "name": "big", "spec": spec, "classes": ["a", "b"], "window": {}}
    with pytest.raises(ModelError, match=r"input 'imu': one window's input would hold 3,000,000,000 values"):
        read_card(_zip(tmp_path, "big.pt", pickle.dumps(payload)))
