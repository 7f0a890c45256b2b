"""Play a whole recorded array on the rig's media timeline, a block at a time."""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np

from fusiond.sources.base import Block, SourceContext
from fusiond.sources.timeline import play_time, start_position

__all__ = ["play"]


def play(
    samples: np.ndarray, rate_hz: float, block: int, loop: bool, context: SourceContext
) -> Iterator[Block]:
    """Blocks of ``samples`` (first axis time), each released once its last sample has played.

    Starts where the timeline is now (so a late or restarted source stays in step) and
    stops at the end of the data (``loop=False``) or when the source is asked to stop.
    """
    total = len(samples)
    period_ns = 1e9 / rate_hz
    duration_ns = round(total * period_ns)
    start = start_position(context.anchor_ns, time.time_ns(), duration_ns, loop) if total else None
    if start is None:
        return
    loop_index, offset_ns = start
    index = int(offset_ns // period_ns) // block * block
    while True:
        if index >= total:
            if not loop:
                return
            loop_index, index = loop_index + 1, 0
        chunk = samples[index : index + block]
        t_ns = play_time(context.anchor_ns, loop_index, duration_ns, round(index * period_ns))
        if not context.sleep_until(t_ns + round(len(chunk) * period_ns)):
            return
        yield Block(chunk, t_ns)
        index += block
