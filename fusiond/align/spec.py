"""What a model expects of each modality; carried by every checkpoint."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from fusiond.align.fit import builtin_kinds

if TYPE_CHECKING:
    from fusiond.align.kinds import KindRegistry, ModalityKind

__all__ = ["InputSpec", "ModalitySpec"]

FIELDS = ("kind", "length", "channels", "height", "width", "vocab")
"""A spec's plain data, as checkpoints, recipes and workers' plans carry it."""


@dataclass(frozen=True, slots=True)
class ModalitySpec:
    """Input of one modality; ``kind`` names a :class:`~fusiond.align.kinds.ModalityKind`
    (``frames``, ``series``, ``vector``, ``tokens`` or a plugin's), which says what the
    other fields mean.

    ``kind_of`` is that kind's object. Left out, ``kind`` must be a built-in kind; a
    plugin's kind comes from the registry the entry point loaded
    (``ModalitySpec.from_dict(fields, plugins.kinds)``).
    """

    kind: str
    length: int
    channels: int = 1
    height: int = 0
    width: int = 0
    vocab: tuple[str, ...] = field(default=())
    """``tokens``: the words the tokenizer knows, in id order (ids 0 and 1: padding, unknown)."""
    kind_of: ModalityKind = field(default=None, compare=False, repr=False, kw_only=True)  # type: ignore[assignment]
    """The kind object (set from ``kind`` when not given)."""

    def __post_init__(self) -> None:
        if self.kind_of is None:
            object.__setattr__(self, "kind_of", builtin_kinds().get(self.kind))
        elif self.kind_of.name != self.kind:
            msg = f"a {self.kind_of.name} kind cannot read a {self.kind!r} spec"
            raise ValueError(msg)
        self.kind_of.validate(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], kinds: KindRegistry | None = None) -> ModalitySpec:
        """Inverse of :meth:`to_dict`; the kind is looked up in ``kinds`` (default: the
        built-in kinds only)."""
        registry = kinds if kinds is not None else builtin_kinds()
        fields = {**data, "vocab": tuple(data.get("vocab", ()))}
        return cls(**fields, kind_of=registry.get(str(data.get("kind"))))

    def to_dict(self) -> dict[str, Any]:
        """Plain data (the kind by name), for checkpoints and workers' plans."""
        return {name: getattr(self, name) for name in FIELDS}

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one window's array for this modality."""
        return self.kind_of.shape(self)

    @property
    def dtype(self) -> np.dtype[Any]:
        """Element type of one window's array."""
        return self.kind_of.dtype

    def check_block(
        self, shape: tuple[int, ...], dtype: str, max_frame_pixels: int, encoding: str = "raw"
    ) -> str | None:
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
        return {name: spec.to_dict() for name, spec in self.modalities.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Mapping[str, Any]], kinds: KindRegistry | None = None) -> InputSpec:
        """Inverse of :meth:`to_dict`, each kind looked up in ``kinds`` (default: the
        built-in kinds only; an entry point passes its ``plugins.kinds``)."""
        registry = kinds if kinds is not None else builtin_kinds()
        return cls({name: ModalitySpec.from_dict(fields, registry) for name, fields in data.items()})
