"""Keep a source on another host on the daemon's clock: probes against its control endpoint.

``fusiond source KIND --connect tcp://daemon:7710 --sync-clock tcp://daemon:7712`` asks
the daemon's control endpoint for the time (``[b"time", t1]`` -> ``{"t1", "t2", "t3"}``)
in bursts, at start and every ``every_s`` after, and stamps every block with
its own clock plus the estimated offset (:class:`fusiond.clock.ClockSync`). A source on
the daemon's own host needs none of this.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable

import zmq

from fusiond.bus.sockets import Sockets
from fusiond.clock import ClockSync

__all__ = ["Clock", "ClockFollower", "probe"]

log = logging.getLogger(__name__)
Clock = Callable[[], int]


def probe(
    sock: zmq.Socket[bytes], sync: ClockSync, clock: Clock = time.time_ns, timeout_ms: int = 1000
) -> bool:
    """One round trip over a REQ socket; False (and the socket must be replaced) on time-out."""
    t1 = clock()
    sock.send_multipart([b"time", str(t1).encode()])
    if not sock.poll(timeout_ms):
        return False
    t4 = clock()
    reply = json.loads(sock.recv())
    if reply.get("t1") == t1:
        sync.add(t1, int(reply["t2"]), int(reply["t3"]), t4)
    return True


class ClockFollower:
    """Probes the daemon in a thread; ``offset_ns`` is what to add to this host's stamps."""

    def __init__(
        self,
        endpoint: str,
        sockets: Sockets,
        clock: Clock = time.time_ns,
        burst: int = 32,
        every_s: float = 10.0,
    ) -> None:
        self.endpoint, self.sockets, self.clock = endpoint, sockets, clock
        self.burst, self.every_s = burst, every_s
        self.sync = ClockSync()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fusiond-clock", daemon=True)

    @property
    def offset_ns(self) -> int:
        """The current estimate (0 until the first probe came back)."""
        return self.sync.offset_ns

    def start(self, wait_s: float = 5.0) -> None:
        """Start probing; wait up to ``wait_s`` for a first estimate."""
        self._thread.start()
        deadline = time.monotonic() + wait_s
        while not self.sync.ready and time.monotonic() < deadline:
            time.sleep(0.01)
        if self.sync.ready:
            log.info(
                "clock: %+.3f ms from the daemon's (best round trip %.3f ms)",
                self.offset_ns / 1e6,
                self.sync.best_rtt_ns / 1e6,
            )
        else:
            log.warning("clock: no answer from %s yet; stamping with this host's clock", self.endpoint)

    def stop(self) -> None:
        """Stop probing."""
        self._stop.set()
        self._thread.join(2)

    def _run(self) -> None:
        sock = self.sockets.request(self.endpoint)
        try:
            while not self._stop.is_set():
                for _ in range(self.burst):
                    if not probe(sock, self.sync, self.clock):
                        sock.close(linger=0)  # a REQ that lost its reply can't send again
                        sock = self.sockets.request(self.endpoint)
                        break
                    self._stop.wait(0.005)
                self.sync.end_burst()
                self._stop.wait(self.every_s)
        finally:
            sock.close(linger=0)
