"""The one place fusiond makes ZeroMQ sockets.

Every socket gets its limits here: linger (so closing never blocks on a dead peer),
queue length (high-water mark) and, on sockets that read from other processes, the
largest message ZeroMQ will accept. The daemon, its workers, sources, the client, the
CLI, the recorder and replay all take their sockets from a :class:`Sockets`, which owns
its ZeroMQ context unless it was handed one.

    with Sockets(hwm=1000) as sockets:
        sub = sockets.subscriber("tcp://127.0.0.1:7711", ["p/"])
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import zmq

from fusiond.bus.security import Keys
from fusiond.errors import ConfigError

__all__ = [
    "bind_to",
    "CONTROL_MAX_BYTES",
    "DEFAULT_CONTROL",
    "DEFAULT_PUBLISH",
    "DEFAULT_SUBSCRIBE",
    "drain",
    "HANDSHAKE_MS",
    "local_endpoint",
    "raise_fd_limit",
    "Socket",
    "Sockets",
]

Socket = zmq.Socket[bytes]
DEFAULT_PUBLISH = "tcp://127.0.0.1:7710"
DEFAULT_SUBSCRIBE = "tcp://127.0.0.1:7711"
DEFAULT_CONTROL = "tcp://127.0.0.1:7712"
CONTROL_MAX_BYTES = 65536
HANDSHAKE_MS = 5000
"""A connection that has not completed its handshake this long after it was made is closed:
idle connections from anyone who can reach a port cannot pile up and take every file
descriptor (libzmq's default is 30 s)."""

log = logging.getLogger(__name__)


class Sockets:
    """Makes sockets with one set of limits, in one context."""

    def __init__(
        self,
        ctx: zmq.Context[Socket] | None = None,
        *,
        hwm: int = 1000,
        max_message_bytes: int = -1,
        keys: Keys | None = None,
        linger_ms: int = 0,
    ) -> None:
        """``hwm``: messages each queue holds; ``max_message_bytes``: the largest frame a
        receiving socket accepts from another process (-1: no limit); ``keys``: CURVE for
        every TCP socket (:mod:`fusiond.bus.security`)."""
        self._owned = ctx is None
        self.ctx: zmq.Context[Socket] = ctx if ctx is not None else zmq.Context()
        self.hwm = hwm
        self.max_message_bytes = max_message_bytes
        self.keys = keys or Keys()
        self.linger_ms = linger_ms
        self._made: list[tuple[Socket, int]] = []
        self._lock = threading.Lock()  # sockets are made from several threads

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the sockets this thread made here, then end the context if this object made it.

        Sockets of other threads are theirs to close (a socket must never be closed from
        a thread that is not using it): ending the context wakes their blocking calls with
        ETERM, and they close on the way out.
        """
        me = threading.get_ident()
        with self._lock:
            mine = [s for s, owner in self._made if owner == me and not s.closed]
        for sock in mine:
            sock.close()  # with the linger it was made with
        if self._owned:
            self.ctx.term()

    def make(
        self,
        kind: int,
        *,
        hwm: int | None = None,
        linger_ms: int | None = None,
        max_message_bytes: int | None = None,
    ) -> Socket:
        """A bare socket of ``kind`` with this factory's limits (or the ones given)."""
        sock = self.ctx.socket(kind)
        with self._lock:
            self._made = [(s, o) for s, o in self._made if not s.closed]
            self._made.append((sock, threading.get_ident()))
        sock.setsockopt(zmq.LINGER, self.linger_ms if linger_ms is None else linger_ms)
        sock.setsockopt(zmq.SNDHWM, hwm or self.hwm)
        sock.setsockopt(zmq.RCVHWM, hwm or self.hwm)
        sock.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_MS)
        if kind in (zmq.SUB, zmq.XSUB, zmq.PULL, zmq.REP, zmq.ROUTER):
            limit = self.max_message_bytes if max_message_bytes is None else max_message_bytes
            sock.setsockopt(zmq.MAXMSGSIZE, limit)
        return sock

    def publisher(
        self,
        endpoint: str,
        *,
        bind: bool = False,
        hwm: int | None = None,
        linger_ms: int | None = None,
        where: str = "",
    ) -> Socket:
        """A PUB socket connected to (or bound at) ``endpoint``."""
        return self._attach(self.make(zmq.PUB, hwm=hwm, linger_ms=linger_ms), endpoint, bind, where)

    def subscriber(
        self,
        endpoint: str,
        topics: Sequence[str | bytes] = (),
        *,
        bind: bool = False,
        hwm: int | None = None,
        where: str = "",
    ) -> Socket:
        """A SUB socket connected to ``endpoint`` and subscribed to each topic prefix."""
        sock = self.make(zmq.SUB, hwm=hwm)
        sock.setsockopt(zmq.SNDHWM, 0)  # it sends only subscriptions, and none may be lost
        sock = self._attach(sock, endpoint, bind, where)
        for topic in topics:
            sock.subscribe(topic.encode() if isinstance(topic, str) else topic)
        return sock

    def request(self, endpoint: str) -> Socket:
        """A REQ socket connected to ``endpoint`` (the daemon's control endpoint)."""
        return self._attach(self.make(zmq.REQ), endpoint, False, "")

    def reply(self, endpoint: str, where: str) -> Socket:
        """A REP socket bound at ``endpoint``; ``where`` is the config key that names it.

        Requests are a word or two: a frame over 64 KiB drops its sender's connection, and
        at most 16 requests wait, so concurrent huge requests cannot take the memory."""
        return self._attach(
            self.make(zmq.REP, hwm=16, max_message_bytes=CONTROL_MAX_BYTES), endpoint, True, where
        )

    def push(self, endpoint: str, *, bind: bool = False, hwm: int | None = None, where: str = "") -> Socket:
        """A PUSH socket: windows from an ingest worker to the inference server."""
        return self._attach(self.make(zmq.PUSH, hwm=hwm), endpoint, bind, where)

    def pull(self, endpoint: str, *, bind: bool = False, hwm: int | None = None, where: str = "") -> Socket:
        """A PULL socket: the inference server's inbox, or the daemon's from its workers."""
        return self._attach(self.make(zmq.PULL, hwm=hwm), endpoint, bind, where)

    def bind(self, sock: Socket, endpoint: str, where: str) -> None:
        """Bind ``sock`` (as a CURVE server on a secured bus's TCP endpoints)."""
        self.keys.serve(sock, endpoint)
        bind_to(sock, endpoint, where)

    def connect(self, sock: Socket, endpoint: str) -> None:
        """Connect ``sock`` (as a CURVE client on a secured bus's TCP endpoints)."""
        self.keys.connect(sock, endpoint)
        sock.connect(endpoint)

    def _attach(self, sock: Socket, endpoint: str, bind: bool, where: str) -> Socket:
        try:
            if bind:
                self.bind(sock, endpoint, where)
            else:
                self.connect(sock, endpoint)
        except BaseException:
            sock.close(linger=0)
            raise
        return sock


def raise_fd_limit(want: int = 65536, warn_below: int = 4096) -> tuple[int, int]:
    """Raise this process's soft limit on open files towards ``want`` (never past the hard
    limit), with a warning when it stays under ``warn_below``; ``(before, after)``. Each
    connection to a bound socket costs a descriptor."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    after = soft
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        after = target
    if after != resource.RLIM_INFINITY and after < warn_below:
        log.warning(
            "this process may open %d files (was %d); each connection to the bus costs one: "
            "raise the hard limit (LimitNOFILE=65536 in the unit does)",
            after,
            soft,
        )
    return soft, after


def drain(sock: Socket, limit: int) -> Iterator[list[zmq.Frame]]:
    """The messages already queued on ``sock``, at most ``limit`` (zero-copy frames), so one
    busy socket cannot keep a loop from its other work.

    Each frame is received alone and its ``more`` flag read off it: for the small messages
    of a sensor stream that is half of what ``recv_multipart`` costs (which asks the socket
    for ``RCVMORE`` once a frame; ``python bench/bench_profile.py``)."""
    for _ in range(limit):
        try:
            frame = sock.recv(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return
        frames = [frame]
        while frame.more:
            frame = sock.recv(copy=False)
            frames.append(frame)
        yield frames


def bind_to(sock: Socket, endpoint: str, where: str) -> None:
    """Bind, turning a failure into a ConfigError that names the config key."""
    if endpoint.startswith("ipc://"):
        Path(endpoint.removeprefix("ipc://")).parent.mkdir(parents=True, exist_ok=True)
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        msg = f"cannot bind {endpoint}: {exc} (is another fusiond running?)"
        raise ConfigError(msg, path=where) from None


def local_endpoint(endpoint: str) -> str:
    """The address a process on this host connects to for a bound endpoint."""
    for wildcard in ("tcp://*:", "tcp://0.0.0.0:"):
        if endpoint.startswith(wildcard):
            return "tcp://127.0.0.1:" + endpoint.removeprefix(wildcard)
    return endpoint
