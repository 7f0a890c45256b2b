"""The daemon's broker: publishers connect to one endpoint, subscribers to another.

An XSUB/XPUB proxy in a thread. Subscriptions flow upstream, so a publisher only sends
topics somebody subscribed to. The daemon's own sockets reach it over inproc.
"""

from __future__ import annotations

import threading
from types import TracebackType

import zmq

from fusiond.bus.sockets import Sockets, bind_to
from fusiond.errors import ConfigError


class Broker:
    """Binds ``publish`` (XSUB) and ``subscribe`` (XPUB) and forwards between them."""

    def __init__(self, sockets: Sockets, publish: str, subscribe: str) -> None:
        """Its sockets come from ``sockets``, with their queue and message-size limits: a
        publisher that sends a frame over the limit is disconnected before it is read."""
        self.sockets = sockets
        self.publish, self.subscribe = publish, subscribe
        self.inproc_publish = f"inproc://fusiond-publish-{id(self)}"
        self.inproc_subscribe = f"inproc://fusiond-subscribe-{id(self)}"
        self._control = f"inproc://fusiond-broker-control-{id(self)}"
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
        control = self.sockets.make(zmq.PAIR)
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
        xsub = self.sockets.make(zmq.XSUB)
        # Only subscriptions travel from XSUB to the publishers: one per rig and reader,
        # which must never be dropped as a full queue drops messages.
        xsub.setsockopt(zmq.SNDHWM, 0)
        xpub = self.sockets.make(zmq.XPUB)
        xpub.setsockopt(zmq.RCVHWM, 0)
        control = self.sockets.make(zmq.PAIR)
        try:
            bind_to(xsub, self.publish, "bus.publish")
            bind_to(xpub, self.subscribe, "bus.subscribe")
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
