"""Gather closed windows from every rig into batches (pure code, clock passed in)."""

from __future__ import annotations

from collections import deque

from fusiond.align.windows import Window


class Batcher:
    """Releases a batch when ``max_batch`` windows wait or the oldest waited ``max_delay_ns``."""

    def __init__(self, max_batch: int, max_delay_ns: int) -> None:
        if max_batch < 1 or max_delay_ns < 0:
            msg = "max_batch must be positive and max_delay_ns not negative"
            raise ValueError(msg)
        self.max_batch = max_batch
        self.max_delay_ns = max_delay_ns
        self._waiting: deque[tuple[int, Window]] = deque()

    def __len__(self) -> int:
        return len(self._waiting)

    def add(self, window: Window, now_ns: int) -> None:
        """Queue a closed window."""
        self._waiting.append((now_ns, window))

    def deadline_ns(self) -> int | None:
        """When the oldest waiting window must go, or None when nothing waits."""
        return self._waiting[0][0] + self.max_delay_ns if self._waiting else None

    def take(self, now_ns: int) -> list[Window]:
        """The next batch, if one is due (else an empty list)."""
        if not self._waiting:
            return []
        if len(self._waiting) < self.max_batch and now_ns < self._waiting[0][0] + self.max_delay_ns:
            return []
        count = min(self.max_batch, len(self._waiting))
        return [self._waiting.popleft()[1] for _ in range(count)]
