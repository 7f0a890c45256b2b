"""The engines that run a daemon's components, by name: one module and one entry each.

An engine is a class with the :class:`~fusiond.runtime.engine.EngineClass` methods (where
its components' sockets go, how to make one) whose instances are an
:class:`~fusiond.runtime.engine.Engine` (start, poll, rows, stop, kill). The daemon and
``run --replay`` ask this table for one by the name :func:`engine_name` gives a config and
never branch on it; a caller may pass a table of its own (tests do, with a toy engine).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING

from fusiond.errors import ConfigError

if TYPE_CHECKING:
    from fusiond.config import Config
    from fusiond.runtime.engine import EngineClass

__all__ = ["engine_class", "engine_name", "ENGINES"]

ENGINES: Mapping[str, str] = {
    "threads": "fusiond.runtime.engine:ThreadEngine",
    "processes": "fusiond.runtime.engine:ProcessEngine",
    "ray": "fusiond.runtime.ray_engine:RayEngine",
}
"""Engine name -> ``module:Class``, imported only when chosen (Ray is an extra)."""


def engine_name(config: Config) -> str:
    """``[runtime] engine``: ``local`` is ``threads`` with one worker, else ``processes``."""
    engine = config.runtime.engine
    if engine == "local":
        return "threads" if config.runtime.workers == 1 else "processes"
    return engine


def engine_class(name: str, table: Mapping[str, str | EngineClass] = ENGINES) -> EngineClass:
    """The engine class called ``name`` in ``table`` (a ``module:Class`` path or the class)."""
    found = table.get(name)
    if found is None:
        msg = f"no engine {name!r}; known: {', '.join(sorted(table))}"
        raise ConfigError(msg, path="runtime.engine")
    if not isinstance(found, str):
        return found
    module, _, attr = found.partition(":")
    cls: EngineClass = getattr(importlib.import_module(module), attr)
    return cls
