"""fusiond: a streaming sensor-fusion daemon."""

from __future__ import annotations

__all__ = []

__version__ = "0.1.0"
