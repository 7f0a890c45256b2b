"""``fusiond export --onnx`` and ``[model] runtime = "onnx"``: onnxruntime gives torch's scores."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from fusiond.align.spec import InputSpec, ModalitySpec
from fusiond.models import load
from fusiond.models.onnx import OnnxRunner
from fusiond.models.runner import ModelRunner
from fusiond.plugin import load_plugins
from fusiond.testing import example_spec, random_windows, tiny_model

from .helpers import ROOT, fusiond

SPEC = InputSpec(
    {
        "video": ModalitySpec("frames", 2, 1, 16, 16),
        "audio": ModalitySpec("series", 800, 1),
        "imu": ModalitySpec("series", 20, 3),
    }
)


def _compare(path, spec: InputSpec) -> None:
    plugins = load_plugins()
    checkpoint = load(path, plugins.kinds)
    encoders = plugins.parts
    torch_runner = ModelRunner(checkpoint, encoders, "cpu")
    onnx_runner = OnnxRunner(checkpoint, encoders)
    assert onnx_runner.session is not None
    for batch in (1, 7):
        windows = random_windows(spec, batch, seed=batch)
        a, b = torch_runner.run(windows), onnx_runner.run(windows)
        np.testing.assert_allclose(a.probs, b.probs, atol=1e-4)
        assert list(a.labels) == list(b.labels)


@pytest.mark.parametrize("fusion", sorted(load_plugins().fusions.modules()))
def test_every_fusion_strategy_exports_and_scores_as_torch_does(tmp_path, fusion):
    path = tmp_path / "tiny.pt"
    tiny_model(path, SPEC, classes=["a", "b", "c"], fusion=fusion)
    _compare(path, SPEC)


def test_every_kind_with_its_default_encoder_exports_and_scores_as_torch_does(tmp_path):
    """Text (a GRU over words), vectors and frames too, each through its kind's default encoder."""
    kinds = load_plugins().kinds
    spec = InputSpec({kind: example_spec(kinds.get(kind)) for kind in kinds})
    path = tmp_path / "kinds.pt"
    tiny_model(path, spec, classes=["a", "b"], fusion="late")
    _compare(path, spec)


def test_the_demo_model_exports_with_the_command_and_matches_torch(tmp_path):
    path = tmp_path / "model.pt"
    shutil.copy(ROOT / "demo/model.pt", path)
    result = fusiond("export", str(path), "--onnx")
    assert result.returncode == 0, result.stderr
    assert "ONNX export of demo-digits" in result.stdout
    _compare(path, load(path).spec)
    # The file says what it takes and gives, for a program that never saw the checkpoint.
    import onnxruntime

    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    card = json.loads(session.get_modelmeta().custom_metadata_map["fusiond.card"])
    assert card["name"] == "demo-digits" and card["classes"] == [str(d) for d in range(10)]
    assert [i["name"] for i in card["inputs"]] == [i.name for i in session.get_inputs()][:-1]
    assert card["inputs"][0]["kind"] == "frames" and card["inputs"][0]["shape"] == ["batch", 4, 32, 32, 1]
    assert "sample and hold" in card["inputs"][0]["fit"]
    assert card["mask"]["shape"] == ["batch", 3] and session.get_inputs()[-1].name == "mask"
    assert card["window"]["length_ns"] == 10**9 and card["content_hash"] == load(path).content_hash
    assert set(card["outputs"]) == {o.name for o in session.get_outputs()}


def test_an_export_of_another_checkpoint_is_never_served_however_new_it_is(tmp_path, caplog):
    """The export beside a checkpoint is served only if its metadata names that very
    checkpoint's content: a stale one, newer on disk, is passed over (and said so)."""
    old, new = tmp_path / "old.pt", tmp_path / "model.pt"
    tiny_model(old, SPEC, classes=["a", "b"], seed=1)
    tiny_model(new, SPEC, classes=["a", "b"], seed=2)
    assert fusiond("export", str(old), "--onnx").returncode == 0
    shutil.copy(tmp_path / "old.onnx", tmp_path / "model.onnx")  # stale, and newer than model.pt
    checkpoint = load(new)
    runner = OnnxRunner(checkpoint, load_plugins().parts)
    assert "exported from checkpoint" in caplog.text and load(old).content_hash in caplog.text
    made_from = runner.session.get_modelmeta().custom_metadata_map["fusiond.content_hash"]
    assert made_from == checkpoint.content_hash


def test_execution_providers_are_chosen_from_what_onnxruntime_has_and_the_cpu_comes_last(tmp_path):
    """``auto`` takes CUDA or OpenVINO when this onnxruntime has them, else the CPU; a
    provider asked for by name that it lacks is one clear error, in check-config too."""
    import onnxruntime

    from fusiond.errors import ModelError
    from fusiond.models.onnx import PREFERRED, choose_providers

    available = onnxruntime.get_available_providers()
    auto = choose_providers("auto")
    assert auto[-1] == "CPUExecutionProvider" and auto == [p for p in PREFERRED if p in available]
    assert choose_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in available:  # this machine: the CPU wheel
        with pytest.raises(
            ModelError, match=r"CUDAExecutionProvider.*not in this onnxruntime.*onnxruntime-gpu"
        ):
            choose_providers(["CUDAExecutionProvider"])
        config = tmp_path / "config.toml"
        text = (ROOT / "config.toml").read_text().replace('"demo/', f'"{ROOT}/demo/')
        config.write_text(
            text.replace('runtime = "auto"', 'runtime = "onnx"\nproviders = ["CUDAExecutionProvider"]')
        )
        refused = fusiond("check-config", "--config", str(config), "--no-ports")
        assert refused.returncode != 0 and "model.providers" in refused.stderr, refused.stderr
    path = tmp_path / "tiny.pt"
    tiny_model(path, SPEC, classes=["a", "b"])
    assert OnnxRunner(load(path), load_plugins().parts, providers=["CPUExecutionProvider"]).providers == [
        "CPUExecutionProvider"
    ]
    for value in ('["cuda"]', '"cuda"', "[]", "3"):
        bad = tmp_path / "bad.toml"
        bad.write_text(text.replace('runtime = "auto"', f"providers = {value}"))
        named = fusiond("check-config", "--config", str(bad), "--no-ports")
        assert named.returncode != 0 and "model.providers" in named.stderr, named.stderr
        assert len(named.stderr.strip().splitlines()) == 1, named.stderr
    # Providers are onnxruntime's: with torch serving, a name onnxruntime lacks is no error.
    torch_config = tmp_path / "torch.toml"
    torch_config.write_text(
        text.replace('runtime = "auto"', 'runtime = "torch"\nproviders = ["CUDAExecutionProvider"]')
    )
    assert fusiond("check-config", "--config", str(torch_config), "--no-ports").returncode == 0


def test_an_onnxruntime_that_lists_cuda_is_used_on_it_unless_the_device_is_the_cpu(tmp_path, monkeypatch):
    """onnxruntime-gpu lists CUDA: ``auto`` asks for it first, names given are taken once
    each in their order, and ``device = "cpu"`` keeps the model on the CPU."""
    import onnxruntime

    from fusiond.models.onnx import choose_providers
    from fusiond.models.serving import make_runner

    listed = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: listed)
    assert choose_providers("auto") == listed
    assert (
        choose_providers(["CPUExecutionProvider", "CUDAExecutionProvider", "CUDAExecutionProvider"]) == listed
    )
    path = tmp_path / "tiny.pt"
    tiny_model(path, SPEC, classes=["a", "b"])
    runner = make_runner(load(path), load_plugins().parts, device="cpu", runtime="onnx")
    assert runner.wanted == ["CPUExecutionProvider"] and runner.providers == ["CPUExecutionProvider"]


def test_an_export_without_a_card_from_an_older_fusiond_is_made_again(tmp_path, caplog, monkeypatch):
    """An export of this very checkpoint made before exports carried their card is not
    served as it is: the card travels in every file the daemon serves, so it is made again."""
    import onnx

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = tmp_path / "model.pt"
    tiny_model(path, SPEC, classes=["a", "b"], seed=3)
    assert fusiond("export", str(path), "--onnx").returncode == 0
    old = onnx.load(str(tmp_path / "model.onnx"))
    kept = [p for p in old.metadata_props if p.key != "fusiond.card"]
    del old.metadata_props[:]
    old.metadata_props.extend(kept)
    onnx.save(old, str(tmp_path / "model.onnx"))
    caplog.set_level("INFO")
    runner = OnnxRunner(load(path), load_plugins().parts)
    assert "carries no card" in caplog.text
    meta = runner.session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["fusiond.card"])["content_hash"] == load(path).content_hash
