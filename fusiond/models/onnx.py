"""Run a model with onnxruntime, on the execution providers chosen (no torch).

``[model] runtime = "onnx"`` serves either a fusiond checkpoint's export (beside it as
``MODEL.onnx``, or made on the fly into the cache by :mod:`fusiond.models.export` when
missing or made from another checkpoint) or an ONNX file named by ``[model] path``, read
through its card (:mod:`fusiond.models.card`). onnxruntime is an optional extra:
``pip install fusiond[onnx]``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fusiond.errors import ModelError
from fusiond.models.card import CARD_KEY, HASH_KEY, ModelCard, check_graph
from fusiond.models.runner import Runner

if TYPE_CHECKING:
    from fusiond.models.checkpoint import Checkpoint
    from fusiond.models.model import Parts

__all__ = ["cache_dir", "choose_providers", "onnx_path", "OnnxRunner", "PREFERRED"]

log = logging.getLogger(__name__)


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


class OnnxRunner(Runner):
    """Runs a model with onnxruntime, on the execution providers chosen
    (:func:`choose_providers`); ``providers`` holds those the session really got.

    ``model``: a loaded checkpoint, or a card (:func:`fusiond.models.card.read_card`). A
    checkpoint's card serves its export; an ONNX file's card serves that file, checked
    against the graph first. ``parts`` (or a function that gives them) builds the model
    when a checkpoint must be exported; an ONNX file never needs them, nor torch.
    """

    runtime = "onnx"

    def __init__(
        self,
        model: Checkpoint | ModelCard,
        parts: Parts | Callable[[], Parts] | None = None,
        threads: int = 0,
        providers: str | list[str] = "auto",
    ) -> None:
        try:
            import onnxruntime
        except ImportError:
            msg = "model.runtime is 'onnx' but onnxruntime is not installed: pip install 'fusiond[onnx]'"
            raise ModelError(msg) from None
        self.card = model if isinstance(model, ModelCard) else model.card
        self.device = "cpu"
        self.modalities = list(self.card.spec.modalities)
        self.options = onnxruntime.SessionOptions()
        if threads > 0:
            self.options.intra_op_num_threads = threads
        self.options.inter_op_num_threads = 1
        self.options.log_severity_level = 3  # its errors come back as exceptions, said in one line
        self.wanted = choose_providers(providers)
        if self.card.format == "onnx":
            self.session = self._open(self.card)
        else:
            self.session = self._export_of(model, parts)
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.providers: list[str] = list(self.session.get_providers())
        self.softmax = self.card.output == "logits"
        log.debug("onnxruntime runs %s on %s", self.card.name, ", ".join(self.providers))

    def _open(self, card: ModelCard) -> Any:
        """A model fusiond did not export: checked against its card, warned about when it
        takes no mask."""
        import onnxruntime

        try:
            session = onnxruntime.InferenceSession(str(card.path), self.options, providers=self.wanted)
        except Exception as exc:  # onnxruntime raises its own types, one per failure
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            msg = f"{card.path} is not an ONNX model onnxruntime can load: {first}"
            raise ModelError(msg) from None
        check_graph(card, session.get_inputs(), session.get_outputs())
        if not card.mask:  # said once by prepare's warnings, as the daemon and check-config show them
            log.debug("model %s takes no mask: a missing modality reaches it as zeros", card.name)
        return session

    def _export_of(self, model: Checkpoint | ModelCard, parts: Parts | Callable[[], Parts] | None) -> Any:
        """The export beside the checkpoint if it was made from this very checkpoint (its
        metadata names the content hash), else an export of our own, keyed by that hash in
        the cache (the model's folder may be read-only: a packaged or system-wide model).
        A file's age says nothing: a stale export newer than its checkpoint is not served."""
        import onnxruntime

        card = self.card
        if card.path is None:
            msg = "an ONNX runner needs a checkpoint loaded from a file"
            raise ModelError(msg)
        beside = onnx_path(card.path)
        for path in (beside, cache_dir() / f"{card.content_hash}.onnx"):
            if not path.exists():
                continue
            session = onnxruntime.InferenceSession(str(path), self.options, providers=self.wanted)
            meta = session.get_modelmeta().custom_metadata_map
            made_from = meta.get(HASH_KEY)
            if made_from == card.content_hash and CARD_KEY in meta:
                return session
            if made_from == card.content_hash:  # made by a fusiond from before cards: made again
                log.info("%s carries no card (an export of an older fusiond): exporting again", path)
                continue
            log.warning(
                "not serving %s: it was exported from checkpoint %s, not from %s (%s)",
                path,
                made_from or "(unknown: no fusiond metadata)",
                card.path,
                card.content_hash,
            )
        from fusiond.models.checkpoint import Checkpoint, load
        from fusiond.models.export import export

        checkpoint = model if isinstance(model, Checkpoint) else load(card.path, card.kinds())
        if parts is None:
            msg = f"exporting {card.path} for onnxruntime needs the encoders and fusions (parts)"
            raise ModelError(msg)
        cached = cache_dir() / f"{card.content_hash}.onnx"
        log.info("exporting %s to %s for onnxruntime", card.path, cached)
        export(checkpoint, parts() if callable(parts) else parts, cached)
        return onnxruntime.InferenceSession(str(cached), self.options, providers=self.wanted)

    def _forward(
        self, inputs: Mapping[str, np.ndarray], mask: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | None]:
        feed = {**inputs, "mask": mask} if self.card.mask else inputs
        got = self.session.run(self.outputs, feed)
        out = got[0]
        if self.softmax:
            shifted = np.exp(out - out.max(axis=1, keepdims=True))
            out = shifted / shifted.sum(axis=1, keepdims=True)
        return out, (got[1] if len(got) > 1 and self.card.modality_heads else None)
