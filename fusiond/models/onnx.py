"""Export a checkpoint to ONNX, and run it with onnxruntime on CPU.

``fusiond export MODEL.pt --onnx`` writes ``MODEL.onnx`` beside it; ``[model] runtime =
"onnx"`` serves that file (exported on the fly when it is missing or older than the
checkpoint). The graph takes one input per modality, in the model's order, plus the
``[B, M]`` presence mask, and returns probabilities (a classifier) or values (a regressor),
with a dynamic batch axis. onnxruntime is an optional extra: ``pip install fusiond[onnx]``.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fusiond.errors import ModelError
from fusiond.models.checkpoint import Checkpoint
from fusiond.models.model import FusionModel, Parts
from fusiond.models.runner import Runner

log = logging.getLogger(__name__)
OPSET = 17


class _Flat(nn.Module):
    """The model with positional inputs, as ONNX wants them, and its output activation."""

    def __init__(self, model: FusionModel) -> None:
        super().__init__()
        self.model = model
        self.names = list(model.modalities)
        self.regression = model.task == "regression"

    def forward(self, *args: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        inputs = dict(zip(self.names, args[:-1], strict=True))
        out, own = self.model.forward_all(inputs, args[-1])
        scores = out.float() if self.regression else torch.softmax(out.float(), dim=1)
        return scores if own is None else (scores, torch.softmax(own.float(), dim=2))


def cache_dir() -> Path:
    """Where exports made on the fly go: systemd's CacheDirectory, else ~/.cache/fusiond/onnx."""
    found = os.environ.get("CACHE_DIRECTORY", "").split(":")[0]
    home_cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    base = Path(found) if found else home_cache / "fusiond"
    path = base / "onnx"
    path.mkdir(parents=True, exist_ok=True)
    return path


def onnx_path(checkpoint_path: Path) -> Path:
    """Where the ONNX export of a checkpoint lives: beside it, ``.onnx``."""
    return checkpoint_path.with_suffix(".onnx")


def export(checkpoint: Checkpoint, encoder_types: Parts | Mapping[str, type[nn.Module]], out: Path) -> Path:
    """Write the checkpoint's model as ONNX to ``out``."""
    flat = _Flat(checkpoint.build(encoder_types)).eval()
    spec = checkpoint.spec.modalities
    names = list(flat.names)
    example = [torch.zeros((2, *spec[m].shape), dtype=_torch_dtype(spec[m].dtype)) for m in names]
    mask = torch.ones((2, len(names)), dtype=torch.bool)
    outputs = ["out", "modalities"] if flat.model.has_heads else ["out"]
    dynamic = {name: {0: "batch"} for name in [*names, "mask", *outputs]}
    tmp = out.with_name(out.name + ".tmp")
    try:
        with warnings.catch_warnings():  # the exporter's own notes are not the user's business
            warnings.simplefilter("ignore")
            torch.onnx.export(flat, (*example, mask), str(tmp), input_names=[*names, "mask"],
                              output_names=outputs, dynamic_axes=dynamic, opset_version=OPSET,
                              dynamo=False)  # fmt: skip
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        msg = f"cannot export {checkpoint.name!r} to ONNX: {exc}"
        raise ModelError(msg) from None
    os.replace(tmp, out)
    return out


def _torch_dtype(dtype: np.dtype[Any]) -> torch.dtype:
    return torch.from_numpy(np.zeros(1, dtype)).dtype


class OnnxRunner(Runner):
    """Runs a checkpoint's ONNX export on CPU with onnxruntime."""

    runtime = "onnx"

    def __init__(self, checkpoint: Checkpoint, encoder_types: Parts | Mapping[str, type[nn.Module]],
                 threads: int = 0) -> None:  # fmt: skip
        try:
            import onnxruntime
        except ImportError:
            msg = "model.runtime is 'onnx' but onnxruntime is not installed: pip install 'fusiond[onnx]'"
            raise ModelError(msg) from None
        self.checkpoint = checkpoint
        self.device = torch.device("cpu")
        self.modalities = list(checkpoint.spec.modalities)
        self.classes = checkpoint.classes
        path = self._exported(checkpoint, encoder_types)
        options = onnxruntime.SessionOptions()
        if threads > 0:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.outputs = [o.name for o in self.session.get_outputs()]

    @staticmethod
    def _exported(checkpoint: Checkpoint, encoder_types: Parts | Mapping[str, type[nn.Module]]) -> Path:
        if checkpoint.path is None:
            msg = "an ONNX runner needs a checkpoint loaded from a file"
            raise ModelError(msg)
        beside = onnx_path(checkpoint.path)
        if beside.exists() and beside.stat().st_mtime >= checkpoint.path.stat().st_mtime:
            return beside  # written by `fusiond export`
        # Else an export of our own, keyed by the checkpoint's content: the model's folder
        # may be read-only (a packaged or system-wide model).
        cached = cache_dir() / f"{checkpoint.content_hash}.onnx"
        if not cached.exists():
            log.info("exporting %s to %s for onnxruntime", checkpoint.path, cached)
            export(checkpoint, encoder_types, cached)
        return cached

    def _forward(self, inputs: Mapping[str, np.ndarray],
                 mask: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:  # fmt: skip
        got = self.session.run(self.outputs, {**inputs, "mask": mask})
        return got[0], (got[1] if len(got) > 1 else None)
