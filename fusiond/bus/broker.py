"""The daemon's broker: publishers connect to one endpoint, subscribers to another.

An XSUB/XPUB proxy in a thread. Subscriptions flow upstream, so a publisher only sends
topics somebody subscribed to. The daemon's own sockets reach it over inproc.
"""

from __future__ import annotations

import threading
from pathlib import Path
from types import TracebackType

import zmq

from fusiond.errors import ConfigError


class Broker:
    """Binds ``publish`` (XSUB) and ``subscribe`` (XPUB) and forwards between them."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], publish: str, subscribe: str,
                 queue: int = 1000, max_message_bytes: int = -1) -> None:  # fmt: skip
        """``queue`` is every socket's high-water mark; a publisher that sends a frame over
        ``max_message_bytes`` (-1: no limit) is disconnected by ZeroMQ before it is read."""
        self.ctx = ctx
        self.publish, self.subscribe = publish, subscribe
        self.inproc_publish = f"inproc://fusiond-publish-{id(self)}"
        self.inproc_subscribe = f"inproc://fusiond-subscribe-{id(self)}"
        self._control = f"inproc://fusiond-broker-control-{id(self)}"
        self._queue = queue
        self._max_message_bytes = max_message_bytes
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: Exception | None = None

    def __enter__(self) -> Broker:
        self._thread = threading.Thread(target=self._run, name="fusiond-broker", daemon=True)
        self._thread.start()
        self._ready.wait(5)
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        """Ask the proxy to stop; the owner's ``ctx.term()`` ends it if it has not yet."""
        if self._thread is None:
            return
        control = self.ctx.socket(zmq.PAIR)
        control.connect(self._control)
        control.send(b"TERMINATE")
        control.close(linger=0)
        # libzmq's steerable proxy can take seconds to read TERMINATE once a peer has gone;
        # terminating the context interrupts it at once (ETERM), so don't wait long here.
        self._thread.join(0.2)

    def join(self, timeout_s: float) -> None:
        """Wait for the proxy thread (after the context was terminated)."""
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        xsub = self.ctx.socket(zmq.XSUB)
        xpub = self.ctx.socket(zmq.XPUB)
        control = self.ctx.socket(zmq.PAIR)
        for sock in (xsub, xpub):
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVHWM, self._queue)
            sock.setsockopt(zmq.SNDHWM, self._queue)
        xsub.setsockopt(zmq.MAXMSGSIZE, self._max_message_bytes)
        try:
            bind(xsub, self.publish, "bus.publish")
            bind(xpub, self.subscribe, "bus.subscribe")
            xsub.bind(self.inproc_publish)
            xpub.bind(self.inproc_subscribe)
            control.bind(self._control)
        except ConfigError as exc:
            self._error = exc
            self._ready.set()
            return
        finally:
            if self._error is not None:
                for sock in (xsub, xpub, control):
                    sock.close(linger=0)
        self._ready.set()
        try:
            zmq.proxy_steerable(xsub, xpub, None, control)
        except zmq.ContextTerminated:
            pass
        finally:
            for sock in (xsub, xpub, control):
                sock.close(linger=0)


def bind(sock: zmq.Socket[bytes], endpoint: str, where: str) -> None:
    """Bind, turning a failure into a ConfigError that names the config key."""
    if endpoint.startswith("ipc://"):
        Path(endpoint.removeprefix("ipc://")).parent.mkdir(parents=True, exist_ok=True)
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        msg = f"cannot bind {endpoint}: {exc} (is another fusiond running?)"
        raise ConfigError(msg, path=where) from None
