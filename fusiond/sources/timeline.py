"""Map a media file's position onto the realtime clock (pure code).

File sources of one rig share an anchor: position ``p`` of every file plays at
``anchor + loop * duration + p``. Sources that start (or restart) late seek to where the
timeline is now, so the rig's files stay in step.
"""

from __future__ import annotations

__all__ = ["play_time", "start_position"]


def start_position(anchor_ns: int, now_ns: int, duration_ns: int, loop: bool) -> tuple[int, int] | None:
    """``(loop_index, offset_ns)`` to start playing from at ``now_ns``; None when over."""
    elapsed = now_ns - anchor_ns
    if elapsed <= 0:
        return 0, 0
    if loop:
        return elapsed // duration_ns, elapsed % duration_ns
    if elapsed >= duration_ns:
        return None
    return 0, elapsed


def play_time(anchor_ns: int, loop_index: int, duration_ns: int, offset_ns: int) -> int:
    """Realtime ns at which a media offset plays."""
    return anchor_ns + loop_index * duration_ns + offset_ns
