"""The built-in encoders and fusion strategies, registered like any plugin's: by reference,
so that listing them does not import torch (:mod:`fusiond.models.encoders` and
:mod:`fusiond.models.fusion` hold the classes). The built-in modality kinds register
themselves in :mod:`fusiond.align.fit`."""

from __future__ import annotations

from fusiond.plugin.hookspecs import hookimpl
from fusiond.plugin.registry import EncoderRegistry, FusionRegistry

__all__ = ["ENCODERS", "fusiond_add_encoders", "fusiond_add_fusions", "FUSIONS"]

ENCODERS = {
    "frames_cnn": "fusiond.models.encoders:FramesEncoder",
    "logmel_cnn": "fusiond.models.encoders:LogMelEncoder",
    "series_cnn": "fusiond.models.encoders:SeriesEncoder",
    "vector_mlp": "fusiond.models.encoders:VectorEncoder",
    "text_gru": "fusiond.models.encoders:TextEncoder",
    "resnet18": "fusiond.models.pretrained:ResNet18Encoder",
    "resnet34": "fusiond.models.pretrained:ResNet34Encoder",
}

FUSIONS = {
    "early": "fusiond.models.fusion:ConcatFusion",
    "concat": "fusiond.models.fusion:ConcatFusion",
    "late": "fusiond.models.fusion:LateFusion",
    "intermediate": "fusiond.models.fusion:IntermediateFusion",
    "gated": "fusiond.models.fusion:GatedFusion",
    "agreement": "fusiond.models.fusion:AgreementFusion",
    "consensus": "fusiond.models.fusion:ConsensusFusion",
    "attention": "fusiond.models.fusion:AttentionFusion",
}


@hookimpl
def fusiond_add_encoders(registry: EncoderRegistry) -> None:
    """Register the built-in encoders."""
    for name, ref in ENCODERS.items():
        registry.add(name, ref)


@hookimpl
def fusiond_add_fusions(registry: FusionRegistry) -> None:
    """Register the built-in fusion strategies."""
    for name, ref in FUSIONS.items():
        registry.add(name, ref)
