"""The built-in encoders, registered like any plugin's: by reference, so that listing them
does not import torch (:mod:`fusiond.models.encoders` holds the classes)."""

from __future__ import annotations

from fusiond.plugin.hookspecs import hookimpl
from fusiond.plugin.registry import EncoderRegistry

ENCODERS = {
    "frames_cnn": "fusiond.models.encoders:FramesEncoder",
    "logmel_cnn": "fusiond.models.encoders:LogMelEncoder",
    "series_cnn": "fusiond.models.encoders:SeriesEncoder",
    "vector_mlp": "fusiond.models.encoders:VectorEncoder",
}


@hookimpl
def fusiond_add_encoders(registry: EncoderRegistry) -> None:
    """Register the built-in encoders."""
    for name, ref in ENCODERS.items():
        registry.add(name, ref)
