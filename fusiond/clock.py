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

    def update(self, t_pub_ns: int, t_recv_ns: int) -> int:
        """Add one message; return the offset to add to this source's timestamps."""
        delay = t_recv_ns - t_pub_ns
        if self._bucket_start is None:
            self._bucket_start = t_recv_ns
        elif t_recv_ns - self._bucket_start >= self.span_ns:
            self._previous, self._current = self._current, None
            self._bucket_start = t_recv_ns
        self._current = delay if self._current is None else min(self._current, delay)
        return self.offset_ns

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
        values = [v for v in (self._current, self._previous) if v is not None]
        if not values or abs(min(values)) < self.deadband_ns:
            return 0
        return round(min(values), -6)
