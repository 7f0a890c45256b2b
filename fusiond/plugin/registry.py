"""Registries that hooks add to: source kinds and modality encoders."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

from pydantic import BaseModel

from fusiond.errors import PluginError

if TYPE_CHECKING:
    from torch import nn

    from fusiond.sources.base import Source

_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")


class SourceRegistry:
    """Source kinds by name."""

    def __init__(self) -> None:
        self._kinds: dict[str, type[Source]] = {}

    def add(self, source: type[Source]) -> None:
        """Register a source class under its ``kind``."""
        from fusiond.sources.base import Source

        if not (isinstance(source, type) and issubclass(source, Source)):
            msg = f"{source!r} is not a fusiond.sources.Source subclass"
            raise PluginError(msg)
        kind = getattr(source, "kind", "")
        if not _NAME.match(kind):
            msg = f"{source.__qualname__}.kind must be a lowercase name, got {kind!r}"
            raise PluginError(msg)
        if not (isinstance(source.Config, type) and issubclass(source.Config, BaseModel)):
            msg = f"{source.__qualname__}.Config must be a pydantic model"
            raise PluginError(msg)
        if kind in self._kinds and self._kinds[kind] is not source:
            other = self._kinds[kind]
            msg = f"source kind {kind!r} registered twice: {other.__module__} and {source.__module__}"
            raise PluginError(msg)
        self._kinds[kind] = source

    def get(self, kind: str) -> type[Source] | None:
        """The class of a kind, or None."""
        return self._kinds.get(kind)

    def __contains__(self, kind: object) -> bool:
        return kind in self._kinds

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._kinds))


class EncoderRegistry:
    """Modality encoder classes by the name checkpoints use."""

    def __init__(self) -> None:
        self.types: dict[str, type[nn.Module]] = {}

    def add(self, name: str, encoder: type[nn.Module]) -> None:
        """Register an encoder class under ``name``."""
        from torch import nn

        if not _NAME.match(name):
            msg = f"encoder name must be a lowercase name, got {name!r}"
            raise PluginError(msg)
        if not (isinstance(encoder, type) and issubclass(encoder, nn.Module)):
            msg = f"encoder {name!r} must be a torch.nn.Module subclass"
            raise PluginError(msg)
        if name in self.types and self.types[name] is not encoder:
            msg = f"encoder {name!r} registered twice"
            raise PluginError(msg)
        self.types[name] = encoder
