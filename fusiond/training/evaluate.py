"""Scores of a model on labelled windows: what ``fusiond eval`` prints.

Classification: ``accuracy``, ``macro_f1``, ``per_class`` (precision, recall, F1,
support), ``confusion`` (rows true, columns predicted). Regression: ``mae``, ``rmse``
and ``r2`` per target. Both: ``ablation`` (the headline score with each modality
removed), ``only`` (with only that modality) and ``noisy`` (with that modality corrupted
by Gaussian noise as strong as the signal, 0 dB SNR). Classification also: ``swapped``
(that modality taken from a window of another class) and, for a model with modality
heads, ``heads`` (each head's own accuracy where its modality is present) and
``heads_ranking`` (how often each head scores the true class above a given wrong one).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fusiond.align.spec import InputSpec
from fusiond.models.model import FusionModel
from fusiond.training.data import WindowSet
from fusiond.training.loop import batches, to_device

__all__ = [
    "calibrate",
    "classification_scores",
    "confusion_png",
    "corrupt",
    "evaluate",
    "headline",
    "modality_logits",
    "over_windows",
    "predict",
    "ranking",
    "regression_scores",
    "swapped",
    "with_mask",
]


def over_windows(
    model: FusionModel,
    data: WindowSet,
    device: torch.device,
    step: Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor],
    empty: tuple[int, ...],
    batch_size: int = 256,
) -> np.ndarray:
    """``step(inputs, mask)`` on every window, a batch at a time, in eval mode and without
    gradients, as one float array (``empty``: its shape past the first axis when ``data``
    has no windows)."""
    model.eval().to(device)
    out = []
    with torch.inference_mode():
        for index in batches(data, batch_size):
            inputs, mask = to_device(data, index, device)
            out.append(step(inputs, mask).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, *empty), np.float32)


def predict(model: FusionModel, data: WindowSet, device: torch.device, batch_size: int = 256) -> np.ndarray:
    """Model outputs [N, K] (probabilities, or values for a regressor)."""

    def step(inputs: dict[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        y = model(inputs, mask).float()
        return y if model.task == "regression" else torch.softmax(y, dim=1)

    return over_windows(model, data, device, step, (len(model.classes),), batch_size)


def modality_logits(
    model: FusionModel, data: WindowSet, device: torch.device, batch_size: int = 256
) -> np.ndarray:
    """Each modality head's calibrated logits [N, M, K] (a model with modality heads)."""

    def step(inputs: dict[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        own = model.forward_all(inputs, mask)[1]
        assert own is not None
        return own

    return over_windows(model, data, device, step, (len(data.modalities), len(model.classes)), batch_size)


def calibrate(model: FusionModel, data: WindowSet, device: torch.device) -> dict[str, float]:
    """Fit each modality head's temperature on ``data`` (temperature scaling: the one
    divisor of its logits that minimises the negative log-likelihood of the windows where
    that modality is present), so that one modality's 0.9 means what another's does.
    Returns ``modality -> temperature`` (1.0 where there is nothing to fit on)."""
    if not model.has_heads:
        return {}
    model.temperature.fill_(1.0)
    if len(data) == 0:
        return dict.fromkeys(model.modalities, 1.0)
    logits = modality_logits(model, data, device).astype(np.float64)
    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 241))
    found = {}
    for i, name in enumerate(model.modalities):
        rows = data.mask[:, i]
        if not rows.any():
            found[name] = 1.0
            continue
        z, y = logits[rows, i], data.targets[rows]
        nll = [_nll(z / t, y) for t in grid]
        found[name] = float(grid[int(np.argmin(nll))])
    model.temperature.copy_(torch.tensor([found[m] for m in model.modalities]))
    return {m: round(t, 4) for m, t in found.items()}


def _nll(z: np.ndarray, y: np.ndarray) -> float:
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(y)), y].mean())


def headline(model: FusionModel, data: WindowSet, device: torch.device) -> float:
    """Accuracy, or minus the mean absolute error: higher is better either way."""
    out = predict(model, data, device)
    if model.task == "regression":
        return -float(np.abs(out - data.targets).mean())
    return float((out.argmax(1) == data.targets).mean())


def classification_scores(probs: np.ndarray, targets: np.ndarray, classes: list[str]) -> dict[str, Any]:
    k = len(classes)
    confusion = np.zeros((k, k), np.int64)
    np.add.at(confusion, (targets, probs.argmax(1)), 1)
    tp = np.diag(confusion).astype(float)
    support = confusion.sum(1)
    predicted = confusion.sum(0)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(k), where=precision + recall > 0)
    seen = support > 0
    return {
        "accuracy": float(tp.sum() / max(1, support.sum())),
        "macro_f1": float(f1[seen].mean()) if seen.any() else 0.0,
        "per_class": {
            c: {
                "precision": round(float(precision[i]), 4),
                "recall": round(float(recall[i]), 4),
                "f1": round(float(f1[i]), 4),
                "support": int(support[i]),
            }
            for i, c in enumerate(classes)
        },
        "confusion": confusion.tolist(),
    }


def regression_scores(values: np.ndarray, targets: np.ndarray, names: list[str]) -> dict[str, Any]:
    err = values - targets
    var = targets.var(axis=0)
    r2 = 1 - (err**2).mean(axis=0) / np.where(var > 0, var, 1)
    return {
        "mae": float(np.abs(err).mean()),
        "rmse": float(np.sqrt((err**2).mean())),
        "per_target": {
            n: {"mae": float(np.abs(err[:, i]).mean()), "r2": float(r2[i])} for i, n in enumerate(names)
        },
    }


def corrupt(data: WindowSet, spec: InputSpec, modality: str, seed: int = 0) -> WindowSet:
    """The windows with one modality corrupted by its kind (Gaussian noise as strong as the
    signal, 0 dB SNR, for numbers and images; random words for text)."""
    rng = np.random.default_rng(seed)
    out = WindowSet(data.modalities, dict(data.inputs), data.mask, data.targets, data.groups)
    one = spec.modalities[modality]
    out.inputs[modality] = one.kind_of.corrupt(one, data.inputs[modality], rng)
    return out


def swapped(data: WindowSet, modality: str, seed: int = 0) -> WindowSet:
    """The windows with one modality taken from a window of another class (where that
    modality is present), labels kept: a sensor that is confidently wrong."""
    rng = np.random.default_rng(seed)
    i = data.modalities.index(modality)
    out = WindowSet(data.modalities, dict(data.inputs), data.mask.copy(), data.targets, data.groups)
    have = np.flatnonzero(data.mask[:, i])
    if not len(have):
        return out
    donors = np.arange(len(data))
    for row in range(len(data)):
        others = have[data.targets[have] != data.targets[row]]
        if len(others):
            donors[row] = others[rng.integers(len(others))]
    out.inputs[modality] = data.inputs[modality][donors]
    out.mask[:, i] = data.mask[donors, i]
    return out


def with_mask(data: WindowSet, keep: np.ndarray) -> WindowSet:
    """The windows with modalities hidden where ``keep`` [M] is False."""
    return WindowSet(data.modalities, data.inputs, data.mask & keep[None, :], data.targets, data.groups)


def evaluate(
    model: FusionModel, data: WindowSet, device: torch.device, *, robustness: bool = True
) -> dict[str, Any]:
    """The full score sheet of a model on a window set."""
    if len(data) == 0:
        msg = "no labelled windows to evaluate on"
        raise ValueError(msg)
    out = predict(model, data, device)
    if model.task == "regression":
        result = regression_scores(out, data.targets, model.classes)
    else:
        result = classification_scores(out, data.targets, model.classes)
    result["windows"] = len(data)
    result["task"] = model.task
    if robustness and len(data.modalities) > 1:
        key = "mae" if model.task == "regression" else "accuracy"
        sign = -1 if model.task == "regression" else 1
        m = len(data.modalities)
        result["ablation"], result["only"], result["noisy"] = {}, {}, {}
        if model.task == "classification":
            result["swapped"] = {}
        for i, name in enumerate(data.modalities):
            keep = np.ones(m, bool)
            keep[i] = False
            result["ablation"][name] = round(sign * headline(model, with_mask(data, keep), device), 4)
            result["only"][name] = round(sign * headline(model, with_mask(data, ~keep), device), 4)
            noisy = corrupt(data, model.spec, name)
            result["noisy"][name] = round(sign * headline(model, noisy, device), 4)
            if "swapped" in result:
                result["swapped"][name] = round(headline(model, swapped(data, name), device), 4)
        result["score"] = key
    if model.has_heads and len(data) and model.task == "classification":
        logits = modality_logits(model, data, device)
        result["heads"], result["heads_ranking"] = {}, {}
        for i, name in enumerate(data.modalities):
            rows = data.mask[:, i]
            if rows.any():
                z, y = logits[rows, i], data.targets[rows]
                result["heads"][name] = round(float((z.argmax(axis=1) == y).mean()), 4)
                result["heads_ranking"][name] = round(ranking(z, y), 4)
    return result


def ranking(logits: np.ndarray, targets: np.ndarray) -> float:
    """How often the true class scores above a given wrong one: the mean, over windows
    and over the wrong classes, of ``logits[true] > logits[wrong]``. When two other
    sensors disagree, this is how often this one sides with the right one."""
    k = logits.shape[1]
    if k < 2 or not len(logits):
        return 0.0
    true = logits[np.arange(len(targets)), targets][:, None]
    above = (true > logits).sum(axis=1)  # the true class is never above itself
    return float(above.mean() / (k - 1))


def confusion_png(confusion: list[list[int]], classes: list[str], path: Path) -> None:
    """Draw the confusion matrix (rows true, columns predicted, shade = row share)."""
    import cv2

    matrix = np.array(confusion, float)
    k = len(classes)
    cell, margin = 48, 80
    size = margin + k * cell + 10
    image = np.full((size, size, 3), 255, np.uint8)
    rows = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    for i in range(k):
        for j in range(k):
            x, y = margin + j * cell, margin + i * cell
            shade = int(255 * (1 - rows[i, j]))
            color = (255, shade, shade) if i == j else (shade, shade, 255)
            cv2.rectangle(image, (x, y), (x + cell - 1, y + cell - 1), color, -1)
            text = str(int(matrix[i, j]))
            ink = (255, 255, 255) if rows[i, j] > 0.6 else (0, 0, 0)
            cv2.putText(image, text, (x + 4, y + cell // 2 + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.45, ink, 1)
        cv2.putText(
            image,
            classes[i][:6],
            (4, margin + i * cell + cell // 2 + 5),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.45,
            (0, 0, 0),
            1,
        )
        cv2.putText(
            image,
            classes[i][:4],
            (margin + i * cell + 4, margin - 8),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.45,
            (0, 0, 0),
            1,
        )
    cv2.putText(image, "true \\ predicted", (4, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
    if not cv2.imwrite(str(path), image):
        msg = f"cannot write {path}"
        raise OSError(msg)
