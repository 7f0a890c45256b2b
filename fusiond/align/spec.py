"""What a model expects of each modality; carried by every checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

Kind = Literal["frames", "series"]


@dataclass(frozen=True, slots=True)
class ModalitySpec:
    """Input of one modality.

    ``frames``: ``length`` images of ``height`` x ``width`` x ``channels`` (uint8) spread
    evenly over the window. ``series``: ``length`` evenly spaced samples of ``channels``
    values (float32) covering the window.
    """

    kind: Kind
    length: int
    channels: int
    height: int = 0
    width: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("frames", "series"):
            msg = f"modality kind must be 'frames' or 'series', got {self.kind!r}"
            raise ValueError(msg)
        if self.length < 1 or self.channels < 1:
            msg = "length and channels must be positive"
            raise ValueError(msg)
        if self.kind == "frames" and (self.height < 1 or self.width < 1):
            msg = "frames need a positive height and width"
            raise ValueError(msg)

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one window's array for this modality."""
        if self.kind == "frames":
            return (self.length, self.height, self.width, self.channels)
        return (self.length, self.channels)

    @property
    def dtype(self) -> np.dtype[Any]:
        """Element type of one window's array."""
        return np.dtype(np.uint8 if self.kind == "frames" else np.float32)

    def check_block(self, shape: tuple[int, ...], dtype: str, max_frame_pixels: int) -> str | None:
        """Why a block of ``shape`` and ``dtype`` cannot feed this modality, or None if it can.

        Checked from the message header, before any buffer is decoded: the aligner and
        the fit then only ever see blocks they can use.
        """
        if not shape or min(shape) < 1:
            return f"empty block, shape {list(shape)}"
        if self.kind == "series":
            return None
        if dtype != "|u1":
            return f"frames must be |u1, got {dtype}"
        if len(shape) not in (3, 4) or (len(shape) == 4 and shape[3] not in (1, 3)):
            return f"frames must be [n, H, W] or [n, H, W, 1|3], got {list(shape)}"
        if shape[1] * shape[2] > max_frame_pixels:
            return f"a {shape[1]}x{shape[2]} frame is over ingest.max_frame_pixels ({max_frame_pixels})"
        return None

    def zeros(self) -> np.ndarray:
        """A read-only all-zero input, used where the modality is missing."""
        array = np.zeros(self.shape, self.dtype)
        array.flags.writeable = False
        return array


@dataclass(frozen=True, slots=True)
class InputSpec:
    """The inputs of a model, keyed by modality name (``video``, ``audio``, ``imu``...)."""

    modalities: dict[str, ModalitySpec]

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain data, for checkpoints."""
        return {name: asdict(spec) for name, spec in self.modalities.items()}

    @classmethod
    def from_dict(cls, data: dict[str, dict[str, Any]]) -> InputSpec:
        """Inverse of :meth:`to_dict`."""
        return cls({name: ModalitySpec(**fields) for name, fields in data.items()})
