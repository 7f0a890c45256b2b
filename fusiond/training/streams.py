"""Cut windows out of whole recorded streams with the daemon's own aligner.

Used to train and evaluate on exactly the windows the daemon would cut live: the blocks
are fed in capture order and the processing clock is the newest capture time, so the
result does not depend on the wall clock.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from fusiond.align.spec import ModalitySpec
from fusiond.align.windows import RigAligner, Window, WindowConfig

__all__ = ["cut_windows", "RecordedStream"]


@dataclass(frozen=True, slots=True)
class RecordedStream:
    """A whole stream: ``data[i]`` captured at ``t0_ns + i / rate_hz``, sent ``block`` at a time."""

    modality: str
    t0_ns: int
    rate_hz: float
    data: np.ndarray
    block: int = 1


def _blocks(name: str, stream: RecordedStream) -> Iterator[tuple[int, str, np.ndarray]]:
    for i in range(0, len(stream.data), stream.block):
        t_ns = stream.t0_ns + round(i * 1e9 / stream.rate_hz)
        yield t_ns, name, stream.data[i : i + stream.block]


def cut_windows(
    rig: str,
    streams: Mapping[str, RecordedStream],
    specs: Mapping[str, ModalitySpec],
    config: WindowConfig,
) -> Iterator[Window]:
    """Every window the aligner closes over the streams, in order."""
    aligner = RigAligner(rig, {n: s.modality for n, s in streams.items()}, specs, config)
    rates = {n: s.rate_hz for n, s in streams.items()}
    merged = heapq.merge(*(_blocks(n, s) for n, s in streams.items()), key=lambda b: b[0])
    now = 0
    for t_ns, name, data in merged:
        end = t_ns + round(len(data) * 1e9 / rates[name])
        now = max(now, end)
        aligner.add(name, t_ns, rates[name], data, t_recv_ns=end)
        yield from aligner.poll(now)
    yield from aligner.poll(now + config.length_ns + config.lateness_ns)
