"""``fusiond replay``: publish a recording's sensor messages again, as if live.

Each message keeps its recorded spacing (or ``speed`` times faster) and is re-stamped so
the daemon cannot tell it from a live sensor: ``t_pub_ns`` becomes the send time, and
every capture time moves by one constant ``shift_ns``, a whole number of seconds. Windows
on any hop that divides a second therefore cut the same samples as in the live run,
``shift_ns / hop`` window indexes later.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import msgpack
import zmq

from fusiond.bus.security import Keys, client_keys
from fusiond.bus.sockets import Sockets
from fusiond.bus.wire import SAMPLE_PREFIX
from fusiond.recording.mcapfile import read
from fusiond.sources.runner import connect_publisher

__all__ = ["replay", "restamp", "SECOND", "shift_for"]

log = logging.getLogger(__name__)
SECOND = 1_000_000_000


def shift_for(first_log_ns: int, now_ns: int, lead_ns: int = SECOND // 2) -> int:
    """Whole seconds that move the recording's start to just after ``now_ns``."""
    return -(-(now_ns + lead_ns - first_log_ns) // SECOND) * SECOND


def restamp(frames: list[bytes], shift_ns: int, t_pub_ns: int, seq: int | None = None) -> list[bytes]:
    """The message with capture time moved by ``shift_ns``, a fresh publish time and, given
    ``seq``, numbered again: a replay is a new publisher, counting from 0 per stream through
    every pass (the recorded numbers would go back at each loop, and read as duplicates)."""
    header = msgpack.unpackb(frames[1])
    if isinstance(header.get("t_ns"), int):
        header["t_ns"] += shift_ns
    header["t_pub_ns"] = t_pub_ns
    if seq is not None and "seq" in header:
        header["seq"] = seq
    return [frames[0], msgpack.packb(header), *frames[2:]]


def replay(
    path: Path,
    endpoint: str,
    stop: threading.Event,
    *,
    speed: float | None = 1.0,
    loop: bool = False,
    topics: Sequence[str] = (SAMPLE_PREFIX,),
    keys: Keys | None = None,
) -> Counter[str]:
    """Publish until the end (or ``stop``); ``speed=None`` sends as fast as possible."""
    keys = keys if keys is not None else client_keys()
    sockets = Sockets(hwm=100_000 if speed is None else 10_000, keys=keys)
    sent: Counter[str] = Counter()
    try:
        sock, _ = connect_publisher(sockets, endpoint, 2000, 5.0, stop)
        stop.wait(0.2)  # the daemon's subscription reaches this new publisher
        pass_index = 0
        while not stop.is_set():
            _one_pass(path, sock, stop, speed, topics, sent, pass_index)
            pass_index += 1
            if not loop:
                break
    finally:
        sockets.close()  # waits up to the socket's linger for what is still queued
    return sent


def _one_pass(
    path: Path,
    sock: zmq.Socket[bytes],
    stop: threading.Event,
    speed: float | None,
    topics: Sequence[str],
    sent: Counter[str],
    pass_index: int,
) -> None:
    start_ns = shift_ns = first = None
    for rec in read(path, topics):
        if stop.is_set():
            return
        now = time.time_ns()
        if first is None:
            first, start_ns = rec.log_time_ns, now
            shift_ns = shift_for(first, now)
            log.info(
                "replay %s (pass %d): capture times move by %+.0f s", path, pass_index + 1, shift_ns / SECOND
            )
        assert start_ns is not None and shift_ns is not None
        if speed is not None:
            due = (first + shift_ns if speed == 1.0 else start_ns) + (rec.log_time_ns - first) / speed
            delay = (due - now) / 1e9
            if delay > 0 and stop.wait(delay):
                return
        sock.send_multipart(restamp(rec.frames, shift_ns, time.time_ns(), sent[rec.topic]), copy=False)
        sent[rec.topic] += 1
