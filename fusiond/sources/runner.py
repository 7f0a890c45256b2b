"""Run one source: open it, stamp and frame its blocks, publish them, retry with backoff."""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from fusiond.bus.wire import TALLY_EVERY_NS, encode_sample, encode_source_error, encode_tally
from fusiond.errors import SourceConfigError, SourceError
from fusiond.sources.base import Block, Source, SourceConfig, SourceContext, StreamInfo

if TYPE_CHECKING:
    from fusiond.bus.security import Keys
    from fusiond.bus.sockets import Sockets
    from fusiond.sources.clocksync import ClockFollower

__all__ = [
    "Backoff",
    "CLOSE_LINGER_MS",
    "connect_publisher",
    "encode_block",
    "EXIT_CONFIG",
    "run_source",
    "stop_event_from_signals",
]

log = logging.getLogger(__name__)
EXIT_CONFIG = 78
CLOSE_LINGER_MS = 200
"""How long a stopping source's last messages may take to leave."""
"""A source process's exit status when its options cannot work (sysexits' EX_CONFIG): the
supervisor does not restart it."""


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff: ``first * 2**n`` seconds, capped, less up to ``jitter`` of it at
    random, so that many sensor hosts that lost the daemon together do not all come back in
    the same instant."""

    first_s: float = 0.5
    cap_s: float = 30.0
    jitter: float = 0.25

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based)."""
        base = min(self.cap_s, self.first_s * 2 ** min(attempt, 30))
        return float(base * (1.0 - self.jitter * random.random()))


def connect_publisher(
    sockets: Sockets, endpoint: str, linger_ms: int, timeout_s: float, stop: threading.Event
) -> tuple[zmq.Socket[bytes], bool]:
    """A PUB socket connected to ``endpoint``, once its first handshake completed (or
    ``timeout_s`` passed, or ``stop`` was set); and whether it did.

    The handshake monitor is attached before the socket connects: a handshake that
    completes first (the bus is already there) would otherwise never be reported, and the
    wait would run to its time-out on every start.
    """
    sock = sockets.make(zmq.PUB, linger_ms=linger_ms)
    monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
    try:
        sockets.connect(sock, endpoint)
    except BaseException:
        sock.disable_monitor()
        monitor.close(linger=0)
        sock.close(linger=0)
        raise
    return sock, _wait_handshake(sock, monitor, timeout_s, stop)


def _wait_handshake(
    sock: zmq.Socket[bytes], monitor: zmq.Socket[bytes], timeout_s: float, stop: threading.Event
) -> bool:
    deadline = time.monotonic() + timeout_s
    try:
        while not stop.is_set() and time.monotonic() < deadline:
            if monitor.poll(100):
                recv_monitor_message(monitor)
                return True
        return False
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)


def encode_block(
    context: SourceContext,
    seq: int,
    block: Block,
    rate_hz: float,
    t_pub_ns: int,
    offset_ns: int = 0,
    info: StreamInfo | None = None,
) -> list[bytes | memoryview]:
    """A block as a sample message; a block without a time is stamped ``t_pub_ns``.

    ``offset_ns`` moves this host's stamps onto the daemon's clock (a source on another
    host, see :mod:`fusiond.sources.clocksync`); ``t_pub_ns`` already includes it.
    """
    return encode_sample(
        rig=context.rig,
        stream=context.stream,
        modality=context.modality,
        seq=seq,
        t_ns=block.t_ns + offset_ns if block.t_ns is not None else t_pub_ns,
        t_pub_ns=t_pub_ns,
        rate_hz=rate_hz,
        data=block.data,
        encoding=block.encoding or ("raw" if block.payload is None else "jpeg"),
        payload=block.payload,
        channels=info.channels if info is not None else (),
        units=info.units if info is not None else (),
    )


def run_source(
    cls: type[Source[Any]],
    config: SourceConfig,
    context: SourceContext,
    connect: str,
    *,
    backoff: Backoff | None = None,
    zmq_context: zmq.Context[zmq.Socket[bytes]] | None = None,
    sync_clock: str = "",
    keys: Keys | None = None,
) -> int:
    """Publish the source until it ends (0) or ``context.stop`` is set (0).

    With ``sync_clock`` (the daemon's control endpoint), blocks are stamped on the
    daemon's clock, from round-trip probes (:mod:`fusiond.sources.clocksync`).
    """
    from fusiond.bus.sockets import Sockets
    from fusiond.sources.clocksync import ClockFollower

    backoff = backoff or Backoff()
    name = f"{context.rig}/{context.stream}"
    with Sockets(zmq_context, hwm=1000, keys=keys) as sockets:
        follower = ClockFollower(sync_clock, sockets) if sync_clock else None
        if follower is not None:
            follower.start()
        sock, connected = connect_publisher(sockets, connect, 500, 5.0, context.stop)
        try:
            if not connected and not context.stop.is_set():
                log.warning("source %s: no bus at %s yet; publishing anyway", name, connect)
            # Subscriptions reach a new publisher just after the handshake.
            context.stop.wait(0.1)
            return _publish_until_done(cls, config, context, sock, backoff, follower)
        finally:
            if follower is not None:
                follower.stop()
            # What is queued (the last blocks, the final tally) gets a moment to leave:
            # bounded, so a dead bus never holds a stopping source.
            sock.close(linger=CLOSE_LINGER_MS)


def _publish_until_done(
    cls: type[Source[Any]],
    config: SourceConfig,
    context: SourceContext,
    sock: zmq.Socket[bytes],
    backoff: Backoff,
    follower: ClockFollower | None = None,
) -> int:
    name = f"{context.rig}/{context.stream}"
    seq = 0  # the next message's; the ones sent are 0 .. seq - 1
    attempt = 0
    next_tally = time.monotonic_ns() + TALLY_EVERY_NS
    try:
        while not context.stop.is_set():
            source = cls(config, context)
            try:
                info = source.open()
                log.info("source %s (%s): %s", name, cls.kind, info.description)
                attempt = 0
                for block in source.read():
                    offset = follower.offset_ns if follower is not None else 0
                    rate = block.rate_hz or info.rate_hz
                    frames = encode_block(context, seq, block, rate, time.time_ns() + offset, offset, info)
                    sock.send_multipart(frames, copy=False)
                    seq += 1
                    if time.monotonic_ns() >= next_tally:
                        next_tally = time.monotonic_ns() + TALLY_EVERY_NS
                        _tally(context, sock, seq)
                    if context.stop.is_set():
                        break
                if not context.stop.is_set():
                    log.info("source %s: end of data after %d messages", name, seq)
                return 0
            except SourceConfigError as exc:
                log.error(
                    "source %s (%s): %s; not retried: fix the config (fusiond check-config)",
                    name,
                    cls.kind,
                    exc,
                )
                sock.send_multipart(
                    encode_source_error(
                        rig=context.rig,
                        stream=context.stream,
                        kind=cls.kind,
                        error=str(exc),
                        attempt=attempt + 1,
                        retry_in_s=0.0,
                        t_ns=time.time_ns(),
                    )
                )
                return EXIT_CONFIG
            except SourceError as exc:
                delay = backoff.delay(attempt)
                attempt += 1
                log.error("source %s (%s): %s; retrying in %.1f s", name, cls.kind, exc, delay)
                sock.send_multipart(
                    encode_source_error(
                        rig=context.rig,
                        stream=context.stream,
                        kind=cls.kind,
                        error=str(exc),
                        attempt=attempt,
                        retry_in_s=delay,
                        t_ns=time.time_ns(),
                    )
                )
                context.stop.wait(delay)
            finally:
                source.close()
        return 0
    finally:
        _tally(context, sock, seq, final=True)


def _tally(context: SourceContext, sock: zmq.Socket[bytes], sent: int, final: bool = False) -> None:
    """Say which seq went out last, so that a subscriber sees losses at a stream's end too."""
    if sent:
        with contextlib.suppress(zmq.Again):
            sock.send_multipart(
                encode_tally(
                    rig=context.rig,
                    stream=context.stream,
                    last_seq=sent - 1,
                    t_ns=time.time_ns(),
                    final=final,
                ),
                zmq.NOBLOCK,
            )


def stop_event_from_signals(grace_s: float | None = None) -> threading.Event:
    """An event set by SIGINT or SIGTERM (main thread only).

    With ``grace_s``, the process also exits by force (status 1, with a traceback of
    every thread on stderr, to show where it was stuck) when it has not ended ``grace_s``
    seconds after the signal: a source in the middle of a long call into a library
    (a decoder, a device open) cannot see its stop event. The timer runs in a thread of
    its own that needs no interpreter lock (:func:`faulthandler.dump_traceback_later`).
    """
    import faulthandler
    import signal

    stop = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        if grace_s is not None and not stop.is_set():
            faulthandler.dump_traceback_later(grace_s, exit=True)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop
