"""Plugins: hook specs, the registries hooks add to, and loading them from entry points."""

from fusiond.plugin.hookspecs import hookimpl, hookspec
from fusiond.plugin.manager import Plugins, load_plugins
from fusiond.plugin.registry import EncoderRegistry, FusionRegistry, OutputRegistry, SourceRegistry

__all__ = [
    "EncoderRegistry",
    "FusionRegistry",
    "OutputRegistry",
    "Plugins",
    "SourceRegistry",
    "hookimpl",
    "hookspec",
    "load_plugins",
]
