"""A training recipe: the model to build and how to train it, from a TOML file.

    name = "digits"
    task = "classification"            # or "regression" (then: targets = ["speed"]), or "anomaly"
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

from pydantic import Field, PrivateAttr, ValidationInfo, model_validator

from fusiond.align.fit import builtin_kinds
from fusiond.align.kinds import KindRegistry, ModalityKind
from fusiond.align.spec import InputSpec, ModalitySpec
from fusiond.config import WindowSection, validate
from fusiond.errors import ConfigError
from fusiond.strict import Strict

__all__ = ["AnomalyTable", "InputTable", "load_recipe", "Recipe", "TrainTable"]


class InputTable(Strict):
    """``[inputs.<modality>]``: what the model takes of one modality, and its encoder."""

    kind: str
    """``frames``, ``series``, ``vector``, ``tokens``, or a kind a plugin adds."""
    length: int = Field(gt=0)
    channels: int = Field(1, gt=0)
    height: int = Field(0, ge=0)
    width: int = Field(0, ge=0)
    vocab: list[str] = Field(default_factory=list)
    """``tokens``: the words to know; empty: the ``vocab_size`` commonest words of the data."""
    vocab_size: int = Field(1000, gt=0, le=1_000_000)
    encoder: str = ""
    """Empty: the kind's default encoder."""
    encoder_args: dict[str, Any] = Field(default_factory=dict)
    augment: list[str] | None = None
    """Label-preserving variations for training (``fusiond/align/augment.py``), each applied
    to a window with probability one half; unset: the kind's default (text: word dropout)."""

    _kind: ModalityKind | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _valid_for_its_kind(self, info: ValidationInfo) -> InputTable:
        kinds: KindRegistry = (info.context or {}).get("kinds") or builtin_kinds()
        if self.kind not in kinds:
            msg = f"unknown modality kind {self.kind!r} (known: {', '.join(kinds)})"
            raise ValueError(msg)
        self._kind = kinds.get(self.kind)
        known = self.kind_of.augmentations
        unknown = [a for a in self.augment or () if a not in known]
        if unknown:
            can = ", ".join(known) or "none"
            msg = f"a {self.kind} input cannot be augmented with {unknown} (it can: {can})"
            raise ValueError(msg)
        if self.vocab or not self.kind_of.vocabulary:  # else the vocab comes from the data
            self.spec()  # the kind's own checks (frames need a size, ...)
        return self

    @property
    def kind_of(self) -> ModalityKind:
        """The kind object, from the registry the recipe was read with."""
        if self._kind is None:  # a table built in code, not read: a built-in kind
            self._kind = builtin_kinds().get(self.kind)
        return self._kind

    @property
    def encoder_name(self) -> str:
        """The encoder to build: the kind's default when not given; ``timm:resnet18`` and
        ``torchvision:resnet18`` name the built-in ``resnet18`` (their weights load as they are)."""
        name = self.encoder or self.kind_of.default_encoder
        library, sep, model = name.partition(":")
        return model if sep and library in ("timm", "torchvision") else name

    @property
    def augmentations(self) -> tuple[str, ...]:
        """The augmentations to train with."""
        return tuple(self.augment) if self.augment is not None else self.kind_of.default_augment

    def spec(self, vocab: tuple[str, ...] | None = None) -> ModalitySpec:
        """The input spec; ``vocab`` replaces the table's (one built from the data)."""
        words = tuple(self.vocab) if vocab is None else vocab
        return ModalitySpec(
            self.kind, self.length, self.channels, self.height, self.width, words, kind_of=self.kind_of
        )


class TrainTable(Strict):
    """``[train]``: the optimiser, the split and the robustness options."""

    epochs: int = Field(10, gt=0)
    batch_size: int = Field(64, gt=0)
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(1e-3, ge=0)
    modality_dropout: float = Field(0.3, ge=0, lt=1)
    """Each modality of each training window is hidden with this probability (never all)."""
    augment: bool = True
    """Each modality's kind varies the training windows in ways that keep their label."""
    modality_noise: float = Field(0.15, ge=0, lt=1)
    """Each modality of each training window is drowned in noise (0 dB SNR) with this probability."""
    modality_swap: float = Field(0.1, ge=0, lt=1)
    """Each modality of each training window is swapped for another class's with this
    probability while the label stays: a sensor that is confidently wrong."""
    head_weight: float = Field(0.5, ge=0)
    """Weight of the per-modality heads' loss (recipes with ``modality_scores``)."""
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    val_fraction: float = Field(0.15, ge=0, lt=1)
    test_fraction: float = Field(0.15, ge=0, lt=1)
    """Used only when no separate test data is given."""
    seed: int = 0
    reject_target: float = Field(0.99, gt=0, le=1)
    """Accuracy the reject option's thresholds are chosen for, on the validation windows
    (a classifier's checkpoint carries them; ``[model] reject = true`` applies them)."""
    device: str = "auto"
    amp: bool = True
    """Mixed precision on CUDA (bfloat16 where supported, else float16); CPU runs float32."""


class AnomalyTable(Strict):
    """``[anomaly]``: how a ``task = "anomaly"`` model scores (:mod:`fusiond.models.anomaly`)."""

    method: Literal["embedding", "stats"] = "embedding"
    """``embedding``: distances to the normal classes' encoder features (needs two or more
    normal classes to train the encoders on); ``stats``: per-channel statistics of the raw
    input, the untrained baseline."""
    false_alarm: float = Field(0.01, gt=0, lt=0.5)
    """Share of held-out normal windows the threshold lets through as anomalies."""


class Recipe(Strict):
    """The whole recipe file."""

    name: str
    task: Literal["classification", "regression", "anomaly"] = "classification"
    classes: list[str] = Field(default_factory=list)
    """Class names in output order; empty: the sorted labels found in the data. An anomaly
    model's normal classes: windows of other labels are left out of its training."""
    targets: list[str] = Field(default_factory=list)
    """Regression: the label-file columns to predict."""
    fusion: str = "attention"
    fusion_args: dict[str, Any] = Field(default_factory=dict)
    modality_scores: bool = True
    """A classifier also gets a head per modality, calibrated on the validation windows:
    every prediction then carries what each modality says by itself and how much they
    disagree (docs/protocol.md)."""
    dim: int = Field(64, gt=0)
    window: WindowSection = WindowSection()
    inputs: dict[str, InputTable]
    train: TrainTable = TrainTable()
    anomaly: AnomalyTable = AnomalyTable()

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        if not self.inputs:
            msg = "at least one [inputs.<modality>] table is needed"
            raise ValueError(msg)
        if self.task == "regression" and not self.targets:
            msg = "a regression recipe names its targets (label-file columns)"
            raise ValueError(msg)
        if self.task != "regression" and self.targets:
            msg = f"targets are for task = 'regression'; a {self.task} recipe names its classes"
            raise ValueError(msg)
        return self

    @property
    def spec(self) -> InputSpec:
        return InputSpec({m: t.spec() for m, t in self.inputs.items()})

    @property
    def encoders(self) -> dict[str, dict[str, Any]]:
        return {m: {"name": t.encoder_name, "args": dict(t.encoder_args)} for m, t in self.inputs.items()}

    def only(self, modalities: list[str]) -> Recipe:
        """The same recipe over a subset of its inputs (a unimodal baseline, say)."""
        unknown = sorted(set(modalities) - set(self.inputs))
        if unknown:
            msg = f"the recipe has no inputs {unknown} (it has {sorted(self.inputs)})"
            raise ConfigError(msg, path="inputs")
        return self.model_copy(update={"inputs": {m: self.inputs[m] for m in modalities}})


def load_recipe(path: Path, kinds: KindRegistry | None = None, **overrides: Any) -> Recipe:
    """Read a recipe; ``overrides`` replace top-level keys or, as ``train_<key>``, [train] keys.

    ``kinds``: the modality kinds its inputs may name (``plugins.kinds``; default: the
    built-in ones).
    """
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
    recipe = validate(Recipe, data, source=str(path), context={"kinds": kinds})
    inputs = {}
    for name, table in recipe.inputs.items():  # a weights file is found beside the recipe
        weights = table.encoder_args.get("weights")
        if isinstance(weights, str) and weights:
            args = {**table.encoder_args, "weights": str(path.parent / weights)}
            table = table.model_copy(update={"encoder_args": args})
        inputs[name] = table
    return recipe.model_copy(update={"inputs": inputs})
