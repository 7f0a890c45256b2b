"""Per-rig windows on event time, with watermarks, allowed lateness and masks.

Window ``k`` of a rig covers ``[k * hop + offset, k * hop + offset + length)`` on the
daemon clock, so a replay cuts the same windows as the live run. The offset is 0 unless
``stagger`` is set, when each rig's grid is shifted by a phase in ``[0, hop)`` fixed by its
name (:meth:`WindowConfig.offset_ns`): many rigs then close their windows spread over the
hop, not all at the same instant, and the work of a close (fit, model, publish) comes in a
stream rather than a burst that the last rig in it waits out.

A window closes, in this order of preference:

* ``complete``: every stream's watermark (the end of its newest sample) passed its end;
* ``lateness``: some stream is ``lateness`` past its end, so waiting longer for the
  others would stall the rig; the laggards are masked;
* ``timeout``: the processing clock ``now_ns`` is ``lateness`` past its end, for a rig
  whose streams all went quiet (the only rule that reads ``now_ns``).

Each stream must arrive in its own capture order (one ZeroMQ connection keeps the order
of its messages); streams may interleave in any order. A block that arrives after its
stream's watermark passed a closed window is used for the windows still open, or dropped
as ``late`` when it belongs only to closed ones.

A modality whose samples cover less than ``min_coverage`` of the window is masked. A
window with no modality present is dropped and counted as ``window_empty``; a sample
that only covers windows already closed is dropped and counted as ``late``.
"""

from __future__ import annotations

import bisect
import logging
import sys
import zlib
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from fusiond.align.fit import Span, Undecodable, coverage, fit_window
from fusiond.align.spec import ModalitySpec

__all__ = ["RigAligner", "Window", "WindowConfig"]

_NEVER = -(2**62)
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WindowConfig:
    """Timing of a rig's windows, all in nanoseconds."""

    length_ns: int
    hop_ns: int
    lateness_ns: int
    min_coverage: float = 0.5
    max_blocks: int = 4096
    max_bytes: int = 256 * 2**20
    """Bytes of samples buffered per stream; the oldest go first (``buffer_full``)."""
    stagger: bool = False
    """Shift each rig's grid by its own phase (:meth:`offset_ns`)."""

    def __post_init__(self) -> None:
        if self.length_ns <= 0 or self.hop_ns <= 0 or self.lateness_ns < 0:
            msg = "window length and hop must be positive, lateness not negative"
            raise ValueError(msg)
        if not 0.0 < self.min_coverage <= 1.0:
            msg = "min_coverage must lie in (0, 1]"
            raise ValueError(msg)

    def offset_ns(self, rig: str) -> int:
        """Where ``rig``'s grid starts within the hop: 0, or with ``stagger`` one of 1,000
        phases picked by the CRC-32 of its name, the same in every process and every run
        (Python's ``hash`` of a string is not)."""
        if not self.stagger:
            return 0
        return zlib.crc32(rig.encode()) % 1000 * self.hop_ns // 1000


@dataclass(slots=True)
class Window:
    """One closed window, its inputs fitted to the model's spec."""

    rig: str
    index: int
    start_ns: int
    end_ns: int
    inputs: dict[str, np.ndarray]
    present: dict[str, bool]
    closed_by: str
    t_close_ns: int
    capture_to_ingest_ns: int
    hop_ns: int = 0
    """The grid's step: ``start_ns == index * hop_ns + offset_ns``."""
    offset_ns: int = 0
    """Where the rig's grid starts within the hop (:meth:`WindowConfig.offset_ns`)."""

    @property
    def missing(self) -> list[str]:
        """Modalities masked in this window."""
        return [m for m, ok in self.present.items() if not ok]


@dataclass(slots=True)
class _Stream:
    modality: str
    blocks: list[Span] = field(default_factory=list)
    watermark_ns: int = _NEVER
    ingest_latency_ns: int = 0
    nbytes: int = 0
    ahead: tuple[int, np.ndarray | None] | None = None
    """This stream's part of the next window, fitted once the stream had passed its end:
    ``(index, array)``, the array None when the stream covers too little of it."""


class RigAligner:
    """Turns one rig's sample blocks into closed windows."""

    def __init__(
        self,
        rig: str,
        streams: Mapping[str, str],
        specs: Mapping[str, ModalitySpec],
        config: WindowConfig,
        drops: Counter[str] | None = None,
        *,
        fit_ahead: bool = True,
    ) -> None:
        """``streams`` maps stream name to modality; ``specs`` maps modality to its spec.
        ``fit_ahead``: fit each stream's part of a window as soon as the stream has passed
        its end (:meth:`_fit_ahead`); False fits every part at the close, for the same
        windows (to compare). ``stats`` counts the parts each way (``fitted:ahead``,
        ``fitted:close``)."""
        unknown = sorted(set(streams.values()) - set(specs))
        if unknown:
            msg = f"rig {rig}: the model has no input for modalities {unknown}"
            raise ValueError(msg)
        self.rig = rig
        self.config = config
        self.specs = dict(specs)
        self.drops: Counter[str] = drops if drops is not None else Counter()
        self.stats: Counter[str] = Counter()
        self._streams = {name: _Stream(modality) for name, modality in streams.items()}
        self._states = list(self._streams.values())
        self._zeros = {m: spec.zeros() for m, spec in specs.items()}
        self._next: int | None = None
        self._logged: set[str] = set()
        self.fit_ahead = fit_ahead
        self.offset_ns = config.offset_ns(rig)

    def start_ns(self, index: int) -> int:
        """Where window ``index`` of this rig starts."""
        return index * self.config.hop_ns + self.offset_ns

    @property
    def next_index(self) -> int | None:
        """Grid index of the next window to close (None before the first sample): every
        window below it is closed."""
        return self._next

    @property
    def next_start_ns(self) -> int | None:
        """Start of the next window to close (None before the first sample)."""
        return None if self._next is None else self.start_ns(self._next)

    def add(self, stream: str, t_ns: int, rate_hz: float, data: np.ndarray, t_recv_ns: int) -> str | None:
        """Buffer a block of samples; returns the drop reason (also counted) if it is dropped."""
        state = self._streams.get(stream)
        if state is None:
            self.drops["unknown_stream"] += 1
            return "unknown_stream"
        period = 1e9 / rate_hz if rate_hz > 0 else 0.0
        end = t_ns + round(len(data) * period) if period else t_ns + 1
        if self._next is None:
            # The window holding the first sample; coverage decides whether it is usable.
            # (Never below 0: a window may not start before the epoch, as a staggered
            # grid's window -1 would for a clock that reads within a hop of it.)
            self._next = max(0, (t_ns - self.offset_ns) // self.config.hop_ns)
        elif end <= self.start_ns(self._next):
            self.drops["late"] += 1
            return "late"
        cost = _cost(data)
        blocks = state.blocks
        if blocks and (len(blocks) >= self.config.max_blocks or state.nbytes + cost > self.config.max_bytes):
            self._make_room(state, cost)
        state.nbytes += cost
        if state.ahead is not None and t_ns < self.start_ns(state.ahead[0]) + self.config.length_ns:
            state.ahead = None  # a block inside the window fitted ahead: fit it again at the close
        block = Span(t_ns, end, period, data, t_recv_ns)
        if not blocks or blocks[-1].t_ns <= t_ns:
            blocks.append(block)
        else:
            bisect.insort(blocks, block, key=_start)
        if end > state.watermark_ns:
            state.watermark_ns = end
        state.ingest_latency_ns = t_recv_ns - (end - round(period))
        return None

    def _make_room(self, state: _Stream, incoming: int) -> None:
        """Drop the oldest quarter of a full buffer at once (one list shift, not one per block)."""
        c = self.config
        cut = max(1, len(state.blocks) // 4)
        while (
            cut < len(state.blocks)
            and state.nbytes - sum(_cost(b.data) for b in state.blocks[:cut]) + incoming > c.max_bytes
        ):
            cut = min(len(state.blocks), cut * 2)
        state.nbytes -= sum(_cost(b.data) for b in state.blocks[:cut])
        del state.blocks[:cut]
        state.ahead = None
        self.drops["buffer_full"] += cut

    def poll(self, now_ns: int) -> list[Window]:
        """Close every window that is due at processing time ``now_ns``."""
        closed: list[Window] = []
        if self._next is None:
            return closed
        # The common case, nothing due, said without building the watermarks: before its
        # lateness has passed, a window closes only once every stream has reached its end.
        # Meanwhile the streams that have reached it are fitted for it ahead of its close.
        end = self.start_ns(self._next) + self.config.length_ns
        if now_ns < end + self.config.lateness_ns:
            for state in self._states:
                if state.watermark_ns < end:
                    if self.fit_ahead:
                        self._fit_ahead(self._next, end - self.config.length_ns, end)
                    return closed
        while self._next is not None:
            start = self.start_ns(self._next)
            end = start + self.config.length_ns
            reason = self._due(end, now_ns)
            if reason is None:
                break
            if reason == "timeout" and not any(s.blocks for s in self._streams.values()):
                self._skip_quiet(now_ns)
                continue
            window = self._close(self._next, start, end, reason, now_ns)
            self._next += 1
            self._evict(self.start_ns(self._next))
            if window is None:
                self.drops["window_empty"] += 1
            else:
                closed.append(window)
        return closed

    def _skip_quiet(self, now_ns: int) -> None:
        """Count every window due by ``now_ns`` as empty in one step: nothing is buffered,
        so a rig back after an hour's silence does not close 7,200 windows one by one."""
        c = self.config
        assert self._next is not None
        last_due = (now_ns - c.lateness_ns - c.length_ns - self.offset_ns) // c.hop_ns
        self.drops["window_empty"] += last_due - self._next + 1
        self._next = last_due + 1

    def _due(self, end: int, now_ns: int) -> str | None:
        marks = [s.watermark_ns for s in self._states]
        if min(marks) >= end:
            return "complete"
        # A stream's watermark counts for the others only up to the processing clock: one
        # whose clock runs ahead must not close windows the others are still filling.
        if min(max(marks), now_ns) >= end + self.config.lateness_ns:
            return "lateness"
        if now_ns >= end + self.config.lateness_ns:
            return "timeout"
        return None

    def _fit_ahead(self, index: int, start: int, end: int) -> None:
        """Fit the streams that have passed window ``index``'s end, and not yet for it.

        A stream's blocks for a window it has passed change only if a block comes out of
        order into it, or a full buffer drops some (each clears what was fitted), so the
        close takes the same array it would have fitted itself: the work is spread over
        the hop, as each stream completes, and the close does only what waited for it."""
        for state in self._states:
            if state.watermark_ns >= end and (state.ahead is None or state.ahead[0] != index):
                try:
                    state.ahead = (index, self._part(state, start, end))
                except Exception:  # the close fits it again, and counts what fails
                    state.ahead = None

    def _part(self, state: _Stream, start: int, end: int) -> np.ndarray | None:
        """One stream's part of the window ``[start, end)``, or None when its blocks cover
        less than ``min_coverage`` of it."""
        # Sorted by start: those that start before the end, less any that ended before the
        # start (eviction left none but a straggler that came out of order).
        before_end = state.blocks[: bisect.bisect_left(state.blocks, end, key=_start)]
        blocks = [b for b in before_end if b.end_ns > start]
        if not blocks or coverage(blocks, start, end) < self.config.min_coverage:
            return None
        try:
            return fit_window(self.specs[state.modality], blocks, start, end)
        except Undecodable:  # every frame it picked was corrupt (each counted as decode_error)
            return None

    def _close(self, index: int, start: int, end: int, reason: str, now_ns: int) -> Window | None:
        inputs: dict[str, np.ndarray] = dict(self._zeros)
        present = dict.fromkeys(self.specs, False)
        latency = 0
        for state in self._states:
            ahead, state.ahead = state.ahead, None
            try:
                if ahead is not None and ahead[0] == index:
                    part = ahead[1]
                    self.stats["fitted:ahead"] += 1
                else:
                    part = self._part(state, start, end)
                    self.stats["fitted:close"] += 1
            except Exception:  # a bug in a fit must mask one modality, never stall the rig
                self.drops["internal_error"] += 1
                self._log_once(f"fit:{state.modality}", f"rig {self.rig}: fitting {state.modality} failed")
                continue
            if part is None:
                continue
            inputs[state.modality] = part
            present[state.modality] = True
            latency = max(latency, state.ingest_latency_ns)
        if not any(present.values()):
            return None
        for modality, ok in present.items():
            if not ok:
                self.stats[f"masked:{modality}"] += 1
        self.stats[f"closed:{reason}"] += 1
        hop, offset = self.config.hop_ns, self.offset_ns
        return Window(self.rig, index, start, end, inputs, present, reason, now_ns, latency, hop, offset)

    def _evict(self, before_ns: int) -> None:
        for state in self._streams.values():
            keep = 0
            while keep < len(state.blocks) and state.blocks[keep].end_ns <= before_ns:
                state.nbytes -= _cost(state.blocks[keep].data)
                keep += 1
            if keep:
                del state.blocks[:keep]

    def _log_once(self, key: str, message: str) -> None:
        # With its traceback, once per key: the counter says how often it happened since.
        if key not in self._logged:
            self._logged.add(key)
            log.exception("%s (counted as drops.internal_error; further ones only counted)", message)


def _start(block: Span) -> int:
    return block.t_ns


def _cost(data: np.ndarray) -> int:
    """Bytes a block holds: its buffer's, or for objects (text events) the objects' own."""
    if data.dtype != object:
        return data.nbytes
    return data.nbytes + sum(sys.getsizeof(x) for x in data.flat)
