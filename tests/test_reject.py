"""The reject option: thresholds chosen for a target accuracy, and the label withheld."""

from __future__ import annotations

import numpy as np
import pytest

from fusiond.align.windows import Window
from fusiond.models.runner import BatchResult
from fusiond.publish import UNKNOWN, PredictionBuilder, reject_thresholds
from fusiond.training.reject import CURVE, choose, curve


def test_the_chosen_thresholds_keep_the_most_windows_that_are_right_often_enough():
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.3, 1.0, 2000)
    right = rng.uniform(0, 1, 2000) < confidence  # surer windows are right more often
    spread = np.where(rng.uniform(0, 1, 2000) < 0.1, 0.9, 0.05)
    right[spread > 0.5] = False  # windows whose modalities disagree are wrong
    chosen = choose(confidence, spread, right, target=0.9)
    kept = (confidence >= chosen["confidence"]) & (spread <= chosen["disagreement"])
    assert (
        chosen["reached"]
        and right[kept].mean() >= 0.9
        and chosen["coverage"] == pytest.approx(kept.mean(), abs=1e-4)
    )
    assert chosen["disagreement"] < 0.9  # the disagreeing windows go
    # No other pair on the grid keeps more at the target.
    for c in np.linspace(0, 1, 41):
        for d in (0.05, 1.0):
            other = (confidence >= c) & (spread <= d)
            if other.any() and right[other].mean() >= 0.9:
                assert other.mean() <= chosen["coverage"] + 1e-9
    impossible = choose(confidence, spread, np.zeros(2000, bool) | (confidence > 0.999), target=1.0)
    assert not impossible["reached"]  # the most accurate pair instead, said so
    rows = curve(confidence, spread, right)
    assert [r["confidence"] for r in rows] == list(CURVE) and rows[0]["coverage"] == 1.0
    with pytest.raises(ValueError, match="no windows"):
        choose(confidence[:0], spread[:0], right[:0], 0.9)


def _result(probs: list[list[float]], own: list[list[list[float]]] | None) -> BatchResult:
    windows = [
        Window("r", i, i * 10**9, (i + 1) * 10**9, {}, {"a": True, "b": True}, "watermark", 0, 0, 10**9)
        for i in range(len(probs))
    ]
    p = np.array(probs, np.float32)
    return BatchResult(windows, p, p.argmax(1), 0, 1, None if own is None else np.array(own, np.float32))


def test_a_window_unsure_or_torn_between_its_modalities_is_published_as_unknown_with_its_scores():
    builder = PredictionBuilder(["x", "y"], {"name": "m"}, reject=(0.8, 0.5))
    agree, torn = [[0.9, 0.1], [0.9, 0.1]], [[0.99, 0.01], [0.01, 0.99]]
    sure, unsure, split = builder.build(
        _result([[0.9, 0.1], [0.6, 0.4], [0.85, 0.15]], [agree, agree, torn]), 5
    )
    assert sure.label == "x" and "rejected" not in sure.extra
    assert (
        unsure.label == UNKNOWN and unsure.extra["rejected"] == "confidence" and unsure.extra["best"] == "x"
    )
    assert unsure.scores == pytest.approx([0.6, 0.4])  # the scores are kept
    assert (
        split.label == UNKNOWN
        and split.extra["rejected"] == "disagreement"
        and split.extra["disagreement"] > 0.5
    )
    plain = PredictionBuilder(["x", "y"], {"name": "m"}).build(_result([[0.6, 0.4]], None), 5)[0]
    assert plain.label == "x"  # off: every window's label as is
    values = PredictionBuilder(["v"], {"name": "m"}, "regression", reject=(0.9, 0.0)).build(
        _result([[0.1]], None), 5
    )
    assert values[0].label == "" and "rejected" not in values[0].extra


def test_thresholds_come_from_the_config_else_from_training_and_none_is_an_error():
    trained = {"reject": {"confidence": 0.7, "disagreement": 0.4}}
    assert reject_thresholds(trained, False, None, None) is None
    assert reject_thresholds(trained, True, None, None) == (0.7, 0.4)
    assert reject_thresholds(trained, True, 0.9, None) == (0.9, 0.4)
    assert reject_thresholds({}, True, 0.5, None) == (0.5, 1.0)
    with pytest.raises(ValueError, match="reject_confidence"):
        reject_thresholds({}, True, None, 0.3)
