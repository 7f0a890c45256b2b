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
  own model"). ``MODEL.card.toml`` wins over a card in the file's metadata; a folder's
  ``card.toml`` does not (it may well be another model's).

A model file is an administrator's, not a peer on the bus, yet a broken or hostile one
is still one line: a checkpoint's metadata is read with a size cap and an allow-list,
and whatever reading a file raises becomes a :class:`~fusiond.errors.ModelError`.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import pickle
import re
import tomllib
import zipfile
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from fusiond.align.spec import InputSpec
from fusiond.bus.wire import MAX_CLASS_LEN, MAX_CLASSES, NAME_RE
from fusiond.errors import ConfigError, ModelError
from fusiond.strict import Strict

if TYPE_CHECKING:
    from fusiond.align.kinds import KindRegistry

__all__ = [
    "CARD_KEY",
    "FORMAT",
    "card_columns",
    "card_dict",
    "CardFile",
    "check_graph",
    "has_heads",
    "HASH_KEY",
    "NEAREST",
    "SCORE",
    "SHARES",
    "THRESHOLD",
    "unreadable",
    "ModelCard",
    "output_of",
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
MAX_METADATA_BYTES = 16 * 2**20
"""The most a checkpoint's pickled metadata (``data.pkl``, the weights are apart) may unpack to."""
MAX_INPUT_ELEMENTS = 2**27
"""The most values one window's input of a model may hold (128 M: 4 frames of 4K colour)."""
_NAME = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
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
        with path.open("rb") as f:
            magic = f.read(4)
        digest = _digest(path)
    except OSError as exc:
        raise unreadable(path, exc) from None
    if path.suffix.lower() == ".onnx":
        reader = _onnx_card
    elif magic == b"PK\x03\x04":
        reader = _checkpoint_card
    else:
        msg = f"{path} is not a fusiond checkpoint (not a torch file) nor an .onnx file"
        raise ModelError(msg)
    try:
        return _bounded(reader(path, digest, kinds))
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever a broken or hostile file makes a reader raise
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        msg = f"{path}: cannot read its card ({type(exc).__name__}{': ' + first if first else ''})"
        raise ModelError(msg) from None


def unreadable(path: Path, exc: OSError) -> ModelError:
    """The one line for a model file that cannot be read at all."""
    if isinstance(exc, FileNotFoundError):
        return ModelError(f"no such model file: {path}")
    return ModelError(f"cannot read model {path}: {exc.strerror}")


def _bounded(card: ModelCard) -> ModelCard:
    """``card``, or ModelError when what it says could not be served, whatever the file's
    format: more classes (or longer names) than a prediction may carry, a name that is
    not one printable line, a window's input over :data:`MAX_INPUT_ELEMENTS` values (the
    warm-up and every window would allocate it)."""
    where = card.path or card.name
    names = card.classes
    if not 1 <= len(names) <= MAX_CLASSES or not all(0 < len(c) <= MAX_CLASS_LEN for c in names):
        msg = f"{where}: a model has 1 to {MAX_CLASSES} classes of 1 to {MAX_CLASS_LEN} characters"
        raise ModelError(msg)
    if len(set(names)) != len(names):
        msg = f"{where}: class (or target) names must be distinct"
        raise ModelError(msg)
    if not 0 < len(card.name) <= 64 or not card.name.isprintable():
        msg = f"{where}: its name {card.name[:40]!r} is not 1-64 printable characters"
        raise ModelError(msg)
    for name, one in card.spec.modalities.items():
        values = math.prod(one.shape)
        if values > MAX_INPUT_ELEMENTS:
            msg = (
                f"{where}: input {name!r}: one window's input would hold {values:,} values "
                f"(at most {MAX_INPUT_ELEMENTS:,})"
            )
            raise ModelError(msg)
    return card


def output_of(task: str) -> str:
    """What a fusiond model of ``task`` serves (:data:`OUTPUTS`)."""
    return {"anomaly": "anomaly", "regression": "values"}.get(task, "probabilities")


def has_heads(state_keys: Iterable[Any]) -> bool:
    """Whether a state dict with these keys holds per-modality heads."""
    return any(str(k).startswith("heads.") for k in state_keys)


def _digest(*paths: Path) -> str:
    """The first 16 hex digits of the SHA-256 of the files' bytes, read in chunks."""
    h = hashlib.sha256()
    for path in paths:
        with path.open("rb") as f:
            while chunk := f.read(2**20):
                h.update(chunk)
    return h.hexdigest()[:16]


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
    its fixed sizes (the batch axis dynamic); the mask; a first output ``[batch, K]``."""
    where = card.path or card.name
    graph = {i.name: i for i in inputs}
    wanted = [*card.spec.modalities, *(["mask"] if card.mask else [])]
    extra = sorted(set(graph) - set(wanted))
    missing = [name for name in wanted if name not in graph]
    if missing or extra:
        msg = f"{where}: the card's inputs {wanted} do not match the graph's {list(graph)}"
        if not card.mask and "mask" in extra:
            msg += " (the graph takes a mask: set mask = true in the card)"
        elif card.mask and missing == ["mask"]:
            msg += " (the graph takes no mask: set mask = false in the card)"
        raise ModelError(msg)
    for name, spec in card.spec.modalities.items():
        arg, want = graph[name], (-1, *spec.shape)
        if arg.type != _DTYPES.get(str(spec.dtype)):
            msg = f"{where}: input {name!r} is {arg.type} in the graph, but its card says {spec.dtype}"
            raise ModelError(msg)
        shape = [d if isinstance(d, int) and d > 0 else -1 for d in arg.shape]
        if shape and shape[0] != -1:
            msg = (
                f"{where}: input {name!r} has a fixed batch size ({shape[0]}) in the graph: export it "
                f"with a dynamic first axis (torch.onnx.export(..., dynamic_axes={{{name!r}: {{0: 'b'}}}}))"
            )
            raise ModelError(msg)
        if len(shape) != len(want) or any(g not in (-1, w) for g, w in zip(shape, want, strict=False)):
            msg = (
                f"{where}: input {name!r} is {list(arg.shape)} in the graph, but its card makes "
                f"{['batch', *spec.shape]} ({spec.kind}, length {spec.length}, channels {spec.channels})"
            )
            raise ModelError(msg)
    if card.mask and graph["mask"].type != "tensor(bool)":
        msg = f"{where}: the mask input is {graph['mask'].type}; it must be bool [batch, {len(wanted) - 1}]"
        raise ModelError(msg)
    if not outputs:
        msg = f"{where}: the graph has no output"
        raise ModelError(msg)
    out = outputs[0]
    if out.type not in ("tensor(float)", "tensor(double)", "tensor(float16)"):
        msg = f"{where}: the graph's first output {out.name!r} is {out.type}; fusiond reads float [batch, K]"
        raise ModelError(msg)
    if len(out.shape) != 2:
        msg = f"{where}: the graph's first output {out.name!r} is {list(out.shape)}; fusiond reads [batch, K]"
        raise ModelError(msg)
    width = out.shape[-1]
    columns = card_columns(card)
    if isinstance(width, int) and width > 0 and width != columns:
        msg = f"{where}: the graph's output {out.name!r} has {width} columns; the card names {columns}"
        raise ModelError(msg)


def card_columns(card: ModelCard) -> int:
    """The width of the model's first output: its classes or targets, or an anomaly
    model's three columns and one per modality."""
    return 3 + len(card.spec.modalities) if card.task == "anomaly" else len(card.classes)


class CardInput(Strict):
    """``[inputs.<name>]`` of a ``card.toml``: one graph input, named as in the graph."""

    kind: str
    length: int = Field(gt=0, le=100_000_000)
    channels: int = Field(1, gt=0, le=65_536)
    height: int = Field(0, ge=0, le=16_384)
    width: int = Field(0, ge=0, le=16_384)
    vocab: list[str] = Field(default_factory=list, max_length=1_000_000)


class CardFile(Strict):
    """A ``card.toml``: the card of an ONNX model fusiond never saw."""

    name: str
    task: Literal["classification", "regression"] = "classification"
    classes: list[str] = Field(default_factory=list, max_length=4096)
    targets: list[str] = Field(default_factory=list, max_length=4096)
    output: Literal["probabilities", "logits", "values"] = "probabilities"
    mask: bool = True
    window_ms: float = Field(0.0, ge=0.0, le=3_600_000.0)
    """The window length it was trained on (0: unknown, not checked)."""
    hop_ms: float = Field(0.0, ge=0.0, le=3_600_000.0)
    inputs: dict[str, CardInput] = Field(min_length=1, max_length=16)

    @model_validator(mode="after")
    def _consistent(self) -> CardFile:
        problem = _card_problem(self)
        if problem:
            raise ValueError(problem)
        return self


def _card_problem(card: CardFile) -> str:
    names = card.classes or card.targets
    if not _NAME.match(card.name):
        return f"name {card.name[:80]!r} must be 1-64 letters, digits, '.', '_' or '-'"
    if card.task == "classification" and (len(card.classes) < 2 or card.targets):
        return "a classifier's card lists two or more classes (and no targets)"
    if card.task == "regression" and (not card.targets or card.classes or card.output != "values"):
        return 'a regressor\'s card lists its targets, no classes, and output = "values"'
    if card.task == "classification" and card.output == "values":
        return 'a classifier\'s output is "probabilities" or "logits"'
    if len(set(names)) != len(names) or not all(names):
        return "class (or target) names must be distinct and not empty"
    if card.hop_ms > card.window_ms:
        return f"hop_ms ({card.hop_ms:g}) must not exceed window_ms ({card.window_ms:g})"
    for name in card.inputs:  # named as the bus names modalities: a source can feed it
        if name == "mask" or not NAME_RE.match(name):
            return f"input {name[:80]!r}: 'mask' is taken, and a name is 1-64 letters, digits, '_', '-'"
    return ""


def _card_file(onnx: Path) -> tuple[Path | None, Path | None]:
    """``(MODEL.card.toml, card.toml)`` beside the model, each None when absent."""
    own, folder = onnx.with_suffix(".card.toml"), onnx.with_name("card.toml")
    return (own if own.is_file() else None), (folder if folder.is_file() else None)


def _from_card_toml(path: Path, onnx: Path, kinds: KindRegistry | None) -> ModelCard:
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
        raise ModelError(str(exc)[:1000]) from None
    fields = {name: {**t.model_dump(), "vocab": tuple(t.vocab)} for name, t in card.inputs.items()}
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
        content_hash=_digest(onnx, path),  # the card is part of the model: edit it, and the hash says so
        path=onnx,
        format="onnx",
        output=card.output,
        mask=card.mask,
    )


def _onnx_card(path: Path, digest: str, kinds: KindRegistry | None) -> ModelCard:
    own, folder = _card_file(path)
    if own is not None:  # the user's word for this very file wins over its metadata
        return _from_card_toml(own, path, kinds)
    meta = _onnx_metadata(path)
    if CARD_KEY not in meta:
        if folder is not None:
            return _from_card_toml(folder, path, kinds)
        msg = (
            f"{path} carries no fusiond card in its metadata and there is no "
            f"{path.with_suffix('.card.toml').name} or card.toml beside it (docs/models.md, 'Your own model')"
        )
        raise ModelError(msg)
    data = json.loads(meta[CARD_KEY])
    task, output = (
        data["task"],
        data.get("output", "anomaly" if data["task"] == "anomaly" else "probabilities"),
    )
    if task not in ("classification", "regression", "anomaly") or output not in OUTPUTS:
        msg = f"{path}: its fusiond card names task {str(task)[:40]!r} and output {str(output)[:40]!r}"
        raise ModelError(msg)
    window = {str(k): int(v) for k, v in dict(data.get("window") or {}).items()}
    if any(v <= 0 for k, v in window.items() if k in ("length_ns", "hop_ns")):
        msg = f"{path}: its fusiond card has a window of {window}"
        raise ModelError(msg)
    fields = {str(i["name"]): {k: i[k] for k in _SPEC_FIELDS if k in i} for i in data["inputs"]}
    if not all(NAME_RE.match(name) for name in fields):
        msg = f"{path}: its fusiond card names inputs the bus cannot name: {sorted(fields)!r:.200}"
        raise ModelError(msg)
    return ModelCard(
        name=str(data["name"])[:64],
        task=task,
        classes=tuple(str(c) for c in data["classes"]),
        window=window,
        spec=InputSpec.from_dict(fields, kinds),
        # An export names the checkpoint it was made from: its predictions say the same model.
        content_hash=str(meta.get(HASH_KEY) or digest)[:16],
        path=path,
        format="onnx",
        output=output,
        mask=bool(data.get("mask")),
        anomaly=str(data.get("anomaly", "")),
        modality_heads="modalities" in (data.get("outputs") or {}),
    )


_SPEC_FIELDS = ("kind", "length", "channels", "height", "width", "vocab")


def _onnx_metadata(path: Path) -> dict[str, str]:
    try:
        import onnxruntime
    except ImportError:
        msg = f"{path} is an ONNX model, and onnxruntime serves those: pip install 'fusiond[onnx]'"
        raise ModelError(msg) from None
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # its own errors come back as exceptions, said in one line
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types, one per failure
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
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
        msg = f"a fusiond checkpoint holds no {module[:60]}.{name[:60]}"
        raise pickle.UnpicklingError(msg)

    def persistent_load(self, pid: Any) -> None:
        return None


def _nothing(*args: Any, **kwargs: Any) -> None:
    return None


def _checkpoint_card(path: Path, digest: str, kinds: KindRegistry | None) -> ModelCard:
    try:
        with zipfile.ZipFile(path) as archive:
            pickled = next((n for n in archive.namelist() if n.endswith("/data.pkl")), None)
            if pickled is None:
                msg = f"{path} is not a fusiond checkpoint (a zip with no data.pkl)"
                raise ModelError(msg)
            with archive.open(pickled) as f:
                raw = f.read(MAX_METADATA_BYTES + 1)
    except zipfile.BadZipFile as exc:
        msg = f"{path} is not a fusiond checkpoint (not a zip torch wrote: {exc})"
        raise ModelError(msg) from None
    if len(raw) > MAX_METADATA_BYTES:
        msg = f"{path}: its metadata unpacks to over {MAX_METADATA_BYTES >> 20} MiB: not a fusiond checkpoint"
        raise ModelError(msg)
    try:
        payload = _MetadataOnly(io.BytesIO(raw)).load()
    except pickle.UnpicklingError as exc:
        msg = f"{path} is not a fusiond checkpoint ({exc})"
        raise ModelError(msg) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        why = "a whole pickled model? export it to ONNX: docs/models.md, 'Your own model'"
        msg = f"{path} is not a fusiond checkpoint of format {FORMAT} ({why})"
        raise ModelError(msg)
    task = str(payload.get("task", "classification"))
    state = payload.get("state_dict") or {}
    return ModelCard(
        name=str(payload["name"]),
        task=task,
        classes=tuple(str(c) for c in payload["classes"]),
        window={str(k): int(v) for k, v in dict(payload["window"]).items()},
        spec=InputSpec.from_dict(payload["spec"], kinds),
        content_hash=digest,
        path=path,
        format="checkpoint",
        output=output_of(task),
        metrics=dict(payload.get("metrics") or {}),
        anomaly=str(payload.get("anomaly", "")),
        modality_heads=has_heads(state),
    )
