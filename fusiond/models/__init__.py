"""Modality encoders, fusion strategies, checkpoints and the batched runner."""

from fusiond.models.checkpoint import Checkpoint, load, save
from fusiond.models.encoders import BUILTIN_ENCODERS
from fusiond.models.fusion import FUSIONS
from fusiond.models.model import FusionModel

__all__ = ["BUILTIN_ENCODERS", "FUSIONS", "Checkpoint", "FusionModel", "load", "save"]
