"""Put each source's timestamps on the daemon's clock (pure code).

Every message carries its capture time and its publish time, both on the source's clock.
``recv - t_pub`` is the clock offset plus the transport delay; its minimum over a recent
span is the offset plus the *smallest* delay (tens of microseconds on one host, about
one network hop between hosts), the same one-way estimate NTP's and LSL's filters start
from. Adding it to the capture time gives the capture time on the daemon's clock. The
span slides, so a drifting clock is followed.

Small estimates are taken as zero, larger ones rounded to whole milliseconds. Processes
on one host read the same realtime clock, so an estimate under ``deadband_ns`` (2 ms) is
transport delay, not clock offset: it differs from one subscriber to the next (the
daemon, a recorder, a replay) and, corrected for, would make the same samples land up
to a millisecond apart in each of them, which is 16 audio samples at 16 kHz.
"""

from __future__ import annotations


class OffsetEstimator:
    """Sliding minimum of ``recv - t_pub`` over two buckets of ``span_ns`` each."""

    def __init__(self, span_ns: int = 10_000_000_000, deadband_ns: int = 2_000_000) -> None:
        self.span_ns = span_ns
        self.deadband_ns = deadband_ns
        self._bucket_start: int | None = None
        self._current: int | None = None
        self._previous: int | None = None
        self._offset = 0

    def update(self, t_pub_ns: int, t_recv_ns: int) -> int:
        """Add one message; return the offset to add to this source's timestamps."""
        state = self._after(t_pub_ns, t_recv_ns)
        if state is not None:
            self._bucket_start, self._current, self._previous = state
            self._offset = self._estimate(self._current, self._previous)
        return self._offset

    def peek(self, t_pub_ns: int, t_recv_ns: int) -> int:
        """The offset :meth:`update` would return for this message, changing nothing."""
        state = self._after(t_pub_ns, t_recv_ns)
        return self._offset if state is None else self._estimate(state[1], state[2])

    def _after(self, t_pub_ns: int, t_recv_ns: int) -> tuple[int, int, int | None] | None:
        """``(bucket start, current, previous)`` once this message is in; None when the
        estimate stands (the usual case: the minimum is not beaten, no bucket ends)."""
        delay = t_recv_ns - t_pub_ns
        if self._bucket_start is None:
            return t_recv_ns, delay, self._previous
        if t_recv_ns - self._bucket_start >= self.span_ns:
            return t_recv_ns, delay, self._current
        if self._current is not None and delay >= self._current:
            return None
        return self._bucket_start, delay, self._previous

    def accepts(self, t_pub_ns: int, t_recv_ns: int, clock: str, max_skew_ns: int) -> bool:
        """Whether a message published at ``t_pub_ns`` is plausible for this source.

        A ``realtime`` source shares the daemon's epoch: its publish time must lie within
        ``max_skew_ns`` of the receive time. A ``monotonic`` source counts from its own boot,
        so only its first message sets the scale; later ones must agree with the estimate
        within ``max_skew_ns``. Either way, one forged publish time cannot drag the offset
        (and with it every later sample of the stream) away.
        """
        delay = t_recv_ns - t_pub_ns
        if clock == "realtime":
            return abs(delay) <= max_skew_ns
        values = [v for v in (self._current, self._previous) if v is not None]
        return not values or abs(delay - min(values)) <= max_skew_ns

    @property
    def offset_ns(self) -> int:
        """The current estimate, in whole milliseconds (0 before any message)."""
        return self._offset

    def _estimate(self, current: int | None, previous: int | None) -> int:
        values = [v for v in (current, previous) if v is not None]
        if not values or abs(min(values)) < self.deadband_ns:
            return 0
        return round(min(values), -6)


class ClockSync:
    """The offset of this host's clock from the daemon's, NTP style, from round-trip probes.

    Each probe has four stamps: ``t1`` sent (here), ``t2`` received and ``t3`` answered
    (the daemon), ``t4`` back (here). Its round trip is ``(t4 - t1) - (t3 - t2)``; its
    offset ``((t2 - t1) + (t3 - t4)) / 2`` is exact when both legs took equally long and
    off by at most half the round trip otherwise, so the fastest probe of a burst is the
    one to trust. Bursts' best offsets are then dejittered: the estimate is their median
    over the last ``keep`` bursts, which rides out a burst whose fastest probe was still
    lopsided. Add the offset to this host's timestamps to put them on the daemon's clock.
    """

    def __init__(self, keep: int = 15) -> None:
        self.keep = keep
        self._burst: list[tuple[int, float]] = []  # (round trip, offset)
        self._best: list[tuple[int, float]] = []  # the fastest probe of each burst

    def add(self, t1: int, t2: int, t3: int, t4: int) -> None:
        """One probe's four stamps (ns)."""
        rtt = (t4 - t1) - (t3 - t2)
        if rtt >= 0:  # else a clock stepped during the probe
            self._burst.append((rtt, ((t2 - t1) + (t3 - t4)) / 2))

    def end_burst(self) -> None:
        """Keep the fastest probe of the burst just sent."""
        if self._burst:
            self._best = [*self._best[-(self.keep - 1) :], min(self._burst)]
            self._burst = []

    @property
    def bursts(self) -> int:
        """Bursts the estimate rests on."""
        return len(self._best)

    @property
    def ready(self) -> bool:
        """Whether there is a probe to estimate from."""
        return bool(self._best or self._burst)

    @property
    def offset_ns(self) -> int:
        """Daemon clock minus this clock (0 before any probe)."""
        best = self._best or ([min(self._burst)] if self._burst else [])
        if not best:
            return 0
        offsets = sorted(offset for _, offset in best)
        return round(offsets[len(offsets) // 2])

    @property
    def best_rtt_ns(self) -> int:
        """The shortest round trip kept: the bound on one burst's error is half of it."""
        kept = self._best or self._burst
        return min(rtt for rtt, _ in kept) if kept else 0
