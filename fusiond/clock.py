"""Put each stream's timestamps on a trusted clock, online (pure code).

A stream's stamps come from its own clock: the publishing host's (``t_pub_ns`` against the
daemon's receive time), or a sensor's (a ``time_column`` against the host's read time), or
none at all (a sample's index on its declared rate's grid against its arrival time). In
every case each message gives one pair ``(x, y)``: ``x`` on the stream's clock, ``y`` on
the trusted one, ``y - x = offset(x) + delay`` with a delay that is never negative. The
smallest delays lie on a line, the offset now and the drift (rate error) of the stream's
clock; everything above the line is transport delay, which varies.

:class:`ClockModel` follows that line (the approach of NTP's and LSL's filters): each
bucket of ``bucket_ns`` keeps its smallest delay, a least-squares line through the last
``keep`` buckets' minima (those far above it, in a congested spell, left out) is the model,
refitted as each bucket ends. A message then costs a subtraction, a multiply and a few
comparisons. What the line cannot explain is handled by kind:

- a stamp ``step_ns`` or more ahead of the line (it arrived before it was sent), or a
  clock that went back: suspect. One such message alone is an outlier: dropped, counted,
  the model untouched. ``confirm`` suspects in a row that agree with each other are a
  real step: the model moves by it at once, the step is counted and its size kept.
- a delay that rose, with stamps still moving forward: transport (a queue, a busy host),
  never a reason to move the clock, unless ``follow_rises`` (arrival-timed streams, whose
  "clock" is a sample count: a pause in the sensor looks exactly like this).

Processes on one host read the same realtime clock, so an offset under ``deadband_ns``
is transport delay, not clock offset, and is taken as zero: corrected, it would differ
from one subscriber to the next (the daemon, a recorder, a replay), and the same samples
would land up to a millisecond apart in each of them.
"""

from __future__ import annotations

from collections import deque

__all__ = ["ACCEPT", "ClockModel", "ClockSync", "OUTLIER", "STEP"]

ACCEPT = 0
OUTLIER = 1
STEP = 2


class ClockModel:
    """Offset and drift of one stream's clock against a trusted one, from ``(x, y)`` pairs.

    :meth:`update` takes each pair and returns the offset to add to the stamps of that
    message, or None when the message must not be used (a suspect stamp). After each
    call, :attr:`resolved` says what became of earlier suspects, if anything did:
    ``(OUTLIER, n)`` or ``(STEP, n)``, for the caller's counters.
    """

    RAISED_BUCKETS = 8
    """Buckets in a row whose smallest delay sits above the line before a rise under
    ``step_ns`` is taken as the clock's, not the transport's (2 s, at 250 ms buckets)."""

    __slots__ = (
        "bucket_ns",
        "keep",
        "step_ns",
        "confirm",
        "deadband_ns",
        "max_drift",
        "follow_rises",
        "_x0",
        "_d0",
        "_a",
        "_b",
        "_last_x",
        "_bucket_end",
        "_bx",
        "_bmin",
        "_bmax_r",
        "_minima",
        "_suspects",
        "_suspect_r",
        "_suspect_x",
        "_raised",
        "_raised_by",
        "_below",
        "_spread",
        "resolved",
        "outliers",
        "steps",
        "last_step_ns",
        "jitter_ns",
        "pairs",
        "last_offset",
    )

    def __init__(
        self,
        *,
        bucket_ns: int = 250_000_000,
        keep: int = 40,
        step_ns: int = 50_000_000,
        confirm: int = 3,
        deadband_ns: int = 0,
        max_drift: float = 0.2,
        follow_rises: bool = False,
    ) -> None:
        self.bucket_ns, self.keep, self.step_ns, self.confirm = bucket_ns, keep, step_ns, confirm
        self.deadband_ns, self.max_drift, self.follow_rises = deadband_ns, max_drift, follow_rises
        self._x0 = 0  # the line: offset(x) = d0 + a + b * (x - x0), d0 an int (ns keep their precision)
        self._d0 = 0
        self._a = 0.0
        self._b = 0.0
        self._last_x: int | None = None
        self._bucket_end = 0
        self._bx = 0  # this bucket's smallest delay (relative to d0) and where it was
        self._bmin = 0
        self._bmax_r = 0.0  # and its largest residual (how bursty the arrivals are)
        self._minima: deque[tuple[int, int]] = deque(maxlen=keep)
        self._suspects = 0
        self._suspect_r = 0.0
        self._suspect_x = 0
        self._raised = 0
        self._raised_by = 0.0
        self._below: float | None = None  # the last bucket's minimum, when it lay well under the line
        self._spread = float(step_ns)  # the largest residual of a bucket lately (peak, decaying)
        self.resolved: tuple[int, int] | None = None
        """What became of earlier suspects at the last :meth:`update`: (OUTLIER|STEP, count)."""
        self.outliers = 0
        """Suspect messages that were outliers."""
        self.steps = 0
        """Steps followed (confirmed ones, and pauses of an arrival-timed stream)."""
        self.last_step_ns = 0
        """The size of the last step (positive: the stream's clock went back)."""
        self.jitter_ns = 0.0
        """Mean delay above the line, lately: how much the stamps' arrival wanders."""
        self.pairs = 0
        """Pairs taken into the model."""
        self.last_offset: int | None = None
        """What the last :meth:`update` returned."""

    def update(self, x: int, y: int) -> int | None:
        """One message: its stamp ``x`` on the stream's clock, ``y`` when it arrived."""
        self.resolved = None
        last = self._last_x
        if last is None:
            self._start(x, y - x)
            self.last_offset = offset = self._offset(x, 0)
            return offset
        d = y - x - self._d0
        r = d - (self._a + self._b * (x - self._x0))
        step = self.step_ns
        if self.follow_rises:
            # Arrival times are the truth: a stream far behind its grid paused, one ahead of it
            # runs faster than modelled; either way the grid re-anchors there at once.
            if r < -step or r > step + 2 * self._spread:
                self._bmax_r = max(self._bmax_r, r)  # how late a burst's first lines come: learnt
                self._move(r, x, d, x_step=False)
                r = 0.0
        elif r < -step or x < last - step:
            self.last_offset = held = self._suspect(x, d, r)
            return held
        if self._suspects:
            self._resolve(OUTLIER, self._suspects)
        self._take(x, d, r)
        self.last_offset = offset = self._offset(x, d)
        return offset

    def predict(self, x: int) -> int:
        """The offset for a stamp ``x``, changing nothing."""
        if self._last_x is None:
            return 0
        offset = self._d0 + round(self._a + self._b * (x - self._x0))
        return 0 if -self.deadband_ns < offset < self.deadband_ns else offset

    @property
    def offset_ns(self) -> int:
        """The offset at the last stamp taken (0 before any)."""
        return self.predict(self._last_x) if self._last_x is not None else 0

    @property
    def drift_ppm(self) -> float:
        """How much faster the trusted clock runs than the stream's, in parts per million
        (positive: the stream's clock is slow)."""
        return self._b * 1e6

    @property
    def suspects(self) -> int:
        """Suspect messages not resolved yet."""
        return self._suspects

    def _offset(self, x: int, d: int) -> int:
        line = round(self._a + self._b * (x - self._x0))
        offset = self._d0 + line
        if -self.deadband_ns < offset < self.deadband_ns:
            return 0
        # Never later than the message's own arrival: the line may lag a clock speeding up.
        return self._d0 + d if d < line else offset

    def _take(self, x: int, d: int, r: float) -> None:
        self._last_x = x
        self.pairs += 1
        if r > 0:
            self.jitter_ns += (min(r, self.step_ns) - self.jitter_ns) / 64
            if r > self._bmax_r:
                self._bmax_r = r
        if x >= self._bucket_end:
            self._close_bucket(x, d)
        elif d < self._bmin:
            self._bmin, self._bx = d, x

    def _start(self, x: int, d: int) -> None:
        self._x0, self._d0, self._a, self._b = x, d, 0.0, 0.0
        self._last_x = x
        self._bucket_end = x + self.bucket_ns
        self._bx, self._bmin, self._bmax_r = x, 0, 0.0
        self._minima.clear()
        self.pairs += 1

    def _suspect(self, x: int, d: int, r: float) -> int | None:
        """A stamp the line cannot explain: an outlier, or the first of a step."""
        tolerance = max(self.step_ns / 2, 4 * self.jitter_ns)
        if self._suspects and abs(r - self._suspect_r) <= tolerance and x >= self._suspect_x - tolerance:
            self._suspects += 1
            self._suspect_x = x
            if self._suspects < self.confirm:
                return None
            self._resolve(STEP, self._suspects - 1)  # this one is taken, the ones before were dropped
            self._move(r, x, d, x_step=True)
            self._take(x, d, 0.0)
            return self._offset(x, d)
        if self._suspects:  # the earlier ones agreed with nothing after them
            self._resolve(OUTLIER, self._suspects)
        self._suspects, self._suspect_r, self._suspect_x = 1, r, x
        return None

    def _resolve(self, what: int, count: int) -> None:
        self.resolved = (what, count)
        if what == OUTLIER:
            self.outliers += count
        self._suspects = 0

    def _move(self, r: float, x: int, d: int, *, x_step: bool) -> None:
        """A step: move the line by ``r`` so ``x``'s pair lies on it, and the minima it
        rests on with it. ``x_step``: the stream's own clock jumped (its stamps moved by
        ``-r``, so the history moves along both axes and the drift fitted so far holds);
        else time passed that its stamps did not count (an arrival-timed stream's pause)."""
        shift = round(r)
        self._shift(r)
        if x_step:
            self._x0 -= shift
            self._minima = deque(((mx - shift, md) for mx, md in self._minima), maxlen=self.keep)
            self._bucket_end = x + self.bucket_ns
        self._bx, self._bmin = x, d
        self.steps += 1
        self.last_step_ns = shift

    def _shift(self, r: float) -> None:
        """Move the line, and the minima it was fitted to, up by ``r``."""
        self._a += r
        shift = round(r)
        self._minima = deque(((mx, md + shift) for mx, md in self._minima), maxlen=self.keep)
        self._raised, self._below = 0, None

    def _close_bucket(self, x: int, d: int) -> None:
        bx, bmin = self._bx, self._bmin
        self._spread = max(0.9 * self._spread, self._bmax_r)
        self._bucket_end = x + self.bucket_ns
        r = bmin - (self._a + self._b * (bx - self._x0))
        quarter = self.step_ns / 4
        if r < -quarter:
            # Under the line: a clock that jumped ahead a little (two buckets at one level),
            # or one running faster than fitted so far (each bucket lower: the fit follows).
            if self._below is not None and abs(r - self._below) < quarter / 2:
                self._shift(r)
            else:
                self._below = r
        elif r > quarter and self._minima:  # congestion, or a clock that went back a little
            # A clock that went back sits at one new level; a queue that drains (the
            # receiver stalled, then read a backlog) does not: its minima fall bucket by
            # bucket. Only a level held for RAISED_BUCKETS moves the line.
            if self._raised and abs(r - self._raised_by) > quarter / 2:
                self._raised = 0
            self._raised_by = min(r, self._raised_by) if self._raised else r
            self._raised += 1
            self._below = None
            if self._raised >= self.RAISED_BUCKETS:
                for _ in range(self._raised - 1):  # those already lie at the new level
                    self._minima.pop()
                self._shift(self._raised_by)
        else:
            self._raised, self._below = 0, None
        self._minima.append((bx, bmin))
        self._bx, self._bmin, self._bmax_r = x, d, 0.0
        self._fit()

    def _fit(self) -> None:
        points = self._minima
        # A bucket far above the line in force was congested (a queue, or a receiver that
        # stalled and then read its backlog at once): no drift moves a bucket that much
        # from one bucket to the next, so it is left out before the fit can be dragged up.
        a0, b0, x0, step = self._a, self._b, self._x0, self.step_ns
        clear = [p for p in points if p[1] - (a0 + b0 * (p[0] - x0)) < step]
        if len(clear) < len(points) and (
            len(clear) < 2 or clear[-1][0] - clear[0][0] < self.keep * self.bucket_ns // 4
        ):
            return  # little but congestion lately: the line in force stands until it clears
        line = _line(clear, x0)
        if line is None:
            px, pd = points[-1]
            self._a = pd - self._b * (px - x0)
            return
        a, b = line
        # Buckets above the new line were congested too: fit again without them.
        quarter = step / 4
        kept = [p for p in clear if p[1] - (a + b * (p[0] - x0)) < quarter]
        if 2 <= len(kept) < len(clear):
            a, b = _line(kept, x0) or (a, b)
        self._a, self._b = a, max(-self.max_drift, min(self.max_drift, b))


def _line(points: list[tuple[int, int]], x0: int) -> tuple[float, float] | None:
    """Least squares ``d = a + b * (x - x0)`` through ``points``; None with fewer than two
    points or no spread in x. (Refitted at every bucket of every stream: lists, not
    generators, and each difference from the means computed once, for the same numbers.)"""
    n = len(points)
    if n < 2:
        return None
    xs = [px - x0 for px, _ in points]
    mx = sum(xs) / n
    md = sum([pd for _, pd in points]) / n
    dx = [px - mx for px in xs]
    sxx = sum([d * d for d in dx])
    if sxx <= 0:
        return None
    b = sum([d * (p[1] - md) for d, p in zip(dx, points, strict=True)]) / sxx
    return md - b * mx, b


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
