"""The fusion model: one encoder per modality, then a fusion strategy."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fusiond.align.spec import InputSpec
from fusiond.errors import ModelError
from fusiond.models.anomaly import AnomalyHead, features_of, stats_dim

__all__ = ["FusionModel", "Parts", "TASKS"]

TASKS = ("classification", "regression", "anomaly")


@dataclass(frozen=True)
class Parts:
    """The encoder and fusion classes models are built from, by name (a plugin adds its
    own through the hooks; :attr:`fusiond.plugin.Plugins.parts`)."""

    encoders: Mapping[str, type[nn.Module]]
    fusions: Mapping[str, type[nn.Module]]


class FusionModel(nn.Module):
    """Encoders (one per modality, in ``spec`` order) feeding one fusion module.

    ``classes`` names the outputs: class names for ``task="classification"`` (the output
    is logits), target names for ``task="regression"`` (the output is the values). A
    ``task="anomaly"`` model is a classifier of its normal ``classes`` (with ``stats`` its
    encoders are not trained) with an :class:`~fusiond.models.anomaly.AnomalyHead` over
    its features (``anomaly``: the method, ``embedding`` or ``stats``); it serves the
    head's scores (:meth:`serve`).
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
        anomaly: str = "embedding",
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
        if ("classification" if task == "anomaly" else task) not in serves:
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
        self.anomaly: AnomalyHead | None = None
        if task == "anomaly":
            try:
                if anomaly == "stats":
                    width = max(stats_dim(s.shape) for s in spec.modalities.values())
                    self.anomaly = AnomalyHead(anomaly, len(self.modalities), 1, width)
                else:
                    self.anomaly = AnomalyHead(anomaly, len(self.modalities), len(classes), dim)
            except ValueError as exc:
                raise ModelError(str(exc)) from None

    def features(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """[B, M, D] features, modalities in model order."""
        return torch.stack([self.encoders[m](inputs[m]) for m in self.modalities], dim=1)

    def anomaly_features(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """[B, M, D] the features the anomaly head measures (an anomaly model)."""
        assert self.anomaly is not None
        width = self.anomaly.means.shape[2]
        return features_of(self.anomaly.method, self.encoders, self.modalities, inputs, width)

    def serve(
        self, inputs: Mapping[str, torch.Tensor], mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """What is served: probabilities [B, K] (a classifier; with modality heads also
        each one's [B, M, K]), values [B, K] (a regressor) or the anomaly head's
        [B, 3 + M] (:mod:`fusiond.models.anomaly`)."""
        if self.anomaly is not None:
            if self.anomaly.method == "stats":
                return self.anomaly(self.anomaly_features(inputs), mask), None
            features = self.features(inputs)
            return self.anomaly(features, mask, self.fusion(features, mask)), None
        out, own = self.forward_all(inputs, mask)
        if self.task == "regression":
            return out.float(), None
        probs = torch.softmax(out.float(), dim=1)
        return probs, None if own is None else torch.softmax(own.float(), dim=2)

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
