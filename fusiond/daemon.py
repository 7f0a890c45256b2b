"""The daemon: the I/O shell around the pipeline's components.

    sources ─> broker ─> worker(s): ingest, align ─> server: batch, model ─> broker ─> clients
                  │                                                            │
    daemon loop: control socket, counters from the components, predictions seen, systemd

The daemon binds the broker and the control socket, starts the sources and the
components (:mod:`fusiond.runtime`), restarts what dies, and turns the components'
counters and the predictions it sees on the bus into status, the summary line, metrics
and systemd's watchdog. It does no per-sample work itself.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import zmq

from fusiond import config as config_mod
from fusiond import status
from fusiond.bus.broker import Broker
from fusiond.bus.security import Gatekeeper, Keys, PublishRules, listing, load_pair
from fusiond.bus.sockets import Sockets, drain, local_endpoint, raise_fd_limit
from fusiond.bus.wire import PREDICTION_PREFIX, decode_prediction
from fusiond.config import Config
from fusiond.errors import ConfigError, FusiondError, ModelError, WireError
from fusiond.memory import MemoryReturn
from fusiond.metrics import Stats, Summary
from fusiond.models import Checkpoint, load
from fusiond.models.runner import pick_device
from fusiond.pipeline import resolve_streams
from fusiond.plugin import Plugins
from fusiond.runtime.engine import Engine, ProcessEngine, ThreadEngine, endpoints_for, make_plan, remove_ipc
from fusiond.runtime.handoff import decode_body
from fusiond.runtime.server import RELOAD
from fusiond.service import Liveness, Notifier, alive, watchdog_interval_ns
from fusiond.sources.base import SourceConfig
from fusiond.sources.runner import Backoff
from fusiond.sources.supervisor import Child, Supervisor

log = logging.getLogger("fusiond")
HUNG_NS = 10_000_000_000
"""A component whose heartbeat stopped this long ago is hung: it is ended and started again."""
STARTUP_NS = 120_000_000_000
"""How long a component may take to send its first heartbeat (loading its model, say)."""
MAX_FAILED_STARTS = 3
"""Starts in a row that end before a component's first heartbeat: then the daemon stops.
``check-config`` and the daemon's own start load and warm the model as the server will, so
a server that still dies before serving has met something a retry will not cure (a device
out of memory, a library missing in the component's environment)."""

__all__ = ["Daemon", "local_endpoint", "run_offline"]


def daemon_keys(config: Config) -> Keys:
    """The daemon's CURVE keys: its server pair and its own sources' client pair."""
    security = config.bus.security
    if security.mode != "curve":
        return Keys()
    assert security.server_key is not None and security.client_key is not None
    public, secret = load_pair(security.server_key, "bus.security.server_key")
    if secret is None:
        msg = f"{security.server_key} holds no secret key: give the NAME.key_secret file"
        raise ConfigError(msg, path="bus.security.server_key")
    client_public, client_secret = load_pair(security.client_key, "bus.security.client_key")
    if client_secret is None:
        msg = f"{security.client_key} holds no secret key: give the NAME.key_secret file"
        raise ConfigError(msg, path="bus.security.client_key")
    assert security.clients is not None
    if client_public.decode() not in {key for _, key, _ in listing(security.clients)}:
        msg = (f"the public half of {security.client_key} is not in {security.clients}: the daemon's "
               "own sources would be refused")
        raise ConfigError(msg, path="bus.security.client_key")
    return Keys(public, secret, client_public, client_secret)


def engine_mode(config: Config) -> str:
    """``threads`` (one process), ``processes`` or ``ray``."""
    if config.runtime.engine == "ray":
        return "ray"
    return "processes" if config.runtime.sharded else "threads"


def make_engine(mode: str, config: Config, plan: Any, ctx: zmq.Context[zmq.Socket[bytes]],
                keys: Keys | None = None) -> Engine:  # fmt: skip
    """The engine that runs ``plan``'s components (``keys``: what child processes connect with)."""
    if mode == "ray":
        if config.bus.security.mode != "none":
            msg = "engine 'ray' with a secured bus is not supported: the actors would need the keys"
            raise ConfigError(msg, path="runtime.engine")
        from fusiond.runtime.ray_engine import RayEngine

        return RayEngine(plan, config.runtime.address, config.runtime.num_gpus)
    if mode == "processes":
        return ProcessEngine(plan, (keys or Keys()).env())
    return ThreadEngine(plan, ctx)


@dataclass(frozen=True)
class Prepared:
    """What a config needs before anything starts, every part checked."""

    options: dict[tuple[str, str], SourceConfig]
    checkpoint: Checkpoint
    streams: dict[tuple[str, str], str]
    problems: list[str]
    """What the source kinds see wrong without opening their devices (a missing file, say)."""
    warnings: list[str]
    """What may well be meant but is worth a line (a model input no source of a rig feeds)."""


def prepare(config: Config, plugins: Plugins, *, serve: bool = False) -> Prepared:
    """Check ``config`` through and through; every error names the file and the TOML path.

    Used by the daemon at start and on reload, and by ``fusiond check-config``. With
    ``serve``, the model is also loaded exactly as the inference server will load it and
    given a warm-up batch: weights that do not fit the model, or a runtime that cannot run
    it, are one clear line before the daemon starts anything, not a server that fails to
    start for ever.
    """
    options = config.source_options(plugins.sources)
    try:
        checkpoint = load(config.model.path)
    except ModelError as exc:
        raise config.error(str(exc), "model.path") from None
    try:
        pick_device(config.model.device)
    except ModelError as exc:
        raise config.error(str(exc), "model.device") from None
    streams = resolve_streams(config, plugins.sources, checkpoint.spec, checkpoint.name)
    if serve:
        _try_serving(config)
    problems = []
    for (rig, name), source_options in options.items():
        cls = plugins.sources.get(config.rigs[rig].sources[name].kind)
        assert cls is not None  # source_options checked the kind
        for problem in cls.check(source_options, config.base_dir):
            problems.append(f"rigs.{rig}.sources.{name}.{problem}")
    trained = checkpoint.window.get("length_ns")
    if trained is not None and trained != round(config.window.length_ms * 1e6):
        problems.append(f"window.length_ms: {config.window.length_ms:g}, but model {checkpoint.name} was "
                        f"trained on {trained / 1e6:g} ms windows: its scores will not hold")  # fmt: skip
    warnings = []
    for rig, section in config.rigs.items():
        fed = {streams[rig, name] for name in section.sources}
        for modality in sorted(set(checkpoint.spec.modalities) - fed):
            warnings.append(f"rigs.{rig}: no source for the model's {modality!r} input: it is masked in "
                            "every window")  # fmt: skip
    return Prepared(options, checkpoint, streams, problems, warnings)


def _try_serving(config: Config) -> None:
    from fusiond.runtime.server import load_serving

    model = config.model
    try:
        load_serving(model.path, model.device, model.runtime, model.threads, 2, Counter())
    except FusiondError as exc:
        msg = f"cannot serve this model: {exc}"
        raise config.error(msg, "model.path") from None
    except Exception as exc:  # noqa: BLE001 (whatever loading a foreign model raises: said in one line)
        msg = f"cannot serve this model: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
        raise config.error(msg, "model.path") from None


def port_problems(config: Config) -> list[str]:
    """The TCP ports the daemon would bind that are taken now, one line each (the daemon
    itself refuses to start on them; ``check-config`` says so before)."""
    import socket

    wanted = [(key, getattr(config.bus, key)) for key in ("publish", "subscribe", "control")]
    wanted = [(f"bus.{key}", e.removeprefix("tcp://")) for key, e in wanted if e.startswith("tcp://")]
    if config.metrics.listen:
        wanted.append(("metrics.listen", config.metrics.listen))
    out = []
    for key, address in wanted:
        host, _, port = address.rpartition(":")
        if port == "*":
            continue
        with socket.socket(socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host.strip("[]").replace("*", "") or "0.0.0.0", int(port)))
            except OSError as exc:
                out.append(f"{key}: cannot bind {address}: {exc.strerror} (is another fusiond running?)")
    return out


class Daemon:
    """``with Daemon(config, plugins) as d: d.run(stop)``."""

    READY_TIMEOUT_NS = 15_000_000_000
    STOP_WAIT_S = 1.0
    """How long a stop waits for sources and components before it kills them."""

    def __init__(self, config: Config, plugins: Plugins, *, start_sources: bool = True,
                 config_path: Path | None = None) -> None:  # fmt: skip
        self.config = config
        self.config_path = config_path
        self.plugins = plugins
        prepared = prepare(config, plugins, serve=True)
        for problem in prepared.problems:  # a device may come later: its source retries with backoff
            log.warning("%s: %s", config.source, problem)
        for warning in [*prepared.warnings, *config.warnings()]:
            log.warning("%s: %s", config.source, warning)
        self.options = prepared.options
        self.stats = Stats()
        self.checkpoint = prepared.checkpoint
        self.streams = prepared.streams
        self.start_sources = start_sources
        self.mode = engine_mode(config)
        self.workers = config.runtime.worker_count(len(config.rigs))
        self.started_ns = time.time_ns()
        self.components: dict[str, dict[str, Any]] = {}
        self._next_seq: Counter[str] = Counter()
        self._last_index: dict[str, int] = {}
        self._resumed: set[str] = set()
        self._reload: threading.Thread | None = None
        self._reloaded: Config | Exception | None = None
        self._reload_again = False
        self._failed: set[str] = set()
        self._heard: dict[str, int] = {}
        """Each component's last heartbeat (daemon clock)."""
        self._started_at: dict[str, int] = {}
        self._unproven: set[str] = set()
        """Components started and not heard from since."""
        self.failed_starts: Counter[str] = Counter()
        """Per component, its starts in a row that ended before its first heartbeat."""
        self.fatal: str | None = None
        """Why the daemon stopped itself (the run then fails with this)."""
        self.hung: Counter[str] = Counter()
        """Times each component was ended for sending no heartbeat."""
        self._not_ready_logged = False
        self.ready = False
        """Whether READY was announced (see :meth:`_ready`)."""

    def __enter__(self) -> Daemon:
        bus = self.config.bus
        # First: a port it cannot have stops the start before any thread or socket exists.
        self.metrics_server = self._start_metrics()
        before, after = raise_fd_limit()
        if after < 4096:
            log.warning("this process may open %d files (was %d); each connection to the bus costs "
                        "one: raise the hard limit (LimitNOFILE=65536 in the unit does)", after,
                        before)  # fmt: skip
        self.notifier = Notifier()
        self.keys = daemon_keys(self.config)
        self.sockets = Sockets(hwm=bus.hwm, max_message_bytes=bus.max_message_bytes, keys=self.keys)
        self.gatekeeper: Gatekeeper | None = None
        try:
            rules = self._secure()
            self.broker = Broker(self.sockets, bus.publish, bus.subscribe, rules, self.stats.drop).__enter__()
            self.control = self.sockets.reply(bus.control, "bus.control")
            self.inbox = self._bind_inbox()
            self.monitor = self.sockets.subscriber(self.broker.inproc_subscribe, [PREDICTION_PREFIX])
            endpoints = endpoints_for(self.mode, self.config, self.broker, self._inbox_endpoint)
            self.plan = make_plan(self.config, self.streams, self.checkpoint.spec, endpoints, self.workers)
            self.plan.seq = lambda: dict(self._next_seq)
            self.engine = make_engine(self.mode, self.config, self.plan, self.sockets.ctx, self.keys)
            self.engine.start()
            self.reloader = self.sockets.push(self.engine.server_inbox, hwm=4)
        except BaseException:
            self.sockets.close()
            raise
        self.supervisor = Supervisor(self._children() if self.start_sources else [])
        self.supervisor.poll()
        ck = self.checkpoint
        log.info(
            "fusiond started: model %s (%s), %d rig(s), %d source(s), %d ingest worker(s) as %s; publishers "
            "connect to %s, subscribers to %s, control at %s; socket queues hold %d messages of at most "
            "%g MB", ck.name, ck.content_hash, len(self.config.rigs), len(self.streams),
            len(self.plan.workers), self.mode, bus.publish, bus.subscribe, bus.control, bus.hwm,
            bus.max_message_mb,
        )  # fmt: skip
        return self

    def _secure(self) -> PublishRules | None:
        """Start ZAP on a secured bus; the publish rules, if any."""
        security = self.config.bus.security
        if security.mode != "curve":
            return None
        assert security.clients is not None and security.client_key is not None
        self.gatekeeper = Gatekeeper(self.sockets.ctx, security.clients, self._refused)
        self.gatekeeper.start()
        if not security.publishers:
            return None
        own = security.client_key.name.removesuffix(".key_secret")
        return PublishRules(security.publishers, trusted=[own])

    def _refused(self, why: str) -> None:
        """A connection's key was refused (ZAP thread): counted, logged once."""
        self.stats.drop("unauthenticated")
        if "unauthenticated" not in self._failed:
            self._failed.add("unauthenticated")
            log.warning("refused a connection: %s (counted as drops.unauthenticated; further ones only "
                        "counted)", why)  # fmt: skip

    def _bind_inbox(self) -> zmq.Socket[bytes]:
        if self.mode == "threads":
            endpoint = f"inproc://fusiond-stats-{id(self)}"
        elif self.mode == "processes":
            from fusiond.runtime.engine import runtime_dir

            endpoint = f"ipc://{runtime_dir()}/stats-{os.getpid()}"
        else:
            endpoint = f"tcp://{self.config.runtime.advertise}:*"
        sock = self.sockets.pull(endpoint, bind=True, where="runtime.advertise")
        self._inbox_endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        return sock

    def _start_metrics(self) -> object | None:
        if not self.config.metrics.listen:
            return None
        from fusiond.prometheus import serve

        try:
            return serve(self.config.metrics.listen, self)
        except OSError as exc:
            msg = f"cannot serve metrics on {self.config.metrics.listen}: {exc.strerror}"
            raise self.config.error(msg, "metrics.listen") from None

    def _children(self) -> list[Child]:
        anchor_ns = (time.time_ns() // 1_000_000 + 1000) * 1_000_000
        connect = local_endpoint(self.config.bus.publish)
        children = []
        for rig, section in self.config.rigs.items():
            for name, source in section.sources.items():
                if source.external:
                    continue
                argv = [
                    sys.executable, "-P", "-m", "fusiond", "source", source.kind,
                    "--connect", connect, "--rig", rig, "--stream", name,
                    "--modality", self.streams[rig, name], "--anchor-ns", str(anchor_ns),
                    "--options-json", json.dumps(source.options), "--parent-pid", str(os.getpid()),
                ]  # fmt: skip
                backoff = Backoff(cap_s=source.restart_max_s)
                env = self.keys.env()
                children.append(Child(f"{rig}/{name}", argv, self.config.base_dir, backoff, env=env))
        # File sources map media position p to anchor + p, so a rig's files play in step.
        log.info("media anchor: file sources start at %d (realtime ns)", anchor_ns)
        return children

    def run(self, stop: threading.Event, reload: threading.Event | None = None) -> None:
        """Serve until ``stop`` is set; reload config and model whenever ``reload`` is set."""
        poller = zmq.Poller()
        for sock in (self.inbox, self.monitor, self.control):
            poller.register(sock, zmq.POLLIN)
        summary = Summary(self.stats, time.time_ns())
        every_ns = round(self.config.log.summary_s * 1e9)
        next_summary = time.time_ns() + every_ns
        watchdog_ns = watchdog_interval_ns()
        next_ping = time.time_ns()
        memory = MemoryReturn()  # what an attack or a burst made this process take, given back
        while not stop.is_set() and self.fatal is None:
            events = dict(poller.poll(50))
            if self.inbox in events:
                self._guarded("counters", self._take_counters)
            if self.monitor in events:
                self._guarded("monitor", self._take_predictions)
            if self.control in events:
                self._guarded("control", self._answer)
            now = time.time_ns()
            # Each step on its own: one that fails (a bug, or no file descriptor left while
            # the bus is flooded with connections) is counted, and the others still run.
            self._guarded("supervision", self._supervise, reload)
            if not self.ready:
                self._guarded("readiness", self._check_ready, now)
            if now >= next_summary:
                next_summary = now + every_ns
                self._guarded("summary", self._summarise, summary, now)
                self._guarded("liveness", self._check_hung, now)
                memory.tick(time.monotonic_ns())
            if self.ready and watchdog_ns is not None and now >= next_ping:
                next_ping = now + watchdog_ns
                self._guarded("watchdog", self._watchdog, now)

    def _supervise(self, reload: threading.Event | None) -> None:
        for name in self.engine.poll():
            self._restarted(name)
        self.supervisor.poll()
        if reload is not None and reload.is_set():
            reload.clear()
            self._start_reload()
        self._finish_reload()

    def _check_ready(self, now: int) -> None:
        self.ready = self._ready(now)

    def _summarise(self, summary: Summary, now: int) -> None:
        line = summary.line(now, self._masked())
        log.info("%s", line)
        if self.ready:
            self.notifier.notify(STATUS=line)

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

    def _take_counters(self) -> None:
        names = [spec.name for spec in self.plan.workers] + [self.plan.server.name]
        for frames in drain(self.inbox, 256):
            try:
                snapshot = decode_body(frames)
            except Exception:  # on Ray this inbox is a TCP port: anything may arrive
                snapshot = None
            if isinstance(snapshot, dict) and self.stats.absorb(snapshot, names, self.streams):
                self.components[snapshot["name"]] = snapshot
                self._heard[snapshot["name"]] = time.time_ns()  # the snapshot is its heartbeat
                self._unproven.discard(snapshot["name"])
                self.failed_starts.pop(snapshot["name"], None)
            else:
                self.stats.drop("bad_counters")

    def _take_predictions(self) -> None:
        for frames in drain(self.monitor, 1024):
            try:
                p = decode_prediction(frames)
            except WireError:
                continue
            if p.rig not in self.config.rigs:
                continue  # p/lab also matches p/lab2
            index = int(p.extra.get("window_index", -1))
            last = self._last_index.get(p.rig)
            if p.rig in self._resumed and last is not None and index > last + 1:
                self.stats.drop("lost_in_restart", index - last - 1)
            self._resumed.discard(p.rig)
            self._last_index[p.rig] = max(index, last if last is not None else index)
            self._next_seq[p.rig] = max(self._next_seq[p.rig], p.seq + 1)
            self.stats.predicted(p.rig, p.label, p.latency_ns.get("close_to_publish", 0), p.t_pub_ns)

    def _restarted(self, name: str) -> None:
        """A component (re)started: its rigs' next gap in windows is a loss, counted."""
        self.stats.restarted(name)
        if name in self._unproven:
            self.failed_starts[name] += 1
            if self.failed_starts[name] >= MAX_FAILED_STARTS:
                self.fatal = (f"{name} ended {self.failed_starts[name]} times in a row before it began "
                              "(its error is logged above); stopping")  # fmt: skip
                log.error("%s", self.fatal)
        self._unproven.add(name)
        self._resumed.update(self.plan.rigs_of(name))
        self._heard.pop(name, None)
        self._started_at[name] = time.time_ns()

    def _silent_components(self, now: int) -> dict[str, float]:
        """Components whose heartbeat (their counters, twice a second) stopped: name -> seconds
        since. One that never sent any has :data:`STARTUP_NS` to load its model first."""
        out = {}
        for name in [spec.name for spec in self.plan.workers] + [self.plan.server.name]:
            heard = self._heard.get(name)
            since = now - (heard if heard is not None else self._started_at.get(name, self.started_ns))
            if since > (HUNG_NS if heard is not None else STARTUP_NS):
                out[name] = since / 1e9
        return out

    def _check_hung(self, now: int) -> None:
        """End a component that stopped beating (stopped, deadlocked) so that it starts again."""
        for name, silent_s in self._silent_components(now).items():
            if self.engine.kill(name):
                self.hung[name] += 1
                log.error("%s sent no heartbeat for %.0f s: hung; ended, to be started again (%d time(s))",
                          name, silent_s, self.hung[name])  # fmt: skip
                self._heard.pop(name, None)
                self._started_at[name] = now

    def _answer(self) -> None:
        # A REP socket must answer every request, whatever it holds, or it stops taking more.
        request = self.control.recv_multipart()
        t2 = time.time_ns()
        try:
            if len(request) == 2 and request[0] == b"time" and request[1].isdigit() and len(request[1]) < 20:
                # A clock probe from a source on another host (fusiond.sources.clocksync).
                answer = {"t1": int(request[1]), "t2": t2, "t3": time.time_ns()}
                self.control.send(json.dumps(answer).encode())
                return
            if request == [b"status"]:
                reply: dict[str, object] = self.status(time.time_ns())
            else:
                reply = {"error": f"unknown request {request[0][:40]!r}; send one frame: 'status'"}
            body = json.dumps(reply).encode()
        except Exception:
            self.control.send(json.dumps({"error": "internal error; see the daemon's log"}).encode())
            raise
        self.control.send(body)

    def model_info(self) -> dict[str, str]:
        """The model being served, as its server reports it."""
        reported = self.components.get(self.plan.server.name, {}).get("model")
        if reported:
            return {k: str(v) for k, v in reported.items()}
        ck = self.checkpoint
        runtime = self.config.model.runtime
        return {"name": ck.name, "hash": ck.content_hash, "device": "loading", "runtime": runtime}

    def status(self, now_ns: int) -> dict[str, object]:
        """Everything ``fusiond status`` prints."""
        rows = status.sources(now_ns, self.stats, self.supervisor.children, self.streams)
        window = self.config.window
        quiet_after = round((window.length_ms + window.lateness_ms) * 1e6) + 2_000_000_000
        return {
            "uptime_s": round((now_ns - self.started_ns) / 1e9, 1),
            "ready": self.ready,
            "never_delivered": self.silent(),
            "model": self.model_info(),
            "runtime": {"engine": self.mode, "components": self._component_rows(now_ns)},
            "sources": rows,
            "rigs": status.rigs(now_ns, self.stats, list(self.config.rigs), quiet_after, rows),
            "drops": dict(self.stats.all_drops()),
        }

    def _component_rows(self, now: int) -> list[dict[str, Any]]:
        silent = self._silent_components(now)
        rows = self.engine.rows()
        for row in rows:
            heard = self._heard.get(row["name"])
            row["last_heartbeat_s"] = None if heard is None else round((now - heard) / 1e9, 1)
            row["hung"] = self.hung[row["name"]]
            row["failed_starts"] = self.failed_starts[row["name"]]
            if row["name"] in silent:
                row["state"] = "hung"
        return rows

    def silent(self) -> list[str]:
        """The streams this daemon starts that have not delivered a sample yet."""
        started = {c.name for c in self.supervisor.children}
        return [f"{rig}/{stream}" for rig, stream in self.streams
                if f"{rig}/{stream}" in started and not self.stats.stream(rig, stream).messages]  # fmt: skip

    def _ready(self, now: int) -> bool:
        """Announce READY once the model is warm and every source has delivered a sample.

        A source that never delivers is not counted: after ``READY_TIMEOUT_NS`` the daemon
        is ready, degraded, if at least one source delivers (its windows mask the silent
        ones, and those keep retrying); with none it stays not ready and says why, so a
        service manager's start timeout can act. External streams are not waited for.
        """
        if self.plan.server.name not in self.components:
            return False  # the model is not loaded and warmed yet
        silent = self.silent()
        waited = now - self.started_ns > self.READY_TIMEOUT_NS
        started = sum(1 for c in self.supervisor.children)
        if silent and not waited:
            return False
        why = ", ".join(f"{name} ({self._error(name) or 'no samples'})" for name in silent)
        if silent and len(silent) == started:
            if not self._not_ready_logged:
                self._not_ready_logged = True
                log.error("fusiond not ready after %.0f s: no source has delivered a sample: %s",
                          self.READY_TIMEOUT_NS / 1e9, why)  # fmt: skip
            return False
        delivering = started - len(silent)
        status_line = f"serving {delivering} of {started} source(s)" if started else "serving external ones"
        if silent:
            self.notifier.notify(READY=1, STATUS=f"{status_line}; never delivered: {', '.join(silent)}")
            log.warning("fusiond ready, degraded: %s, model %s warmed; never delivered: %s", status_line,
                        self.checkpoint.name, why)  # fmt: skip
        else:
            self.notifier.notify(READY=1, STATUS=status_line)
            log.info("fusiond ready: %s, model %s warmed", status_line, self.checkpoint.name)
        return True

    def _error(self, name: str) -> str:
        rig, _, stream = name.partition("/")
        return self.stats.stream(rig, stream).error or ""

    def _watchdog(self, now: int) -> None:
        last_samples = [s.last_recv_ns for s in self.stats.streams.values() if s.last_recv_ns]
        busy = self.components.get(self.plan.server.name, {}).get("busy_since")
        ok, why = alive(Liveness(
            now_ns=now, started_ns=self.started_ns,
            last_sample_ns=max(last_samples) if last_samples else None,
            last_window_ns=self.stats.last_window_ns,
            oldest_pending_ns=busy, stall_ns=10_000_000_000,
        ))  # fmt: skip
        silent = self._silent_components(now)
        if ok and silent:
            ok, why = False, ", ".join(f"{name} silent for {s:.0f} s" for name, s in silent.items())
        if ok:
            self.notifier.notify(WATCHDOG=1)
        else:
            log.error("watchdog: pipeline wedged (%s); not telling systemd it is alive", why)

    def _masked(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for per_rig in self.stats.masked.values():
            total.update({f"masked:{m}": n for m, n in per_rig.items()})
        return total

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
        """Check the new config and model beside the running ones (reload thread)."""
        assert self.config_path is not None
        try:
            new = config_mod.load(self.config_path)
            checkpoint = prepare(new, self.plugins).checkpoint
            if checkpoint.spec != self.checkpoint.spec:
                msg = "the new model's inputs differ from the running one's; restart to change them"
                raise new.error(msg, "model.path")
            self._reloaded = new
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

    def _apply_reload(self, result: Config | Exception) -> None:
        old = self.model_info()
        if isinstance(result, Exception):
            log.error("reload failed, still serving %s (%s): %s", old["name"], old["hash"], result)
            return
        # The server loads the new model beside the old and swaps between two batches.
        self.reloader.send_multipart([RELOAD, str(result.model.path).encode()])
        logging.getLogger().setLevel(result.log.level.upper())
        restart_only = [k for k in ("bus", "ingest", "runtime", "window", "rigs")
                        if getattr(result, k) != getattr(self.config, k)]  # fmt: skip
        if result.model.model_copy(update={"path": self.config.model.path}) != self.config.model:
            restart_only.append("model (except path)")
        self.config = self.config.model_copy(update={"model": self.config.model.model_copy(
            update={"path": result.model.path}), "log": result.log})  # fmt: skip
        log.info("reloading the model: %s (was %s, %s)", result.model.path, old["name"], old["hash"])
        if restart_only:
            log.warning("changes to [%s] take effect on restart; kept the running ones",
                        ", ".join(restart_only))  # fmt: skip

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        self.notifier.notify(STOPPING=1)
        # Every child is told at once and all are waited for against one deadline: the
        # stop promise (2 s) holds however many there are and however busy the host is.
        deadline = time.monotonic() + self.STOP_WAIT_S
        self.supervisor.terminate()
        self.engine.stop(deadline)
        self.supervisor.reap(deadline)
        if self.metrics_server is not None:
            self.metrics_server.shutdown()  # type: ignore[attr-defined]
        self.broker.__exit__(None, None, None)
        if self.gatekeeper is not None:
            self.gatekeeper.stop()
        self.sockets.close()
        remove_ipc(self.plan.server.inbox, self._inbox_endpoint)
        self.broker.join(1.0)
        self.notifier.close()
        log.info("fusiond stopped")


def run_offline(config: Config, plugins: Plugins, recording: Path,
                emit: Callable[[Any], None]) -> Stats:  # fmt: skip
    """Run the pipeline over a recording with no wall clock: the recorded receive time is
    the processing clock, so a recording always gives the same windows and labels."""
    from fusiond.runtime.offline import run_inline, run_sharded

    checkpoint: Checkpoint = load(config.model.path)
    streams = resolve_streams(config, plugins.sources, checkpoint.spec, checkpoint.name)
    if engine_mode(config) == "threads":
        return run_inline(config, plugins, checkpoint, streams, recording, emit)
    return run_sharded(config, checkpoint, streams, recording, emit, engine_mode(config))
