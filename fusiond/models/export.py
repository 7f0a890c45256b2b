"""Export a checkpoint to ONNX (torch): what ``fusiond export --onnx`` and the ONNX runner's
export on the fly write.

The graph takes one input per modality, in the model's order, plus the ``[B, M]``
presence mask, and returns probabilities (a classifier), values (a regressor) or anomaly
scores (:mod:`fusiond.models.anomaly`), with a dynamic batch axis. Its metadata carries
the checkpoint's content hash (:data:`~fusiond.models.card.HASH_KEY`) and its card
(:data:`~fusiond.models.card.CARD_KEY`, JSON: :func:`~fusiond.models.card.card_dict`), so
that fusiond serves the file on its own (``[model] path = "model.onnx"``) and another
program can feed it.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fusiond.errors import ModelError
from fusiond.models.card import CARD_KEY, HASH_KEY, card_dict
from fusiond.models.checkpoint import Checkpoint
from fusiond.models.model import FusionModel, Parts

__all__ = ["export", "OPSET"]

OPSET = 17


class _Flat(nn.Module):
    """The model with positional inputs, as ONNX wants them, and its output activation."""

    def __init__(self, model: FusionModel) -> None:
        super().__init__()
        self.model = model
        self.names = list(model.modalities)

    def forward(self, *args: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        inputs = dict(zip(self.names, args[:-1], strict=True))
        out, own = self.model.serve(inputs, args[-1])
        return out if own is None else (out, own)


def export(checkpoint: Checkpoint, parts: Parts, out: Path) -> Path:
    """Write the checkpoint's model as ONNX to ``out``."""
    flat = _Flat(checkpoint.build(parts)).eval()
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
            torch.onnx.export(
                flat,
                (*example, mask),
                str(tmp),
                input_names=[*names, "mask"],
                output_names=outputs,
                dynamic_axes=dynamic,
                opset_version=OPSET,
                dynamo=False,
            )
        _stamp(tmp, checkpoint)
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        msg = f"cannot export {checkpoint.name!r} to ONNX: {exc}"
        raise ModelError(msg) from None
    os.replace(tmp, out)
    return out


def _stamp(path: Path, checkpoint: Checkpoint) -> None:
    """Write the checkpoint's name, content hash and card into the ONNX file's metadata."""
    import onnx

    model = onnx.load(str(path))
    props = {
        HASH_KEY: checkpoint.content_hash,
        "fusiond.name": checkpoint.name,
        CARD_KEY: json.dumps(card_dict(checkpoint.card), default=str),
    }
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(path))


def _torch_dtype(dtype: np.dtype[Any]) -> torch.dtype:
    return torch.from_numpy(np.zeros(1, dtype)).dtype
