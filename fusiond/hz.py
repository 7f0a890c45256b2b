"""``fusiond hz``: a stream's rate and jitter from its capture times (pure)."""

from __future__ import annotations

from collections import deque

import numpy as np

__all__ = ["RateWindow"]


class RateWindow:
    """The last ``size`` messages of a topic: capture times, arrival times, samples each."""

    def __init__(self, size: int = 100) -> None:
        self._t: deque[int] = deque(maxlen=size)
        self._arrival: deque[int] = deque(maxlen=size)
        self._samples: deque[int] = deque(maxlen=size)
        self.total = 0

    def add(self, t_capture_ns: int, t_arrival_ns: int, samples: int = 1) -> None:
        """Record one message."""
        self._t.append(t_capture_ns)
        self._arrival.append(t_arrival_ns)
        self._samples.append(samples)
        self.total += 1

    def figures(self) -> dict[str, float] | None:
        """Rate (messages and samples per second) and period statistics, in seconds."""
        if len(self._t) < 2:
            return None
        periods = np.diff(np.array(self._t, np.int64)) / 1e9
        span = (self._t[-1] - self._t[0]) / 1e9
        if span <= 0:
            return None
        arrivals = np.diff(np.array(self._arrival, np.int64)) / 1e9
        return {
            "rate_hz": (len(self._t) - 1) / span,
            "samples_per_s": sum(list(self._samples)[:-1]) / span,
            "min_s": float(periods.min()),
            "max_s": float(periods.max()),
            "std_s": float(periods.std()),
            "arrival_std_s": float(arrivals.std()),
        }

    def line(self) -> str:
        """One line, like ``ros2 topic hz`` prints."""
        f = self.figures()
        if f is None:
            return f"no new messages ({self.total} so far)"
        return (
            f"average rate: {f['rate_hz']:.3f} Hz ({f['samples_per_s']:.1f} samples/s)\n"
            f"\tmin: {f['min_s']:.4f}s max: {f['max_s']:.4f}s std dev: {f['std_s']:.5f}s "
            f"arrival jitter: {f['arrival_std_s']:.5f}s window: {len(self._t)}"
        )
