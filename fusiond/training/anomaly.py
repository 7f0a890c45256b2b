"""Training and evaluating an anomaly model (``task = "anomaly"``, :mod:`fusiond.models.anomaly`).

``fusiond train`` fits the head's Gaussians on the normal training windows and sets the
threshold on the validation windows for ``[anomaly] false_alarm``. ``fusiond eval`` on
data with labels the model never saw as normal reports how well it tells them apart:

``auroc``
    The chance that a novel window scores above a normal one.
``threshold_for_1pct``
    The score 1 % of these normal windows with every modality exceed: a
    ``[model] anomaly_threshold`` set from the deployed rig's own normal data.
``detection_at_1pct``
    The share of novel windows above the score that 1 % of *these* normal windows exceed.
``false_alarm``, ``detection``
    At the model's own threshold: the share of normal windows flagged, and of novel ones.
``faults``
    Each modality of the normal windows broken in turn: ``zeros`` (a covered lens, a dead
    microphone), ``noise`` (as strong as the signal) and ``frozen`` (the first value held:
    a hung sensor). For each: how many windows are flagged, the broken modality's mean
    contribution, and how often it is the top contributor (``blamed``).
``missing``
    The false-alarm rate with each modality masked.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from fusiond.errors import ConfigError
from fusiond.models.anomaly import (
    EXACT_PATTERNS,
    NEAREST,
    SCORE,
    SHARES,
    THRESHOLD,
    fit_head,
    median_distances,
    pattern,
    stats_dim,
)
from fusiond.models.model import FusionModel
from fusiond.publish import significant
from fusiond.training.data import WindowSet
from fusiond.training.evaluate import corrupt, over_windows, with_mask

__all__ = [
    "auroc",
    "check_classes",
    "evaluate_anomaly",
    "fit_anomaly",
    "FAULTS",
    "features",
    "outputs",
    "with_fault",
]

log = logging.getLogger("fusiond.train")

FAULTS = ("zeros", "noise", "frozen")


def outputs(model: FusionModel, data: WindowSet, device: torch.device) -> np.ndarray:
    """The served anomaly output ``[N, 3 + M]`` of every window."""
    empty = (SHARES + len(data.modalities),)
    return over_windows(model, data, device, lambda inputs, mask: model.serve(inputs, mask)[0], empty)


def features(model: FusionModel, data: WindowSet, device: torch.device) -> np.ndarray:
    """Each modality's features ``[N, M, D]`` as the head measures them (float64, for the fit)."""
    assert model.anomaly is not None
    empty = (len(data.modalities), model.anomaly.means.shape[2])
    found = over_windows(model, data, device, lambda inputs, _: model.anomaly_features(inputs), empty)
    return found.astype(np.float64)


def fit_anomaly(
    model: FusionModel, train: WindowSet, val: WindowSet, false_alarm: float, device: torch.device
) -> dict[str, Any]:
    """Fit the head on ``train`` (encoders already trained, for ``embedding``) and
    calibrate it on ``val`` (``train`` when there is no validation data, which the log
    says: the threshold then lets through fewer normal windows than asked)."""
    head = model.anomaly
    assert head is not None
    spec = model.spec.modalities
    widths = [
        stats_dim(spec[m].shape) if head.method == "stats" else head.means.shape[2] for m in model.modalities
    ]
    targets = train.targets if head.method == "embedding" else np.zeros(len(train), np.int64)
    fit_head(head, features(model, train, device), train.mask, targets, widths)
    if not len(val):
        log.warning("no validation windows: the anomaly threshold is set on the training windows")
        val = train
    head.scale.copy_(torch.tensor(median_distances(head, features(model, val, device), val.mask)))
    if head.method == "embedding":  # the fused classifier's usual certainty, and its spread
        top = _top_logits(model, val, device)
        head.fused_ref.fill_(float(np.median(top)))
        head.fused_scale.fill_(max(float(np.median(top) - np.quantile(top, 0.1)), 1e-6))
    chosen, scores = _thresholds(model, val, false_alarm, device)
    return {
        "method": head.method,
        "false_alarm_target": false_alarm,
        "threshold": significant(chosen["all"]),  # as predictions carry them
        "thresholds": {name: significant(t) for name, t in chosen.items()},
        "scale": dict(zip(model.modalities, (round(float(s), 6) for s in head.scale), strict=True)),
        "validation_false_alarm": {name: _rate(s > chosen[name]) for name, s in scores.items()},
    }


def _thresholds(
    model: FusionModel, val: WindowSet, false_alarm: float, device: torch.device
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Set the head's threshold for each set of present modalities (every set up to
    :data:`EXACT_PATTERNS` modalities; above, all of them and each one missing alone, the
    others taking the highest), each from the held-out windows that have that set, the
    rest hidden. Returns the thresholds and the scores by the set's name."""
    head = model.anomaly
    assert head is not None
    count = len(val.modalities)
    if count <= EXACT_PATTERNS:
        sets = [s for s in itertools.product([False, True], repeat=count) if any(s)]
    else:
        sets = [tuple(i != j for i in range(count)) for j in range(-1, count)]
    chosen: dict[int, float] = {}
    named: dict[str, float] = {}
    scores: dict[str, np.ndarray] = {}
    for present in sets:
        keep = np.array(present)
        rows = np.flatnonzero((val.mask | ~keep).all(axis=1))  # windows that have this set
        if not len(rows):
            continue
        data = val.take(rows)
        data = WindowSet(data.modalities, data.inputs, data.mask & keep, data.targets, data.groups)
        name = _set_name(val.modalities, keep)
        scores[name] = outputs(model, data, device)[:, SCORE]
        named[name] = float(np.quantile(scores[name], 1 - false_alarm, method="higher"))
        chosen[int(pattern(torch.from_numpy(keep)[None]))] = named[name]
    if not chosen:
        msg = "no validation window to set the anomaly thresholds on"
        raise ValueError(msg)
    table = torch.full_like(head.thresholds, max(chosen.values()))
    for bits, level in chosen.items():
        table[bits] = level
    head.thresholds.copy_(table)
    named.setdefault("all", max(chosen.values()))
    return named, scores


def _set_name(modalities: Sequence[str], keep: np.ndarray) -> str:
    """``all``, ``without X`` or ``only X+Y``."""
    if keep.all():
        return "all"
    if keep.sum() == len(keep) - 1:
        return f"without {modalities[int(np.flatnonzero(~keep)[0])]}"
    return "only " + "+".join(m for m, k in zip(modalities, keep, strict=True) if k)


def _top_logits(model: FusionModel, data: WindowSet, device: torch.device) -> np.ndarray:
    return over_windows(model, data, device, lambda inputs, mask: model(inputs, mask).amax(dim=1), ())


def check_classes(method: str, classes: Sequence[str], targets: np.ndarray) -> None:
    """The embedding method needs two or more normal classes to train its encoders to
    tell apart, each with training windows (one without would be a Gaussian at zero). The
    stats method pools every normal window."""
    if method != "embedding":
        return
    empty = [c for i, c in enumerate(classes) if not (targets == i).any()]
    if empty:
        msg = (
            f"normal classes {empty} have no training windows: drop them from classes, or label data for them"
        )
        raise ConfigError(msg, path="classes")
    if len(classes) < 2:
        found = ", ".join(repr(c) for c in classes) or "none"
        msg = (
            f"method 'embedding' trains its encoders on two or more normal classes (the data "
            f"has {found}): label the normal data's operating modes, or use method = 'stats'"
        )
        raise ConfigError(msg, path="anomaly.method")


def auroc(normal: np.ndarray, novel: np.ndarray) -> float | None:
    """The chance that a novel score is above a normal one (ties count half); None
    without both."""
    if not len(normal) or not len(novel):
        return None
    both = np.concatenate([normal, novel])
    order = both.argsort(kind="mergesort")
    ranks = np.empty(len(both))
    sorted_scores = both[order]
    i = 0
    while i < len(both):  # average ranks over ties
        j = i
        while j + 1 < len(both) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    above = ranks[len(normal) :].sum() - len(novel) * (len(novel) + 1) / 2
    return float(above / (len(normal) * len(novel)))


def with_fault(data: WindowSet, model: FusionModel, modality: str, fault: str, seed: int = 0) -> WindowSet:
    """The windows with one modality broken: ``zeros``, ``noise`` or ``frozen`` (its first
    step held for the whole window; a modality with no time axis is returned unchanged)."""
    spec = model.spec.modalities[modality]
    if fault == "noise":
        return corrupt(data, model.spec, modality, seed)
    arrays = dict(data.inputs)
    x = data.inputs[modality]
    if fault == "zeros":
        arrays[modality] = np.zeros_like(x)
    elif x.ndim >= 3 and not spec.kind_of.vocabulary:
        arrays[modality] = np.repeat(x[:, :1], x.shape[1], axis=1)
    return WindowSet(data.modalities, arrays, data.mask, data.targets, data.groups)


def evaluate_anomaly(
    model: FusionModel,
    data: WindowSet,
    labels: Sequence[str],
    device: torch.device,
    threshold: float | None = None,
    *,
    robustness: bool = True,
) -> dict[str, Any]:
    """The score sheet of an anomaly model on windows labelled by ``labels`` (the names of
    ``data.targets``): those among the model's classes are normal, the others novel.
    ``threshold``: one for every window instead of the model's own."""
    if len(data) == 0:
        msg = "no labelled windows to evaluate on"
        raise ValueError(msg)
    normal_names = set(model.classes)
    novel_rows = np.array([labels[t] not in normal_names for t in data.targets], bool)
    out = outputs(model, data, device)
    score, flags = out[:, SCORE], _flags(out, threshold)
    normal, novel = score[~novel_rows], score[novel_rows]
    result: dict[str, Any] = {
        "task": "anomaly",
        "method": model.anomaly.method if model.anomaly is not None else "",
        "windows": len(data),
        "normal": int((~novel_rows).sum()),
        "novel": int(novel_rows.sum()),
        "threshold": round(float(threshold if threshold is not None else _own(model)), 6),
        "false_alarm": _rate(flags[~novel_rows]),
        "detection": _rate(flags[novel_rows]),
        "auroc": _round(auroc(normal, novel)),
    }
    complete = ~novel_rows & data.mask.all(axis=1)
    if complete.any():  # what [model] anomaly_threshold would be for 1 % of these normal windows
        result["threshold_for_1pct"] = _up(float(np.quantile(score[complete], 0.99, method="higher")))
    if len(normal) and len(novel):
        at_1pct = float(np.quantile(normal, 0.99, method="higher"))
        result["detection_at_1pct"] = _rate(novel > at_1pct)
        result["per_label"] = {
            labels[t]: _rate(flags[data.targets == t]) for t in sorted(set(data.targets[novel_rows].tolist()))
        }
    if model.anomaly is not None and model.anomaly.method == "embedding" and len(normal):
        nearest = out[~novel_rows, NEAREST].astype(int)
        truth = [model.classes.index(labels[t]) for t in data.targets[~novel_rows]]
        result["nearest_is_label"] = _rate(nearest == np.array(truth))
    if robustness and (~novel_rows).any():
        clean = data.take(np.flatnonzero(~novel_rows))
        result["faults"] = _faults(model, clean, device, threshold)
        if len(data.modalities) > 1:
            result["missing"] = {}
            for i, name in enumerate(data.modalities):
                keep = np.ones(len(data.modalities), bool)
                keep[i] = False
                hidden = with_mask(clean, keep)
                kept = hidden.mask.any(axis=1)
                out_hidden = outputs(model, hidden.take(np.flatnonzero(kept)), device)
                result["missing"][name] = _rate(_flags(out_hidden, threshold))
    return result


def _up(x: float) -> float:
    """``x`` to 6 significant digits, rounded up: as a threshold, it flags no more than ``x``."""
    rounded = significant(x)
    return rounded if rounded >= x else significant(x * (1 + 1e-6))


def _own(model: FusionModel) -> float:
    """The model's threshold for a window with every modality."""
    assert model.anomaly is not None
    return float(model.anomaly.thresholds[0])


def _flags(out: np.ndarray, threshold: float | None) -> np.ndarray:
    """Which windows are anomalies: over ``threshold``, else over their own."""
    flags: np.ndarray = out[:, SCORE] > (out[:, THRESHOLD] if threshold is None else threshold)
    return flags


def _faults(
    model: FusionModel, clean: WindowSet, device: torch.device, threshold: float | None
) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for i, name in enumerate(clean.modalities):
        rows = np.flatnonzero(clean.mask[:, i])
        if not len(rows):
            continue
        here = clean.take(rows)
        for fault in FAULTS:
            broken = with_fault(here, model, name, fault)
            if broken.inputs[name] is here.inputs[name] or np.array_equal(
                broken.inputs[name], here.inputs[name]
            ):
                continue
            out = outputs(model, broken, device)
            flagged = _flags(out, threshold)
            share = out[:, SHARES + i]
            top = out[:, SHARES:].argmax(axis=1) == i
            table.setdefault(name, {})[fault] = {
                "detection": _rate(flagged),
                "contribution": round(float(share.mean()), 4),
                "blamed": _rate(top[flagged]) if flagged.any() else None,
            }
    return table


def _rate(flags: np.ndarray) -> float | None:
    return round(float(flags.mean()), 4) if len(flags) else None


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)
