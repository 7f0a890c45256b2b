"""Modality encoders, fusion strategies, checkpoints and the batched runner.

The names below load on first use: :mod:`fusiond.models.card` (the serving contract)
and :mod:`fusiond.models.onnx` (onnxruntime) are read without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fusiond.models.card import ModelCard, read_card
    from fusiond.models.checkpoint import Checkpoint, load, save
    from fusiond.models.model import FusionModel

__all__ = ["Checkpoint", "FusionModel", "load", "ModelCard", "read_card", "save"]

_WHERE = {
    "Checkpoint": "checkpoint",
    "load": "checkpoint",
    "save": "checkpoint",
    "FusionModel": "model",
    "ModelCard": "card",
    "read_card": "card",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        msg = f"module 'fusiond.models' has no attribute {name!r}"
        raise AttributeError(msg)
    return getattr(importlib.import_module(f"fusiond.models.{_WHERE[name]}"), name)
