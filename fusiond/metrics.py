"""Counters and latency figures: the summary line, ``fusiond status`` and Prometheus.

Writers only increment; anything derived (rates, percentiles) is computed when read.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections import Counter, deque
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "ClockHealth",
    "DROP_REASONS",
    "LATENCY_BUCKETS_S",
    "LatencyHistogram",
    "LatencyWindow",
    "RateMeter",
    "RigStats",
    "Stats",
    "StreamStats",
    "Summary",
]


DROP_REASONS = (
    "bad_counters",
    "bad_framing",
    "bad_header",
    "bad_shape",
    "bad_size",
    "bad_value",
    "bad_version",
    "bad_window",
    "buffer_full",
    "clock_outlier",
    "clock_skew",
    "clock_step",
    "decode_error",
    "duplicate",
    "implausible_prediction",
    "inference_busy",
    "internal_error",
    "late",
    "lost_in_restart",
    "lost_in_transport",
    "not_allowed",
    "over_rate",
    "seq_reset",
    "unauthenticated",
    "unknown_stream",
    "window_empty",
    "wrong_modality",
)
"""Every reason docs/operations.md lists: each is on ``/metrics`` from the start, at 0."""

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
"""Upper bounds of the close-to-publish latency histogram, seconds."""


class LatencyHistogram:
    """Cumulative counts of latencies by :data:`LATENCY_BUCKETS_S`, and their sum: what a
    Prometheus histogram needs, so that latency can be aggregated across daemons."""

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS_S) + 1)
        self.sum_s = 0.0
        self._lock = threading.Lock()

    def add(self, latency_ns: int) -> None:
        """One latency."""
        seconds = latency_ns / 1e9
        with self._lock:
            self.counts[bisect.bisect_left(LATENCY_BUCKETS_S, seconds)] += 1
            self.sum_s += seconds

    def buckets(self) -> tuple[list[tuple[str, int]], float]:
        """``[(le, cumulative count), ...]`` ending with ``+Inf``, and the sum."""
        with self._lock:
            counts, total = list(self.counts), self.sum_s
        out, running = [], 0
        for le, n in zip([*map(str, LATENCY_BUCKETS_S), "+Inf"], counts, strict=True):
            running += n
            out.append((le, running))
        return out, total


class LatencyWindow:
    """The last ``size`` latencies (ns), thread-safe; percentiles over them."""

    def __init__(self, size: int = 2048) -> None:
        self._values: deque[int] = deque(maxlen=size)
        self._lock = threading.Lock()

    def add_many(self, values: list[int]) -> None:
        """Record latencies."""
        with self._lock:
            self._values.extend(values)

    def percentiles(self, *qs: float) -> list[float]:
        """Percentiles in milliseconds (NaN when empty)."""
        with self._lock:
            data = np.fromiter(self._values, np.int64, len(self._values))
        if not len(data):
            return [float("nan")] * len(qs)
        return [float(v) / 1e6 for v in np.percentile(data, qs)]


# numpy imports parts of itself on first use (np.percentile's among them). That first use
# must not fall in a flood of connections that has taken every file descriptor: status
# would fail then. So it happens here, when the daemon starts.
np.percentile(np.zeros(2, np.int64), [50.0, 99.0])


class RateMeter:
    """Events per second over the last few complete seconds (cheap enough for every message).

    Averaging over several seconds keeps a one-second stall of a busy host from reading as
    a dead stream.
    """

    SPAN = 5

    def __init__(self) -> None:
        self._counts = [0] * self.SPAN
        self._seconds = [-1] * self.SPAN
        self._first: int | None = None

    def tick(self, now_ns: int, n: int = 1) -> None:
        """Count ``n`` events at ``now_ns``."""
        second = now_ns // 1_000_000_000
        slot = second % self.SPAN
        if self._seconds[slot] != second:
            self._seconds[slot], self._counts[slot] = second, 0
        self._counts[slot] += n
        if self._first is None:
            self._first = second

    def rate(self, now_ns: int) -> float:
        """Mean events per second over the complete seconds of the last ``SPAN - 1``."""
        second = now_ns // 1_000_000_000
        if self._first is None or second <= self._first:
            return 0.0
        span = min(self.SPAN - 1, second - self._first)
        slots = zip(self._counts, self._seconds, strict=True)
        total = sum(c for c, s in slots if second - span <= s < second)
        return total / span


@dataclass(frozen=True)
class ClockHealth:
    """What a stream's clock model says (:class:`fusiond.clock.ClockModel`)."""

    offset_ns: int
    """Added to the stream's stamps to put them on the daemon's clock, now."""
    drift_ppm: float
    """How much slower the stream's clock runs than the daemon's."""
    jitter_ns: int
    """Mean delay of arrival above the model's line, lately."""
    outliers: int
    steps: int
    suspects: int
    """Messages held back now, until the next ones tell an outlier from a step."""

    @classmethod
    def from_row(cls, row: Any) -> ClockHealth:
        """From a snapshot's row; ValueError or TypeError when it is not one."""
        offset, drift, jitter, outliers, steps, suspects = row
        counts = (jitter, outliers, steps, suspects)
        numeric = type(drift) in (int, float) and math.isfinite(drift) and abs(drift) <= 1e6
        if (
            not numeric
            or type(offset) is not int
            or abs(offset) >= 2**63
            or not all(type(v) is int and 0 <= v < 2**63 for v in counts)
        ):
            msg = f"not a clock row: {row!r}"
            raise ValueError(msg)
        return cls(offset, float(drift), jitter, outliers, steps, suspects)


@dataclass
class StreamStats:
    """One source stream, as the daemon sees it."""

    messages: int = 0
    """Sample messages accepted."""
    samples: int = 0
    """Samples in them (a message carries a block: 1 frame, 1024 audio samples, ...)."""
    sample_rate_hz: float = 0.0
    """The rate the source declares (the protocol's ``rate_hz``), from its last message."""
    last_recv_ns: int | None = None
    rate: RateMeter = field(default_factory=RateMeter)
    error: str = ""
    error_ns: int | None = None
    errors: int = 0
    """Error reports (``e/`` messages) taken for this stream, its source's or forged ones."""
    channels: str = ""
    """Its channels as its source names them, with units: ``accel_z [g], temp [degC]``."""
    reported_rate: float | None = None
    """Messages per second a worker measured, when this stream is ingested in another process."""
    sample_meter: RateMeter = field(default_factory=RateMeter)
    reported_samples_rate: float | None = None
    clock: ClockHealth | None = None
    """The stream's clock model, as its ingest last reported it."""

    def samples_per_s(self, now_ns: int) -> float:
        """Samples per second lately, as they arrive: the rate measured, to set against the
        declared ``sample_rate_hz``."""
        if self.reported_samples_rate is not None:
            return self.reported_samples_rate
        return self.sample_meter.rate(now_ns)

    def messages_per_s(self, now_ns: int) -> float:
        """Messages per second lately."""
        return self.reported_rate if self.reported_rate is not None else self.rate.rate(now_ns)


@dataclass
class RigStats:
    """One rig's published windows."""

    predictions: int = 0
    last_label: str = ""
    last_prediction_ns: int | None = None
    rate: RateMeter = field(default_factory=RateMeter)
    latency: LatencyWindow = field(default_factory=LatencyWindow)
    histogram: LatencyHistogram = field(default_factory=LatencyHistogram)


class Stats:
    """Everything the daemon counts. Writers: the loop thread and the inference thread."""

    def __init__(self) -> None:
        self.drops: Counter[str] = Counter()
        self.streams: dict[tuple[str, str], StreamStats] = {}
        self.rigs: dict[str, RigStats] = {}
        self.latency = LatencyWindow()
        self.predictions = 0
        self.last_window_ns: int | None = None
        self.components: dict[str, Counter[str]] = {}
        self.masked: dict[str, dict[str, int]] = {}
        self._lock = threading.Lock()

    def stream(self, rig: str, stream: str) -> StreamStats:
        """The stats of one stream (created on first use)."""
        found = self.streams.get((rig, stream))
        if found is None:
            found = self.streams[rig, stream] = StreamStats()
        return found

    def rig(self, rig: str) -> RigStats:
        """The stats of one rig (created on first use)."""
        found = self.rigs.get(rig)
        if found is None:
            found = self.rigs[rig] = RigStats()
        return found

    def sampled(self, rig: str, stream: str, now_ns: int, samples: int = 1, rate_hz: float = 0.0) -> None:
        """Count one accepted message of ``samples`` samples at a declared ``rate_hz``."""
        s = self.stream(rig, stream)
        s.messages += 1
        s.samples += samples
        s.sample_rate_hz = rate_hz
        s.last_recv_ns = now_ns
        s.rate.tick(now_ns)
        s.sample_meter.tick(now_ns, samples)

    def labelled(self, rig: str, stream: str, channels: tuple[str, ...], units: tuple[str, ...]) -> None:
        """The channel names and units the last accepted message carried."""
        names = channels or tuple(f"#{i}" for i in range(len(units)))
        shown = ", ".join(
            f"{n} [{u}]" if u else n for n, u in zip(names, units or ("",) * len(names), strict=False)
        )
        s = self.stream(rig, stream)
        if s.channels != shown:
            s.channels = shown

    def predicted(self, rig: str, label: str, latency_ns: int, now_ns: int) -> None:
        """Record one published prediction."""
        r = self.rig(rig)
        with self._lock:
            r.predictions += 1
            r.last_label = label
            r.last_prediction_ns = now_ns
            r.rate.tick(now_ns)
            self.predictions += 1
        r.latency.add_many([latency_ns])
        r.histogram.add(latency_ns)
        self.latency.add_many([latency_ns])

    def drop(self, reason: str, count: int = 1) -> None:
        """Count discarded samples or windows."""
        with self._lock:
            self.drops[reason] += count

    def absorb(
        self, snapshot: dict[str, Any], components: Collection[str], streams: Collection[tuple[str, str]]
    ) -> bool:
        """Take one component's counters (running totals) into this daemon-wide view.

        Only what the daemon knows is taken (its components, streams and rigs), so a
        forged snapshot cannot grow these tables; False when the snapshot was refused.
        """
        name = snapshot.get("name")
        if not isinstance(name, str) or name not in components:
            return False
        try:
            drops = Counter({str(k): int(v) for k, v in dict(snapshot.get("drops", {})).items()})
            rows = {}
            for key, row in dict(snapshot.get("streams", {})).items():
                (
                    messages,
                    samples,
                    sample_rate,
                    last,
                    rate,
                    error,
                    error_ns,
                    samples_rate,
                    errors,
                    channels,
                ) = row
                rig, _, stream = str(key).partition("/")
                if (rig, stream) in streams:
                    rates = (float(sample_rate), float(rate), float(samples_rate))
                    if not all(math.isfinite(v) and v >= 0 for v in rates):
                        return False
                    rows[rig, stream] = (
                        int(messages),
                        int(samples),
                        rates[0],
                        last,
                        rates[1],
                        str(error)[:500],
                        error_ns,
                        rates[2],
                        int(errors),
                        str(channels)[:2000],
                    )
            clocks = {}
            for key, row in dict(snapshot.get("clocks", {})).items():
                rig, _, stream = str(key).partition("/")
                if (rig, stream) in streams:
                    clocks[rig, stream] = ClockHealth.from_row(row)
            rigs = {rig for rig, _ in streams}
            masked = {
                rig: {str(m): int(n) for m, n in dict(v).items()}
                for rig, v in dict(snapshot.get("masked", {})).items()
                if rig in rigs
            }
        except (TypeError, ValueError):
            return False
        with self._lock:
            self.components[name] = drops
        for key, row in rows.items():
            messages, samples, sample_rate, last, rate, error, error_ns, samples_rate, errors, channels = row
            s = self.stream(*key)
            s.messages, s.samples, s.sample_rate_hz = messages, samples, sample_rate
            s.last_recv_ns, s.reported_rate, s.reported_samples_rate = last, rate, samples_rate
            s.error, s.error_ns, s.errors, s.channels = error, error_ns, errors, channels
        for key, health in clocks.items():
            self.stream(*key).clock = health
        self.masked.update(masked)
        last = snapshot.get("last_window_ns")
        if type(last) is int and (self.last_window_ns is None or last > self.last_window_ns):
            self.last_window_ns = last
        return True

    def restarted(self, name: str) -> None:
        """A component started again from zero: keep what it had counted."""
        with self._lock:
            self.drops.update(self.components.pop(name, Counter()))

    def all_drops(self) -> Counter[str]:
        """Every drop, this process's and its components'."""
        with self._lock:
            total = Counter(self.drops)
            for counts in self.components.values():
                total.update(counts)
        return total


class Summary:
    """Builds the periodic one-line summary from deltas of :class:`Stats`."""

    def __init__(self, stats: Stats, now_ns: int) -> None:
        self.stats = stats
        self._since = now_ns
        self._predictions = 0

    def line(self, now_ns: int) -> str:
        """``windows/s, latency p50/p99, drops, masked (per modality, over every rig), last
        prediction``."""
        masked: Counter[str] = Counter()
        for per_rig in self.stats.masked.values():
            masked.update(per_rig)
        elapsed = max(1e-9, (now_ns - self._since) / 1e9)
        rate = (self.stats.predictions - self._predictions) / elapsed
        self._since, self._predictions = now_ns, self.stats.predictions
        p50, p99 = self.stats.latency.percentiles(50, 99)
        drops = ", ".join(f"{k}={v}" for k, v in sorted(self.stats.all_drops().items()) if v) or "none"
        masks = ", ".join(f"{k}={v}" for k, v in sorted(masked.items())) or "none"
        rigs = sorted(self.stats.rigs.items())
        last = ", ".join(f"{rig}:{r.last_label}" for rig, r in rigs if r.last_label)
        p50s, p99s = (f"{v:.1f}" if math.isfinite(v) else "-" for v in (p50, p99))  # none yet: "-"
        return (
            f"{rate:.1f} windows/s, latency p50 {p50s} ms p99 {p99s} ms "
            f"(window close -> published), drops: {drops}, masked: {masks}, last: {last or '-'}"
        )
