"""The serving contract: what a model takes and gives, read without torch.

A :class:`ModelCard` is everything serving needs of a model besides its weights: its
name, task, class (or target) names, window, each input's spec, whether the graph takes
the presence mask, what its output means, and the file's content hash. The daemon,
stream resolution, the prediction builder and ``check-config`` read only the card. A
fusiond checkpoint is a card plus weights.

:func:`read_card` reads one from ``[model] path``:

- a fusiond checkpoint (``.pt``): its metadata, unpickled with every torch object left
  out (no torch import, no code run, no weights read);
- an ONNX file fusiond exported: the card in its metadata (:data:`CARD_KEY`);
- any other ONNX file, with a ``card.toml`` beside it (``MODEL.card.toml``, else
  ``card.toml`` in the same folder): a model fusiond never saw (docs/models.md, "Your
  own model").
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import tomllib
import zipfile
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from fusiond.align.spec import InputSpec
from fusiond.errors import ConfigError, ModelError
from fusiond.strict import Strict

if TYPE_CHECKING:
    from fusiond.align.kinds import KindRegistry

__all__ = [
    "CARD_KEY",
    "FORMAT",
    "card_dict",
    "CardFile",
    "check_graph",
    "HASH_KEY",
    "NEAREST",
    "SCORE",
    "SHARES",
    "THRESHOLD",
    "ModelCard",
    "OUTPUTS",
    "read_card",
]

FORMAT = 1
"""The checkpoint format this fusiond reads and writes."""
HASH_KEY = "fusiond.content_hash"
"""An export's metadata entry naming the checkpoint it was made from (its content hash)."""
CARD_KEY = "fusiond.card"
"""An ONNX file's metadata entry with its card (JSON, :func:`card_dict`)."""
OUTPUTS = ("probabilities", "logits", "values", "anomaly")
"""What a model's first output holds: class probabilities, class logits (softmaxed when
served), a regressor's values, or fusiond's anomaly columns."""
SCORE, NEAREST, THRESHOLD, SHARES = 0, 1, 2, 3
"""Columns of an anomaly model's output: its score, nearest normal class, threshold, and
from ``SHARES`` on, each modality's share of the score (:mod:`fusiond.models.anomaly`)."""
_DTYPES = {"uint8": "tensor(uint8)", "float32": "tensor(float)", "int32": "tensor(int32)"}


@dataclass(frozen=True)
class ModelCard:
    """What serving needs of a model besides its weights."""

    name: str
    task: str
    classes: tuple[str, ...]
    """Class names (a classifier, an anomaly model), or target names (a regressor)."""
    window: Mapping[str, int]
    """``length_ns`` and ``hop_ns`` of the windows it was trained on (may be empty)."""
    spec: InputSpec
    """Each input, in the graph's order."""
    content_hash: str
    path: Path | None = None
    format: Literal["checkpoint", "onnx"] = "checkpoint"
    output: str = "probabilities"
    mask: bool = True
    """The graph takes the ``[B, M]`` presence mask as its input ``mask``. Without it, a
    missing modality reaches the model as its zeros (a warning says so at load)."""
    metrics: dict[str, Any] = field(default_factory=dict)
    anomaly: str = ""
    modality_heads: bool = False

    def kinds(self) -> KindRegistry:
        """The modality kinds its inputs name (to read its checkpoint's weights with)."""
        from fusiond.align.kinds import KindRegistry

        registry = KindRegistry()
        for spec in self.spec.modalities.values():
            registry.add(spec.kind_of)
        return registry


def read_card(path: Path, kinds: KindRegistry | None = None) -> ModelCard:
    """The card of the model at ``path`` (a checkpoint or an ONNX file); specs resolve
    against ``kinds`` (``plugins.kinds``; default: the built-in kinds). ModelError names
    the file and what is wrong."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        msg = f"no such model file: {path}"
        raise ModelError(msg) from None
    except OSError as exc:
        msg = f"cannot read model {path}: {exc.strerror}"
        raise ModelError(msg) from None
    digest = hashlib.sha256(data).hexdigest()[:16]
    if data.startswith(b"PK\x03\x04"):
        return _checkpoint_card(path, data, digest, kinds)
    if path.suffix == ".onnx":
        return _onnx_card(path, digest, kinds)
    msg = f"{path} is not a fusiond checkpoint (not a torch file) nor an .onnx file"
    raise ModelError(msg)


def card_dict(card: ModelCard) -> dict[str, Any]:
    """The card as plain data: what an export carries in its metadata (JSON), each input's
    shape and dtype after fitting included, so that another program can feed the file."""
    if card.task == "anomaly":
        outputs = {
            "out": "float32 [batch, 3 + M]: anomaly score, nearest normal class (-1: none), "
            "threshold for the window's present modalities, then each modality's share of the score"
        }
    elif card.task == "regression":
        outputs = {"out": "float32 [batch, K]: the value of each target in classes"}
    else:
        what = "logit" if card.output == "logits" else "probability"
        outputs = {"out": f"float32 [batch, K]: the {what} of each class in classes"}
        if card.modality_heads:
            outputs["modalities"] = (
                "float32 [batch, M, K]: each modality's own calibrated class probabilities"
            )
    spec = card.spec.modalities
    return {
        "name": card.name,
        "task": card.task,
        "classes": list(card.classes),
        "window": dict(card.window),
        "output": card.output,
        "inputs": [
            {
                "name": m,
                **s.to_dict(),
                "shape": ["batch", *s.shape],
                "dtype": str(s.dtype),
                "fit": " ".join((type(s.kind_of).__doc__ or "").split()),
            }
            for m, s in spec.items()
        ],
        "mask": {
            "name": "mask",
            "shape": ["batch", len(spec)],
            "dtype": "bool",
            "meaning": "True where the modality (in inputs order) is present; a missing one's input is zeros",
        }
        if card.mask
        else None,
        "outputs": outputs,
        "content_hash": card.content_hash,
        **({"anomaly": card.anomaly} if card.anomaly else {}),
    }


def check_graph(card: ModelCard, inputs: Sequence[Any], outputs: Sequence[Any]) -> None:
    """ModelError naming the mismatch when an ONNX graph's inputs and outputs (onnxruntime's
    ``NodeArg`` lists) are not what ``card`` says: each input by name, with its dtype and
    its fixed sizes; the mask; one output of K columns."""
    where = card.path or card.name
    graph = {i.name: i for i in inputs}
    wanted = [*card.spec.modalities, *(["mask"] if card.mask else [])]
    extra = sorted(set(graph) - set(wanted))
    missing = [name for name in wanted if name not in graph]
    if missing or extra:
        msg = f"{where}: the card's inputs {wanted} do not match the graph's {list(graph)}"
        if not card.mask and "mask" in extra:
            msg += " (the graph takes a mask: set mask = true in the card)"
        raise ModelError(msg)
    for name, spec in card.spec.modalities.items():
        arg, want = graph[name], (-1, *spec.shape)
        if arg.type != _DTYPES.get(str(spec.dtype)):
            msg = f"{where}: input {name!r} is {arg.type} in the graph, but its card says {spec.dtype}"
            raise ModelError(msg)
        shape = [d if isinstance(d, int) and d > 0 else -1 for d in arg.shape]
        if len(shape) != len(want) or any(g not in (-1, w) for g, w in zip(shape, want, strict=False)):
            msg = (
                f"{where}: input {name!r} is {list(arg.shape)} in the graph, but its card makes "
                f"{['batch', *spec.shape]} ({spec.kind}, length {spec.length}, channels {spec.channels})"
            )
            raise ModelError(msg)
    if card.mask and graph["mask"].type != "tensor(bool)":
        msg = f"{where}: the mask input is {graph['mask'].type}; it must be bool [batch, {len(wanted) - 1}]"
        raise ModelError(msg)
    width = outputs[0].shape[-1] if outputs and len(outputs[0].shape) == 2 else None
    columns = 3 + len(card.spec.modalities) if card.task == "anomaly" else len(card.classes)
    if width is not None and isinstance(width, int) and width != columns:
        msg = f"{where}: the graph's output {outputs[0].name!r} has {width} columns; the card names {columns}"
        raise ModelError(msg)


class CardInput(Strict):
    """``[inputs.<name>]`` of a ``card.toml``: one graph input, named as in the graph."""

    kind: str
    length: int = Field(gt=0)
    channels: int = Field(1, gt=0)
    height: int = Field(0, ge=0)
    width: int = Field(0, ge=0)
    vocab: list[str] = Field(default_factory=list)


class CardFile(Strict):
    """A ``card.toml``: the card of an ONNX model fusiond never saw."""

    name: str = Field(min_length=1, max_length=64)
    task: Literal["classification", "regression"] = "classification"
    classes: list[str] = Field(default_factory=list, max_length=100_000)
    targets: list[str] = Field(default_factory=list, max_length=100_000)
    output: Literal["probabilities", "logits", "values"] = "probabilities"
    mask: bool = True
    window_ms: float = Field(0.0, ge=0.0, le=3_600_000.0)
    """The window length it was trained on (0: unknown, not checked)."""
    hop_ms: float = Field(0.0, ge=0.0, le=3_600_000.0)
    inputs: dict[str, CardInput] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> CardFile:
        if self.task == "classification" and (len(self.classes) < 2 or self.targets):
            msg = "a classifier's card lists two or more classes (and no targets)"
            raise ValueError(msg)
        if self.task == "regression" and (not self.targets or self.classes or self.output != "values"):
            msg = 'a regressor\'s card lists its targets, no classes, and output = "values"'
            raise ValueError(msg)
        if self.task == "classification" and self.output == "values":
            msg = 'a classifier\'s output is "probabilities" or "logits"'
            raise ValueError(msg)
        return self


def _card_file(onnx: Path) -> Path | None:
    for candidate in (onnx.with_suffix(".card.toml"), onnx.with_name("card.toml")):
        if candidate.is_file():
            return candidate
    return None


def _from_card_toml(path: Path, onnx: Path, digest: str, kinds: KindRegistry | None) -> ModelCard:
    from fusiond.config import validate

    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        msg = f"cannot read {path}: {exc}"
        raise ModelError(msg) from None
    except tomllib.TOMLDecodeError as exc:
        msg = f"{path}: not valid TOML: {exc}"
        raise ModelError(msg) from None
    try:
        card = validate(CardFile, data, source=str(path))
    except ConfigError as exc:
        raise ModelError(str(exc)) from None
    fields = {
        name: {**table.model_dump(), "vocab": tuple(table.vocab)} for name, table in card.inputs.items()
    }
    try:
        spec = InputSpec.from_dict(fields, kinds)
    except ValueError as exc:
        msg = f"{path}: inputs: {exc}"
        raise ModelError(msg) from None
    window = (
        {"length_ns": round(card.window_ms * 1e6), "hop_ns": round((card.hop_ms or card.window_ms / 2) * 1e6)}
        if card.window_ms
        else {}
    )
    return ModelCard(
        name=card.name,
        task=card.task,
        classes=tuple(card.classes or card.targets),
        window=window,
        spec=spec,
        content_hash=digest,
        path=onnx,
        format="onnx",
        output=card.output,
        mask=card.mask,
    )


def _onnx_card(path: Path, digest: str, kinds: KindRegistry | None) -> ModelCard:
    beside = _card_file(path)
    if beside is not None:  # the user's word wins over metadata that may be stale
        return _from_card_toml(beside, path, digest, kinds)
    meta = _onnx_metadata(path)
    if CARD_KEY not in meta:
        msg = (
            f"{path} carries no fusiond card in its metadata and there is no "
            f"{path.with_suffix('.card.toml').name} or card.toml beside it (docs/models.md, 'Your own model')"
        )
        raise ModelError(msg)
    try:
        data = json.loads(meta[CARD_KEY])
        fields = {i["name"]: {k: i[k] for k in _SPEC_FIELDS if k in i} for i in data["inputs"]}
        spec = InputSpec.from_dict(fields, kinds)
        return ModelCard(
            name=str(data["name"]),
            task=str(data["task"]),
            classes=tuple(str(c) for c in data["classes"]),
            window={k: int(v) for k, v in dict(data.get("window") or {}).items()},
            spec=spec,
            content_hash=digest,
            path=path,
            format="onnx",
            output=str(data.get("output", "anomaly" if data["task"] == "anomaly" else "probabilities")),
            mask=data.get("mask") is not None,
            anomaly=str(data.get("anomaly", "")),
            modality_heads="modalities" in data.get("outputs", {}),
        )
    except (KeyError, TypeError, ValueError) as exc:
        msg = f"{path}: its fusiond card is invalid: {type(exc).__name__}: {exc}"
        raise ModelError(msg) from None


_SPEC_FIELDS = ("kind", "length", "channels", "height", "width", "vocab")


def _onnx_metadata(path: Path) -> dict[str, str]:
    try:
        import onnxruntime
    except ImportError:
        msg = f"{path} is an ONNX model, and onnxruntime serves those: pip install 'fusiond[onnx]'"
        raise ModelError(msg) from None
    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types, one per failure
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        msg = f"{path} is not an ONNX model onnxruntime can load: {first}"
        raise ModelError(msg) from None
    return dict(session.get_modelmeta().custom_metadata_map)


class _MetadataOnly(pickle.Unpickler):
    """A checkpoint's pickle with every torch object (tensors, storages) read as None: the
    metadata around them is plain data. Nothing outside an allow-list is ever imported."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module == "torch" or module.startswith("torch."):
            return _nothing
        msg = f"a checkpoint does not hold {module}.{name}"
        raise pickle.UnpicklingError(msg)

    def persistent_load(self, pid: Any) -> None:
        return None


def _nothing(*args: Any, **kwargs: Any) -> None:
    return None


def _checkpoint_card(path: Path, data: bytes, digest: str, kinds: KindRegistry | None) -> ModelCard:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            pickled = next(n for n in archive.namelist() if n.endswith("/data.pkl"))
            payload = _MetadataOnly(io.BytesIO(archive.read(pickled))).load()
    except (zipfile.BadZipFile, StopIteration, pickle.UnpicklingError, EOFError, ValueError) as exc:
        msg = f"{path} is not a fusiond checkpoint (torch could not read it: {type(exc).__name__})"
        raise ModelError(msg) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        msg = f"{path} is not a fusiond checkpoint of format {FORMAT}"
        raise ModelError(msg)
    try:
        task = str(payload.get("task", "classification"))
        return ModelCard(
            name=str(payload["name"]),
            task=task,
            classes=tuple(str(c) for c in payload["classes"]),
            window={k: int(v) for k, v in dict(payload["window"]).items()},
            spec=InputSpec.from_dict(payload["spec"], kinds),
            content_hash=digest,
            path=path,
            format="checkpoint",
            output={"anomaly": "anomaly", "regression": "values"}.get(task, "probabilities"),
            metrics=dict(payload.get("metrics") or {}),
            anomaly=str(payload.get("anomaly", "")),
            modality_heads=any(str(k).startswith("heads.") for k in payload.get("state_dict") or {}),
        )
    except (KeyError, TypeError, ValueError) as exc:
        msg = f"{path}: checkpoint field missing or invalid: {exc}"
        raise ModelError(msg) from None
