"""The built-in encoders and fusion strategies, registered like any plugin's: by reference,
so that listing them does not import torch (:mod:`fusiond.models.encoders` and
:mod:`fusiond.models.fusion` hold the classes). The built-in modality kinds (:mod:`fusiond.align.fit`,
numpy only) register here too."""

from __future__ import annotations

from fusiond.align.fit import BUILTIN_KINDS
from fusiond.align.kinds import KindRegistry
from fusiond.plugin.hookspecs import hookimpl
from fusiond.plugin.registry import EncoderRegistry, FusionRegistry

__all__ = ["fusiond_add_encoders", "fusiond_add_fusions", "fusiond_add_modality_kinds"]


@hookimpl
def fusiond_add_encoders(registry: EncoderRegistry) -> None:
    """Register the built-in encoders."""
    registry.add("frames_cnn", "fusiond.models.encoders:FramesEncoder")
    registry.add("logmel_cnn", "fusiond.models.encoders:LogMelEncoder")
    registry.add("series_cnn", "fusiond.models.encoders:SeriesEncoder")
    registry.add("vector_mlp", "fusiond.models.encoders:VectorEncoder")
    registry.add("text_gru", "fusiond.models.encoders:TextEncoder")
    registry.add("resnet18", "fusiond.models.pretrained:ResNet18Encoder")
    registry.add("resnet34", "fusiond.models.pretrained:ResNet34Encoder")


@hookimpl
def fusiond_add_fusions(registry: FusionRegistry) -> None:
    """Register the built-in fusion strategies."""
    registry.add("early", "fusiond.models.fusion:ConcatFusion")
    registry.add("concat", "fusiond.models.fusion:ConcatFusion")
    registry.add("late", "fusiond.models.fusion:LateFusion")
    registry.add("intermediate", "fusiond.models.fusion:IntermediateFusion")
    registry.add("gated", "fusiond.models.fusion:GatedFusion")
    registry.add("agreement", "fusiond.models.fusion:AgreementFusion")
    registry.add("consensus", "fusiond.models.fusion:ConsensusFusion")
    registry.add("attention", "fusiond.models.fusion:AttentionFusion")


@hookimpl
def fusiond_add_modality_kinds(registry: KindRegistry) -> None:
    """Register the built-in modality kinds."""
    for kind in BUILTIN_KINDS:
        registry.add(kind)
