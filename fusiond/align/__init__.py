"""Cutting time-aligned windows out of the ingested streams (pure code, clock passed in)."""

from fusiond.align.spec import InputSpec, ModalitySpec
from fusiond.align.windows import RigAligner, Window, WindowConfig

__all__ = ["InputSpec", "ModalitySpec", "RigAligner", "Window", "WindowConfig"]
