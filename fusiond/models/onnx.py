"""Export a checkpoint to ONNX, and run it with onnxruntime on CPU.

``fusiond export MODEL.pt --onnx`` writes ``MODEL.onnx`` beside it; ``[model] runtime =
"onnx"`` serves that file (exported on the fly when it is missing or older than the
checkpoint). The graph takes one input per modality, in the model's order, plus the
``[B, M]`` presence mask, and returns probabilities (a classifier), values (a regressor)
or anomaly scores (:mod:`fusiond.models.anomaly`), with a dynamic batch axis. Its metadata
carries the checkpoint's content hash and a card (``fusiond.card``, JSON: the class names,
the window, each input's spec, shape and dtype, the mask convention and the outputs), so
that another program can use the file on its own.
onnxruntime is an optional extra: ``pip install fusiond[onnx]``.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fusiond.errors import ModelError
from fusiond.models.checkpoint import Checkpoint
from fusiond.models.model import FusionModel, Parts
from fusiond.models.runner import Runner

__all__ = [
    "card",
    "CARD_KEY",
    "cache_dir",
    "export",
    "HASH_KEY",
    "onnx_path",
    "OnnxRunner",
    "OPSET",
    "choose_providers",
    "PREFERRED",
]

log = logging.getLogger(__name__)
OPSET = 17


class _Flat(nn.Module):
    """The model with positional inputs, as ONNX wants them, and its output activation."""

    def __init__(self, model: FusionModel) -> None:
        super().__init__()
        self.model = model
        self.names = list(model.modalities)

    def forward(self, *args: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        inputs = dict(zip(self.names, args[:-1], strict=True))
        out, own = self.model.serve(inputs, args[-1])
        return out if own is None else (out, own)


def cache_dir() -> Path:
    """Where exports made on the fly go: systemd's CacheDirectory, else ~/.cache/fusiond/onnx."""
    found = os.environ.get("CACHE_DIRECTORY", "").split(":")[0]
    home_cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    base = Path(found) if found else home_cache / "fusiond"
    path = base / "onnx"
    path.mkdir(parents=True, exist_ok=True)
    return path


def onnx_path(checkpoint_path: Path) -> Path:
    """Where the ONNX export of a checkpoint lives: beside it, ``.onnx``."""
    return checkpoint_path.with_suffix(".onnx")


def export(checkpoint: Checkpoint, parts: Parts, out: Path) -> Path:
    """Write the checkpoint's model as ONNX to ``out``."""
    flat = _Flat(checkpoint.build(parts)).eval()
    spec = checkpoint.spec.modalities
    names = list(flat.names)
    example = [torch.zeros((2, *spec[m].shape), dtype=_torch_dtype(spec[m].dtype)) for m in names]
    mask = torch.ones((2, len(names)), dtype=torch.bool)
    outputs = ["out", "modalities"] if flat.model.has_heads else ["out"]
    dynamic = {name: {0: "batch"} for name in [*names, "mask", *outputs]}
    tmp = out.with_name(out.name + ".tmp")
    try:
        with warnings.catch_warnings():  # the exporter's own notes are not the user's business
            warnings.simplefilter("ignore")
            torch.onnx.export(
                flat,
                (*example, mask),
                str(tmp),
                input_names=[*names, "mask"],
                output_names=outputs,
                dynamic_axes=dynamic,
                opset_version=OPSET,
                dynamo=False,
            )
        _stamp(tmp, checkpoint)
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        msg = f"cannot export {checkpoint.name!r} to ONNX: {exc}"
        raise ModelError(msg) from None
    os.replace(tmp, out)
    return out


PREFERRED = ("CUDAExecutionProvider", "OpenVINOExecutionProvider", "CPUExecutionProvider")
"""What ``providers = "auto"`` takes, in this order, of what this onnxruntime offers.
TensorRT is left to be asked for by name: it builds an engine for the model when the
session starts, which takes minutes."""


def choose_providers(wanted: str | list[str] = "auto") -> list[str]:
    """The execution providers to run on: ``auto`` (:data:`PREFERRED` among those this
    onnxruntime has), or the names given, each of which must be there (ModelError naming
    those it has). The CPU comes last in any case: what a provider cannot run falls to it."""
    import onnxruntime

    available = list(onnxruntime.get_available_providers())
    if wanted == "auto":
        chosen = [p for p in PREFERRED if p in available]
    else:
        missing = [p for p in wanted if p not in available]
        if missing:
            msg = (
                f"execution provider(s) {missing} not in this onnxruntime (it has {available}; "
                "CUDA and TensorRT need onnxruntime-gpu, OpenVINO onnxruntime-openvino)"
            )
            raise ModelError(msg)
        chosen = list(dict.fromkeys(wanted))  # each once, in the order given
    return [*(p for p in chosen if p != "CPUExecutionProvider"), "CPUExecutionProvider"]


HASH_KEY = "fusiond.content_hash"
"""The export's metadata entry naming the checkpoint it was made from (its content hash)."""
CARD_KEY = "fusiond.card"
"""The export's metadata entry with what a program needs to feed it and read it (JSON)."""


def card(checkpoint: Checkpoint) -> dict[str, Any]:
    """What an export's inputs and outputs mean: its name, task, class (or target) names,
    window, each input's spec in graph order, the mask convention and the outputs."""
    spec, fields = checkpoint.spec.modalities, checkpoint.spec.to_dict()
    if checkpoint.task == "anomaly":
        outputs = {
            "out": "float32 [batch, 3 + M]: anomaly score, nearest normal class (-1: none), "
            "threshold for the window's present modalities, then each modality's share of the score"
        }
    elif checkpoint.task == "regression":
        outputs = {"out": "float32 [batch, K]: the value of each target in classes"}
    else:
        outputs = {"out": "float32 [batch, K]: the probability of each class in classes"}
        if any(k.startswith("heads.") for k in checkpoint.state_dict):
            outputs["modalities"] = (
                "float32 [batch, M, K]: each modality's own calibrated class probabilities"
            )
    return {
        "name": checkpoint.name,
        "task": checkpoint.task,
        "classes": list(checkpoint.classes),
        "window": dict(checkpoint.window),
        "inputs": [
            {
                "name": m,
                **fields[m],
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
        },
        "outputs": outputs,
        "content_hash": checkpoint.content_hash,
    }


def _stamp(path: Path, checkpoint: Checkpoint) -> None:
    """Write the checkpoint's name, content hash and card into the ONNX file's metadata."""
    import onnx

    model = onnx.load(str(path))
    props = {
        HASH_KEY: checkpoint.content_hash,
        "fusiond.name": checkpoint.name,
        CARD_KEY: json.dumps(card(checkpoint), default=str),
    }
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(path))


def _torch_dtype(dtype: np.dtype[Any]) -> torch.dtype:
    return torch.from_numpy(np.zeros(1, dtype)).dtype


class OnnxRunner(Runner):
    """Runs a checkpoint's ONNX export with onnxruntime, on the execution providers chosen
    (:func:`choose_providers`); ``providers`` holds those the session really got."""

    runtime = "onnx"

    def __init__(
        self, checkpoint: Checkpoint, parts: Parts, threads: int = 0, providers: str | list[str] = "auto"
    ) -> None:
        try:
            import onnxruntime
        except ImportError:
            msg = "model.runtime is 'onnx' but onnxruntime is not installed: pip install 'fusiond[onnx]'"
            raise ModelError(msg) from None
        self.checkpoint = checkpoint
        self.device = torch.device("cpu")
        self.modalities = list(checkpoint.spec.modalities)
        self.options = onnxruntime.SessionOptions()
        if threads > 0:
            self.options.intra_op_num_threads = threads
        self.options.inter_op_num_threads = 1
        self.wanted = choose_providers(providers)
        self.session = self._session(checkpoint, parts)
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.providers: list[str] = list(self.session.get_providers())
        log.debug("onnxruntime runs %s on %s", checkpoint.name, ", ".join(self.providers))

    def _session(self, checkpoint: Checkpoint, parts: Parts) -> Any:
        """The export beside the checkpoint if it was made from this very checkpoint (its
        metadata names the content hash), else an export of our own, keyed by that hash in
        the cache (the model's folder may be read-only: a packaged or system-wide model).
        A file's age says nothing: a stale export newer than its checkpoint is not served."""
        import onnxruntime

        if checkpoint.path is None:
            msg = "an ONNX runner needs a checkpoint loaded from a file"
            raise ModelError(msg)
        beside = onnx_path(checkpoint.path)
        for path in (beside, cache_dir() / f"{checkpoint.content_hash}.onnx"):
            if not path.exists():
                continue
            session = onnxruntime.InferenceSession(str(path), self.options, providers=self.wanted)
            made_from = session.get_modelmeta().custom_metadata_map.get(HASH_KEY)
            if made_from == checkpoint.content_hash:
                return session
            log.warning(
                "not serving %s: it was exported from checkpoint %s, not from %s (%s)",
                path,
                made_from or "(unknown: no fusiond metadata)",
                checkpoint.path,
                checkpoint.content_hash,
            )
        cached = cache_dir() / f"{checkpoint.content_hash}.onnx"
        log.info("exporting %s to %s for onnxruntime", checkpoint.path, cached)
        export(checkpoint, parts, cached)
        return onnxruntime.InferenceSession(str(cached), self.options, providers=self.wanted)

    def _forward(
        self, inputs: Mapping[str, np.ndarray], mask: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | None]:
        got = self.session.run(self.outputs, {**inputs, "mask": mask})
        return got[0], (got[1] if len(got) > 1 else None)
