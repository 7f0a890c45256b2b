"""Run a checkpoint on batches of windows: one forward pass per batch."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fusiond.align.windows import Window
from fusiond.models.checkpoint import Checkpoint

log = logging.getLogger(__name__)


def pick_device(wanted: str = "auto") -> torch.device:
    """``auto`` takes CUDA when present, else CPU."""
    if wanted == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(wanted)


@dataclass(frozen=True, slots=True)
class BatchResult:
    """Scores for a batch: ``probs[i]`` belongs to ``windows[i]``."""

    windows: Sequence[Window]
    probs: np.ndarray
    labels: np.ndarray
    t_start_ns: int
    t_end_ns: int


class ModelRunner:
    """A loaded model on its device, ready for batches of windows."""

    def __init__(
        self,
        checkpoint: Checkpoint,
        encoder_types: Mapping[str, type[nn.Module]],
        device: str = "auto",
    ) -> None:
        self.checkpoint = checkpoint
        self.device = pick_device(device)
        self.model = checkpoint.build(encoder_types).to(self.device)
        self.modalities = self.model.modalities
        self.classes = checkpoint.classes
        self.regression = checkpoint.task == "regression"

    def warm_up(self, batch_size: int = 1) -> None:
        """One forward pass on zeros, so the first real batch pays no start-up cost."""
        spec = self.checkpoint.spec.modalities
        inputs = {m: np.zeros((batch_size, *s.shape), s.dtype) for m, s in spec.items()}
        mask = np.ones((batch_size, len(self.modalities)), bool)
        self._forward(inputs, mask)

    def run(self, windows: Sequence[Window]) -> BatchResult:
        """Scores for every window, in one forward pass (a regressor's scores are its values)."""
        inputs = {m: np.stack([w.inputs[m] for w in windows]) for m in self.modalities}
        mask = np.array([[w.present[m] for m in self.modalities] for w in windows], dtype=bool)
        t0 = time.time_ns()
        probs = self._forward(inputs, mask)
        t1 = time.time_ns()
        return BatchResult(windows, probs, probs.argmax(axis=1), t0, t1)

    def _forward(self, inputs: Mapping[str, np.ndarray], mask: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            tensors = {
                m: torch.from_numpy(a).to(self.device, non_blocking=True) for m, a in inputs.items()
            }
            out = self.model(tensors, torch.from_numpy(mask).to(self.device)).float()
            return (out if self.regression else torch.softmax(out, dim=1)).cpu().numpy()
