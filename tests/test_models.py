from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from fusiond.align import InputSpec, ModalitySpec
from fusiond.errors import ModelError
from fusiond.models import FusionModel, load, save
from fusiond.plugin import load_plugins
from fusiond.testing import example_spec

SPEC = InputSpec(
    {
        "video": ModalitySpec("frames", length=2, channels=1, height=16, width=16),
        "audio": ModalitySpec("series", length=800, channels=1),
        "imu": ModalitySpec("series", length=32, channels=3),
    }
)
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


PLUGINS = load_plugins()
PARTS, KINDS = PLUGINS.parts, PLUGINS.kinds
ENCODER_ARGS = {"logmel_cnn": {"sample_rate": 800.0, "n_fft": 64, "hop": 16}}


def example(kind: str, encoder: str = "") -> ModalitySpec:
    if encoder == "logmel_cnn":
        return ModalitySpec("series", length=800, channels=1)
    return example_spec(KINDS.get(kind))


def random_batch(spec: InputSpec, count: int, seed: int) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    return {m: torch.from_numpy(s.kind_of.random(s, count, rng)) for m, s in spec.modalities.items()}


# Every encoder of the loaded registries (plugins' included) on every kind it says it reads.
PAIRS = [
    (name, kind)
    for name, cls in sorted(PARTS.encoders.items())
    for kind in (getattr(cls, "kinds", ()) or list(KINDS))
]


@pytest.mark.parametrize(("name", "kind"), PAIRS)
def test_every_encoder_reads_every_kind_it_claims(name, kind):
    spec = example(kind, name)
    x = random_batch(InputSpec({"m": spec}), 4, seed=0)["m"]
    encoder = PARTS.encoders[name](spec, dim=24, **ENCODER_ARGS.get(name, {})).eval()
    with torch.inference_mode():
        features = encoder(x)
    assert features.shape == (4, 24)
    assert torch.isfinite(features).all()


# One modality of every kind, each through its kind's default encoder.
EVERY_KIND = InputSpec({kind: example(kind) for kind in KINDS})
KIND_ENCODERS = {kind: {"name": KINDS.get(kind).default_encoder} for kind in KINDS}
KIND_SUBSETS = [c for r in range(1, len(KINDS) + 1) for c in itertools.combinations(range(len(KINDS)), r)]


@pytest.mark.parametrize("fusion", sorted(PARTS.fusions))
@pytest.mark.parametrize("present", KIND_SUBSETS)
def test_every_fusion_over_every_kind_handles_every_subset_of_modalities(fusion, present):
    torch.manual_seed(0)
    model = FusionModel(EVERY_KIND, ["a", "b", "c", "d"], KIND_ENCODERS, {"name": fusion}, PARTS, 32).eval()
    mask = torch.zeros(3, len(KINDS), dtype=torch.bool)
    mask[:, list(present)] = True
    x = random_batch(EVERY_KIND, 3, seed=0)
    with torch.inference_mode():
        logits = model(x, mask)
        assert logits.shape == (3, 4) and torch.isfinite(logits).all()
        # A masked modality must not influence the output: replace its input with another.
        other = random_batch(EVERY_KIND, 3, seed=99)
        for missing in set(range(len(KINDS))) - set(present):
            name = model.modalities[missing]
            torch.testing.assert_close(model(dict(x, **{name: other[name]}), mask), logits)


def test_a_checkpoint_with_a_text_modality_round_trips(tmp_path):
    spec = InputSpec(
        {
            "imu": ModalitySpec("series", length=32, channels=3),
            "words": ModalitySpec("tokens", length=12, vocab=("zero", "one", "two")),
        }
    )
    encoders = {"imu": {"name": "series_cnn"}, "words": {"name": "text_gru", "args": {"hidden": 16}}}
    model = FusionModel(spec, ["x", "y"], encoders, {"name": "late"}, PARTS, 16).eval()
    path = tmp_path / "t.pt"
    save(
        model,
        path,
        name="text",
        encoders=encoders,
        fusion={"name": "late"},
        dim=16,
        window={"length_ns": 1, "hop_ns": 1},
    )
    ck = load(path)
    assert ck.spec == spec and ck.spec.modalities["words"].vocab == ("zero", "one", "two")
    x = random_batch(spec, 5, seed=3)
    mask = torch.ones(5, 2, dtype=torch.bool)
    with torch.inference_mode():
        torch.testing.assert_close(ck.build(PARTS)(x, mask), model(x, mask))


def test_checkpoint_round_trip_keeps_outputs_and_metadata(tmp_path):
    model = FusionModel(SPEC, ["x", "y"], ENCODERS, {"name": "attention"}, PARTS, 32).eval()
    path = tmp_path / "m.pt"
    digest = save(
        model,
        path,
        name="tiny",
        encoders=ENCODERS,
        fusion={"name": "attention"},
        dim=32,
        window={"length_ns": 1, "hop_ns": 1},
        metrics={"acc": 0.5},
    )
    ck = load(path)
    assert ck.content_hash == digest and ck.name == "tiny" and ck.classes == ["x", "y"]
    assert ck.spec == SPEC and ck.metrics == {"acc": 0.5}
    back = ck.build(PARTS)
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
        FusionModel(SPEC, ["x"], ENCODERS, {"name": "magic"}, PARTS)


def test_disagreement_is_zero_when_modalities_agree_and_one_when_each_is_sure_of_another_class():
    from fusiond.publish import disagreement

    sure = np.eye(4)
    assert disagreement([sure[1]]) == 0.0  # one modality: nothing to disagree with
    assert disagreement([sure[1], sure[1], sure[1]]) < 1e-6
    assert abs(disagreement([sure[1], sure[2]]) - 1.0) < 1e-6
    assert abs(disagreement([sure[0], sure[1], sure[2]]) - 1.0) < 1e-6
    unsure = np.full(4, 0.25)
    assert 0.0 < disagreement([sure[1], unsure]) < disagreement([sure[1], sure[2]])


def test_predictions_carry_each_present_modalitys_scores_and_their_disagreement(tmp_path):
    from fusiond.models.onnx import OnnxRunner
    from fusiond.models.runner import ModelRunner
    from fusiond.publish import PredictionBuilder
    from fusiond.testing import random_windows, tiny_model

    spec = InputSpec({"video": ModalitySpec("frames", 2, 1, 16, 16), "imu": ModalitySpec("series", 20, 3)})
    tiny_model(tmp_path / "h.pt", spec, classes=["a", "b", "c"], fusion="late", modality_heads=True)
    ck = load(tmp_path / "h.pt")
    windows = random_windows(spec, 6, seed=4)
    windows[0].present.update(video=True, imu=False)
    results = [runner.run(windows) for runner in (ModelRunner(ck, PARTS, "cpu"), OnnxRunner(ck, PARTS))]
    np.testing.assert_allclose(results[0].modality_probs, results[1].modality_probs, atol=1e-4)
    out = PredictionBuilder(ck.classes, {"name": ck.name, "hash": ck.content_hash}).build(results[0], 0)
    for window, p in zip(windows, out, strict=True):
        present = [m for m in ("video", "imu") if window.present[m]]
        assert list(p.extra["modality_scores"]) == present == list(p.extra["modality_labels"])
        for m in present:
            assert abs(sum(p.extra["modality_scores"][m]) - 1) < 1e-3
            scores = p.extra["modality_scores"][m]
            assert p.extra["modality_labels"][m] == ck.classes[scores.index(max(scores))]
        assert 0.0 <= p.extra["disagreement"] <= 1.0
    assert out[0].extra["disagreement"] == 0.0  # the IMU was missing: only the camera spoke
    plain = tmp_path / "plain.pt"
    tiny_model(plain, spec, classes=["a", "b", "c"], fusion="late")
    result = ModelRunner(load(plain), PARTS, "cpu").run(windows)
    assert result.modality_probs is None
    assert "modality_scores" not in PredictionBuilder(["a", "b", "c"], {}).build(result, 0)[0].extra


def test_calibration_finds_the_temperature_that_undoes_overconfidence():
    from fusiond.training.data import WindowSet
    from fusiond.training.evaluate import calibrate

    spec = InputSpec({"imu": ModalitySpec("series", 8, 1)})
    model = FusionModel(
        spec, ["a", "b"], {"imu": {"name": "vector_mlp"}}, {"name": "late"}, PARTS, 4, modality_heads=True
    )
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (400, 8, 1)).astype(np.float32)
    with torch.no_grad():  # a head whose logits are 5x too large for how often it is right
        model.encoders["imu"].net[-1].weight.zero_()
        model.encoders["imu"].net[-1].bias.copy_(torch.tensor([1.0, 0, 0, 0]))
        model.heads["imu"].weight.zero_()
        model.heads["imu"].bias.zero_()
        model.heads["imu"].weight[0, 0] = 5.0 * np.log(0.7 / 0.3)  # says 'a' with p = 0.9999...
    targets = (rng.random(400) > 0.7).astype(np.int64)  # ... but 'a' is right 70% of the time
    data = WindowSet(["imu"], {"imu": x}, np.ones((400, 1), bool), targets, np.arange(400))
    found = calibrate(model, data, torch.device("cpu"))
    rate = float((targets == 0).mean())  # how often 'a' is right in this sample (about 0.7)
    best = 5.0 * np.log(0.7 / 0.3) / np.log(rate / (1 - rate))  # the temperature that says exactly that
    assert abs(found["imu"] / best - 1) < 0.03, (found, best)


def _consensus_and_late(k: int = 10) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Both fusions with each head reading its features as logits (identity heads)."""
    from fusiond.models.fusion import ConsensusFusion, LateFusion

    consensus, late = ConsensusFusion(3, k, k), LateFusion(3, k, k)
    with torch.no_grad():
        for head in [*consensus.heads, *late.heads]:
            head.weight.copy_(torch.eye(k))
            head.bias.zero_()
    return consensus.eval(), late.eval()


def test_consensus_fusion_lets_two_agreeing_sensors_outvote_a_third_that_is_sure_of_another_class():
    consensus, late = _consensus_and_late()
    features = torch.zeros(1, 3, 10)
    features[0, 0, 3] = 12.0  # the camera is sure it is a 3
    features[0, 1, 5] = 4.0  # the microphone and the IMU lean to 5
    features[0, 2, 5] = 4.0
    everything = torch.ones(1, 3, dtype=torch.bool)
    assert int(late(features, everything).argmax()) == 3  # an average follows the loudest
    assert int(consensus(features, everything).argmax()) == 5
    # Alone, or with the others unsure (flat), the camera carries the decision.
    camera_only = torch.tensor([[True, False, False]])
    assert int(consensus(features, camera_only).argmax()) == 3
    flat = features.clone()
    flat[0, 1:] = 0.0
    assert int(consensus(flat, everything).argmax()) == 3


def test_consensus_fusion_rejects_an_unreliability_outside_zero_to_one():
    from fusiond.models.fusion import ConsensusFusion

    for bad in (0.0, 1.0, -0.1, float("nan"), float("inf"), "0.1", True, None):
        with pytest.raises(ValueError, match="unreliability"):
            ConsensusFusion(3, 8, 10, unreliability=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least two classes"):
        ConsensusFusion(3, 8, 1)


@pytest.mark.parametrize("fusion", ["consensus", "agreement"])
def test_fusions_that_read_class_distributions_refuse_a_regressor(fusion):
    with pytest.raises(ModelError, match=f"fusion '{fusion}' is for classification only, not regression"):
        FusionModel(SPEC, ["speed"], ENCODERS, {"name": fusion}, PARTS, 16, task="regression")
    # Every other built-in strategy serves both.
    FusionModel(SPEC, ["speed"], ENCODERS, {"name": "late"}, PARTS, 16, task="regression")


def test_ranking_counts_how_often_the_true_class_beats_a_given_wrong_one():
    from fusiond.training.evaluate import ranking

    logits = np.array([[3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 2.0, 3.0], [1.0, 3.0, 0.0, 2.0]])
    assert ranking(logits[:1], np.array([0])) == 1.0  # the true class on top: above all three
    assert ranking(logits[1:2], np.array([0])) == 0.0  # at the bottom: above none
    assert ranking(logits[2:], np.array([3])) == pytest.approx(2 / 3)  # above two of three
    assert ranking(logits, np.array([0, 0, 3])) == pytest.approx((1 + 0 + 2 / 3) / 3)
    assert ranking(np.full((2, 4), 1.0), np.array([0, 1])) == 0.0  # a tie is not above


def test_a_batchs_disagreements_are_each_windows_over_its_present_modalities():
    """What the prediction builder publishes for a whole batch at once is, window by window,
    the Jensen-Shannon divergence of the present modalities spelled out."""
    from fusiond.publish import disagreements

    def one(rows: np.ndarray) -> float:
        p = np.clip(rows.astype(np.float64), 1e-12, 1.0)
        p /= p.sum(axis=1, keepdims=True)
        h = lambda q: -(q * np.log(q)).sum(axis=-1)  # noqa: E731
        return 0.0 if len(p) < 2 else float(np.clip((h(p.mean(0)) - h(p).mean()) / np.log(len(p)), 0, 1))

    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.full(7, 0.3), (200, 4)).astype(np.float32)
    probs[:20, 0] = np.eye(7)[0]  # sure ones, with zeros to clip
    present = rng.random((200, 4)) < 0.6
    got = disagreements(probs, present)
    want = [one(probs[i][present[i]]) for i in range(200)]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert (got[present.sum(axis=1) < 2] == 0).all() and got.max() > 0.3
    # A masked modality's head is left out whatever it holds (NaN from a broken model).
    broken = probs.copy()
    broken[~present] = np.nan
    np.testing.assert_array_equal(disagreements(broken, present), got)
