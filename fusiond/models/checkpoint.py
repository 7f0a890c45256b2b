"""Checkpoints: a model's weights plus everything the daemon needs to serve it."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from fusiond.align.spec import InputSpec
from fusiond.errors import ModelError
from fusiond.models.card import FORMAT, ModelCard, has_heads, output_of, unreadable
from fusiond.models.model import FusionModel, Parts

if TYPE_CHECKING:
    from fusiond.align.kinds import KindRegistry

__all__ = ["Checkpoint", "FORMAT", "load", "save"]


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model plus its metadata."""

    name: str
    spec: InputSpec
    classes: list[str]
    encoders: dict[str, dict[str, Any]]
    fusion: dict[str, Any]
    dim: int
    window: Mapping[str, float]
    metrics: dict[str, Any] = field(default_factory=dict)
    data_hash: str = ""
    content_hash: str = ""
    state_dict: dict[str, torch.Tensor] = field(default_factory=dict)
    task: str = "classification"
    path: Path | None = None
    """The file it was loaded from (None when built in memory)."""
    anomaly: str = ""
    """An anomaly model's method (``embedding`` or ``stats``), else empty."""

    @property
    def card(self) -> ModelCard:
        """What serving needs of it besides the weights."""
        return ModelCard(
            name=self.name,
            task=self.task,
            classes=tuple(self.classes),
            window={k: int(v) for k, v in self.window.items()},
            spec=self.spec,
            content_hash=self.content_hash,
            path=self.path,
            output=output_of(self.task),
            metrics=self.metrics,
            anomaly=self.anomaly,
            modality_heads=has_heads(self.state_dict),
        )

    def build(self, parts: Parts) -> FusionModel:
        """The model with its weights loaded, in eval mode."""
        heads = has_heads(self.state_dict)  # older checkpoints have none
        model = FusionModel(
            self.spec,
            self.classes,
            self.encoders,
            self.fusion,
            parts,
            self.dim,
            self.task,
            heads,
            self.anomaly or "embedding",
        )
        if self.state_dict:
            try:
                model.load_state_dict(self.state_dict)
            except RuntimeError as exc:
                msg = f"checkpoint {self.name!r} does not fit its own model: {exc}"
                raise ModelError(msg) from None
        return model.eval()


def save(
    model: FusionModel,
    path: Path,
    *,
    name: str,
    encoders: dict[str, dict[str, Any]],
    fusion: dict[str, Any],
    dim: int,
    window: Mapping[str, float],
    metrics: dict[str, Any] | None = None,
    data_hash: str = "",
) -> str:
    """Write a checkpoint; returns its content hash."""
    payload = {
        "format": FORMAT,
        "name": name,
        "spec": model.spec.to_dict(),
        "task": model.task,
        "classes": model.classes,
        "encoders": encoders,
        "fusion": fusion,
        "dim": dim,
        "window": dict(window),
        "metrics": metrics or {},
        "data_hash": data_hash,
        **({"anomaly": model.anomaly.method} if model.anomaly is not None else {}),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()[:16]


def load(path: Path, kinds: KindRegistry | None = None) -> Checkpoint:
    """Read a checkpoint (weights only: no code in it is ever run); its input specs name
    modality kinds of ``kinds`` (``plugins.kinds``; default: the built-in ones)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise unreadable(path, exc) from None
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch's own message runs to a dozen lines of advice on pickles
        why = "torch could not read it" if data.startswith(b"PK\x03\x04") else "not a torch file"
        msg = f"{path} is not a fusiond checkpoint ({why}: {type(exc).__name__})"
        raise ModelError(msg) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        msg = f"{path} is not a fusiond checkpoint of format {FORMAT}"
        raise ModelError(msg)
    try:
        return Checkpoint(
            name=payload["name"],
            spec=InputSpec.from_dict(payload["spec"], kinds),
            classes=list(payload["classes"]),
            encoders=payload["encoders"],
            fusion=payload["fusion"],
            dim=int(payload["dim"]),
            window=payload["window"],
            metrics=payload.get("metrics", {}),
            data_hash=payload.get("data_hash", ""),
            content_hash=hashlib.sha256(data).hexdigest()[:16],
            state_dict=payload["state_dict"],
            task=payload.get("task", "classification"),
            path=path,
            anomaly=str(payload.get("anomaly", "")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        msg = f"{path}: checkpoint field missing or invalid: {exc}"
        raise ModelError(msg) from None
