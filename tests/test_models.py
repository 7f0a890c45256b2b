from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from fusiond.align import InputSpec, ModalitySpec
from fusiond.errors import ModelError
from fusiond.models import BUILTIN_ENCODERS, FUSIONS, FusionModel, load, save

SPEC = InputSpec({
    "video": ModalitySpec("frames", length=2, channels=1, height=16, width=16),
    "audio": ModalitySpec("series", length=800, channels=1),
    "imu": ModalitySpec("series", length=32, channels=3),
})  # fmt: skip
ENCODERS = {
    "video": {"name": "frames_cnn"},
    "audio": {"name": "logmel_cnn", "args": {"sample_rate": 800.0, "n_fft": 64, "hop": 16}},
    "imu": {"name": "series_cnn"},
}
SUBSETS = [m for r in range(1, 4) for m in itertools.combinations(range(3), r)]


def batch(b: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "video": torch.randint(0, 255, (b, 2, 16, 16, 1), generator=g, dtype=torch.uint8),
        "audio": torch.randn(b, 800, 1, generator=g),
        "imu": torch.randn(b, 32, 3, generator=g),
    }


@pytest.mark.parametrize("name", sorted(BUILTIN_ENCODERS))
def test_every_encoder_gives_finite_features(name):
    spec = ModalitySpec("series", length=800, channels=2)
    if name == "frames_cnn":
        spec = ModalitySpec("frames", length=3, channels=3, height=12, width=20)
    x = torch.from_numpy(np.random.default_rng(0).random((4, *spec.shape)) * 200).to(
        torch.uint8 if spec.kind == "frames" else torch.float32
    )
    args = {"sample_rate": 800.0, "n_fft": 64, "hop": 16} if name == "logmel_cnn" else {}
    encoder = BUILTIN_ENCODERS[name](spec, dim=24, **args).eval()
    features = encoder.forward_features(x)
    assert features.shape == (4, 24)
    assert torch.isfinite(features).all()


@pytest.mark.parametrize("fusion", sorted(FUSIONS))
@pytest.mark.parametrize("present", SUBSETS)
def test_every_fusion_handles_every_subset_of_modalities(fusion, present):
    torch.manual_seed(0)
    model = FusionModel(SPEC, ["a", "b", "c", "d"], ENCODERS, {"name": fusion}, BUILTIN_ENCODERS, 32).eval()
    mask = torch.zeros(3, 3, dtype=torch.bool)
    mask[:, list(present)] = True
    x = batch()
    with torch.inference_mode():
        logits = model(x, mask)
        assert logits.shape == (3, 4) and torch.isfinite(logits).all()
        # A masked modality must not influence the output: replace its input with noise.
        for missing in set(range(3)) - set(present):
            name = model.modalities[missing]
            changed = dict(x, **{name: batch(seed=99)[name]})
            torch.testing.assert_close(model(changed, mask), logits)


def test_checkpoint_round_trip_keeps_outputs_and_metadata(tmp_path):
    model = FusionModel(SPEC, ["x", "y"], ENCODERS, {"name": "attention"}, BUILTIN_ENCODERS, 32).eval()
    path = tmp_path / "m.pt"
    digest = save(model, path, name="tiny", encoders=ENCODERS, fusion={"name": "attention"}, dim=32,
                  window={"length_ns": 1, "hop_ns": 1}, metrics={"acc": 0.5})
    ck = load(path)
    assert ck.content_hash == digest and ck.name == "tiny" and ck.classes == ["x", "y"]
    assert ck.spec == SPEC and ck.metrics == {"acc": 0.5}
    back = ck.build(BUILTIN_ENCODERS)
    mask = torch.ones(3, 3, dtype=torch.bool)
    with torch.inference_mode():
        torch.testing.assert_close(back(batch(), mask), model(batch(), mask))


def test_bad_checkpoints_are_model_errors(tmp_path):
    with pytest.raises(ModelError, match="no such model file"):
        load(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="not a fusiond checkpoint"):
        load(junk)
    with pytest.raises(ModelError, match="unknown fusion"):
        FusionModel(SPEC, ["x"], ENCODERS, {"name": "magic"}, BUILTIN_ENCODERS)
