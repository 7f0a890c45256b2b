"""Anomaly scores: how unlike the normal training data a window is, and which sensor says so.

A model of ``task = "anomaly"`` is trained on normal data only. Each modality's window is
turned into a feature vector, and its squared Mahalanobis distance to the normal data is
measured:

``embedding``
    The features are the modality's encoder output. With two or more normal classes, the
    encoders are first trained to tell those classes apart (a classifier, as for
    ``task = "classification"``); each class then has its mean per modality, with one
    covariance per modality shared by the classes. A window's score is its distance to the
    *one* class that fits all its present modalities best, so a window whose camera says
    "3" and whose microphone says "5" is unusual even when each sensor alone looks normal.
``stats``
    The baseline: per channel, the mean, the spread and the mean step between neighbouring
    values of the raw input (no training). One Gaussian per modality with a diagonal
    covariance: it catches a covered lens, a dead microphone or a frozen IMU, not a
    new gesture.

Each modality's distance is divided by its median on held-out normal windows, so the
modalities weigh the same, and the window's score is the mean of its present modalities'
ratios: about 1 for a typical normal window, whatever is missing. With ``embedding`` the
fused classifier adds its own doubt: how far its top logit falls below its median on
held-out normal windows, in units of the normal spread (0 when it is as sure as usual).
A new class often looks normal to each sensor but leaves the fusion unsure of every
class it knows (digits 8 and 9 against a model of 0-7 trained with noise and swaps:
AUROC 0.932 without this term, 0.964 with it; ``bench/bench_anomaly.py --noise-swap``).

The threshold is the score's ``1 - false_alarm`` quantile on held-out normal windows:
a threshold means a false-alarm rate. The score's spread depends on what is present (one
modality's ratio spreads more than the mean of three), so each set of present modalities
has its own, chosen on the held-out windows with the others hidden. A modality's *contribution* is
its share of the modalities' part of the score: the sensor that looks wrong.

The head is a module with buffers only: it exports to ONNX with the rest of the model and
runs under every runtime. Its output per window is ``[score, nearest class, threshold,
contribution of each modality...]`` (:data:`SCORE`, :data:`NEAREST`, :data:`THRESHOLD`, then
one column per modality from :data:`SHARES`); the nearest class is -1 for ``stats``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from fusiond.models.card import NEAREST, SCORE, SHARES, THRESHOLD

__all__ = [
    "AnomalyHead",
    "EXACT_PATTERNS",
    "FAR",
    "features_of",
    "fit_head",
    "MAX_MODALITIES",
    "median_distances",
    "pattern",
    "METHODS",
    "NEAREST",
    "SCORE",
    "SHARES",
    "THRESHOLD",
    "stats_dim",
    "stats_features",
]

METHODS = ("embedding", "stats")
STATS = 3
"""Statistics per channel of the ``stats`` method: mean, spread, mean step."""
MAX_MODALITIES = 16
"""An anomaly model's inputs at most: it keeps a threshold for each set of them."""
EXACT_PATTERNS = 6
"""Up to this many modalities, every set of them gets a threshold of its own; above, every
modality and each one missing alone do, and the others take the highest."""
FAR = 1e30
"""A modality's distance at most (what overflows, or is NaN, is this far)."""
SHRINK = 0.1
"""Share of a covariance replaced by its mean variance before it is inverted: a few
hundred windows do not pin down 64 x 64 covariances, and a singular one would make every
unseen direction infinitely far."""


def stats_dim(shape: Sequence[int]) -> int:
    """Features of the ``stats`` method for an input of one window's ``shape``."""
    return STATS * int(shape[-1])


def stats_features(x: torch.Tensor) -> torch.Tensor:
    """``[B, 3 * C]``: per channel (the last axis) the mean, the spread and the mean absolute
    step between neighbouring values, over every other axis (time, and space for images)."""
    values = x.float().reshape(x.shape[0], -1, x.shape[-1])
    mean = values.mean(dim=1)
    spread = (values - mean[:, None]).square().mean(dim=1).sqrt()
    if values.shape[1] > 1:
        step = (values[:, 1:] - values[:, :-1]).abs().mean(dim=1)
    else:
        step = torch.zeros_like(mean)
    return torch.cat([mean, spread, step], dim=1)


class AnomalyHead(nn.Module):
    """Per-modality Gaussians of the normal features, and the calibration of their distances.

    Buffers: ``means [M, C, D]`` (C normal classes, 1 for ``stats``), ``precision [M, D, D]``,
    ``scale [M]`` (each modality's median distance on held-out normal windows),
    ``fused_ref`` and ``fused_scale`` (the fused classifier's median top logit on them, and
    how far its 10 % least sure lie below it) and ``thresholds [2 ** M]``: one for each
    set of present modalities, indexed by its bits (modality ``i`` present: bit ``i``).
    A modality with fewer than D features is padded with zeros that its precision ignores.
    """

    means: torch.Tensor
    precision: torch.Tensor
    scale: torch.Tensor
    thresholds: torch.Tensor
    fused_ref: torch.Tensor
    fused_scale: torch.Tensor

    def __init__(self, method: str, modalities: int, classes: int, dim: int) -> None:
        super().__init__()
        if method not in METHODS:
            msg = f"unknown anomaly method {method!r}; known: {list(METHODS)}"
            raise ValueError(msg)
        self.method = method
        self.register_buffer("means", torch.zeros(modalities, classes, dim))
        self.register_buffer("precision", torch.eye(dim).repeat(modalities, 1, 1))
        self.register_buffer("scale", torch.ones(modalities))
        if modalities > MAX_MODALITIES:
            msg = f"an anomaly model takes at most {MAX_MODALITIES} modalities, not {modalities}"
            raise ValueError(msg)
        self.register_buffer("thresholds", torch.ones(2**modalities))
        self.register_buffer("fused_ref", torch.zeros(()))
        self.register_buffer("fused_scale", torch.ones(()))

    def distances(self, features: torch.Tensor) -> torch.Tensor:
        """``[B, M, C]`` squared Mahalanobis distances of ``features [B, M, D]``."""
        diff = features.float()[:, :, None, :] - self.means[None]  # [B, M, C, D]
        return (diff @ self.precision[None] * diff).sum(dim=-1)

    def forward(
        self, features: torch.Tensor, mask: torch.Tensor, logits: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``[B, 3 + M]``: score, nearest class, threshold, each modality's contribution (0 where
        missing). ``logits``: the fused classifier's (``embedding``), whose top value adds
        how much less sure of any normal class the fusion is than on normal windows."""
        present = mask.float()
        per = self.distances(features) / self.scale[None, :, None]  # [B, M, C]
        # A sensor that sends absurd values (overflowing, or NaN) is as far as can be: it
        # takes the whole share, and a missing one (x 0) adds nothing.
        per = torch.where(per == per, per, torch.full_like(per, FAR)).clamp(0.0, FAR)
        total = (per * present[:, :, None]).sum(dim=1)  # [B, C]
        nearest = total.argmin(dim=1)
        index = nearest[:, None, None].expand(-1, per.shape[1], 1)
        own = per.gather(2, index).squeeze(2) * present  # [B, M]: at the nearest class
        score = own.sum(dim=1) / present.sum(dim=1).clamp_min(1.0)
        if logits is not None:
            unsure = (self.fused_ref - logits.float().amax(dim=1)) / self.fused_scale
            score = score + unsure.clamp_min(0.0)
        share = own / own.sum(dim=1, keepdim=True).clamp_min(1e-12)
        # The stats method has one Gaussian for every normal class: no class is nearest.
        near = (
            nearest[:, None].float() if self.method == "embedding" else torch.full_like(score[:, None], -1.0)
        )
        return torch.cat([score[:, None], near, self.threshold(mask)[:, None], share], dim=1)

    def threshold(self, mask: torch.Tensor) -> torch.Tensor:
        """``[B]``: each window's threshold, for the modalities it has."""
        return self.thresholds[pattern(mask)]


def pattern(mask: torch.Tensor) -> torch.Tensor:
    """``[B]`` the index of each row's set of present modalities: bit ``i`` for modality ``i``."""
    bits = torch.pow(2, torch.arange(mask.shape[1], device=mask.device))
    return (mask.long() * bits).sum(dim=1)


def _pad(features: Sequence[np.ndarray], dim: int) -> np.ndarray:
    """``[N, M, dim]`` from one ``[N, D_m]`` array per modality, zero-padded."""
    out = np.zeros((len(features[0]), len(features), dim), np.float64)
    for i, f in enumerate(features):
        out[:, i, : f.shape[1]] = f
    return out


def fit_head(
    head: AnomalyHead,
    train: np.ndarray,
    train_mask: np.ndarray,
    targets: np.ndarray,
    widths: Sequence[int],
) -> None:
    """Fit the Gaussians on normal training features ``[N, M, D]`` (``widths``: how many of
    the D features each modality really has; ``targets``: class indices, all 0 for one
    class). A modality never present in training keeps zero means and the identity: a
    fit without data, which the model never meets unless it is served such data."""
    classes, dim = head.means.shape[1], head.means.shape[2]
    means = np.zeros((len(widths), classes, dim))
    precision = np.zeros((len(widths), dim, dim))
    for m, width in enumerate(widths):
        here = train_mask[:, m]
        if not here.any():
            precision[m] = np.eye(dim)
            continue
        x, y = train[here, m, :width], targets[here]
        centred = np.empty_like(x)
        for c in range(classes):
            rows = y == c
            if rows.any():
                means[m, c, :width] = x[rows].mean(axis=0)
                centred[rows] = x[rows] - means[m, c, :width]
        if head.method == "stats":  # diagonal: the statistics are on different scales
            var = centred.var(axis=0)
            floor = 1e-6 * (np.abs(means[m, :, :width]).max(axis=0) ** 2 + var.mean() + 1e-12)
            precision[m, :width, :width] = np.diag(1.0 / np.maximum(var, floor))
            continue
        cov = centred.T @ centred / max(1, len(x) - 1)
        target = np.trace(cov) / width * np.eye(width)
        shrunk = (1 - SHRINK) * cov + SHRINK * target + 1e-9 * np.eye(width)
        precision[m, :width, :width] = np.linalg.pinv(shrunk, hermitian=True)
    head.means.copy_(torch.from_numpy(means).float())
    head.precision.copy_(torch.from_numpy(precision).float())


def median_distances(head: AnomalyHead, features: np.ndarray, mask: np.ndarray) -> list[float]:
    """Each modality's median distance to its nearest normal class over held-out normal
    features ``[N, M, D]`` where it is present (1.0 where it never is)."""
    with torch.inference_mode():
        per = head.distances(torch.from_numpy(features).float()).amin(dim=2).numpy()
    return [
        max(float(np.median(per[mask[:, m], m])), 1e-12) if mask[:, m].any() else 1.0
        for m in range(per.shape[1])
    ]


def features_of(
    method: str,
    encoders: nn.ModuleDict,
    modalities: Sequence[str],
    inputs: Mapping[str, torch.Tensor],
    dim: int,
) -> torch.Tensor:
    """``[B, M, dim]``: each modality's features for ``method`` (padded with zeros)."""
    if method == "embedding":
        return torch.stack([encoders[m](inputs[m]) for m in modalities], dim=1)
    rows = []
    for m in modalities:
        f = stats_features(inputs[m])
        rows.append(nn.functional.pad(f, (0, dim - f.shape[1])))
    return torch.stack(rows, dim=1)
