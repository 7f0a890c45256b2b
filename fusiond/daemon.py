"""The daemon: the I/O shell around the pipeline's components.

    sources ─> broker ─> worker(s): ingest, align ─> server: batch, model ─> broker ─> clients
                  │                                                            │
    daemon loop: control socket, counters from the components, predictions seen, systemd

It binds the broker and the control socket, starts the sources and the components (an
engine of :mod:`fusiond.runtime.engines`), and turns their counters and the predictions
it sees into status, metrics and systemd's READY and watchdog; no per-sample work. Its
rules live beside their data: :mod:`fusiond.prepare`, :mod:`fusiond.runtime.health`,
:mod:`fusiond.service`, :mod:`fusiond.reload`, :mod:`fusiond.status`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import zmq

from fusiond import status
from fusiond.bus.broker import Broker
from fusiond.bus.security import Gatekeeper, guard
from fusiond.bus.sockets import Sockets, drain, raise_fd_limit
from fusiond.bus.wire import OUTPUT_PREFIX, PREDICTION_PREFIX
from fusiond.config import Config
from fusiond.memory import MemoryReturn
from fusiond.metrics import Stats, Summary
from fusiond.outputs.watch import OutputReports
from fusiond.plugin import Plugins
from fusiond.prepare import daemon_keys, prepare
from fusiond.prometheus import serve as serve_metrics
from fusiond.prometheus import stop as stop_metrics
from fusiond.reload import Reloader, adopt
from fusiond.runtime.engine import EngineClass, endpoints_for, make_plan, remove_ipc
from fusiond.runtime.engines import ENGINES, engine_class, engine_name
from fusiond.runtime.health import Continuity, Heartbeats
from fusiond.runtime.server import RELOAD
from fusiond.service import Liveness, Systemd, fed, watchdog_interval_ns
from fusiond.sources.supervisor import Supervisor, output_children, source_children

log = logging.getLogger("fusiond")
LOOP_STALL_NS = 5_000_000_000
"""``/healthz`` fails when the daemon's loop has not turned for this long."""

__all__ = ["Daemon"]


class Daemon:
    """``with Daemon(config, plugins) as d: d.run(stop)``."""

    STOP_WAIT_S = 1.0
    """How long a stop waits for sources and components before it kills them."""

    def __init__(
        self,
        config: Config,
        plugins: Plugins,
        *,
        start_sources: bool = True,
        config_path: Path | None = None,
        engines: Mapping[str, str | EngineClass] = ENGINES,
    ) -> None:
        """``engines``: the table the engine is looked up in (``[runtime] engine``)."""
        self.config, self.plugins = config, plugins
        prepared = prepare(config, plugins, serve=True, engines=engines)
        for problem in [*prepared.problems, *prepared.warnings, *config.warnings()]:
            log.warning("%s: %s", config.source, problem)  # a device may come later: its source retries
        self.card, self.streams = prepared.card, prepared.streams
        self.start_sources = start_sources
        self.engine_name = engine_name(config)
        self._engine_class = engine_class(self.engine_name, engines)
        self.owner = f"{os.getpid()}-{id(self):x}"  # this daemon's own endpoint names
        self.stats = Stats()
        self.started_ns = time.time_ns()
        self.continuity = Continuity(config.rigs, self.stats)
        self.outputs = OutputReports(config.outputs)
        self.systemd = Systemd()
        self.reloader = Reloader(config_path, plugins, prepared.card.spec, self._reload, self.model_info)
        self.reloader.systemd = self.systemd
        self._failed: set[str] = set()
        self.fatal: str | None = None
        """Why the daemon stopped itself (the run then fails with this)."""
        self.ready, self.loop_ns = False, self.started_ns  # READY announced; when the loop last turned

    def __enter__(self) -> Daemon:
        bus, engine = self.config.bus, self._engine_class
        # First: a port it cannot have stops the start before any thread or socket exists.
        self.metrics_server = serve_metrics(self.config, self)
        raise_fd_limit()
        self.keys = daemon_keys(self.config)
        self.sockets = Sockets(hwm=bus.hwm, max_message_bytes=bus.max_message_bytes, keys=self.keys)
        self.gatekeeper: Gatekeeper | None = None
        try:
            self.gatekeeper, rules = guard(bus.security, self.sockets.ctx, self.stats.drop)
            self.broker = Broker(self.sockets, bus.publish, bus.subscribe, rules, self.stats.drop).__enter__()
            self.control = self.sockets.reply(bus.control, "bus.control")
            stats_at = engine.endpoint(self.config, "stats", self.owner)
            self.inbox = self.sockets.pull(stats_at, bind=True, where="runtime.advertise")
            self.stats_at = _bound(self.inbox)
            self.monitor = self.sockets.subscriber(self.broker.inproc_subscribe, [PREDICTION_PREFIX])
            self.reports = self.sockets.subscriber(self.broker.inproc_subscribe, [OUTPUT_PREFIX], hwm=64)
            endpoints = endpoints_for(engine, self.config, self.broker, self.stats_at, self.owner)
            workers = self.config.runtime.worker_count(len(self.config.rigs))
            self.plan = make_plan(self.config, self.streams, self.card.spec, endpoints, workers)
            self.plan.seq = self.continuity.next_seq
            self.heartbeats = Heartbeats(self.plan.names, self.started_ns)
            self.engine = engine.create(self.plan, self.config, self.sockets.ctx, self.keys, self.plugins)
            self.engine.start()
            self.to_server = self.sockets.push(self.engine.server_inbox, hwm=4)
        except BaseException:
            self.sockets.close()
            stop_metrics(self.metrics_server)
            self.systemd.close()
            raise
        sources = source_children(self.config, self.streams, self.keys.env()) if self.start_sources else []
        self.supervisor = Supervisor(sources + output_children(self.config, self.keys.env()))
        self.supervisor.poll()
        log.info("%s", _started(self))
        return self

    def run(self, stop: threading.Event, reload: threading.Event | None = None) -> None:
        """Serve until ``stop`` is set (or :attr:`fatal`); reload whenever ``reload`` is set."""
        poller = zmq.Poller()
        for sock in (self.inbox, self.monitor, self.control, self.reports):
            poller.register(sock, zmq.POLLIN)
        summary = Summary(self.stats, time.time_ns())
        every_ns = round(self.config.log.summary_s * 1e9)
        next_summary = time.time_ns() + every_ns
        watchdog_ns = watchdog_interval_ns()
        next_ping = time.time_ns()
        memory = MemoryReturn()  # what an attack or a burst made this process take, given back
        while not stop.is_set() and self.fatal is None:
            self.loop_ns = time.time_ns()
            events = dict(poller.poll(50))
            # Each step on its own: one that fails (a bug, or no file descriptor left while
            # the bus is flooded with connections) is counted, and the others still run.
            if self.inbox in events:
                counters = drain(self.inbox, 256)
                self._guarded(
                    "counters", self.heartbeats.take, counters, self.stats, self.streams, time.time_ns()
                )
            if self.monitor in events:
                self._guarded("monitor", self.continuity.take, drain(self.monitor, 1024))
            if self.reports in events:
                self._guarded("outputs", self.outputs.take, drain(self.reports, 64))
            if self.control in events:
                self._guarded("control", status.serve_one, self.control, self)
            now = time.time_ns()
            self._guarded("supervision", self._supervise, reload, now)
            if not self.ready:
                self._guarded("readiness", self._check_ready, now)
            if now >= next_summary:
                next_summary = now + every_ns
                self._guarded("summary", _summarise, summary, self.stats, self.systemd, now)
                self._guarded("liveness", self.heartbeats.end_hung, self.engine.kill, now)
                memory.tick(time.monotonic_ns())
            if self.ready and watchdog_ns is not None and now >= next_ping:
                next_ping = now + watchdog_ns
                self._guarded(
                    "watchdog", lambda t: self.systemd.feed(self._liveness(t), self.heartbeats.silent(t)), now
                )

    def _guarded(self, where: str, step: Callable[..., object], *args: Any) -> None:
        """The last resort: a bug in one step is counted and logged once, and the loop goes on."""
        try:
            step(*args)
        except Exception:
            self.stats.drop("internal_error")
            if where not in self._failed:
                self._failed.add(where)
                log.exception(
                    "internal error in %s (counted as drops.internal_error; further ones only counted)", where
                )

    def _supervise(self, reload: threading.Event | None, now: int) -> None:
        for name in self.engine.poll():  # (re)started: its rigs' next gap in windows is a loss
            self.stats.restarted(name)
            self.continuity.restarted(self.plan.rigs_of(name))
            failed = self.heartbeats.started(name, now)
            if failed is not None:
                self.fatal = failed
                log.error("%s", failed)
        self.supervisor.poll()
        if reload is not None and reload.is_set():
            reload.clear()
            self.reloader.request()
        self.reloader.poll()

    def _check_ready(self, now: int) -> None:
        self.ready = self.systemd.check_ready(
            warm=self.plan.server.name in self.heartbeats.snapshots,
            sources=sum(c.role == "source" for c in self.supervisor.children),
            silent=status.never_delivered_why(self),
            waited_ns=now - self.started_ns,
            model=self.card.name,
        )

    def _liveness(self, now: int) -> Liveness:
        last = max((s.last_recv_ns for s in self.stats.streams.values() if s.last_recv_ns), default=None)
        busy = self.heartbeats.snapshots.get(self.plan.server.name, {}).get("busy_since")
        return Liveness(now, self.started_ns, last, self.stats.last_window_ns, busy, stall_ns=10_000_000_000)

    def health(self, now_ns: int) -> tuple[bool, str]:
        """The watchdog's rule, and the loop itself turning (``/healthz``, from any thread)."""
        if now_ns - self.loop_ns > LOOP_STALL_NS:
            return False, f"the daemon's loop has not turned for {(now_ns - self.loop_ns) / 1e9:.0f} s"
        return fed(self._liveness(now_ns), self.heartbeats.silent(now_ns))

    def _reload(self, new: Config) -> None:
        # The server loads the new model beside the old and swaps between two batches.
        self.to_server.send_multipart([RELOAD, str(new.model.path).encode()])
        self.config = adopt(self.config, new, self.model_info())

    def model_info(self) -> dict[str, str]:
        """The model being served, as its server reports it."""
        reported = self.heartbeats.snapshots.get(self.plan.server.name, {}).get("model")
        if reported:
            return {k: str(v) for k, v in reported.items()}
        ck, runtime = self.card, self.config.model.runtime
        return {"name": ck.name, "hash": ck.content_hash, "device": "loading", "runtime": runtime}

    def component_rows(self, now_ns: int) -> list[dict[str, Any]]:
        """One row per component, with its heartbeat."""
        silent = self.heartbeats.silent(now_ns)
        return [self.heartbeats.annotate(row, now_ns, silent) for row in self.engine.rows()]

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.systemd.stopping()
        # Every child is told at once and all are waited for against one deadline: the
        # stop promise (2 s) holds however many there are and however busy the host is.
        deadline = time.monotonic() + self.STOP_WAIT_S
        self.supervisor.terminate()
        self.engine.stop(deadline)
        self.supervisor.reap(deadline)
        stop_metrics(self.metrics_server)
        self.broker.__exit__(None, None, None)
        if self.gatekeeper is not None:
            self.gatekeeper.stop()
        self.sockets.close()
        remove_ipc(self.plan.server.inbox, self.stats_at)
        self.broker.join(1.0)
        self.systemd.close()
        log.info("fusiond stopped")


def _started(d: Daemon) -> str:
    """One line that says what runs where."""
    bus, ck = d.config.bus, d.card
    return (
        f"fusiond started: model {ck.name} ({ck.content_hash}), {len(d.config.rigs)} rig(s), "
        f"{len(d.streams)} source(s), {len(d.plan.workers)} ingest worker(s) as {d.engine_name}; publishers "
        f"connect to {bus.publish}, subscribers to {bus.subscribe}, control at {bus.control}; socket queues "
        f"hold {bus.hwm} messages of at most {bus.max_message_mb:g} MB"
    )


def _summarise(summary: Summary, stats: Stats, systemd: Systemd, now: int) -> None:
    line = summary.line(now)
    log.info("%s", line)
    systemd.status(line)


def _bound(sock: zmq.Socket[bytes]) -> str:
    return sock.getsockopt_string(zmq.LAST_ENDPOINT)
