"""What a model expects of each modality; carried by every checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from fusiond.align import fit as _builtin_kinds  # noqa: F401 - registers the built-in kinds
from fusiond.align.kinds import KINDS, ModalityKind


@dataclass(frozen=True, slots=True)
class ModalitySpec:
    """Input of one modality; ``kind`` names a :class:`~fusiond.align.kinds.ModalityKind`
    (``frames``, ``series``, ``vector``, ``tokens`` or a plugin's), which says what the
    other fields mean."""

    kind: str
    length: int
    channels: int = 1
    height: int = 0
    width: int = 0
    vocab: tuple[str, ...] = field(default=())
    """``tokens``: the words the tokenizer knows, in id order (ids 0 and 1: padding, unknown)."""

    def __post_init__(self) -> None:
        self.kind_of.validate(self)

    @property
    def kind_of(self) -> ModalityKind:
        """The kind object (ValueError for a kind no installed plugin provides)."""
        return KINDS.get(self.kind)

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one window's array for this modality."""
        return self.kind_of.shape(self)

    @property
    def dtype(self) -> np.dtype[Any]:
        """Element type of one window's array."""
        return self.kind_of.dtype

    def check_block(self, shape: tuple[int, ...], dtype: str, max_frame_pixels: int,
                    encoding: str = "raw") -> str | None:  # fmt: skip
        """Why a block of ``shape``, ``dtype`` and ``encoding`` cannot feed this modality, or
        None if it can.

        Checked from the message header, before any buffer is decoded: the aligner and
        the fit then only ever see blocks they can use.
        """
        return self.kind_of.check_block(self, shape, dtype, encoding, max_frame_pixels)

    def decode_scale(self, shape: tuple[int, ...], encoding: str) -> int:
        """How much smaller than ``shape`` an encoded block may be decoded for this input."""
        return self.kind_of.decode_scale(self, shape, encoding)

    def zeros(self) -> np.ndarray:
        """A read-only input for a window where the modality is missing."""
        array = self.kind_of.zeros(self)
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
        return cls({name: ModalitySpec(**{**fields, "vocab": tuple(fields.get("vocab", ()))})
                    for name, fields in data.items()})  # fmt: skip
