"""A training recipe: the model to build and how to train it, from a TOML file.

    name = "digits"
    task = "classification"            # or "regression" (then: targets = ["speed"])
    fusion = "attention"               # early, late, intermediate, gated, attention
    dim = 64

    [window]                           # as the daemon's [window]
    length_ms = 1000

    [inputs.video]                     # one table per modality
    kind = "frames"
    length = 4
    channels = 1
    height = 32
    width = 32
    encoder = "frames_cnn"

    [train]
    epochs = 10

Errors name the TOML path and the value, like the daemon's config.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fusiond.align.spec import InputSpec, ModalitySpec
from fusiond.config import WindowSection, validate
from fusiond.errors import ConfigError


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputTable(_Table):
    """``[inputs.<modality>]``: what the model takes of one modality, and its encoder."""

    kind: Literal["frames", "series"]
    length: int = Field(gt=0)
    channels: int = Field(1, gt=0)
    height: int = Field(0, ge=0)
    width: int = Field(0, ge=0)
    encoder: str
    encoder_args: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _frames_have_a_size(self) -> InputTable:
        if self.kind == "frames" and not (self.height and self.width):
            msg = "frames need a positive height and width"
            raise ValueError(msg)
        return self

    def spec(self) -> ModalitySpec:
        return ModalitySpec(self.kind, self.length, self.channels, self.height, self.width)


class TrainTable(_Table):
    """``[train]``: the optimiser, the split and the robustness options."""

    epochs: int = Field(10, gt=0)
    batch_size: int = Field(64, gt=0)
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(1e-3, ge=0)
    modality_dropout: float = Field(0.3, ge=0, lt=1)
    """Each modality of each training window is hidden with this probability (never all)."""
    modality_noise: float = Field(0.15, ge=0, lt=1)
    """Each modality of each training window is drowned in noise (0 dB SNR) with this probability."""
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    val_fraction: float = Field(0.15, ge=0, lt=1)
    test_fraction: float = Field(0.15, ge=0, lt=1)
    """Used only when no separate test data is given."""
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    """Mixed precision on CUDA (bfloat16 where supported, else float16); CPU runs float32."""


class Recipe(_Table):
    """The whole recipe file."""

    name: str
    task: Literal["classification", "regression"] = "classification"
    classes: list[str] = Field(default_factory=list)
    """Class names in output order; empty: the sorted labels found in the data."""
    targets: list[str] = Field(default_factory=list)
    """Regression: the label-file columns to predict."""
    fusion: str = "attention"
    fusion_args: dict[str, Any] = Field(default_factory=dict)
    dim: int = Field(64, gt=0)
    window: WindowSection = WindowSection()
    inputs: dict[str, InputTable]
    train: TrainTable = TrainTable()

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        if not self.inputs:
            msg = "at least one [inputs.<modality>] table is needed"
            raise ValueError(msg)
        if self.task == "regression" and not self.targets:
            msg = "a regression recipe names its targets (label-file columns)"
            raise ValueError(msg)
        return self

    @property
    def spec(self) -> InputSpec:
        return InputSpec({m: t.spec() for m, t in self.inputs.items()})

    @property
    def encoders(self) -> dict[str, dict[str, Any]]:
        return {m: {"name": t.encoder, "args": dict(t.encoder_args)} for m, t in self.inputs.items()}

    def only(self, modalities: list[str]) -> Recipe:
        """The same recipe over a subset of its inputs (a unimodal baseline, say)."""
        unknown = sorted(set(modalities) - set(self.inputs))
        if unknown:
            msg = f"the recipe has no inputs {unknown} (it has {sorted(self.inputs)})"
            raise ConfigError(msg, path="inputs")
        return self.model_copy(update={"inputs": {m: self.inputs[m] for m in modalities}})


def load_recipe(path: Path, **overrides: Any) -> Recipe:
    """Read a recipe; ``overrides`` replace top-level keys or, as ``train_<key>``, [train] keys."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        msg = f"recipe not found: {path}"
        raise ConfigError(msg) from None
    except tomllib.TOMLDecodeError as exc:
        msg = f"not valid TOML: {exc}"
        raise ConfigError(msg, source=str(path)) from None
    train = dict(data.get("train", {}))
    for key, value in overrides.items():
        if value is None:
            continue
        if key.startswith("train_"):
            train[key.removeprefix("train_")] = value
        else:
            data[key] = value
    if train:
        data["train"] = train
    return validate(Recipe, data, source=str(path))
