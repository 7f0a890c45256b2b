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
