"""Gather closed windows from every rig into batches (pure code, clock passed in).

Every rig's windows sit on one grid (window ``k`` starts at ``k * hop``, plus the rig's
phase with ``[window] stagger``), so the batcher knows who is coming: once every live rig
has closed grid index ``k``, nobody else will add a window ``k`` and the batch goes at
once. ``max_delay_ns`` bounds the wait for a straggler, and ``max_batch`` the size.

With staggered rigs (``[window] stagger``) the windows of one index come spread over the
hop, so waiting for its last one would hold every window up to ``max_delay_ns`` for
nothing: such a batcher is ``greedy``, and whatever waits goes as soon as it is asked.
A busy model still gets batches: what arrived while it ran goes at once, together.

A rig is live while its progress is within ``live_for`` grid steps of the most advanced
rig's; one that went quiet, or never started, holds nobody up.
"""

from __future__ import annotations

from collections import deque

from fusiond.align.windows import Window

__all__ = ["Batcher"]


class Batcher:
    """Releases a batch when its grid index is complete, ``max_batch`` windows wait, or the
    oldest waited ``max_delay_ns``."""

    def __init__(self, max_batch: int, max_delay_ns: int, live_for: int = 4, *, greedy: bool = False) -> None:
        if max_batch < 1 or max_delay_ns < 0:
            msg = "max_batch must be positive and max_delay_ns not negative"
            raise ValueError(msg)
        self.max_batch = max_batch
        self.max_delay_ns = max_delay_ns
        self.live_for = live_for
        self.greedy = greedy
        self._waiting: deque[tuple[int, Window]] = deque()
        self._closed: dict[str, int] = {}  # rig -> every grid index below this one is closed

    def __len__(self) -> int:
        return len(self._waiting)

    def add(self, window: Window, now_ns: int) -> None:
        """Queue a closed window (it also marks its rig's progress)."""
        self._waiting.append((now_ns, window))
        self.progress(window.rig, window.index + 1)

    def progress(self, rig: str, closed_before: int) -> None:
        """``rig`` closed every window below grid index ``closed_before`` (empty ones too)."""
        if closed_before > self._closed.get(rig, -(2**62)):
            self._closed[rig] = closed_before

    def complete(self, index: int) -> bool:
        """Whether every live rig has closed grid index ``index``."""
        if not self._closed:
            return False
        front = max(self._closed.values())
        return all(c > index for c in self._closed.values() if c >= front - self.live_for)

    def deadline_ns(self) -> int | None:
        """When the oldest waiting window must go, or None when nothing waits."""
        return self._waiting[0][0] + self.max_delay_ns if self._waiting else None

    def take(self, now_ns: int, *, flush: bool = False) -> list[Window]:
        """The next batch, if one is due (else an empty list); ``flush`` takes what waits."""
        if not self._waiting:
            return []
        since, oldest = self._waiting[0]
        due = (
            flush
            or self.greedy
            or len(self._waiting) >= self.max_batch
            or now_ns >= since + self.max_delay_ns
            or self.complete(oldest.index)
        )
        if not due:
            return []
        count = min(self.max_batch, len(self._waiting))
        return [self._waiting.popleft()[1] for _ in range(count)]
