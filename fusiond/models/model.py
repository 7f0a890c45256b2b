"""The fusion model: one encoder per modality, then a fusion strategy."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fusiond.align.spec import InputSpec
from fusiond.errors import ModelError

__all__ = ["FusionModel", "Parts", "TASKS"]

TASKS = ("classification", "regression")


@dataclass(frozen=True)
class Parts:
    """The encoder and fusion classes models are built from, by name (a plugin adds its
    own through the hooks; :attr:`fusiond.plugin.Plugins.parts`)."""

    encoders: Mapping[str, type[nn.Module]]
    fusions: Mapping[str, type[nn.Module]]


class FusionModel(nn.Module):
    """Encoders (one per modality, in ``spec`` order) feeding one fusion module.

    ``classes`` names the outputs: class names for ``task="classification"`` (the output
    is logits), target names for ``task="regression"`` (the output is the values).
    """

    def __init__(
        self,
        spec: InputSpec,
        classes: list[str],
        encoders: Mapping[str, dict[str, Any]],
        fusion: dict[str, Any],
        parts: Parts,
        dim: int = 64,
        task: str = "classification",
        modality_heads: bool = False,
    ) -> None:
        super().__init__()
        if task not in TASKS:
            msg = f"unknown task {task!r}; known: {list(TASKS)}"
            raise ModelError(msg)
        self.task = task
        self.modalities = list(spec.modalities)
        self.spec = spec
        self.classes = list(classes)
        modules = {}
        for name in self.modalities:
            entry = encoders.get(name)
            if entry is None or entry.get("name") not in parts.encoders:
                msg = f"no encoder for modality {name!r} (asked for {entry!r})"
                raise ModelError(msg)
            cls = parts.encoders[entry["name"]]
            try:
                modules[name] = cls(spec.modalities[name], dim=dim, **entry.get("args", {}))
            except (TypeError, ValueError) as exc:
                msg = f"inputs.{name}.encoder_args: {exc}"
                raise ModelError(msg) from None
        self.encoders = nn.ModuleDict(modules)
        if fusion.get("name") not in parts.fusions:
            msg = f"unknown fusion strategy {fusion.get('name')!r}; known: {sorted(parts.fusions)}"
            raise ModelError(msg)
        fusion_cls = parts.fusions[fusion["name"]]
        serves = getattr(fusion_cls, "tasks", TASKS)
        if task not in serves:
            msg = f"fusion {fusion['name']!r} is for {' or '.join(serves)} only, not {task}"
            raise ModelError(msg)
        try:
            self.fusion = fusion_cls(len(self.modalities), dim, len(classes), **fusion.get("args", {}))
        except (TypeError, ValueError) as exc:
            msg = f"fusion_args: {exc}"
            raise ModelError(msg) from None
        self.has_heads = modality_heads and task == "classification"
        if self.has_heads:
            # A classifier per modality on its own features: what each sensor says by itself.
            self.heads = nn.ModuleDict({m: nn.Linear(dim, len(classes)) for m in self.modalities})
            # Per-modality temperatures, fitted on validation data after training (calibrate()).
            self.temperature: torch.Tensor
            self.register_buffer("temperature", torch.ones(len(self.modalities)))

    def features(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """[B, M, D] features, modalities in model order."""
        return torch.stack([self.encoders[m](inputs[m]) for m in self.modalities], dim=1)

    def forward(self, inputs: Mapping[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """Logits (or values) [B, K]; ``mask`` [B, M] is True where a modality is present."""
        logits: torch.Tensor = self.fusion(self.features(inputs), mask)
        return logits

    def forward_all(
        self, inputs: Mapping[str, torch.Tensor], mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The fused logits [B, K] and, with modality heads, each modality's own logits
        [B, M, K] divided by its temperature (calibrated; rows of masked modalities are
        meaningless: their input was zeros)."""
        features = self.features(inputs)
        fused: torch.Tensor = self.fusion(features, mask)
        if not self.has_heads:
            return fused, None
        own = torch.stack([self.heads[m](features[:, i]) for i, m in enumerate(self.modalities)], dim=1)
        return fused, own / self.temperature.view(1, -1, 1)
