"""The reject option: thresholds, chosen on validation windows, under which a classifier
says ``unknown`` instead of a class.

A window is rejected when its top score is under ``confidence``, or when its modalities'
own opinions disagree by more than ``disagreement`` (:func:`fusiond.publish.disagreement`,
for models with modality heads). :func:`choose` picks the pair that keeps the most windows
(coverage) while the windows kept are right at least ``target`` of the time; the daemon
applies it with ``[model] reject = true`` (docs/models.md, "Saying unknown").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from fusiond.publish import disagreements

if TYPE_CHECKING:
    import torch

    from fusiond.models.model import FusionModel
    from fusiond.training.data import WindowSet

__all__ = ["CURVE", "choose", "curve", "keeps", "reject_inputs"]

CURVE = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
"""The confidence thresholds the coverage table reports."""


def reject_inputs(
    model: FusionModel, data: WindowSet, device: torch.device
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per window: the top score, the modalities' disagreement (0 without modality heads),
    and whether the top class is right, as the daemon would compute them."""
    from fusiond.training.evaluate import modality_logits, predict

    probs = predict(model, data, device)
    right = probs.argmax(1) == data.targets
    spread = np.zeros(len(data))
    if model.has_heads and len(data):
        logits = modality_logits(model, data, device).astype(np.float64)
        z = np.exp(logits - logits.max(axis=2, keepdims=True))
        own = z / z.sum(axis=2, keepdims=True)
        spread = disagreements(own, np.asarray(data.mask, bool))
    return probs.max(1), spread, right


def keeps(
    confidence: np.ndarray, spread: np.ndarray, right: np.ndarray, min_confidence: float, max_spread: float
) -> dict[str, Any]:
    """The share of windows two thresholds keep (``coverage``), and how many of those are
    right (``accuracy``; None when they keep none)."""
    kept = (confidence >= min_confidence) & (spread <= max_spread)
    n = int(kept.sum())
    return {
        "coverage": round(n / len(right), 4) if len(right) else 0.0,
        "accuracy": round(float(right[kept].mean()), 4) if n else None,
    }


def curve(
    confidence: np.ndarray, spread: np.ndarray, right: np.ndarray, max_spread: float = 1.0
) -> list[dict[str, Any]]:
    """Coverage and accuracy of the kept windows at each of :data:`CURVE`'s confidences."""
    return [{"confidence": c, **keeps(confidence, spread, right, c, max_spread)} for c in CURVE]


def choose(confidence: np.ndarray, spread: np.ndarray, right: np.ndarray, target: float) -> dict[str, Any]:
    """The thresholds that keep the most windows with the kept ones right at least
    ``target`` of the time (the most accurate pair when no pair reaches it)."""
    if not len(right):
        msg = "no windows to choose reject thresholds on"
        raise ValueError(msg)
    confidences = np.unique(np.concatenate([[0.0], np.quantile(confidence, np.linspace(0, 0.99, 100))]))
    spreads = np.unique(np.concatenate([[1.0], np.quantile(spread, np.linspace(0.5, 1.0, 21))]))
    best: tuple[float, float, float, float] | None = None  # (coverage, accuracy, c, d)
    fallback: tuple[float, float, float, float] | None = None  # (accuracy, coverage, c, d)
    for c in confidences:
        for d in spreads:
            kept = (confidence >= c) & (spread <= d)
            n = int(kept.sum())
            if n == 0:
                continue
            accuracy, coverage = float(right[kept].mean()), n / len(right)
            if accuracy >= target and (best is None or (coverage, accuracy) > best[:2]):
                best = (coverage, accuracy, float(c), float(d))
            if fallback is None or (accuracy, coverage) > fallback[:2]:
                fallback = (accuracy, coverage, float(c), float(d))
    if best is not None:
        coverage, accuracy, c, d = best
    else:
        assert fallback is not None
        accuracy, coverage, c, d = fallback
    return {
        "confidence": round(c, 4),
        "disagreement": round(d, 4),
        "target": target,
        "reached": best is not None,
        "coverage": round(coverage, 4),
        "accuracy": round(accuracy, 4),
        "windows": len(right),
    }
