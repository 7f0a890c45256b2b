"""Giving freed memory back to the system.

glibc's allocator keeps what a process frees for its own reuse, so after a burst (a flood
of large messages queued in libzmq, a run of frames decoded at full size) the resident
size stays at its peak although the memory is free. ``malloc_trim(0)`` hands the free
pages of every arena back. It walks the heap, so each process calls it at most once every
:data:`TRIM_EVERY_NS`, from its periodic step, never per message. Elsewhere than glibc
it is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

__all__ = ["MemoryReturn", "TRIM_EVERY_NS"]

TRIM_EVERY_NS = 10_000_000_000


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


class MemoryReturn:
    """``tick(now_ns)`` from a periodic step: returns free memory at most every ``every_ns``."""

    def __init__(self, every_ns: int = TRIM_EVERY_NS) -> None:
        self.every_ns = every_ns
        self._trim = _malloc_trim()
        self._next = 0

    def tick(self, now_ns: int) -> bool:
        """True when it trimmed now."""
        if self._trim is None or now_ns < self._next:
            return False
        self._next = now_ns + self.every_ns
        self._trim(0)
        return True
