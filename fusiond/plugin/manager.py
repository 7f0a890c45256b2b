"""Build a plugin manager: built-in encoders, then every ``fusiond`` entry point."""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from fusiond.align.kinds import KindRegistry
from fusiond.errors import PluginError
from fusiond.plugin import hookspecs
from fusiond.plugin.registry import EncoderRegistry, FusionRegistry, OutputRegistry, SourceRegistry

__all__ = ["GROUP", "load_plugins", "Plugins"]

log = logging.getLogger(__name__)
GROUP = "fusiond"


@dataclass
class Plugins:
    """The loaded plugins and what they registered."""

    manager: pluggy.PluginManager
    sources: SourceRegistry
    outputs: OutputRegistry = field(default_factory=OutputRegistry)
    kinds: KindRegistry = field(default_factory=KindRegistry)
    """Modality kinds, the built-in ones included: what input specs resolve against."""
    origins: dict[str, str] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    _encoders: EncoderRegistry | None = None
    _fusions: FusionRegistry | None = None

    @property
    def encoders(self) -> EncoderRegistry:
        """Encoders, collected on first use (``types`` imports torch; sources never need it)."""
        if self._encoders is None:
            self._register_builtin()
            self._encoders = EncoderRegistry()
            self.manager.hook.fusiond_add_encoders(registry=self._encoders)
        return self._encoders

    @property
    def fusions(self) -> FusionRegistry:
        """Fusion strategies, collected on first use."""
        if self._fusions is None:
            self._register_builtin()
            self._fusions = FusionRegistry()
            self.manager.hook.fusiond_add_fusions(registry=self._fusions)
        return self._fusions

    @property
    def parts(self) -> Any:
        """What models are built from: :class:`fusiond.models.model.Parts` (imports torch)."""
        from fusiond.models.model import Parts

        return Parts(self.encoders.types, self.fusions.types)

    def _register_builtin(self) -> None:
        from fusiond.plugin import builtin

        if not self.manager.is_registered(builtin):
            self.manager.register(builtin, name="fusiond.builtin")

    def origin(self, obj: type | str) -> str:
        """Where a registered class (or module) came from: ``dist version (module)``."""
        module = obj if isinstance(obj, str) else obj.__module__
        for prefix, where in self.origins.items():
            if module == prefix or module.startswith(prefix + "."):
                return f"{where} ({module})"
        return module


def load_plugins(extra: Iterable[Any] = (), *, entry_points: bool = True) -> Plugins:
    """Load every plugin; one that fails to import is reported in ``failures``, not fatal."""
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    plugins = Plugins(pm, SourceRegistry())
    plugins.origins["fusiond"] = f"fusiond {importlib.metadata.version('fusiond')}"
    if entry_points:
        for ep in importlib.metadata.entry_points(group=GROUP):
            _load_entry_point(plugins, ep)
    for obj in extra:
        pm.register(obj)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        msg = f"plugin {exc.plugin!r} has a hook fusiond does not define: {exc}"
        raise PluginError(msg) from None
    pm.hook.fusiond_add_sources(registry=plugins.sources)
    pm.hook.fusiond_add_outputs(registry=plugins.outputs)
    plugins._register_builtin()
    pm.hook.fusiond_add_modality_kinds(registry=plugins.kinds)
    return plugins


def _load_entry_point(plugins: Plugins, ep: importlib.metadata.EntryPoint) -> None:
    dist = ep.dist.name if ep.dist else "?"
    version = ep.dist.version if ep.dist else ""
    if plugins.manager.get_plugin(ep.name) is not None:
        return
    try:
        plugin = ep.load()
    except Exception as exc:
        plugins.failures[ep.name] = f"{dist}: {type(exc).__name__}: {exc}"
        log.error("plugin %s from %s failed to load: %s", ep.name, dist, exc)
        return
    plugins.manager.register(plugin, name=ep.name)
    module = getattr(plugin, "__name__", ep.module)
    plugins.origins[module] = f"{dist} {version}".strip()
