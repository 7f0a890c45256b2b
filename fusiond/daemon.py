"""The daemon: broker, source processes, ingest -> align -> batch -> model -> publish.

The only module that owns threads, sockets and processes together. One loop thread
ingests and aligns; one inference thread runs batches and publishes, fed by a bounded
queue so a slow model drops counted windows instead of stalling ingest.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType

import zmq

from fusiond.align.windows import RigAligner, Window
from fusiond.batch import Batcher
from fusiond.bus.broker import Broker
from fusiond.bus.wire import SAMPLE_PREFIX, Prediction, encode_prediction
from fusiond.config import Config
from fusiond.errors import ConfigError
from fusiond.ingest import Ingest
from fusiond.metrics import Stats, Summary
from fusiond.models import load
from fusiond.models.runner import ModelRunner
from fusiond.plugin import Plugins
from fusiond.publish import PredictionBuilder
from fusiond.sources.runner import Backoff
from fusiond.sources.supervisor import Child, Supervisor

log = logging.getLogger("fusiond")
_DRAIN = 512


def local_endpoint(endpoint: str) -> str:
    """The address a process on this host connects to for a bound endpoint."""
    for wildcard in ("tcp://*:", "tcp://0.0.0.0:"):
        if endpoint.startswith(wildcard):
            return "tcp://127.0.0.1:" + endpoint.removeprefix(wildcard)
    return endpoint


class Daemon:
    """``with Daemon(config, plugins) as d: d.run(stop)``."""

    def __init__(self, config: Config, plugins: Plugins, *, start_sources: bool = True) -> None:
        self.config = config
        self.plugins = plugins
        self.options = config.source_options(plugins.sources)
        self.stats = Stats()
        self.checkpoint = load(config.model.path)
        self.streams = self._streams()
        self.start_sources = start_sources
        window = config.window.to_config()
        specs = self.checkpoint.spec.modalities
        self.aligners = {
            rig: RigAligner(rig, {s: m for (r, s), m in self.streams.items() if r == rig}, specs,
                            window, self.stats.drops)  # fmt: skip
            for rig in config.rigs
        }
        self.batcher = Batcher(config.model.max_batch, round(config.model.max_delay_ms * 1e6))
        self.ingest = Ingest(self.aligners, self.streams, self.stats)
        self._queue: queue.Queue[list[Window] | None] = queue.Queue(config.model.queue)
        self._ready = threading.Event()

    def _streams(self) -> dict[tuple[str, str], str]:
        modalities = self.checkpoint.spec.modalities
        out: dict[tuple[str, str], str] = {}
        for rig, section in self.config.rigs.items():
            seen: dict[str, str] = {}
            for name, source in section.sources.items():
                cls = self.plugins.sources.get(source.kind)
                modality = source.modality or (cls.modality if cls else "")
                path = f"rigs.{rig}.sources.{name}.modality"
                if modality not in modalities:
                    name_ = self.checkpoint.name
                    msg = f"model {name_!r} has no {modality!r} input (it takes {sorted(modalities)})"
                    raise ConfigError(msg, path=path)
                if modality in seen:
                    msg = f"rig already has a {modality!r} source ({seen[modality]}); the model takes one"
                    raise ConfigError(msg, path=path)
                seen[modality] = name
                out[rig, name] = modality
        return out

    def __enter__(self) -> Daemon:
        bus = self.config.bus
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.broker = Broker(self.ctx, bus.publish, bus.subscribe, bus.queue)
        try:
            self.broker.__enter__()
        except BaseException:
            self.ctx.term()
            raise
        device = self.config.model.device
        self.runner = ModelRunner(self.checkpoint, self.plugins.encoders.types, device)
        self.runner.warm_up(self.config.model.max_batch)
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.RCVHWM, bus.queue)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.connect(self.broker.inproc_subscribe)
        self.sub.subscribe(SAMPLE_PREFIX.encode())
        self._infer = threading.Thread(target=self._infer_loop, name="fusiond-infer", daemon=True)
        self._infer.start()
        self.supervisor = Supervisor(self._children() if self.start_sources else [])
        self.supervisor.poll()
        ck = self.checkpoint
        log.info(
            "fusiond ready: model %s (%s) on %s, %d rig(s), %d source(s); publishers connect to "
            "%s, subscribers to %s", ck.name, ck.content_hash, self.runner.device,
            len(self.config.rigs), len(self.streams), bus.publish, bus.subscribe,
        )  # fmt: skip
        self._ready.set()
        return self

    def _children(self) -> list[Child]:
        anchor_ns = (time.time_ns() // 1_000_000 + 1000) * 1_000_000
        connect = local_endpoint(self.config.bus.publish)
        children = []
        for rig, section in self.config.rigs.items():
            for name, source in section.sources.items():
                argv = [
                    sys.executable, "-m", "fusiond", "source", source.kind,
                    "--connect", connect, "--rig", rig, "--stream", name,
                    "--modality", self.streams[rig, name], "--anchor-ns", str(anchor_ns),
                    "--options-json", json.dumps(source.options), "--parent-pid", str(os.getpid()),
                ]  # fmt: skip
                backoff = Backoff(cap_s=source.restart_max_s)
                children.append(Child(f"{rig}/{name}", argv, self.config.base_dir, backoff))
        # File sources map media position p to anchor + p, so a rig's files play in step.
        log.info("media anchor: file sources start at %d (realtime ns)", anchor_ns)
        return children

    def run(self, stop: threading.Event) -> None:
        """Serve until ``stop`` is set."""
        poller = zmq.Poller()
        poller.register(self.sub, zmq.POLLIN)
        summary = Summary(self.stats, time.time_ns())
        every_ns = round(self.config.log.summary_s * 1e9)
        next_summary = time.time_ns() + every_ns
        while not stop.is_set():
            deadline = self.batcher.deadline_ns()
            wait_ms = 20 if deadline is None else max(0, min(20, (deadline - time.time_ns()) // 1_000_000))
            if poller.poll(wait_ms):
                self._drain()
            now = time.time_ns()
            self._close_windows(now)
            self.supervisor.poll()
            if now >= next_summary:
                log.info("%s", summary.line(now, self._masked()))
                next_summary = now + every_ns

    def _drain(self) -> None:
        for _ in range(_DRAIN):
            try:
                frames = self.sub.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self.ingest.handle(frames, time.time_ns())

    def due_batches(self, now: int) -> Iterator[list[Window]]:
        """Close every due window and yield the batches that are ready at ``now``."""
        for aligner in self.aligners.values():
            for window in aligner.poll(now):
                self.batcher.add(window, now)
        while batch := self.batcher.take(now):
            yield batch

    def _close_windows(self, now: int) -> None:
        for batch in self.due_batches(now):
            try:
                self._queue.put_nowait(batch)
            except queue.Full:
                self.stats.drop("inference_busy", len(batch))

    def _masked(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for aligner in self.aligners.values():
            total.update({k: v for k, v in aligner.stats.items() if k.startswith("masked:")})
        return total

    def _infer_loop(self) -> None:
        pub = self.ctx.socket(zmq.PUB)
        pub.setsockopt(zmq.LINGER, 0)
        pub.connect(self.broker.inproc_publish)
        ck = self.checkpoint
        builder = PredictionBuilder(ck.classes, {"name": ck.name, "hash": ck.content_hash})
        try:
            while (batch := self._queue.get()) is not None:
                result = self.runner.run(batch)
                predictions = builder.build(result, time.time_ns())
                for prediction in predictions:
                    pub.send_multipart(encode_prediction(prediction))
                self.stats.predicted(
                    [(p.rig, p.label) for p in predictions],
                    [p.latency_ns["close_to_publish"] for p in predictions],
                )
        finally:
            pub.close()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        self.supervisor.stop()
        while True:
            try:
                self._queue.put_nowait(None)
                break
            except queue.Full:
                self._queue.get_nowait()
        self._infer.join(2)
        self.sub.close()
        self.broker.__exit__(None, None, None)
        self.ctx.term()
        self.broker.join(1.0)
        log.info("fusiond stopped")


def run_offline(config: Config, plugins: Plugins, recording: Path,
                emit: Callable[[Prediction], None]) -> Stats:  # fmt: skip
    """Run the pipeline over a recording with no wall clock: the recorded receive time is
    the processing clock and the model runs in line, so a recording always gives the same
    windows, batches, labels and scores."""
    from fusiond.recording import read

    daemon = Daemon(config, plugins, start_sources=False)
    runner = ModelRunner(daemon.checkpoint, plugins.encoders.types, config.model.device)
    ck = daemon.checkpoint
    builder = PredictionBuilder(ck.classes, {"name": ck.name, "hash": ck.content_hash})

    def run(batches: Iterator[list[Window]], now: int) -> None:
        for batch in batches:
            for prediction in builder.build(runner.run(batch), now):
                daemon.stats.predicted([(prediction.rig, prediction.label)], [])
                emit(prediction)

    now = 0
    for rec in read(recording, [SAMPLE_PREFIX]):
        now = rec.log_time_ns
        daemon.ingest.handle(rec.frames, now)
        run(daemon.due_batches(now), now)
    # The end of the recording: close what is left as a quiet rig would be closed.
    window = config.window.to_config()
    final = now + window.length_ns + window.lateness_ns + daemon.batcher.max_delay_ns
    run(daemon.due_batches(final), final)
    return daemon.stats
