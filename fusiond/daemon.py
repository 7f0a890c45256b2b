"""The daemon: broker, source processes, ingest -> align -> batch -> model -> publish.

The only module that owns threads, sockets and processes together. One loop thread
ingests, aligns, answers the control socket and talks to systemd; one inference thread
runs batches and publishes, fed by a bounded queue so a slow model drops counted windows
instead of stalling ingest. SIGHUP loads the new config and model beside the running
ones; the inference thread picks the new model up between two batches.
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
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import zmq

from fusiond import config as config_mod
from fusiond import status
from fusiond.align.windows import RigAligner, Window
from fusiond.batch import Batcher
from fusiond.bus.broker import Broker, bind
from fusiond.bus.wire import (
    ERROR_PREFIX,
    SAMPLE_PREFIX,
    Prediction,
    decode_header,
    encode_prediction,
    sample_topic,
)
from fusiond.config import Config
from fusiond.errors import ConfigError, FusiondError, WireError
from fusiond.ingest import Ingest
from fusiond.metrics import Stats, Summary
from fusiond.models import Checkpoint, load
from fusiond.models.runner import ModelRunner
from fusiond.plugin import Plugins
from fusiond.publish import PredictionBuilder
from fusiond.service import Liveness, Notifier, alive, watchdog_interval_ns
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


def resolve_streams(config: Config, plugins: Plugins, checkpoint: Checkpoint) -> dict[tuple[str, str], str]:
    """``(rig, stream) -> modality`` for every source, checked against the model's inputs."""
    modalities = checkpoint.spec.modalities
    out: dict[tuple[str, str], str] = {}
    for rig, section in config.rigs.items():
        seen: dict[str, str] = {}
        for name, source in section.sources.items():
            cls = plugins.sources.get(source.kind)
            modality = source.modality or (cls.modality if cls else "")
            path = f"rigs.{rig}.sources.{name}.modality"
            if modality not in modalities:
                msg = f"model {checkpoint.name!r} has no {modality!r} input (it takes {sorted(modalities)})"
                raise ConfigError(msg, path=path)
            if modality in seen:
                msg = f"rig already has a {modality!r} source ({seen[modality]}); the model takes one"
                raise ConfigError(msg, path=path)
            seen[modality] = name
            out[rig, name] = modality
    return out


@dataclass(frozen=True)
class Serving:
    """The model the inference thread runs; replaced as a whole on reload."""

    checkpoint: Checkpoint
    runner: ModelRunner
    builder: PredictionBuilder


def serving(checkpoint: Checkpoint, plugins: Plugins, config: Config,
            seq: Counter[str] | None = None) -> Serving:  # fmt: skip
    """Load a checkpoint onto its device and warm it up; ``seq`` numbers predictions on
    from where the model this one replaces left off."""
    runner = ModelRunner(checkpoint, plugins.encoders.types, config.model.device)
    runner.warm_up(config.model.max_batch)
    model = {"name": checkpoint.name, "hash": checkpoint.content_hash}
    return Serving(checkpoint, runner, PredictionBuilder(checkpoint.classes, model, checkpoint.task, seq))


class Daemon:
    """``with Daemon(config, plugins) as d: d.run(stop)``."""

    READY_TIMEOUT_NS = 15_000_000_000

    def __init__(self, config: Config, plugins: Plugins, *, start_sources: bool = True,
                 config_path: Path | None = None) -> None:  # fmt: skip
        self.config = config
        self.config_path = config_path
        self.plugins = plugins
        self.options = config.source_options(plugins.sources)
        self.stats = Stats()
        self.checkpoint = load(config.model.path)
        self.streams = resolve_streams(config, plugins, self.checkpoint)
        self.start_sources = start_sources
        window = config.window.with_buffer(config.ingest)
        trained = self.checkpoint.window
        if trained.get("length_ns", window.length_ns) != window.length_ns:
            log.warning("window.length_ms is %g but model %s was trained on %g ms windows: its scores "
                        "will not hold", config.window.length_ms, self.checkpoint.name,
                        trained["length_ns"] / 1e6)  # fmt: skip
        specs = self.checkpoint.spec.modalities
        self.aligners = {
            rig: RigAligner(
                rig, {s: m for (r, s), m in self.streams.items() if r == rig}, specs, window, self.stats.drops
            )  # fmt: skip
            for rig in config.rigs
        }
        self.batcher = Batcher(config.model.max_batch, round(config.model.max_delay_ms * 1e6))
        rates = {(rig, name): s.max_message_rate for rig, section in config.rigs.items()
                 for name, s in section.sources.items() if s.max_message_rate is not None}  # fmt: skip
        self.ingest = Ingest(self.aligners, self.streams, self.stats, config.ingest.limits(), rates)
        self._queue: queue.Queue[list[Window] | None] = queue.Queue(config.model.queue)
        self._seq: Counter[str] = Counter()
        self._reload_again = False
        self._failed: set[str] = set()
        self.started_ns = time.time_ns()
        self._busy_since: int | None = None
        self._reload: threading.Thread | None = None
        self._reloaded: Serving | Exception | None = None
        self._reload_config: Config | None = None

    def __enter__(self) -> Daemon:
        bus = self.config.bus
        self.notifier = Notifier()
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.broker = Broker(self.ctx, bus.publish, bus.subscribe, bus.hwm, bus.max_message_bytes)
        try:
            self.broker.__enter__()
            self.control = self.ctx.socket(zmq.REP)
            self.control.setsockopt(zmq.LINGER, 0)
            bind(self.control, bus.control, "bus.control")
        except BaseException:
            self.ctx.destroy(linger=0)
            raise
        self.serving = serving(self.checkpoint, self.plugins, self.config, self._seq)
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.RCVHWM, bus.hwm)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.connect(self.broker.inproc_subscribe)
        # Only the configured streams: the broker then filters a flood on any other topic
        # before it costs this loop anything (subscriptions travel upstream to publishers).
        for rig, stream in self.streams:
            self.sub.subscribe(sample_topic(rig, stream).encode())
            self.sub.subscribe(f"{ERROR_PREFIX}{rig}/{stream}".encode())
        self._infer = threading.Thread(target=self._infer_loop, name="fusiond-infer", daemon=True)
        self._infer.start()
        self.supervisor = Supervisor(self._children() if self.start_sources else [])
        self.supervisor.poll()
        self.metrics_server = self._start_metrics()
        ck = self.checkpoint
        log.info(
            "fusiond started: model %s (%s) on %s, %d rig(s), %d source(s); publishers connect to "
            "%s, subscribers to %s, control at %s; socket queues hold %d messages of at most %g MB",
            ck.name, ck.content_hash, self.serving.runner.device, len(self.config.rigs), len(self.streams),
            bus.publish, bus.subscribe, bus.control, bus.hwm, bus.max_message_mb,
        )  # fmt: skip
        return self

    def _start_metrics(self) -> object | None:
        if not self.config.metrics.listen:
            return None
        from fusiond.prometheus import serve

        return serve(self.config.metrics.listen, self)

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

    def run(self, stop: threading.Event, reload: threading.Event | None = None) -> None:
        """Serve until ``stop`` is set; reload config and model whenever ``reload`` is set."""
        poller = zmq.Poller()
        poller.register(self.sub, zmq.POLLIN)
        poller.register(self.control, zmq.POLLIN)
        summary = Summary(self.stats, time.time_ns())
        every_ns = round(self.config.log.summary_s * 1e9)
        next_summary = time.time_ns() + every_ns
        watchdog_ns = watchdog_interval_ns()
        next_ping = time.time_ns()
        ready = False
        while not stop.is_set():
            deadline = self.batcher.deadline_ns()
            wait_ms = 20 if deadline is None else max(0, min(20, (deadline - time.time_ns()) // 1_000_000))
            events = dict(poller.poll(wait_ms))
            if self.sub in events:
                self._guarded("ingest", self._drain)
            if self.control in events:
                self._guarded("control", self._answer)
            now = time.time_ns()
            self._guarded("close", self._close_windows, now)
            self.supervisor.poll()
            if reload is not None and reload.is_set():
                reload.clear()
                self._start_reload()
            self._finish_reload()
            if not ready and self._sources_up(now):
                ready = True
                self.notifier.notify(READY=1, STATUS=f"serving {len(self.streams)} source(s)")
                log.info("fusiond ready: sources up, model %s warmed", self.serving.checkpoint.name)
            if now >= next_summary:
                line = summary.line(now, self._masked())
                log.info("%s", line)
                if ready:
                    self.notifier.notify(STATUS=line)
                next_summary = now + every_ns
            if ready and watchdog_ns is not None and now >= next_ping:
                self._watchdog(now)
                next_ping = now + watchdog_ns

    def _guarded(self, where: str, step: Callable[..., object], *args: Any) -> None:
        """The last resort: a bug in one step is counted and logged once, and the loop goes on."""
        try:
            step(*args)
        except Exception:
            self.stats.drop("internal_error")
            if where not in self._failed:
                self._failed.add(where)
                log.exception("internal error in %s (counted as drops.internal_error; further ones only "
                              "counted)", where)  # fmt: skip

    def _drain(self) -> None:
        for _ in range(_DRAIN):
            try:
                frames = self.sub.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            if frames[0].bytes.startswith(b"e/"):
                self._guarded("source_error", self._source_error, frames)
            else:
                self._guarded("ingest", self.ingest.handle, frames, time.time_ns())

    def _source_error(self, frames: list[zmq.Frame]) -> None:
        try:
            header = decode_header(frames)
            key = (str(header["rig"]), str(header["stream"]))
        except (WireError, KeyError):
            self.stats.drop("bad_header")
            return
        if key in self.streams:
            s = self.stats.stream(*key)
            s.error, s.error_ns = str(header.get("error", "")), time.time_ns()

    def _answer(self) -> None:
        # A REP socket must answer every request, whatever it holds, or it stops taking more.
        request = self.control.recv_multipart()
        try:
            if request == [b"status"]:
                reply: dict[str, object] = self.status(time.time_ns())
            else:
                reply = {"error": f"unknown request {request[0][:40]!r}; send one frame: 'status'"}
            body = json.dumps(reply).encode()
        except Exception:
            self.control.send(json.dumps({"error": "internal error; see the daemon's log"}).encode())
            raise
        self.control.send(body)

    def status(self, now_ns: int) -> dict[str, object]:
        """Everything ``fusiond status`` prints."""
        ck = self.serving.checkpoint
        rows = status.sources(now_ns, self.stats, self.supervisor.children, self.streams)
        window_ns = self.config.window.to_config()
        quiet_after = window_ns.length_ns + window_ns.lateness_ns + 2_000_000_000
        return {
            "uptime_s": round((now_ns - self.started_ns) / 1e9, 1),
            "model": {"name": ck.name, "hash": ck.content_hash, "device": str(self.serving.runner.device)},
            "sources": rows,
            "rigs": status.rigs(now_ns, self.stats, self.aligners, quiet_after, rows),
            "drops": dict(self.stats.drops),
        }

    def _sources_up(self, now: int) -> bool:
        if now - self.started_ns > self.READY_TIMEOUT_NS:
            return True
        states = {c.name: c.state for c in self.supervisor.children}
        for rig, stream in self.streams:
            s = self.stats.stream(rig, stream)
            state = states.get(f"{rig}/{stream}", "external")
            if not (s.samples or s.error or state in ("failed", "finished") or state == "external"):
                return False
        return True

    def _watchdog(self, now: int) -> None:
        last_samples = [s.last_recv_ns for s in self.stats.streams.values() if s.last_recv_ns]
        ok, why = alive(Liveness(
            now_ns=now, started_ns=self.started_ns,
            last_sample_ns=max(last_samples) if last_samples else None,
            last_window_ns=self.stats.last_window_ns,
            oldest_pending_ns=self._busy_since, stall_ns=10_000_000_000,
        ))  # fmt: skip
        if ok and self._infer.is_alive():
            self.notifier.notify(WATCHDOG=1)
        else:
            log.error("watchdog: pipeline wedged (%s); not telling systemd it is alive", why)

    def due_batches(self, now: int) -> Iterator[list[Window]]:
        """Close every due window and yield the batches that are ready at ``now``."""
        for aligner in self.aligners.values():
            for window in aligner.poll(now):
                self.batcher.add(window, now)
                self.stats.last_window_ns = now
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
        try:
            while (batch := self._queue.get()) is not None:
                self._busy_since = time.time_ns()
                self._guarded("inference", self._infer_batch, pub, batch)
                self._busy_since = None
        finally:
            pub.close()

    def _infer_batch(self, pub: zmq.Socket[bytes], batch: list[Window]) -> None:
        current = self.serving  # read once: a reload swaps models between batches
        predictions = current.builder.build(current.runner.run(batch), time.time_ns())
        for p in predictions:
            pub.send_multipart(encode_prediction(p))
            self.stats.predicted(p.rig, p.label, p.latency_ns["close_to_publish"], p.t_pub_ns)

    def _start_reload(self) -> None:
        if self._reload is not None and self._reload.is_alive():
            log.warning("reload already in progress; this SIGHUP reloads again once it is done")
            self._reload_again = True
            return
        if self.config_path is None:
            log.warning("SIGHUP ignored: this daemon was not started from a config file")
            return
        log.info("SIGHUP: reloading %s", self.config_path)
        self._reload = threading.Thread(target=self._prepare_reload, name="fusiond-reload", daemon=True)
        self._reload.start()

    def _prepare_reload(self) -> None:
        """Load and warm the new model beside the running one (reload thread)."""
        assert self.config_path is not None
        try:
            new = config_mod.load(self.config_path)
            new.source_options(self.plugins.sources)
            checkpoint = load(new.model.path)
            if checkpoint.spec != self.checkpoint.spec:
                msg = "the new model's inputs differ from the running one's; restart to change them"
                raise ConfigError(msg, path="model.path")
            resolve_streams(new, self.plugins, checkpoint)
            self._reload_config = new
            self._reloaded = serving(checkpoint, self.plugins, new, self._seq)
        except (FusiondError, OSError) as exc:
            self._reloaded = exc

    def _finish_reload(self) -> None:
        result = self._reloaded
        if result is None:
            return
        self._reloaded = None
        if self._reload is not None:
            self._reload.join()  # it has set its result: only its last instructions are left
        try:
            self._apply_reload(result)
        finally:
            if self._reload_again:  # a SIGHUP came during this reload: the file may have changed since
                self._reload_again = False
                self._start_reload()

    def _apply_reload(self, result: Serving | Exception) -> None:
        old = self.serving.checkpoint
        if isinstance(result, Exception):
            log.error("reload failed, still serving %s (%s): %s", old.name, old.content_hash, result)
            return
        new = self._reload_config
        assert new is not None
        self.serving = result
        self.batcher.max_batch = new.model.max_batch
        self.batcher.max_delay_ns = round(new.model.max_delay_ms * 1e6)
        logging.getLogger().setLevel(new.log.level.upper())
        restart_only = [k for k in ("bus", "ingest", "window", "rigs")
                        if getattr(new, k) != getattr(self.config, k)]  # fmt: skip
        self.config = self.config.model_copy(update={"model": new.model, "log": new.log})
        ck = result.checkpoint
        log.info("reloaded: now serving %s (%s), was %s (%s)", ck.name, ck.content_hash,
                 old.name, old.content_hash)  # fmt: skip
        if restart_only:
            log.warning(
                "changes to [%s] take effect on restart; kept the running ones", ", ".join(restart_only)
            )

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        self.notifier.notify(STOPPING=1)
        self.supervisor.stop()
        while True:
            try:
                self._queue.put_nowait(None)
                break
            except queue.Full:
                self._queue.get_nowait()
        self._infer.join(2)
        if self.metrics_server is not None:
            self.metrics_server.shutdown()  # type: ignore[attr-defined]
        self.sub.close()
        self.control.close()
        self.broker.__exit__(None, None, None)
        self.ctx.term()
        self.broker.join(1.0)
        self.notifier.close()
        log.info("fusiond stopped")


def run_offline(config: Config, plugins: Plugins, recording: Path,
                emit: Callable[[Prediction], None]) -> Stats:  # fmt: skip
    """Run the pipeline over a recording with no wall clock: the recorded receive time is
    the processing clock and the model runs in line, so a recording always gives the same
    windows, batches, labels and scores."""
    from fusiond.recording import read

    daemon = Daemon(config, plugins, start_sources=False)
    model = serving(daemon.checkpoint, plugins, config)

    def run(batches: Iterator[list[Window]], now: int) -> None:
        for batch in batches:
            for prediction in model.builder.build(model.runner.run(batch), now):
                daemon.stats.predicted(prediction.rig, prediction.label, 0, now)
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
