"""Counters and latency figures for the summary line (and, later, status and metrics)."""

from __future__ import annotations

import threading
from collections import Counter, deque

import numpy as np


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


class Stats:
    """Everything the daemon counts. Writers: the loop and the inference thread."""

    def __init__(self) -> None:
        self.drops: Counter[str] = Counter()
        self.ingested: Counter[str] = Counter()
        self.predictions = 0
        self.latency = LatencyWindow()
        self.last: dict[str, str] = {}
        self._lock = threading.Lock()

    def predicted(self, rig_labels: list[tuple[str, str]], latencies: list[int]) -> None:
        """Record a published batch."""
        self.latency.add_many(latencies)
        with self._lock:
            self.predictions += len(rig_labels)
            self.last.update(rig_labels)

    def drop(self, reason: str, count: int = 1) -> None:
        """Count discarded samples or windows."""
        with self._lock:
            self.drops[reason] += count


class Summary:
    """Builds the periodic one-line summary from deltas of :class:`Stats`."""

    def __init__(self, stats: Stats, now_ns: int) -> None:
        self.stats = stats
        self._since = now_ns
        self._predictions = 0

    def line(self, now_ns: int, masked: Counter[str]) -> str:
        """``windows/s, latency p50/p99, drops, masked, last prediction``."""
        elapsed = max(1e-9, (now_ns - self._since) / 1e9)
        rate = (self.stats.predictions - self._predictions) / elapsed
        self._since, self._predictions = now_ns, self.stats.predictions
        p50, p99 = self.stats.latency.percentiles(50, 99)
        drops = ", ".join(f"{k}={v}" for k, v in sorted(self.stats.drops.items())) or "none"
        masks = ", ".join(f"{k}={v}" for k, v in sorted(masked.items())) or "none"
        last = ", ".join(f"{rig}:{label}" for rig, label in sorted(self.stats.last.items()))
        return (
            f"{rate:.1f} windows/s, latency p50 {p50:.1f} ms p99 {p99:.1f} ms "
            f"(window close -> published), drops: {drops}, masked: {masks}, last: {last or '-'}"
        )
