"""Which components are alive, from their heartbeats, and what their restarts cost
(pure: the clock is passed in).

Each component's counters, sent twice a second, are its heartbeat. One that stops beating
for :data:`HUNG_NS` (stopped, deadlocked) is hung: the daemon ends it for its engine to
start again. One that never beats gets :data:`STARTUP_NS` first (loading its model). One
that ends :data:`MAX_FAILED_STARTS` times in a row before its first beat has met
something a retry will not cure, and the daemon stops.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

from fusiond.bus.wire import Frame, Prediction, decode_prediction
from fusiond.errors import WireError
from fusiond.metrics import Stats
from fusiond.runtime.handoff import decode_body

HUNG_NS = 10_000_000_000
"""A component whose heartbeat stopped this long ago is hung: it is ended and started again."""
STARTUP_NS = 120_000_000_000
"""How long a component may take to send its first heartbeat (loading its model, say)."""
MAX_FAILED_STARTS = 3
"""Starts in a row that end before a component's first heartbeat: then the daemon stops.
``check-config`` and the daemon's own start load and warm the model as the server will, so
a server that still dies before serving has met something a retry will not cure (a device
out of memory, a library missing in the component's environment)."""

__all__ = ["HUNG_NS", "MAX_FAILED_STARTS", "STARTUP_NS", "Continuity", "Heartbeats"]

log = logging.getLogger(__name__)
MAX_SEQ_JUMP = 1000
"""A rig's prediction numbers never jump this far ahead: a server numbers on from the last."""
MAX_AHEAD_NS = 3_600_000_000_000
"""No real window starts an hour ahead of the daemon's clock."""


class Heartbeats:
    """The heartbeats of the components called ``names``, since ``now_ns``."""

    def __init__(self, names: Sequence[str], now_ns: int) -> None:
        self.names = list(names)
        self._heard: dict[str, int] = {}
        self._since = dict.fromkeys(self.names, now_ns)
        self._unproven: set[str] = set()
        self.hung: Counter[str] = Counter()
        """Times each component was ended for sending no heartbeat."""
        self.failed_starts: Counter[str] = Counter()
        """Per component, its starts in a row that ended before its first heartbeat."""
        self.snapshots: dict[str, dict[str, Any]] = {}
        """Each component's last counters snapshot."""

    def take(
        self,
        messages: Iterable[Sequence[Frame]],
        stats: Stats,
        streams: Mapping[tuple[str, str], str],
        now_ns: int,
    ) -> None:
        """Counters snapshots from the components: each one, once ``stats`` took it, is its
        sender's heartbeat; anything else is counted as ``bad_counters``."""
        for frames in messages:
            try:
                snapshot = decode_body(frames)
            except Exception:  # on Ray this inbox is a TCP port: anything may arrive
                snapshot = None
            if isinstance(snapshot, dict) and stats.absorb(snapshot, self.names, streams):
                self.snapshots[snapshot["name"]] = snapshot
                self.heard(snapshot["name"], now_ns)
            else:
                stats.drop("bad_counters")

    def end_hung(self, kill: Callable[[str], bool], now_ns: int) -> None:
        """End each component that stopped beating (stopped, deadlocked) with ``kill`` (its
        engine's), so that it starts again."""
        for name, silent_s in self.silent(now_ns).items():
            if kill(name):
                log.error(
                    "%s sent no heartbeat for %.0f s: hung; ended, to be started again (%d time(s))",
                    name,
                    silent_s,
                    self.ended(name, now_ns),
                )

    def started(self, name: str, now_ns: int) -> str | None:
        """``name`` (re)started; why the daemon must stop, when it has failed too often."""
        failed = None
        if name in self._unproven:
            self.failed_starts[name] += 1
            if self.failed_starts[name] >= MAX_FAILED_STARTS:
                failed = (
                    f"{name} ended {self.failed_starts[name]} times in a row before it began "
                    "(its error is logged above); stopping"
                )
        self._unproven.add(name)
        self._heard.pop(name, None)
        self._since[name] = now_ns
        return failed

    def heard(self, name: str, now_ns: int) -> None:
        """A heartbeat from ``name``."""
        self._heard[name] = now_ns
        self._unproven.discard(name)
        self.failed_starts.pop(name, None)

    def silent(self, now_ns: int) -> dict[str, float]:
        """Components past their deadline: name -> seconds since their last sign of life."""
        out = {}
        for name in self.names:
            heard = self._heard.get(name)
            since = now_ns - (heard if heard is not None else self._since[name])
            if since > (HUNG_NS if heard is not None else STARTUP_NS):
                out[name] = since / 1e9
        return out

    def ended(self, name: str, now_ns: int) -> int:
        """``name`` was ended as hung; how many times it has been."""
        self.hung[name] += 1
        self._heard.pop(name, None)
        self._since[name] = now_ns
        return self.hung[name]

    def annotate(self, row: dict[str, Any], now_ns: int, silent: dict[str, float]) -> dict[str, Any]:
        """A component's status row with its heartbeat, hangs and failed starts."""
        name = row["name"]
        heard = self._heard.get(name)
        row["last_heartbeat_s"] = None if heard is None else round((now_ns - heard) / 1e9, 1)
        row["hung"] = self.hung[name]
        row["failed_starts"] = self.failed_starts[name]
        if name in silent:
            row["state"] = "hung"
        return row


class Continuity:
    """Prediction numbers and windows lost across restarts, from the predictions seen.

    A restarted server goes on from each rig's next number (:meth:`next_seq`); the gap in
    window indices a restart leaves in a rig's predictions is counted as ``lost_in_restart``.
    """

    def __init__(self, rigs: Collection[str], stats: Stats) -> None:
        self.rigs, self.stats = set(rigs), stats
        self._next_seq: Counter[str] = Counter()
        self._last_index: dict[str, int] = {}
        self._resumed: set[str] = set()

    def next_seq(self) -> dict[str, int]:
        """Each rig's next prediction number."""
        return dict(self._next_seq)

    def restarted(self, rigs: Collection[str]) -> None:
        """A component that handles ``rigs`` (re)started: their next gap is a loss."""
        self._resumed.update(rigs)

    def take(self, messages: Iterable[Sequence[Frame]]) -> None:
        """Predictions seen on the bus (a malformed one is not ours to count)."""
        for frames in messages:
            try:
                self.seen(decode_prediction(frames))
            except WireError:
                continue

    def seen(self, p: Prediction) -> None:
        """A prediction went out on the bus. On an open bus anyone may publish one: a
        number far ahead of the rig's, a window far in the future, or a window index that
        is not its start (less the offset) over the hop (docs/protocol.md) is not
        believed, so that a forgery can neither make a restarted server number from near
        2**63 nor hide the windows a restart loses; it is counted as
        ``implausible_prediction``."""
        if p.rig not in self.rigs:
            return  # p/lab also matches p/lab2
        index, hop = p.extra.get("window_index", -1), p.extra.get("hop_ns", 0)
        offset = p.extra.get("window_offset_ns", 0)
        if (
            p.seq >= self._next_seq[p.rig] + MAX_SEQ_JUMP
            or p.window_start_ns > time.time_ns() + MAX_AHEAD_NS
            or (hop > 0 and index * hop + offset != p.window_start_ns)
        ):
            self.stats.drop("implausible_prediction")
            return
        last = self._last_index.get(p.rig)
        if p.rig in self._resumed and last is not None and index > last + 1:
            self.stats.drop("lost_in_restart", index - last - 1)
        self._resumed.discard(p.rig)
        self._last_index[p.rig] = max(index, last if last is not None else index)
        self._next_seq[p.rig] = max(self._next_seq[p.rig], p.seq + 1)
        self.stats.predicted(p.rig, p.label, p.latency_ns.get("close_to_publish", 0), p.t_pub_ns)
