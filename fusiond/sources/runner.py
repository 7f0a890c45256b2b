"""Run one source: open it, stamp and frame its blocks, publish them, retry with backoff."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import zmq
from zmq.utils.monitor import recv_monitor_message

from fusiond.bus.wire import encode_sample, encode_source_error
from fusiond.errors import SourceError
from fusiond.sources.base import Block, Source, SourceConfig, SourceContext

if TYPE_CHECKING:
    from fusiond.bus.security import Keys
    from fusiond.sources.clocksync import ClockFollower

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff: ``first * 2**n`` seconds, capped."""

    first_s: float = 0.5
    cap_s: float = 30.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based)."""
        return float(min(self.cap_s, self.first_s * 2 ** min(attempt, 30)))


def wait_connected(sock: zmq.Socket[bytes], timeout_s: float, stop: threading.Event) -> bool:
    """Block until the socket's first connection completes its handshake, time-out or stop."""
    monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
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
    context: SourceContext, seq: int, block: Block, rate_hz: float, t_pub_ns: int, offset_ns: int = 0
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
    )


def run_source(
    cls: type[Source],
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
        sock = sockets.publisher(connect, linger_ms=500)
        try:
            if not wait_connected(sock, 5.0, context.stop) and not context.stop.is_set():
                log.warning("source %s: no bus at %s yet; publishing anyway", name, connect)
            # Subscriptions reach a new publisher just after the handshake.
            context.stop.wait(0.1)
            return _publish_until_done(cls, config, context, sock, backoff, follower)
        finally:
            if follower is not None:
                follower.stop()
            sock.close()


def _publish_until_done(
    cls: type[Source],
    config: SourceConfig,
    context: SourceContext,
    sock: zmq.Socket[bytes],
    backoff: Backoff,
    follower: ClockFollower | None = None,
) -> int:
    name = f"{context.rig}/{context.stream}"
    seq = 0
    attempt = 0
    while not context.stop.is_set():
        source = cls(config, context)
        try:
            info = source.open()
            log.info("source %s (%s): %s", name, cls.kind, info.description)
            attempt = 0
            for block in source.read():
                offset = follower.offset_ns if follower is not None else 0
                frames = encode_block(context, seq, block, info.rate_hz, time.time_ns() + offset, offset)
                sock.send_multipart(frames, copy=False)
                seq += 1
                if context.stop.is_set():
                    break
            if not context.stop.is_set():
                log.info("source %s: end of data after %d messages", name, seq)
            return 0
        except SourceError as exc:
            delay = backoff.delay(attempt)
            attempt += 1
            log.error("source %s (%s): %s; retrying in %.1f s", name, cls.kind, exc, delay)
            sock.send_multipart(encode_source_error(
                rig=context.rig, stream=context.stream, kind=cls.kind, error=str(exc),
                attempt=attempt, retry_in_s=delay, t_ns=time.time_ns(),
            ))  # fmt: skip
            context.stop.wait(delay)
        finally:
            source.close()
    return 0


def stop_event_from_signals() -> threading.Event:
    """An event set by SIGINT or SIGTERM (main thread only)."""
    import signal

    stop = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop
