"""``[runtime] engine = "ray"``: the same workers and server as Ray actors, anywhere in a cluster.

Not a second implementation: each actor runs :func:`~fusiond.runtime.worker.run_worker`
or :func:`~fusiond.runtime.server.run_server` in a thread, and the components talk over
TCP exactly as local processes talk over ipc. The server binds a free port on its node
and reports it; workers connect to it, to the daemon's broker and to its counters inbox at
``[runtime] advertise``. An actor that dies is started again; when the server moves, the
workers are restarted to reach its new address. ``pip install fusiond[ray]``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any

import zmq

from fusiond.errors import ConfigError
from fusiond.runtime.engine import Engine, Plan, local_bus
from fusiond.runtime.server import ServerSpec, run_server
from fusiond.runtime.worker import WorkerSpec, run_worker

if TYPE_CHECKING:
    from fusiond.bus.broker import Broker
    from fusiond.bus.security import Keys
    from fusiond.config import Config
    from fusiond.plugin import Plugins

__all__ = ["Component", "RayEngine"]

log = logging.getLogger(__name__)


class Component:
    """The body of a Ray actor: one worker or the server, in a thread."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.error: str = ""

    def start(self, role: str, spec: dict[str, Any]) -> str:
        """Start the component; the endpoint the server bound (with its node's address), or ""."""
        bound: list[str] = []
        ready = threading.Event()

        def body() -> None:
            from fusiond.plugin import load_plugins

            try:
                plugins = load_plugins()  # the node's installed ones: kinds, encoders, fusions
                if role == "worker":
                    ready.set()
                    run_worker(WorkerSpec.from_dict(spec), self.stop, kinds=plugins.kinds)
                else:
                    run_server(ServerSpec.from_dict(spec), self.stop, plugins, bound=bound)
            except Exception as exc:
                self.error = f"{type(exc).__name__}: {exc}"
                log.exception("%s failed", role)
            finally:
                ready.set()

        self.thread = threading.Thread(target=body, daemon=True)
        self.thread.start()
        while not ready.is_set() and not bound:
            ready.wait(0.05)
        if role == "worker" or not bound:
            return ""
        import ray

        node: str = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
        return bound[0].replace("0.0.0.0", node)

    def join(self) -> str:
        """Block until the component ends; its error, if it failed."""
        if self.thread is not None:
            self.thread.join()
        return self.error

    def shutdown(self) -> None:
        """Ask the component to stop."""
        self.stop.set()


class RayEngine:
    """Workers and server as Ray actors, restarted when they die."""

    @classmethod
    def endpoint(cls, config: Config, purpose: str, owner: str) -> str:
        # The server binds a free port on whichever node it lands on, and reports it.
        return "" if purpose == "windows" else f"tcp://{config.runtime.advertise}:*"

    @classmethod
    def bus(cls, config: Config, broker: Broker | None) -> tuple[str, str]:
        return local_bus(config, config.runtime.advertise)

    @classmethod
    def create(
        cls, plan: Plan, config: Config, ctx: zmq.Context[zmq.Socket[bytes]], keys: Keys, plugins: Plugins
    ) -> Engine:
        if config.bus.security.mode != "none":
            msg = "engine 'ray' with a secured bus is not supported: the actors would need the keys"
            raise ConfigError(msg, path="runtime.engine")
        return cls(plan, config.runtime.address, config.runtime.num_gpus)

    def __init__(self, plan: Plan, address: str, num_gpus: float = 0.0) -> None:
        try:
            import ray
        except ImportError:
            msg = "engine 'ray' needs Ray: pip install 'fusiond[ray]'"
            raise ConfigError(msg, path="runtime.engine") from None
        self.ray = ray
        if not ray.is_initialized():
            ray.init(
                address=address or None,
                logging_level=logging.WARNING,
                include_dashboard=False,
                configure_logging=False,
            )
        self.plan = plan
        self.num_gpus = num_gpus
        self.server_inbox = ""
        self._actor_cls: Any = ray.remote(Component)
        self._actors: dict[str, Any] = {}
        self._joins: dict[str, Any] = {}
        self._restarts: dict[str, int] = {}
        self._started: list[str] = []

    def start(self) -> None:
        self._start_server()
        for spec in self.plan.workers:
            self._start_worker(spec)

    def _start_server(self) -> None:
        name = self.plan.server.name
        actor = self._actor_cls.options(num_cpus=1, num_gpus=self.num_gpus, max_concurrency=4).remote()
        spec = asdict(replace(self.plan.server_spec(), inbox=""))
        self.server_inbox = str(self.ray.get(actor.start.remote("server", spec), timeout=120))
        if not self.server_inbox:
            msg = f"the inference server failed to start: {self.ray.get(actor.join.remote())}"
            raise ConfigError(msg, path="runtime")
        self._track(name, actor)

    def _start_worker(self, spec: WorkerSpec) -> None:
        actor = self._actor_cls.options(num_cpus=1, max_concurrency=4).remote()
        spec = replace(spec, windows=self.server_inbox)
        self.ray.get(actor.start.remote("worker", asdict(spec)), timeout=60)
        self._track(spec.name, actor)

    def _track(self, name: str, actor: Any) -> None:
        self._actors[name] = actor
        self._joins[name] = actor.join.remote()
        self._started.append(name)

    def poll(self) -> list[str]:
        done, _ = self.ray.wait(list(self._joins.values()), num_returns=len(self._joins), timeout=0)
        dead = [name for name, ref in self._joins.items() if ref in done]
        for name in dead:
            log.error("ray actor %s ended; starting it again", name)
            self._restarts[name] = self._restarts.get(name, 0) + 1
            self._kill(name)
        if self.plan.server.name in dead:
            self._start_server()
            dead = [spec.name for spec in self.plan.workers]  # they must reach the new address
            for name in dead:
                self._kill(name)
        for spec in self.plan.workers:
            if spec.name in dead:
                self._start_worker(spec)
        started, self._started = self._started, []
        return started

    def _kill(self, name: str) -> None:
        actor = self._actors.pop(name, None)
        self._joins.pop(name, None)
        if actor is not None:
            self.ray.kill(actor)

    def kill(self, name: str) -> bool:
        actor = self._actors.get(name)
        if actor is None:
            return False
        self.ray.kill(actor, no_restart=True)  # its join returns: poll starts it again
        return True

    def rows(self) -> list[dict[str, Any]]:
        return [
            {
                "name": n,
                "state": "running",
                "pid": None,
                "restarts": self._restarts.get(n, 0),
                "rigs": self.plan.rigs_of(n),
            }
            for n in sorted(self._actors)
        ]

    def stop(self, deadline: float) -> None:
        for actor in self._actors.values():
            actor.shutdown.remote()
        refs = list(self._joins.values())
        if refs:
            self.ray.wait(refs, num_returns=len(refs), timeout=max(0.0, deadline - time.monotonic()))
        for name in list(self._actors):
            self._kill(name)
