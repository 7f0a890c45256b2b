"""Choose how a checkpoint is served: torch on a device, or onnxruntime on a CPU."""

from __future__ import annotations

import importlib.util

from fusiond.models.checkpoint import Checkpoint
from fusiond.models.model import Parts
from fusiond.models.onnx import OnnxRunner
from fusiond.models.runner import ModelRunner, Runner, pick_device, set_threads

__all__ = ["make_runner", "resolve_runtime"]


def make_runner(
    checkpoint: Checkpoint,
    parts: Parts,
    device: str = "auto",
    runtime: str = "torch",
    threads: int = 0,
    providers: str | list[str] = "auto",
) -> Runner:
    """A runner for ``runtime``: ``torch`` on ``device``, ``onnx`` (onnxruntime, CPU), or
    ``auto``: onnx when the device is a CPU and onnxruntime is installed, else torch.
    ``providers``: onnxruntime's execution providers (:func:`fusiond.models.onnx.choose_providers`)."""
    runtime = resolve_runtime(runtime, device)
    if runtime == "onnx":
        if device == "cpu" and providers == "auto":  # a CPU asked for is a CPU
            providers = ["CPUExecutionProvider"]
        return OnnxRunner(checkpoint, parts, threads, providers)
    set_threads(threads)
    return ModelRunner(checkpoint, parts, device)


def resolve_runtime(runtime: str, device: str = "auto") -> str:
    """``torch`` or ``onnx``: ``auto`` is onnx when the device is a CPU and onnxruntime is
    installed, else torch."""
    if runtime == "auto":
        return "onnx" if pick_device(device).type == "cpu" and _has_onnxruntime() else "torch"
    return runtime


def _has_onnxruntime() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None
