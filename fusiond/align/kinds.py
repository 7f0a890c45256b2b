"""Modality kinds: what a model's input of one modality is, and everything that depends on it.

A kind knows how to check a block from the wire (from its header, before decoding), fit
the blocks of one window to the model's input, make the input of a missing modality,
and corrupt or augment a batch of inputs for training and evaluation. Nothing else in
fusiond branches on the kind. Built in:

==========  ===============================================  ===========  =============
kind        one window's input                                dtype        wire blocks
==========  ===============================================  ===========  =============
``frames``  ``length`` images ``height`` x ``width`` x C      uint8        images
``series``  ``length`` evenly spaced samples of C values      float32      samples
``vector``  the newest sample of C values (a state)           float32      samples
``tokens``  up to ``length`` words: id and ms into window     int32 [L,2]  UTF-8 events
==========  ===============================================  ===========  =============

The built-in kinds register through the ``fusiond_add_modality_kinds`` hook, as a
plugin's do (docs/plugins.md), into the :class:`KindRegistry` of the
:class:`~fusiond.plugin.Plugins` an entry point loads. There is no process-wide table: a
spec read from a checkpoint, a recipe or a worker's plan is resolved against the
registry passed to it, and names its kind object (:attr:`ModalitySpec.kind_of`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from fusiond.errors import PluginError

if TYPE_CHECKING:
    from fusiond.align.fit import Span
    from fusiond.align.spec import ModalitySpec

__all__ = ["KindRegistry", "ModalityKind"]

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


class ModalityKind:
    """Base of the kinds. Subclasses set ``name``, ``dtype`` and ``default_encoder`` and
    implement :meth:`shape` and :meth:`fit`; the rest has working defaults."""

    name: ClassVar[str]
    dtype: ClassVar[np.dtype[Any]]
    default_encoder: ClassVar[str] = "vector_mlp"
    encodings: ClassVar[tuple[str, ...]] = ("raw",)
    """Wire encodings a block of this kind may come in."""
    deferred: ClassVar[bool] = False
    """A one-image JPEG block reaches :meth:`fit` still encoded, as a block of one
    :class:`fusiond.align.fit.Deferred` that decodes when asked: for a kind whose fit uses
    a few of its blocks' frames. False: every block comes decoded."""
    augmentations: ClassVar[tuple[str, ...]] = ()
    """What ``[inputs.X] augment`` may name for this kind (:mod:`fusiond.align.augment`)."""
    default_augment: ClassVar[tuple[str, ...]] = ()
    """What a recipe that names none gets."""
    vocabulary: ClassVar[bool] = False
    """Its spec carries a ``vocab`` that ``fusiond train`` builds from the data's text
    events when the recipe gives none."""

    def validate(self, spec: ModalitySpec) -> None:
        """Raise ValueError when ``spec`` makes no sense for this kind."""
        if spec.length < 1 or spec.channels < 1:
            msg = "length and channels must be positive"
            raise ValueError(msg)

    def shape(self, spec: ModalitySpec) -> tuple[int, ...]:
        """Shape of one window's array."""
        raise NotImplementedError

    def check_block(
        self, spec: ModalitySpec, shape: tuple[int, ...], dtype: str, encoding: str, max_frame_pixels: int
    ) -> str | None:
        """Why a block of this header cannot feed ``spec``, or None if it can (no decoding)."""
        if encoding not in self.encodings:
            return f"a {self.name} input takes {' or '.join(self.encodings)} blocks, not {encoding}"
        if not shape or min(shape) < 1:
            return f"empty block, shape {list(shape)}"
        return None

    def decode_scale(self, spec: ModalitySpec, shape: tuple[int, ...], encoding: str) -> int:
        """How much smaller than declared an encoded block may be decoded (1, 2, 4 or 8):
        no more than the input needs. 1 unless the kind says otherwise."""
        return 1

    def fit(self, spec: ModalitySpec, blocks: Sequence[Span], start_ns: int, end_ns: int) -> np.ndarray:
        """One window's array of :meth:`shape` from the blocks overlapping the window."""
        raise NotImplementedError

    def zeros(self, spec: ModalitySpec) -> np.ndarray:
        """The input of a window where the modality is missing (the mask says so too)."""
        return np.zeros(self.shape(spec), self.dtype)

    def corrupt(self, spec: ModalitySpec, batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The batch under noise as strong as its signal (0 dB SNR per window): a sensor
        gone bad but still sending."""
        values = batch.astype(np.float32)
        axes = tuple(range(1, batch.ndim))
        std = np.maximum(values.std(axis=axes, keepdims=True), 1e-6)
        noisy = values + rng.standard_normal(batch.shape, np.float32) * std
        if np.issubdtype(self.dtype, np.integer):
            info = np.iinfo(self.dtype)
            noisy = np.clip(np.rint(noisy), info.min, info.max)
        out: np.ndarray = noisy.astype(self.dtype)
        return out

    def augment(
        self,
        spec: ModalitySpec,
        batch: np.ndarray,
        rng: np.random.Generator,
        names: Sequence[str] = (),
        rate_hz: float = 0.0,
    ) -> np.ndarray:
        """A label-preserving variation of a training batch: each augmentation in ``names``
        applied to each window with probability one half (``rate_hz``: the input's sample
        rate, for series). The base kind knows none and changes nothing."""
        return batch

    def example(self) -> dict[str, Any]:
        """The fields of a small spec of this kind, for tests that go through every kind:
        ``ModalitySpec(kind.name, **kind.example(), kind_of=kind)``."""
        return {"length": 8, "channels": 2}

    def random(self, spec: ModalitySpec, count: int, rng: np.random.Generator) -> np.ndarray:
        """``count`` random inputs (fakes for tests and benches)."""
        if np.issubdtype(self.dtype, np.integer):
            return rng.integers(0, 256, (count, *self.shape(spec))).astype(self.dtype)
        return rng.normal(0, 0.3, (count, *self.shape(spec))).astype(self.dtype)


class KindRegistry:
    """Modality kinds by name."""

    def __init__(self) -> None:
        self._kinds: dict[str, ModalityKind] = {}

    def add(self, kind: type[ModalityKind] | ModalityKind) -> None:
        """Register a kind (a class or an instance) under its ``name``."""
        instance = kind() if isinstance(kind, type) else kind
        if not isinstance(instance, ModalityKind):
            msg = f"{kind!r} is not a fusiond.align.kinds.ModalityKind"
            raise PluginError(msg)
        name = getattr(instance, "name", "")
        if not isinstance(name, str) or not _NAME.match(name):
            msg = f"{type(instance).__qualname__}.name must be a lowercase name, got {name!r}"
            raise PluginError(msg)
        known = self._kinds.get(name)
        if known is not None and type(known) is not type(instance):
            msg = (
                f"modality kind {name!r} registered twice: {type(known).__module__} and "
                f"{type(instance).__module__}"
            )
            raise PluginError(msg)
        self._kinds[name] = instance

    def get(self, name: str) -> ModalityKind:
        """The kind called ``name``; ValueError naming the known ones otherwise."""
        kind = self._kinds.get(name)
        if kind is None:
            msg = f"unknown modality kind {name!r} (known: {', '.join(sorted(self._kinds))})"
            raise ValueError(msg)
        return kind

    def __contains__(self, name: object) -> bool:
        return name in self._kinds

    def __len__(self) -> int:
        return len(self._kinds)

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._kinds))
