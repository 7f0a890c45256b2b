"""Run a model on batches of windows: one forward pass per batch.

torch is imported where a torch model runs (:class:`ModelRunner`, :func:`pick_device`),
not by the base: an ONNX model (:mod:`fusiond.models.onnx`) is served without it."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from fusiond.align.windows import Window
from fusiond.errors import ModelError
from fusiond.models.card import ModelCard, card_columns

if TYPE_CHECKING:
    import torch

    from fusiond.models.checkpoint import Checkpoint
    from fusiond.models.model import Parts

__all__ = ["BatchResult", "ModelRunner", "pick_device", "Runner", "set_threads"]

log = logging.getLogger(__name__)


def pick_device(wanted: str = "auto") -> torch.device:
    """``auto`` takes CUDA when present, else CPU; a CUDA device that is not there is a
    :class:`ModelError` (torch would only fail at the first forward pass)."""
    import torch

    if wanted == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(wanted)
    except RuntimeError:
        msg = f"unknown device {wanted!r}: use auto, cpu or cuda[:N]"
        raise ModelError(msg) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is built without CUDA" if torch.version.cuda is None else "no GPU is visible"
            msg = f'{wanted!r} asked for, but CUDA is not available ({why}): use "auto" or "cpu"'
            raise ModelError(msg)
        if (device.index or 0) >= torch.cuda.device_count():
            msg = f"{wanted!r} asked for, but this machine has {torch.cuda.device_count()} GPU(s)"
            raise ModelError(msg)
    return device


@dataclass(frozen=True, slots=True)
class BatchResult:
    """Scores for a batch: ``probs[i]`` belongs to ``windows[i]``."""

    windows: Sequence[Window]
    probs: np.ndarray
    labels: np.ndarray
    t_start_ns: int
    t_end_ns: int
    modality_probs: np.ndarray | None = None
    """[B, M, K]: each modality head's calibrated probabilities (models with modality heads)."""

    def started_at(self, t_ns: int) -> BatchResult:
        """The same result with its inference moved to start at ``t_ns``, its duration kept:
        an offline run puts it on the recording's clock, the clock its windows closed on."""
        return replace(self, t_start_ns=t_ns, t_end_ns=t_ns + self.t_end_ns - self.t_start_ns)


def set_threads(threads: int) -> None:
    """Torch's intra-op threads: ``threads`` if positive, else torch's own default.

    Set on purpose: each ingest worker is a process of its own, and a model that also
    takes every core makes them fight for it.
    """
    if threads > 0:
        import torch

        torch.set_num_threads(threads)


class Runner:
    """What every runtime shares: windows in, one batched call, scores out."""

    runtime = ""
    card: ModelCard
    device: Any
    """Where it runs (``torch.device``, or ``"cpu"`` for onnxruntime)."""
    modalities: list[str]

    def warm_up(self, batch_size: int = 1) -> None:
        """One forward pass on zeros, so the first real batch pays no start-up cost."""
        spec = self.card.spec.modalities
        inputs = {m: np.zeros((batch_size, *s.shape), s.dtype) for m, s in spec.items()}
        mask = np.ones((batch_size, len(self.modalities)), bool)
        out, _ = self._forward(inputs, mask)
        want = (batch_size, card_columns(self.card))
        if out.shape != want or out.dtype.kind != "f":
            msg = (
                f"{self.card.path or self.card.name}: warming up on {batch_size} window(s), the model "
                f"gave {out.dtype} {list(out.shape)}, not float {list(want)}"
            )
            raise ModelError(msg)

    def run(self, windows: Sequence[Window]) -> BatchResult:
        """Scores for every window, in one forward pass (a regressor's scores are its values)."""
        inputs = {m: np.stack([w.inputs[m] for w in windows]) for m in self.modalities}
        mask = np.array([[w.present[m] for m in self.modalities] for w in windows], dtype=bool)
        t0 = time.time_ns()
        probs, own = self._forward(inputs, mask)
        t1 = time.time_ns()
        return BatchResult(windows, probs, probs.argmax(axis=1), t0, t1, own)

    def _forward(
        self, inputs: Mapping[str, np.ndarray], mask: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Scores [B, K] (probabilities, or a regressor's values) and each modality head's
        probabilities [B, M, K] when the model has heads."""
        raise NotImplementedError


class ModelRunner(Runner):
    """A loaded model on its device (torch), ready for batches of windows."""

    runtime = "torch"

    def __init__(
        self,
        checkpoint: Checkpoint,
        parts: Parts,
        device: str = "auto",
    ) -> None:
        self.checkpoint, self.card = checkpoint, checkpoint.card
        self.device = pick_device(device)
        self.model = checkpoint.build(parts).to(self.device).eval()
        self.modalities = self.model.modalities

    def _forward(
        self, inputs: Mapping[str, np.ndarray], mask: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | None]:
        import torch  # loaded by pick_device already: a lookup

        with torch.inference_mode():
            tensors = {m: torch.from_numpy(a).to(self.device, non_blocking=True) for m, a in inputs.items()}
            out, own = self.model.serve(tensors, torch.from_numpy(mask).to(self.device))
            return out.cpu().numpy(), None if own is None else own.cpu().numpy()
