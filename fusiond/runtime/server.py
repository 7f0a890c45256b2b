"""The inference server: closed windows from every worker in, predictions out.

One per device. It batches across all workers (a grid index goes as soon as every live
rig has closed it, see :mod:`fusiond.batch`), runs the model once per batch, numbers each
rig's predictions and publishes them. Each rig's windows come from one worker over one
connection, so its predictions leave in window order. A reload message swaps the model
between two batches; the windows that arrive meanwhile wait in the socket's queue.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from fusiond.batch import Batcher
from fusiond.bus.security import Keys
from fusiond.bus.sockets import Sockets, drain
from fusiond.bus.wire import encode_prediction
from fusiond.errors import FusiondError, ModelError
from fusiond.events import Debouncer, encode_event
from fusiond.memory import MemoryReturn
from fusiond.metrics import Stats
from fusiond.plugin import Plugins
from fusiond.runtime.handoff import END, PROGRESS, WINDOW, decode_body, decode_window, encode_stats
from fusiond.runtime.worker import STATS_EVERY_NS

__all__ = ["load_serving", "RELOAD", "run_server", "ServerSpec", "Serving"]

log = logging.getLogger(__name__)
RELOAD = b"reload"


@dataclass(frozen=True)
class ServerSpec:
    """Everything the server needs, as plain data (JSON to a process or a Ray actor)."""

    name: str
    model: str
    inbox: str
    """Where it binds for windows (workers connect); "" lets it pick a TCP port (Ray)."""
    publish: str
    """The broker's publisher endpoint (live), or the daemon's collector (offline)."""
    stats: str
    device: str = "auto"
    runtime: str = "torch"
    threads: int = 0
    max_batch: int = 32
    max_delay_ns: int = 5_000_000
    workers: int = 1
    offline: bool = False
    seq: dict[str, int] = field(default_factory=dict)
    """Each rig's next prediction number: a restarted server carries the count on."""
    hwm: int = 1000
    reject: tuple[bool, float | None, float | None] = (False, None, None)
    """``[model] reject``, ``reject_confidence``, ``reject_disagreement``."""
    events: tuple[float, float, float] | None = None
    """``[events]`` ``hold_ms``, ``enter``, ``exit`` when enabled (live only)."""
    anomaly_threshold: float | None = None
    """``[model] anomaly_threshold``."""
    providers: str | list[str] = "auto"
    """``[model] providers`` (onnxruntime)."""
    greedy: bool = False
    """Batch whatever waits at once (live, with ``[window] stagger``: :class:`~fusiond.batch.Batcher`)."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServerSpec:
        """Inverse of ``dataclasses.asdict``."""
        return cls(**data)


@dataclass
class Serving:
    """A loaded model, its numbering and where it came from; replaced whole on reload."""

    runner: Any
    builder: Any
    name: str
    hash: str
    spec: Any


def load_serving(
    path: Path,
    plugins: Plugins,
    device: str,
    runtime: str,
    threads: int,
    max_batch: int,
    seq: Counter[str],
    reject: Sequence[Any] = (False, None, None),
    anomaly: float | None = None,
    providers: str | list[str] = "auto",
) -> Serving:
    """Load a model (a checkpoint or an ONNX file, through its card) for serving on
    ``runtime`` (torch or onnx), built from ``plugins``' parts, warmed up."""
    from fusiond.models.card import read_card
    from fusiond.models.serving import make_runner
    from fusiond.publish import PredictionBuilder, reject_thresholds

    card = read_card(path, plugins.kinds)
    runner = make_runner(card, lambda: plugins.parts, device, runtime, threads, providers)
    runner.warm_up(max_batch)
    model = {"name": card.name, "hash": card.content_hash}
    try:
        on, confidence, spread = reject
        thresholds = reject_thresholds(card.metrics, on and card.task == "classification", confidence, spread)
    except ValueError as exc:
        msg = f"{path}: {exc}"
        raise ModelError(msg) from None
    builder = PredictionBuilder(list(card.classes), model, card.task, seq, thresholds, anomaly)
    return Serving(runner, builder, card.name, card.content_hash, card.spec)


def run_server(
    spec: ServerSpec,
    stop: threading.Event,
    plugins: Plugins,
    ctx: zmq.Context[zmq.Socket[bytes]] | None = None,
    bound: list[str] | None = None,
    keys: Keys | None = None,
) -> None:
    """Serve until ``stop`` is set (offline: until every worker has sent its last window),
    with the models ``plugins`` build.

    ``bound`` receives the endpoint the inbox was bound at (with the port it picked)."""
    seq: Counter[str] = Counter(spec.seq)
    serving = load_serving(
        Path(spec.model),
        plugins,
        spec.device,
        spec.runtime,
        spec.threads,
        spec.max_batch,
        seq,
        spec.reject,
        spec.anomaly_threshold,
        spec.providers,
    )
    providers = getattr(serving.runner, "providers", None)
    if providers:  # where onnxruntime runs it: [model] providers chose from what it has
        log.info("serving %s on onnxruntime's %s", serving.name, ", ".join(providers))
    with Sockets(ctx, hwm=spec.hwm, keys=keys, linger_ms=-1 if spec.offline else 0) as sockets:
        inbox = sockets.pull(spec.inbox or "tcp://0.0.0.0:*", bind=True, where="runtime")
        if bound is not None:
            bound.append(inbox.getsockopt_string(zmq.LAST_ENDPOINT))
        out = sockets.push(spec.publish) if spec.offline else sockets.publisher(spec.publish)
        _Loop(spec, serving, plugins, seq, out, sockets.push(spec.stats, hwm=16)).run(inbox, stop)


class _Loop:
    def __init__(
        self,
        spec: ServerSpec,
        serving: Serving,
        plugins: Plugins,
        seq: Counter[str],
        out: zmq.Socket[bytes],
        report: zmq.Socket[bytes],
    ) -> None:
        self.spec, self.serving, self.plugins, self.seq = spec, serving, plugins, seq
        self.out, self.report = out, report
        self.stats = Stats()
        # Offline, a batch is one complete grid index: the same batches whatever the timing.
        self.batcher = Batcher(
            spec.max_batch,
            10**18 if spec.offline else spec.max_delay_ns,
            greedy=spec.greedy and not spec.offline,
        )
        self.ended = 0
        self.busy_since: int | None = None
        self.next_stats = 0
        self.memory = MemoryReturn()
        self.published = 0
        self.events = Debouncer(*spec.events) if spec.events and not spec.offline else None

    def run(self, inbox: zmq.Socket[bytes], stop: threading.Event) -> None:
        while not stop.is_set():
            deadline = self.batcher.deadline_ns()
            wait = 20 if deadline is None else max(0, min(20, (deadline - time.time_ns()) // 1_000_000))
            if inbox.poll(wait):
                for frames in drain(inbox, 1024):
                    self.take(frames)
            now = time.time_ns()
            while batch := self.batcher.take(now, flush=self.ended >= self.spec.workers):
                self.infer(batch)
            self.send_stats(now)
            if self.spec.offline and self.ended >= self.spec.workers and not len(self.batcher):
                self.next_stats = 0
                self.send_stats(now)  # the final counters
                self.out.send_multipart([END, b""])
                return

    def take(self, frames: list[zmq.Frame]) -> None:
        # On Ray the inbox is a TCP port: whatever reaches it is checked, counted, never fatal.
        try:
            self._take(frames)
        except Exception as exc:
            self.stats.drop("bad_window")
            log.warning(
                "server %s: unreadable message on its inbox (%s: %s); counted as drops.bad_window",
                self.spec.name,
                type(exc).__name__,
                str(exc)[:200],
            )

    def _take(self, frames: list[zmq.Frame]) -> None:
        kind = frames[0].bytes
        now = time.time_ns()
        if kind == WINDOW:
            self.batcher.add(decode_window(frames), now)
        elif kind == PROGRESS:
            for rig, index in decode_body(frames).items():
                self.batcher.progress(rig, index)
        elif kind == END:
            self.ended += 1
        elif kind == RELOAD:
            self.reload(frames[1].bytes.decode())
        else:
            msg = f"unknown message kind {kind[:16]!r}"
            raise ValueError(msg)

    def infer(self, batch: list[Any]) -> None:
        self.busy_since = time.time_ns()
        try:
            current = self.serving
            result = current.runner.run(batch)
            if self.spec.offline:  # on the recording's clock, the clock its windows closed on
                result = result.started_at(max(w.t_close_ns for w in batch))
            for p in current.builder.build(result, result.t_end_ns if self.spec.offline else time.time_ns()):
                self.out.send_multipart(encode_prediction(p))
                if self.events is not None and (event := self.events.take(p)) is not None:
                    self.out.send_multipart(encode_event(event))
                self.published += 1
        except Exception:
            self.stats.drop("internal_error", len(batch))
            log.exception("inference failed on a batch of %d window(s); dropped", len(batch))
        self.busy_since = None

    def reload(self, path: str) -> None:
        old = self.serving
        try:
            self.serving = load_serving(
                Path(path),
                self.plugins,
                self.spec.device,
                self.spec.runtime,
                self.spec.threads,
                self.batcher.max_batch,
                self.seq,
                self.spec.reject,
                self.spec.anomaly_threshold,
                self.spec.providers,
            )
        except Exception as exc:  # noqa: BLE001 - whatever a new model file raises: the old one serves on
            said = exc if isinstance(exc, (FusiondError, OSError)) else f"{type(exc).__name__}: {exc}"
            log.error("reload failed, still serving %s (%s): %s", old.name, old.hash, str(said)[:500])
            return
        if self.serving.spec != old.spec:  # the workers cut windows for the old inputs
            log.error(
                "reload refused, still serving %s (%s): %s takes other inputs", old.name, old.hash, path
            )
            self.serving = old
            return
        log.info(
            "reloaded: now serving %s (%s), was %s (%s)",
            self.serving.name,
            self.serving.hash,
            old.name,
            old.hash,
        )

    def send_stats(self, now: int) -> None:
        if now < self.next_stats:
            return
        self.next_stats = now + STATS_EVERY_NS
        self.memory.tick(time.monotonic_ns())
        runner = self.serving.runner
        snapshot = {
            "name": self.spec.name,
            "t": now,
            "drops": dict(self.stats.drops),
            "busy_since": self.busy_since,
            "waiting": len(self.batcher),
            "model": {
                "name": self.serving.name,
                "hash": self.serving.hash,
                "device": str(runner.device),
                "runtime": runner.runtime,
                **({"providers": ",".join(runner.providers)} if hasattr(runner, "providers") else {}),
            },
        }
        with contextlib.suppress(zmq.Again):  # the daemon is busy: the next snapshot says the same
            self.report.send_multipart(encode_stats(snapshot), zmq.NOBLOCK)
