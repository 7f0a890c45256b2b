"""The hooks a fusiond plugin can implement (documented in docs/plugins.md).

A plugin is a module (or object) exposing functions marked ``@fusiond.hookimpl`` and named
after these specs, found through the ``fusiond`` entry-point group. Samples never pass
through hooks: hooks only add kinds to registries at start-up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from fusiond.align.kinds import KindRegistry
    from fusiond.plugin.registry import EncoderRegistry, FusionRegistry, OutputRegistry, SourceRegistry

__all__ = [
    "fusiond_add_encoders",
    "fusiond_add_fusions",
    "fusiond_add_modality_kinds",
    "fusiond_add_outputs",
    "fusiond_add_sources",
    "hookimpl",
    "hookspec",
]

hookspec = pluggy.HookspecMarker("fusiond")
hookimpl = pluggy.HookimplMarker("fusiond")


@hookspec
def fusiond_add_sources(registry: SourceRegistry) -> None:
    """Add source kinds.

    Called once when fusiond starts (daemon, ``fusiond source``, ``fusiond plugins``),
    before any config is validated. Call ``registry.add(cls)`` for each
    :class:`fusiond.sources.Source` subclass the plugin provides; its ``kind`` must be
    unique across all installed plugins.

    :param registry: the source registry being built.
    """


@hookspec
def fusiond_add_encoders(registry: EncoderRegistry) -> None:
    """Add modality encoders that checkpoints can name.

    Called once when a model is loaded or built. Call ``registry.add(name, cls)`` where
    ``cls(spec, dim=..., **args)`` is a ``torch.nn.Module`` whose ``forward_features``
    maps a batch of one modality to features of shape ``[B, dim]``.

    :param registry: the encoder registry being built.
    """


@hookspec
def fusiond_add_fusions(registry: FusionRegistry) -> None:
    """Add fusion strategies that recipes and checkpoints can name.

    Called once when a model is loaded or built. Call ``registry.add(name, cls)`` (or
    ``registry.add(name, "module:Class")``, imported only when a model needs it) where
    ``cls(modalities, dim, outputs, **args)`` is a ``torch.nn.Module`` whose ``forward(features,
    mask)`` maps features ``[B, M, dim]`` and the presence mask ``[B, M]`` (True where a
    modality is present) to ``[B, outputs]``. A masked modality must not change the output.
    The built-in strategies (``early``, ``late``, ...) are registered the same way.

    :param registry: the fusion registry being built.
    """


@hookspec
def fusiond_add_modality_kinds(registry: KindRegistry) -> None:
    """Add modality kinds that input specs (recipes, checkpoints) can name.

    Called once when plugins are loaded, before any config or checkpoint is read. Call
    ``registry.add(cls)`` for each :class:`fusiond.align.kinds.ModalityKind` subclass: it
    checks a block from the wire, fits a window's blocks to the model's input, makes the
    input of a missing modality, and corrupts or augments batches for training.

    :param registry: the process-wide kind registry.
    """


@hookspec
def fusiond_add_outputs(registry: OutputRegistry) -> None:
    """Add output kinds: where predictions go besides the bus (``[outputs.<name>] kind``).

    Called once when plugins are loaded. Call ``registry.add(cls)`` for each
    :class:`fusiond.outputs.Output` subclass; its ``kind`` must be unique. Each configured
    output runs in a bridge process of its own, fed the predictions from the bus.

    :param registry: the output registry being built.
    """
