"""The daemon's broker: publishers connect to one endpoint, subscribers to another.

An XSUB/XPUB forwarder in a thread. Subscriptions flow upstream, so a publisher only sends
topics somebody subscribed to. The daemon's own sockets reach it over inproc.

ZeroMQ bounds each frame (``ZMQ_MAXMSGSIZE``), not a message. On a secured bus with
publish rules, where every message passes through Python anyway, the broker forwards only
messages of at most :data:`MAX_PARTS` frames and twice the largest frame in all, and
counts the others (``bad_framing``). Otherwise libzmq's own proxy forwards: a Python loop
there costs every message time and the daemon's threads the interpreter lock.
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

__all__ = ["Broker", "HEARTBEAT_MS", "HEARTBEAT_TIMEOUT_MS", "MAX_PARTS"]

log = logging.getLogger(__name__)
HEARTBEAT_MS = 1000
HEARTBEAT_TIMEOUT_MS = 3000
"""A subscriber silent this long after a heartbeat is disconnected (ZMTP PING/PONG)."""
MAX_PARTS = 18
"""Frames in one bus message at most: a topic, a header and 16 buffers."""


def _user(frame: zmq.Frame) -> str:
    """The key name ZAP gave the connection a frame came in on ("" on an unsecured one)."""
    try:
        return str(frame.get("User-Id"))
    except zmq.ZMQError:
        return ""


class Broker:
    """Binds ``publish`` (XSUB) and ``subscribe`` (XPUB) and forwards between them."""

    def __init__(
        self,
        sockets: Sockets,
        publish: str,
        subscribe: str,
        rules: PublishRules | None = None,
        on_drop: Callable[[str], None] | None = None,
    ) -> None:
        """Its sockets come from ``sockets``, with their queue and message-size limits: a
        publisher that sends a frame over the limit is disconnected before it is read.

        With ``rules``, each message is checked against what its sender's key may publish
        (a forwarding loop here instead of libzmq's proxy); refusals go to ``on_drop``."""
        self.sockets = sockets
        # Each frame is bounded by the socket already: a message may hold its one largest
        # buffer and the rest (topic, header) well within as much again.
        self.max_bytes = 2 * sockets.max_message_bytes if sockets.max_message_bytes > 0 else 2**31
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

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
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
        # A subscriber that reads nothing (stopped, or hostile) stops answering ZeroMQ's
        # heartbeat once its queue is full: it is disconnected, and what waited for it is
        # freed, so it cannot make the daemon hold many-part messages without bound.
        xpub.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_MS)
        xpub.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
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
                self._forward(xsub, xpub, control, self.rules)
        except zmq.ContextTerminated:
            pass
        finally:
            for sock in (xsub, xpub, control):
                sock.close(linger=0)

    def _forward(
        self,
        xsub: zmq.Socket[bytes],
        xpub: zmq.Socket[bytes],
        control: zmq.Socket[bytes],
        rules: PublishRules | None,
    ) -> None:
        """Forward like libzmq's proxy, but only whole messages within the bounds and, with
        ``rules``, only what each sender's key may publish."""
        poller = zmq.Poller()
        for sock in (xsub, xpub, control):
            poller.register(sock, zmq.POLLIN)
        refused: set[str] = set()
        max_bytes, oversized = self.max_bytes, False
        while True:
            events = dict(poller.poll())
            if control in events:
                return
            if xpub in events:  # subscriptions, upstream
                xsub.send_multipart(xpub.recv_multipart())
            if xsub not in events:
                continue
            for frames in drain(xsub, 1024):
                if len(frames) > MAX_PARTS or sum(len(f) for f in frames) > max_bytes:
                    self.on_drop("bad_framing")
                    if not oversized:
                        oversized = True
                        log.warning(
                            "a message of %d frames, %d bytes in all, is over the bus's bounds "
                            "(%d frames, twice bus.max_message_mb); not forwarded (counted as "
                            "drops.bad_framing)",
                            len(frames),
                            sum(len(f) for f in frames),
                            MAX_PARTS,
                        )
                    continue
                if rules is not None:
                    who = _user(frames[0])
                    if not rules.allows(who, frames[0].bytes):
                        self.on_drop("not_allowed")
                        if who not in refused:
                            refused.add(who)
                            log.warning(
                                "key %r may not publish %r (counted as drops.not_allowed; further "
                                "ones only counted)",
                                who,
                                frames[0].bytes[:80],
                            )
                        continue
                xpub.send_multipart(frames, copy=False)
