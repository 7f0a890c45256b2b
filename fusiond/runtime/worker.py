"""An ingest worker: its rigs' bus messages in, closed windows out to the inference server.

Live, it subscribes to the broker for its rigs' topics only and reads the wall clock.
Offline (``run --replay`` sharded), the daemon pushes it each recorded message behind an
8-byte processing time, then ``flush``; it never reads a clock. Either way the work is
:class:`~fusiond.pipeline.Pipeline`'s, so a worker cuts exactly the windows the
single-process daemon cuts.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import zmq

from fusiond.align.spec import InputSpec
from fusiond.align.windows import Window, WindowConfig
from fusiond.bus.security import Keys
from fusiond.bus.sockets import Sockets, drain
from fusiond.ingest import Limits
from fusiond.memory import MemoryReturn
from fusiond.metrics import Stats
from fusiond.pipeline import Pipeline
from fusiond.runtime.handoff import END, encode_progress, encode_stats, encode_window

if TYPE_CHECKING:
    from fusiond.align.kinds import KindRegistry

__all__ = ["FLUSH", "run_worker", "snapshot_of", "STATS_EVERY_NS", "WorkerSpec"]

log = logging.getLogger(__name__)
STATS_EVERY_NS = 500_000_000
FLUSH = b"flush"


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs, as plain data: it travels to a process or a Ray actor as JSON."""

    name: str
    streams: list[tuple[str, str, str]]
    spec: dict[str, dict[str, Any]]
    window: dict[str, Any]
    inbox: str
    """The broker's subscriber endpoint (live), or the daemon's feed for this worker (offline)."""
    windows: str
    """The inference server's inbox."""
    stats: str
    """The daemon's counters inbox."""
    offline: bool = False
    limits: dict[str, Any] = field(default_factory=lambda: asdict(Limits()))
    rates: list[tuple[str, str, float]] = field(default_factory=list)
    hwm: int = 1000
    max_message_bytes: int = -1

    @property
    def rigs(self) -> list[str]:
        """The rigs this worker cuts windows for."""
        return sorted({rig for rig, _, _ in self.streams})

    def pipeline(self, stats: Stats, kinds: KindRegistry | None = None) -> Pipeline:
        """The pipeline of this worker's rigs (it never batches: the server does); its
        specs' kinds come from ``kinds``, the worker's process's plugins."""
        return Pipeline(
            {(r, s): m for r, s, m in self.streams},
            InputSpec.from_dict(self.spec, kinds),
            WindowConfig(**self.window),
            stats=stats,
            limits=Limits(**self.limits),
            rates={(r, s): rate for r, s, rate in self.rates},
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorkerSpec:
        """Inverse of ``dataclasses.asdict``."""
        return cls(
            **{
                **data,
                "streams": [tuple(s) for s in data["streams"]],
                "rates": [tuple(r) for r in data["rates"]],
            }
        )


def run_worker(
    spec: WorkerSpec,
    stop: threading.Event,
    ctx: zmq.Context[zmq.Socket[bytes]] | None = None,
    keys: Keys | None = None,
    kinds: KindRegistry | None = None,
) -> None:
    """Cut windows until ``stop`` is set (or, offline, until the feed says flush);
    ``kinds``: the modality kinds of this process's plugins (default: the built-in ones)."""
    stats = Stats()
    pipeline = spec.pipeline(stats, kinds)
    # Offline, what is still queued at the end must get out, however long the server takes to
    # start (a worker may be done before the model is loaded; the run stops what hangs);
    # live, nothing waits on a dead peer.
    with Sockets(
        ctx,
        hwm=spec.hwm,
        max_message_bytes=spec.max_message_bytes,
        keys=keys,
        linger_ms=-1 if spec.offline else 0,
    ) as sockets:
        if spec.offline:
            inbox = sockets.pull(spec.inbox)
        else:
            inbox = sockets.subscriber(spec.inbox, pipeline.topics())
        out = sockets.push(spec.windows)
        _Loop(spec, pipeline, stats, out, sockets.push(spec.stats, hwm=16)).run(inbox, stop)


class _Loop:
    def __init__(
        self,
        spec: WorkerSpec,
        pipeline: Pipeline,
        stats: Stats,
        out: zmq.Socket[bytes],
        report: zmq.Socket[bytes],
    ) -> None:
        self.spec, self.pipeline, self.stats = spec, pipeline, stats
        self.out, self.report = out, report
        self.progress: dict[str, int] = {}
        self.next_stats = 0
        self.memory = MemoryReturn()

    def run(self, inbox: zmq.Socket[bytes], stop: threading.Event) -> None:
        now = 0
        offline, take, clock = self.spec.offline, self.take, time.time_ns  # looked up once
        while not stop.is_set():
            if inbox.poll(20):
                for frames in drain(inbox, 512):
                    if offline:
                        now = int.from_bytes(frames[0].bytes, "little")
                        if frames[1].bytes == FLUSH:
                            self.hand_off(
                                self.pipeline.closing(
                                    now + self.pipeline.window.length_ns + self.pipeline.window.lateness_ns
                                )
                            )
                            self.out.send_multipart([END, self.spec.name.encode()])
                            self.send_stats(now, force=True)
                            return
                        frames = frames[1:]
                    else:
                        now = clock()
                    take(frames, now)
            if not self.spec.offline:
                now = time.time_ns()
            self.hand_off(self.pipeline.closing(now))
            self.send_stats(now)

    def take(self, frames: list[zmq.Frame], now: int) -> None:
        topic = frames[0].bytes
        if topic.startswith(b"e/"):
            self.pipeline.ingest.source_error(frames, now, topic)
            return
        self.pipeline.ingest.handle(frames, now, topic)

    def hand_off(self, windows: Iterable[Window]) -> None:
        flags = 0 if self.spec.offline else zmq.NOBLOCK  # offline nothing may be dropped
        for window in windows:
            try:
                self.out.send_multipart(encode_window(window), flags, copy=False)
            except zmq.Again:
                self.stats.drop("inference_busy")
        progress = {
            rig: a.next_index for rig, a in self.pipeline.aligners.items() if a.next_index is not None
        }
        if progress != self.progress:
            self.progress = progress
            with contextlib.suppress(zmq.Again):  # progress only speeds batches up; the next says it again
                self.out.send_multipart(encode_progress(progress), flags)

    def send_stats(self, now: int, force: bool = False) -> None:
        if now < self.next_stats and not force:
            return
        self.next_stats = now + STATS_EVERY_NS
        self.memory.tick(time.monotonic_ns())
        snapshot = snapshot_of(self.spec.name, self.stats, self.pipeline, now)
        with contextlib.suppress(zmq.Again):  # the daemon is busy: the next snapshot has the same totals
            self.report.send_multipart(encode_stats(snapshot), zmq.NOBLOCK)


def snapshot_of(name: str, stats: Stats, pipeline: Pipeline, now: int) -> dict[str, Any]:
    """A worker's counters as plain data (totals, so a lost snapshot loses nothing)."""
    return {
        "name": name,
        "t": now,
        "drops": dict(stats.drops),
        "streams": {
            f"{r}/{s}": [
                v.messages,
                v.samples,
                v.sample_rate_hz,
                v.last_recv_ns,
                v.rate.rate(now),
                v.error,
                v.error_ns,
                v.sample_meter.rate(now),
                v.errors,
                v.channels,
            ]
            for (r, s), v in stats.streams.items()
        },
        "masked": {
            rig: {k.split(":", 1)[1]: n for k, n in a.stats.items() if k.startswith("masked:")}
            for rig, a in pipeline.aligners.items()
        },
        "clocks": pipeline.ingest.clock_rows(),
        "last_window_ns": stats.last_window_ns,
    }
