"""Turn a scored batch into prediction messages (pure code, clock passed in)."""

from __future__ import annotations

from collections import Counter

from fusiond.bus.wire import Prediction
from fusiond.models.runner import BatchResult


class PredictionBuilder:
    """Numbers each rig's predictions and fills in the latency breakdown."""

    def __init__(self, classes: list[str], model: dict[str, str], task: str = "classification",
                 seq: Counter[str] | None = None) -> None:  # fmt: skip
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
        for window, label, row in zip(result.windows, result.labels.tolist(), scores, strict=True):
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
                    },
                )
            )
        return out
