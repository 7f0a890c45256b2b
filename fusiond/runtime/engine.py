"""Start, watch and restart the pipeline's components: ingest workers and the inference server.

Three ways to run the same two loops (:func:`~fusiond.runtime.worker.run_worker`,
:func:`~fusiond.runtime.server.run_server`):

* ``threads``: ``[runtime] workers = 1``; one worker and the server as threads of the
  daemon's process, over inproc sockets (what a small box or a laptop wants);
* ``processes``: ``workers = N`` or ``"auto"``; each a process of its own (``python -P -m
  fusiond component ...``), over ipc sockets, restarted with backoff when it dies;
* ``ray``: ``engine = "ray"``; each a Ray actor anywhere in the cluster, over TCP
  (:mod:`fusiond.runtime.ray_engine`).

Rigs are dealt to workers in name order, round robin. The daemon hands each component
its spec as plain data, including, for a restarted server, every rig's next prediction
number, so numbering carries on across restarts.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import zmq

from fusiond.align.spec import InputSpec
from fusiond.runtime.server import ServerSpec, run_server
from fusiond.runtime.worker import WorkerSpec, run_worker
from fusiond.sources.runner import Backoff
from fusiond.sources.supervisor import Child, Supervisor, fusiond_argv

if TYPE_CHECKING:
    from fusiond.bus.broker import Broker
    from fusiond.bus.security import Keys
    from fusiond.config import Config
    from fusiond.plugin import Plugins

__all__ = [
    "component_main",
    "deal",
    "Endpoints",
    "endpoints_for",
    "Engine",
    "EngineClass",
    "local_bus",
    "make_plan",
    "Plan",
    "ProcessEngine",
    "reachable",
    "remove_ipc",
    "runtime_dir",
    "sweep_runtime_dir",
    "ThreadEngine",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Endpoints:
    """Where the components meet; inproc for threads, ipc for processes, TCP for Ray."""

    inbox: str
    """Workers' input: the broker's subscriber side (live); offline, a prefix for each feed."""
    windows: str
    """The server's inbox ("" lets a Ray server pick a port and report it)."""
    publish: str
    """Where the server sends predictions: the broker's publisher side, or the offline collector."""
    stats: str
    """The daemon's counters inbox."""
    feeds: tuple[str, ...] = ()
    """Offline: each worker's feed from the daemon, in worker order."""


def endpoints_for(
    engine: EngineClass,
    config: Config,
    broker: Broker | None,
    stats: str,
    owner: str,
    feeds: tuple[str, ...] = (),
    collector: str = "",
) -> Endpoints:
    """The endpoints of one engine's components; ``stats`` (and offline, the feeds and the
    collector) are bound already. ``owner`` keeps one daemon's or run's names its own."""
    inbox, publish = ("", collector) if feeds else engine.bus(config, broker)
    return Endpoints(inbox, engine.endpoint(config, "windows", owner), publish, stats, feeds)


def local_bus(config: Config, host: str) -> tuple[str, str]:
    """The bus's own endpoints as a component at ``host`` connects to them."""
    return reachable(config.bus.subscribe, host), reachable(config.bus.publish, host)


def reachable(endpoint: str, host: str) -> str:
    """``endpoint`` as another process connects to it: a wildcard bind becomes ``host``."""
    for wildcard in ("tcp://*:", "tcp://0.0.0.0:"):
        if endpoint.startswith(wildcard):
            return f"tcp://{host}:" + endpoint.removeprefix(wildcard)
    return endpoint


def remove_ipc(*endpoints: str) -> None:
    """Remove the socket files of ``ipc://`` endpoints (a component killed before it closed
    its socket leaves one behind); the others are left alone."""
    for endpoint in endpoints:
        if endpoint.startswith("ipc://"):
            Path(endpoint.removeprefix("ipc://")).unlink(missing_ok=True)


_OWNED = re.compile(r"[a-z][a-z0-9-]*-\d+-[0-9a-f]+")


def sweep_runtime_dir() -> list[str]:
    """Remove the socket files a killed daemon or run left behind; return their names.

    Only names this package makes (``<purpose>-<pid>-<hex>``) are candidates, and only
    those nobody listens on (a connect is refused) go: a live daemon's files are never
    touched, whatever process namespace it runs in."""
    removed = []
    for path in runtime_dir().iterdir():
        if not _OWNED.fullmatch(path.name) or not path.is_socket():
            continue
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(path))
            except ConnectionRefusedError:
                path.unlink(missing_ok=True)
                removed.append(path.name)
            except OSError:
                pass  # in use, gone already or not ours to judge: left alone
    return removed


@functools.cache
def _sweep_once() -> None:
    if removed := sweep_runtime_dir():
        log.info("removed %d socket file(s) left by processes that ended uncleanly", len(removed))


def runtime_dir() -> Path:
    """systemd's RuntimeDirectory when there is one, else a private folder under /tmp."""
    found = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    path = Path(found) if found else Path(tempfile.gettempdir()) / f"fusiond-{os.getuid()}"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def make_plan(
    config: Config,
    streams: Mapping[tuple[str, str], str],
    spec: InputSpec,
    endpoints: Endpoints,
    workers: int,
    offline: bool = False,
) -> Plan:
    """Worker and server specs for a config, ``workers`` ingest workers."""
    window = asdict(config.window.with_buffer(config.ingest))
    limits = asdict(config.ingest.limits())
    rates = [(rig, name, rate) for (rig, name), rate in config.message_rates().items()]
    rigs = sorted({rig for rig, _ in streams})
    specs = []
    for i, share in enumerate(deal(rigs, workers)):
        mine = [(r, s, m) for (r, s), m in sorted(streams.items()) if r in share]
        inbox = endpoints.feeds[i] if offline else endpoints.inbox
        specs.append(
            WorkerSpec(
                f"worker-{i}",
                mine,
                spec.to_dict(),
                window,
                inbox,
                endpoints.windows,
                endpoints.stats,
                offline,
                limits,
                [r for r in rates if r[0] in share],
                config.bus.hwm,
                config.bus.max_message_bytes,
            )
        )
    cores = os.cpu_count() or 1
    threads = config.model.threads or (0 if workers == 1 else max(1, cores - len(specs)))
    server = ServerSpec(
        "server",
        str(config.model.path),
        endpoints.windows,
        endpoints.publish,
        endpoints.stats,
        config.model.device,
        config.model.runtime,
        threads,
        config.model.max_batch,
        round(config.model.max_delay_ms * 1e6),
        len(specs),
        offline,
        hwm=config.bus.hwm,
        reject=(config.model.reject, config.model.reject_confidence, config.model.reject_disagreement),
        events=(ev.hold_ms, ev.enter, ev.exit) if (ev := config.events).enabled else None,
        anomaly_threshold=config.model.anomaly_threshold,
        providers=config.model.providers,
        greedy=config.window.stagger,
    )
    return Plan(specs, server)


def deal(rigs: list[str], workers: int) -> list[list[str]]:
    """Rigs for each worker: sorted, round robin, no worker empty."""
    ordered = sorted(rigs)
    return [ordered[i::workers] for i in range(min(workers, len(ordered)))]


@dataclass
class Plan:
    """What to run: the worker specs, the server spec, and how to reach the server."""

    workers: list[WorkerSpec]
    server: ServerSpec
    seq: Callable[[], dict[str, int]] = field(default=dict)
    """Each rig's next prediction number, asked for when the server (re)starts."""

    @property
    def names(self) -> list[str]:
        """Every component's name: the workers', then the server's."""
        return [spec.name for spec in self.workers] + [self.server.name]

    def rigs_of(self, name: str) -> list[str]:
        """The rigs whose windows a component handles (the server: all of them)."""
        for spec in self.workers:
            if spec.name == name:
                return spec.rigs
        return sorted({rig for spec in self.workers for rig in spec.rigs})

    def server_spec(self) -> ServerSpec:
        """The server's spec with the current prediction numbers."""
        return ServerSpec.from_dict({**asdict(self.server), "seq": self.seq()})


class Engine(Protocol):
    """How the daemon drives its components."""

    server_inbox: str

    def start(self) -> None:
        """Start every component."""

    def poll(self) -> list[str]:
        """Restart what died; the names of components (re)started since the last poll."""

    def rows(self) -> list[dict[str, Any]]:
        """One row per component for ``fusiond status``."""

    def stop(self, deadline: float) -> None:
        """Stop every component, waiting for them no later than ``deadline``
        (``time.monotonic()``); what has not stopped by then is abandoned or killed."""

    def kill(self, name: str) -> bool:
        """End a component that hangs, for :meth:`poll` to start it again; False where one
        cannot be ended alone (a thread)."""


class EngineClass(Protocol):
    """An engine as :data:`fusiond.runtime.engines.ENGINES` lists it: where its components'
    sockets go, and how to make one. Everything that differs between engines is here."""

    @classmethod
    def endpoint(cls, config: Config, purpose: str, owner: str) -> str:
        """Where to bind a socket for ``purpose`` (``stats``, ``windows``, ``feed-0``,
        ``out``) that this engine's components reach; "" lets the component bind one."""
        ...

    @classmethod
    def bus(cls, config: Config, broker: Broker | None) -> tuple[str, str]:
        """How the components reach the broker: (subscribe side, publish side)."""
        ...

    @classmethod
    def create(
        cls, plan: Plan, config: Config, ctx: zmq.Context[zmq.Socket[bytes]], keys: Keys, plugins: Plugins
    ) -> Engine:
        """The engine that runs ``plan`` (``keys``: what its components connect with;
        ``plugins``: what they build models from, where they run in this process; a
        component in a process of its own loads the installed ones)."""
        ...


class ThreadEngine:
    """The worker and the server as threads of this process, over inproc sockets."""

    @classmethod
    def endpoint(cls, config: Config, purpose: str, owner: str) -> str:
        return f"inproc://fusiond-{purpose}-{owner}"

    @classmethod
    def bus(cls, config: Config, broker: Broker | None) -> tuple[str, str]:
        if broker is None:
            return local_bus(config, "127.0.0.1")
        return broker.inproc_subscribe, broker.inproc_publish

    @classmethod
    def create(
        cls, plan: Plan, config: Config, ctx: zmq.Context[zmq.Socket[bytes]], keys: Keys, plugins: Plugins
    ) -> Engine:
        return cls(plan, ctx, plugins)

    def __init__(self, plan: Plan, ctx: zmq.Context[zmq.Socket[bytes]], plugins: Plugins) -> None:
        self.plan, self.ctx, self.plugins = plan, ctx, plugins
        self.server_inbox = plan.server.inbox
        self._threads: dict[str, threading.Thread] = {}
        self._stop = threading.Event()
        self._restarts: dict[str, int] = {}
        self._next_start: dict[str, float] = {}
        self._backoff = Backoff()
        self._started: list[str] = []

    def _targets(self) -> dict[str, Callable[[], None]]:
        out: dict[str, Callable[[], None]] = {}
        for spec in self.plan.workers:
            out[spec.name] = functools.partial(
                run_worker, spec, self._stop, self.ctx, kinds=self.plugins.kinds
            )
        out[self.plan.server.name] = lambda: run_server(
            self.plan.server_spec(), self._stop, self.plugins, self.ctx
        )
        return out

    def start(self) -> None:
        """Start the server first, so its inbox is bound before workers send."""
        for name, target in sorted(self._targets().items(), key=lambda kv: kv[0] != self.plan.server.name):
            self._spawn(name, target)

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(
            target=self._guard, args=(name, target), name=f"fusiond-{name}", daemon=True
        )
        self._threads[name] = thread
        self._started.append(name)
        thread.start()

    @staticmethod
    def _guard(name: str, target: Callable[[], None]) -> None:
        try:
            target()
        except Exception:
            log.exception("%s crashed; it will be restarted", name)

    def poll(self) -> list[str]:
        now = time.monotonic()
        targets = self._targets()
        for name, thread in list(self._threads.items()):
            if thread.is_alive() or self._stop.is_set():
                continue
            due = self._next_start.setdefault(name, now + self._backoff.delay(self._restarts.get(name, 0)))
            if now >= due:
                self._restarts[name] = self._restarts.get(name, 0) + 1
                del self._next_start[name]
                self._spawn(name, targets[name])
        started, self._started = self._started, []
        return started

    def rows(self) -> list[dict[str, Any]]:
        return [
            {
                "name": n,
                "state": "running" if t.is_alive() else "waiting",
                "pid": os.getpid(),
                "restarts": self._restarts.get(n, 0),
                "rigs": self.plan.rigs_of(n),
            }
            for n, t in sorted(self._threads.items())
        ]

    def stop(self, deadline: float) -> None:
        self._stop.set()
        for thread in self._threads.values():  # daemon threads: one still busy dies with the process
            thread.join(max(0.0, deadline - time.monotonic()))

    def kill(self, name: str) -> bool:
        return False  # a thread cannot be ended from outside: the watchdog lets systemd restart us


class ProcessEngine:
    """Each worker and the server a process of its own, supervised like the sources."""

    @classmethod
    def endpoint(cls, config: Config, purpose: str, owner: str) -> str:
        _sweep_once()
        return f"ipc://{runtime_dir()}/{purpose}-{owner}"

    @classmethod
    def bus(cls, config: Config, broker: Broker | None) -> tuple[str, str]:
        return local_bus(config, "127.0.0.1")

    @classmethod
    def create(
        cls, plan: Plan, config: Config, ctx: zmq.Context[zmq.Socket[bytes]], keys: Keys, plugins: Plugins
    ) -> Engine:
        return cls(plan, keys.env())

    def __init__(self, plan: Plan, env: Mapping[str, str] | None = None) -> None:
        """``env``: extra environment for the children (the bus keys on a secured bus)."""
        self.plan = plan
        self.env = dict(env or {})
        self.server_inbox = plan.server.inbox
        self._children: list[Child] = []
        for spec in plan.workers:
            self._children.append(self._child(spec.name, "worker", functools.partial(asdict, spec)))
        self._children.insert(0, self._child(plan.server.name, "server", lambda: asdict(plan.server_spec())))
        self.supervisor = Supervisor(self._children)
        self._seen: dict[str, int | None] = {}

    def _child(self, name: str, role: str, spec: Callable[[], dict[str, Any]]) -> Child:
        def argv() -> list[str]:
            return fusiond_argv("component", role, "--spec-json", json.dumps(spec()))

        return Child(
            name, [], Path(tempfile.gettempdir()), Backoff(cap_s=5.0), argv_fn=argv, role=role, env=self.env
        )

    def start(self) -> None:
        self.supervisor.poll()

    def poll(self) -> list[str]:
        self.supervisor.poll()
        started = []
        for child in self._children:
            pid = child.proc.pid if child.proc is not None else None
            if pid is not None and self._seen.get(child.name) != pid:
                started.append(child.name)
            self._seen[child.name] = pid
        return started

    def rows(self) -> list[dict[str, Any]]:
        return [
            {
                "name": c.name,
                "state": c.state,
                "pid": c.proc.pid if c.proc else None,
                "restarts": c.restarts,
                "rigs": self.plan.rigs_of(c.name),
            }
            for c in self._children
        ]

    def stop(self, deadline: float) -> None:
        self.supervisor.terminate()
        self.supervisor.reap(deadline)

    def kill(self, name: str) -> bool:
        for child in self._children:
            if child.name == name and child.proc is not None:
                child.proc.kill()  # SIGKILL ends a stopped process too; the supervisor restarts it
                return True
        return False


def component_main(role: str, spec: Mapping[str, Any]) -> int:
    """``fusiond component worker|server``: one component, until SIGTERM or the end of its data."""
    from fusiond.bus.security import client_keys
    from fusiond.plugin import load_plugins
    from fusiond.sources.runner import stop_event_from_signals
    from fusiond.sources.supervisor import STOP_GRACE_S

    stop = stop_event_from_signals(STOP_GRACE_S)
    keys = client_keys()  # a secured bus: the daemon put its own sources' keys in the environment
    plugins = load_plugins()  # the installed ones, as the daemon loaded them: kinds, encoders, fusions
    if role == "worker":
        run_worker(WorkerSpec.from_dict(dict(spec)), stop, keys=keys, kinds=plugins.kinds)
    else:
        run_server(ServerSpec.from_dict(dict(spec)), stop, plugins, keys=keys)
    return 0
