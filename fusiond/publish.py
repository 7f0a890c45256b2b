"""Turn a scored batch into prediction messages (pure code, clock passed in)."""

from __future__ import annotations

from collections import Counter

import numpy as np

from fusiond.align.windows import Window
from fusiond.bus.wire import Prediction
from fusiond.models.runner import BatchResult

__all__ = ["disagreement", "PredictionBuilder"]


class PredictionBuilder:
    """Numbers each rig's predictions and fills in the latency breakdown."""

    def __init__(
        self,
        classes: list[str],
        model: dict[str, str],
        task: str = "classification",
        seq: Counter[str] | None = None,
    ) -> None:
        """``seq`` carries each rig's next number over from the builder this one replaces,
        so a reload does not start the count again (docs/protocol.md: per-rig, since start)."""
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
        out = []
        rows = zip(result.windows, result.labels.tolist(), scores, strict=True)
        for i, (window, label, row) in enumerate(rows):
            seq = self._seq[window.rig]
            self._seq[window.rig] += 1
            out.append(
                Prediction(
                    rig=window.rig,
                    seq=seq,
                    window_start_ns=window.start_ns,
                    window_end_ns=window.end_ns,
                    label="" if self.regression else self.classes[label],
                    classes=self.classes,
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
                        "closed_by": window.closed_by,
                        "batch_size": len(result.windows),
                        **({"task": "regression"} if self.regression else {}),
                        **(
                            self._modalities(window, result.modality_probs[i])
                            if result.modality_probs is not None
                            else {}
                        ),
                    },
                )
            )
        return out

    def _modalities(self, window: Window, probs: np.ndarray) -> dict[str, object]:
        """What each present modality says by itself, and how much they disagree."""
        own = {m: probs[j] for j, (m, here) in enumerate(window.present.items()) if here}
        return {
            "modality_scores": {m: p.astype(float).round(5).tolist() for m, p in own.items()},
            "modality_labels": {m: self.classes[int(p.argmax())] for m, p in own.items()},
            "disagreement": round(disagreement(list(own.values())), 4),
        }


def disagreement(distributions: list[np.ndarray]) -> float:
    """How much the modalities' own class distributions disagree, in [0, 1]: their
    Jensen-Shannon divergence (the entropy of the mean less the mean entropy) divided by
    its largest possible value, log of the number of modalities. 0: they say the same
    thing (or only one speaks); 1: each is sure of a different class."""
    if len(distributions) < 2:
        return 0.0
    p = np.clip(np.stack(distributions).astype(np.float64), 1e-12, 1.0)
    p /= p.sum(axis=1, keepdims=True)

    def entropy(q: np.ndarray) -> np.ndarray:
        out: np.ndarray = -(q * np.log(q)).sum(axis=-1)
        return out

    jsd = entropy(p.mean(axis=0)) - entropy(p).mean()
    return float(np.clip(jsd / np.log(len(p)), 0.0, 1.0))
