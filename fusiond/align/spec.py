"""What a model expects of each modality; carried by every checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from fusiond.align import fit as _builtin_kinds  # noqa: F401 - registers the built-in kinds
from fusiond.align.kinds import ModalitySpec

__all__ = ["InputSpec", "ModalitySpec"]


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
        return cls(
            {
                name: ModalitySpec(**{**fields, "vocab": tuple(fields.get("vocab", ()))})
                for name, fields in data.items()
            }
        )
