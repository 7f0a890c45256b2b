"""Modality encoders, fusion strategies, checkpoints and the batched runner."""

from fusiond.models.checkpoint import Checkpoint, load, save
from fusiond.models.model import FusionModel

__all__ = ["Checkpoint", "FusionModel", "load", "save"]
