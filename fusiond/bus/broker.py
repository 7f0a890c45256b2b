"""The daemon's broker: publishers connect to one endpoint, subscribers to another.

An XSUB/XPUB proxy in a thread. Subscriptions flow upstream, so a publisher only sends
topics somebody subscribed to. The daemon's own sockets reach it over inproc.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from types import TracebackType

import zmq

from fusiond.bus.security import PublishRules
from fusiond.bus.sockets import Sockets, drain
from fusiond.errors import ConfigError

log = logging.getLogger(__name__)


def _user(frame: zmq.Frame) -> str:
    """The key name ZAP gave the connection a frame came in on ("" on an unsecured one)."""
    try:
        return str(frame.get("User-Id"))
    except zmq.ZMQError:
        return ""


class Broker:
    """Binds ``publish`` (XSUB) and ``subscribe`` (XPUB) and forwards between them."""

    def __init__(self, sockets: Sockets, publish: str, subscribe: str, rules: PublishRules | None = None,
                 on_drop: Callable[[str], None] | None = None) -> None:  # fmt: skip
        """Its sockets come from ``sockets``, with their queue and message-size limits: a
        publisher that sends a frame over the limit is disconnected before it is read.

        With ``rules``, each message is checked against what its sender's key may publish
        (a forwarding loop here instead of libzmq's proxy); refusals go to ``on_drop``."""
        self.sockets = sockets
        self.rules = rules
        self.on_drop = on_drop or (lambda reason: None)
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
            self.sockets.bind(xsub, self.publish, "bus.publish")
            self.sockets.bind(xpub, self.subscribe, "bus.subscribe")
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
            if self.rules is None:
                zmq.proxy_steerable(xsub, xpub, None, control)
            else:
                self._checking_proxy(xsub, xpub, control, self.rules)
        except zmq.ContextTerminated:
            pass
        finally:
            for sock in (xsub, xpub, control):
                sock.close(linger=0)

    def _checking_proxy(self, xsub: zmq.Socket[bytes], xpub: zmq.Socket[bytes], control: zmq.Socket[bytes],
                        rules: PublishRules) -> None:  # fmt: skip
        """Forward like the proxy, but only what each sender's key may publish."""
        poller = zmq.Poller()
        for sock in (xsub, xpub, control):
            poller.register(sock, zmq.POLLIN)
        refused: set[str] = set()
        while True:
            events = dict(poller.poll())
            if control in events:
                return
            if xpub in events:  # subscriptions, upstream
                xsub.send_multipart(xpub.recv_multipart())
            if xsub in events:
                for frames in drain(xsub, 1024):
                    who = _user(frames[0])
                    if rules.allows(who, frames[0].bytes):
                        xpub.send_multipart(frames, copy=False)
                        continue
                    self.on_drop("not_allowed")
                    if who not in refused:
                        refused.add(who)
                        log.warning("key %r may not publish %r (counted as drops.not_allowed; further ones "
                                    "only counted)", who, frames[0].bytes[:80])  # fmt: skip
