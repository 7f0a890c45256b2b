"""Registries that hooks add to: source kinds, encoders and fusion strategies (modality
kinds: :mod:`fusiond.align.kinds`)."""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from fusiond.errors import PluginError

if TYPE_CHECKING:
    from torch import nn

    from fusiond.outputs.base import Output
    from fusiond.sources.base import Source

__all__ = ["EncoderRegistry", "FusionRegistry", "ModuleRegistry", "OutputRegistry", "SourceRegistry"]

_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")


class SourceRegistry:
    """Source kinds by name."""

    def __init__(self) -> None:
        self._kinds: dict[str, type[Source[Any]]] = {}

    def add(self, source: type[Source[Any]]) -> None:
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

    def get(self, kind: str) -> type[Source[Any]] | None:
        """The class of a kind, or None."""
        return self._kinds.get(kind)

    def __contains__(self, kind: object) -> bool:
        return kind in self._kinds

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._kinds))


class OutputRegistry:
    """Output kinds by name (:mod:`fusiond.outputs`)."""

    def __init__(self) -> None:
        self._kinds: dict[str, type[Output[Any]]] = {}

    def add(self, output: type[Output[Any]]) -> None:
        """Register an output class under its ``kind``."""
        from fusiond.outputs.base import Output, OutputConfig

        if not (isinstance(output, type) and issubclass(output, Output)):
            msg = f"{output!r} is not a fusiond.outputs.Output subclass"
            raise PluginError(msg)
        kind = getattr(output, "kind", "")
        if not _NAME.match(kind):
            msg = f"{output.__qualname__}.kind must be a lowercase name, got {kind!r}"
            raise PluginError(msg)
        if not (isinstance(output.Config, type) and issubclass(output.Config, OutputConfig)):
            msg = f"{output.__qualname__}.Config must subclass fusiond.outputs.OutputConfig"
            raise PluginError(msg)
        known = self._kinds.get(kind)
        if known is not None and known is not output:
            msg = f"output kind {kind!r} registered twice: {known.__module__} and {output.__module__}"
            raise PluginError(msg)
        self._kinds[kind] = output

    def get(self, kind: str) -> type[Output[Any]] | None:
        """The class of a kind, or None."""
        return self._kinds.get(kind)

    def __contains__(self, kind: object) -> bool:
        return kind in self._kinds

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._kinds))


class ModuleRegistry:
    """``torch.nn.Module`` classes by the name checkpoints use.

    An entry is a class or a ``"module:Class"`` reference, imported only when a model is
    built: listing them (``fusiond plugins``) then never imports torch.
    """

    what = "module"

    def __init__(self) -> None:
        self._entries: dict[str, type[nn.Module] | str] = {}
        self._types: dict[str, type[nn.Module]] | None = None

    def add(self, name: str, encoder: type[nn.Module] | str) -> None:
        """Register a class, or a ``"module:Class"`` reference to one, under ``name``."""
        if not _NAME.match(name):
            msg = f"{self.what} name must be a lowercase name, got {name!r}"
            raise PluginError(msg)
        if isinstance(encoder, str):
            if not _REF.match(encoder):
                msg = f'{self.what} {name!r}: {encoder!r} is not a "module:Class" reference'
                raise PluginError(msg)
        else:
            _check_module(self.what, name, encoder)
        if name in self._entries and self._entries[name] is not encoder and self._entries[name] != encoder:
            msg = (
                f"{self.what} {name!r} registered twice: {_module(self._entries[name])} and "
                f"{_module(encoder)}"
            )
            raise PluginError(msg)
        self._entries[name] = encoder
        self._types = None

    def modules(self) -> dict[str, str]:
        """``name -> module`` of every encoder, without importing any."""
        return {name: _module(entry) for name, entry in sorted(self._entries.items())}

    @property
    def types(self) -> dict[str, type[nn.Module]]:
        """``name -> class``, importing the references (and so torch) on first use."""
        if self._types is None:
            self._types = {name: _resolve(self.what, name, entry) for name, entry in self._entries.items()}
        return self._types


class EncoderRegistry(ModuleRegistry):
    """Modality encoders: ``cls(spec, dim=..., **args)``, ``forward`` [B, ...] -> [B, dim]."""

    what = "encoder"


class FusionRegistry(ModuleRegistry):
    """Fusion strategies: ``cls(modalities, dim, outputs, **args)``, ``forward(features
    [B, M, dim], mask [B, M])`` -> [B, outputs]."""

    what = "fusion strategy"


_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def _module(entry: type | str) -> str:
    return entry.partition(":")[0] if isinstance(entry, str) else entry.__module__


def _check_module(what: str, name: str, encoder: object) -> None:
    from torch import nn

    if not (isinstance(encoder, type) and issubclass(encoder, nn.Module)):
        msg = f"{what} {name!r} must be a torch.nn.Module subclass"
        raise PluginError(msg)


def _resolve(what: str, name: str, entry: type[nn.Module] | str) -> type[nn.Module]:
    if not isinstance(entry, str):
        return entry
    module_name, _, attr = entry.partition(":")
    try:
        found: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError) as exc:
        msg = f"{what} {name!r}: cannot import {entry}: {exc}"
        raise PluginError(msg) from None
    _check_module(what, name, found)
    cls: type[nn.Module] = found
    return cls
