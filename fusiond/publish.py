"""Turn a scored batch into prediction messages (pure code, clock passed in)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from fusiond.align.windows import Window
from fusiond.bus.wire import Prediction
from fusiond.models.card import NEAREST, SCORE, SHARES, THRESHOLD
from fusiond.models.runner import BatchResult

__all__ = [
    "ANOMALY",
    "disagreement",
    "disagreements",
    "NORMAL",
    "PredictionBuilder",
    "reject_thresholds",
    "UNKNOWN",
    "significant",
]

UNKNOWN = "unknown"
"""The label of a rejected window (``[model] reject``)."""
ANOMALY, NORMAL = "anomaly", "normal"
"""The labels of an anomaly model's windows."""


def reject_thresholds(
    metrics: dict[str, Any], enabled: bool, confidence: float | None, spread: float | None
) -> tuple[float, float] | None:
    """``(min confidence, max disagreement)`` of ``[model] reject``: the config's, else
    the ones training chose (``metrics["reject"]``); None when off. ValueError when on
    with neither."""
    if not enabled:
        return None
    chosen = metrics.get("reject") or {}
    c = confidence if confidence is not None else chosen.get("confidence")
    d = spread if spread is not None else chosen.get("disagreement", 1.0)
    if not isinstance(c, int | float) or not isinstance(d, int | float):
        msg = (
            "reject = true, but the model carries no reject thresholds (trained before they "
            "existed): set model.reject_confidence (fusiond eval MODEL --data DATA prints the "
            "coverage each gives)"
        )
        raise ValueError(msg)
    return float(c), float(d)


class PredictionBuilder:
    """Numbers each rig's predictions and fills in the latency breakdown."""

    def __init__(
        self,
        classes: list[str],
        model: dict[str, str],
        task: str = "classification",
        seq: Counter[str] | None = None,
        reject: tuple[float, float] | None = None,
        threshold: float | None = None,
    ) -> None:
        """``seq`` carries each rig's next number over from the builder this one replaces,
        so a reload does not start the count again (docs/protocol.md: per-rig, since start).
        ``reject``: the smallest top score and the largest disagreement a label is
        published with; past them it is ``unknown``. ``threshold``: an anomaly model's for
        every window (``[model] anomaly_threshold``) instead of its own."""
        self.reject = reject if task == "classification" else None
        self.anomaly = task == "anomaly"
        self.threshold = threshold
        self.classes = classes
        self.model = model
        # A regressor's message carries its values in ``scores`` (one per name in
        # ``classes``), an empty label and ``task: "regression"`` (docs/protocol.md).
        self.regression = task == "regression"
        self._seq: Counter[str] = seq if seq is not None else Counter()

    def build(self, result: BatchResult, t_pub_ns: int) -> list[Prediction]:
        """One prediction per window of the batch."""
        scores = result.probs.astype(float).round(5).tolist()
        infer_ns = result.t_end_ns - result.t_start_ns
        heads = self._heads(result) if result.modality_probs is not None else None
        out = []
        rows = zip(result.windows, result.labels.tolist(), scores, strict=True)
        for i, (window, label, row) in enumerate(rows):
            seq = self._seq[window.rig]
            self._seq[window.rig] += 1
            said = self._modalities(window, heads[0][i], heads[1][i], heads[2][i]) if heads else {}
            if self.anomaly:
                said = self._anomaly(window, result.probs[i])
                name, classes, row = said.pop("label"), [NORMAL, ANOMALY], said.pop("scores")
            else:
                name, classes = "" if self.regression else self.classes[label], self.classes
            rejected = self._rejected(row, said)
            out.append(
                Prediction(
                    rig=window.rig,
                    seq=seq,
                    window_start_ns=window.start_ns,
                    window_end_ns=window.end_ns,
                    label=UNKNOWN if rejected else name,
                    classes=classes,
                    scores=row,
                    present=[m for m, ok in window.present.items() if ok],
                    missing=window.missing,
                    model=self.model,
                    latency_ns={
                        "capture_to_ingest": window.capture_to_ingest_ns,
                        "close_to_infer": result.t_start_ns - window.t_close_ns,
                        "infer": infer_ns,
                        "publish": t_pub_ns - result.t_end_ns,
                        "close_to_publish": t_pub_ns - window.t_close_ns,
                        "end_to_publish": t_pub_ns - window.end_ns,
                    },
                    t_pub_ns=t_pub_ns,
                    extra={
                        "window_index": window.index,
                        "hop_ns": window.hop_ns,
                        **({"window_offset_ns": window.offset_ns} if window.offset_ns else {}),
                        "closed_by": window.closed_by,
                        "batch_size": len(result.windows),
                        **({"task": "regression"} if self.regression else {}),
                        **({"task": "anomaly"} if self.anomaly else {}),
                        **said,
                        **({"rejected": rejected, "best": name} if rejected else {}),
                    },
                )
            )
        return out

    def _rejected(self, scores: list[float], said: dict[str, Any]) -> str | None:
        """Why a window's label is withheld (``confidence``, ``disagreement``), or None."""
        if self.reject is None:
            return None
        if max(scores, default=0.0) < self.reject[0]:
            return "confidence"
        if float(said.get("disagreement", 0.0)) > self.reject[1]:
            return "disagreement"
        return None

    def _anomaly(self, window: Window, out: np.ndarray) -> dict[str, Any]:
        """An anomaly model's fields from its output row (:mod:`fusiond.models.anomaly`):
        the label, and as scores ``[normal, anomaly]`` the score over the threshold mapped
        to [0, 1] (0.5 at the threshold), so that events' ``enter`` and ``exit`` apply."""
        # In Python floats: float32 holds no 1e30, and its nearest is over the wire's bound.
        raw = float(out[SCORE])
        score = significant(min(max(raw, 0.0), 1e30) if raw == raw else 1e30)  # NaN: unlike anything
        own = float(out[THRESHOLD])
        wanted = self.threshold if self.threshold is not None else (own if own == own else 1.0)
        threshold = significant(min(max(wanted, 1e-9), 1e30))
        ratio = score / threshold  # from the published numbers: label, flag and scores agree
        share = ratio / (1.0 + ratio)
        fields: dict[str, Any] = {
            "label": ANOMALY if score > threshold else NORMAL,
            "scores": [round(1.0 - share, 5), round(share, 5)],
            "anomaly_score": score,
            "threshold": threshold,
            "is_anomaly": score > threshold,
            "contributions": {
                m: round(float(np.clip(np.nan_to_num(out[SHARES + j]), 0.0, 1.0)), 4)
                for j, (m, here) in enumerate(window.present.items())
                if here
            },
        }
        if 0 <= out[NEAREST] < len(self.classes):  # the embedding method: the nearest normal class
            fields["nearest"] = self.classes[int(out[NEAREST])]
        return fields

    def _heads(self, result: BatchResult) -> tuple[list[Any], list[Any], list[float]]:
        """Each window's modality heads, the whole batch at once: their scores rounded, their
        top class, and how much the present ones disagree."""
        probs = result.modality_probs
        assert probs is not None
        present = np.array([list(w.present.values()) for w in result.windows], bool)
        spread = [round(x, 4) for x in disagreements(probs, present).tolist()]
        return probs.astype(float).round(5).tolist(), probs.argmax(axis=-1).tolist(), spread

    def _modalities(
        self, window: Window, scores: list[list[float]], tops: list[int], spread: float
    ) -> dict[str, Any]:
        """What each present modality says by itself, and how much they disagree."""
        here = [j for j, ok in enumerate(window.present.values()) if ok]
        names = list(window.present)
        return {
            "modality_scores": {names[j]: scores[j] for j in here},
            "modality_labels": {names[j]: self.classes[tops[j]] for j in here},
            "disagreement": spread,
        }


def significant(x: float) -> float:
    """``x`` to 6 significant digits, as an anomaly score or threshold is published (and
    as training reports the thresholds it chose)."""
    return float(f"{x:.6g}")


def disagreement(distributions: list[np.ndarray]) -> float:
    """How much the modalities' own class distributions disagree, in [0, 1]: their
    Jensen-Shannon divergence (the entropy of the mean less the mean entropy) divided by
    its largest possible value, log of the number of modalities. 0: they say the same
    thing (or only one speaks); 1: each is sure of a different class."""
    if len(distributions) < 2:
        return 0.0
    return float(disagreements(np.stack(distributions)[None], np.ones((1, len(distributions)), bool))[0])


def disagreements(probs: np.ndarray, present: np.ndarray) -> np.ndarray:
    """:func:`disagreement` of every window of a batch at once: ``probs`` ``[B, M, K]``,
    each window's modalities' distributions, of which ``present`` ``[B, M]`` says which
    count (a masked modality's row is left out of the mean and the count)."""
    # A masked modality's row is made uniform first: whatever its head said (NaN from a
    # broken model) is left out, as its weight of 0 leaves out a finite row.
    p = np.where(present[:, :, None], probs.astype(np.float64), 1.0)
    p = np.clip(p, 1e-12, 1.0)
    p /= p.sum(axis=2, keepdims=True)
    count = present.sum(axis=1)
    n = np.maximum(count, 1)[:, None]
    weight = present.astype(np.float64)
    mean = (p * weight[:, :, None]).sum(axis=1) / n
    mean[count == 0] = 1.0  # no modality: no log of 0 (its answer is 0 below)
    each = -(p * np.log(p)).sum(axis=-1)
    jsd = -(mean * np.log(mean)).sum(axis=-1) - (each * weight).sum(axis=1) / n[:, 0]
    out: np.ndarray = np.clip(jsd / np.log(np.maximum(count, 2)), 0.0, 1.0)
    out[count < 2] = 0.0
    return out
