"""Choose how a model is served: torch on a device, or onnxruntime on its providers."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import TYPE_CHECKING

from fusiond.errors import ModelError
from fusiond.models.card import ModelCard
from fusiond.models.onnx import OnnxRunner
from fusiond.models.runner import ModelRunner, Runner, pick_device, set_threads

if TYPE_CHECKING:
    from fusiond.models.checkpoint import Checkpoint
    from fusiond.models.model import Parts

__all__ = ["make_runner", "resolve_runtime"]


def make_runner(
    model: Checkpoint | ModelCard,
    parts: Parts | Callable[[], Parts],
    device: str = "auto",
    runtime: str = "torch",
    threads: int = 0,
    providers: str | list[str] = "auto",
) -> Runner:
    """A runner for ``runtime``: ``torch`` on ``device``, ``onnx`` (onnxruntime), or
    ``auto``: onnx when the device is a CPU and onnxruntime is installed, else torch. An
    ONNX file's card is served by onnxruntime whatever the runtime says, and never
    imports torch. ``providers``: onnxruntime's execution providers
    (:func:`fusiond.models.onnx.choose_providers`). ``parts`` (or a function giving them)
    builds a checkpoint's model."""
    card = model if isinstance(model, ModelCard) else model.card
    runtime = resolve_runtime(runtime, device, card)
    if runtime == "onnx":
        if device == "cpu" and providers == "auto":  # a CPU asked for is a CPU
            providers = ["CPUExecutionProvider"]
        return OnnxRunner(model, parts, threads, providers)
    set_threads(threads)
    if isinstance(model, ModelCard):
        from fusiond.models.checkpoint import load

        assert model.path is not None  # a checkpoint's card read from its file
        model = load(model.path, model.kinds())
    return ModelRunner(model, parts() if callable(parts) else parts, device)


def resolve_runtime(runtime: str, device: str = "auto", card: ModelCard | None = None) -> str:
    """``torch`` or ``onnx``: ``auto`` is onnx when the device is a CPU and onnxruntime is
    installed, else torch. An ONNX file (``card``) is onnx's, and ModelError for torch."""
    if card is not None and card.format == "onnx":
        if runtime == "torch":
            msg = f'{card.path} is an ONNX model: torch cannot run it (runtime = "auto" or "onnx")'
            raise ModelError(msg)
        return "onnx"
    if runtime == "auto":
        return "onnx" if pick_device(device).type == "cpu" and _has_onnxruntime() else "torch"
    return runtime


def _has_onnxruntime() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None
