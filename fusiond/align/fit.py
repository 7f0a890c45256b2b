"""Fit the samples of one stream inside a window to a modality's input spec."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import NamedTuple

import cv2
import numpy as np

from fusiond.align.spec import ModalitySpec


class Block(NamedTuple):
    """Samples ``data[i]`` captured at ``t_ns + i * period_ns`` (daemon clock)."""

    t_ns: int
    end_ns: int
    period_ns: float
    data: np.ndarray
    t_recv_ns: int


def coverage(blocks: Sequence[Block], start_ns: int, end_ns: int) -> float:
    """Fraction of ``[start_ns, end_ns)`` the blocks cover (1.0 for any irregular sample)."""
    covered = 0
    for block in blocks:
        if block.period_ns <= 0:
            if start_ns <= block.t_ns < end_ns:
                return 1.0
            continue
        covered += max(0, min(block.end_ns, end_ns) - max(block.t_ns, start_ns))
    return min(1.0, covered / (end_ns - start_ns))


def fit(spec: ModalitySpec, blocks: Sequence[Block], start_ns: int, end_ns: int) -> np.ndarray:
    """One window's array of ``spec.shape`` from the blocks overlapping the window."""
    if spec.kind == "frames":
        return _fit_frames(spec, blocks, start_ns, end_ns)
    return _fit_series(spec, blocks, start_ns, end_ns)


def _sample_times(blocks: Sequence[Block], origin_ns: int) -> np.ndarray:
    """Capture time of every sample of the blocks, relative to ``origin_ns`` (float64 ns)."""
    if _contiguous(blocks):  # the usual stream: one clock, no gaps, in order
        total = sum(len(b.data) for b in blocks)
        first: np.ndarray = np.arange(total, dtype=np.float64) * blocks[0].period_ns
        return first + (blocks[0].t_ns - origin_ns)
    lengths = np.fromiter((len(b.data) for b in blocks), np.int64, len(blocks))
    starts = np.fromiter((b.t_ns - origin_ns for b in blocks), np.float64, len(blocks))
    periods = np.fromiter((b.period_ns for b in blocks), np.float64, len(blocks))
    first = np.cumsum(lengths) - lengths
    index = np.arange(lengths.sum()) - np.repeat(first, lengths)
    times: np.ndarray = np.repeat(starts, lengths) + index * np.repeat(periods, lengths)
    return times


def _contiguous(blocks: Sequence[Block]) -> bool:
    """Whether the blocks share one period and each starts where the one before ends
    (within a tenth of a sample), so their sample times are one evenly spaced, sorted run."""
    period = blocks[0].period_ns
    if period <= 0:
        return False
    for before, after in zip(blocks, blocks[1:], strict=False):
        gap = after.t_ns - before.t_ns - len(before.data) * period
        if after.period_ns != period or abs(gap) > period / 10:
            return False
    return True


def _fit_series(spec: ModalitySpec, blocks: Sequence[Block], start_ns: int, end_ns: int) -> np.ndarray:
    times = _sample_times(blocks, start_ns)
    values = np.concatenate([b.data.reshape(len(b.data), -1) for b in blocks])
    integer = np.issubdtype(values.dtype, np.integer)
    scale = 1.0 / np.iinfo(values.dtype).max if integer else 1.0
    if len(times) > 1 and not (times[1:] >= times[:-1]).all():  # out of order: sort (stable)
        order = np.argsort(times, kind="stable")
        times, values = times[order], values[order]
    step = (end_ns - start_ns) / spec.length
    targets = np.arange(spec.length) * step
    periods = [b.period_ns for b in blocks if b.period_ns > 0]
    # Rounded, so streams whose periods differ in the last digits share one cached filter.
    taps = anti_alias(round(step / min(periods), 2)) if periods else None
    out = np.zeros(spec.shape, np.float32)
    for c in range(min(spec.channels, values.shape[1])):
        column = values[:, c] if taps is None else _low_pass(values[:, c], taps)
        out[:, c] = np.interp(targets, times, column) * scale
    return out


@lru_cache(maxsize=64)
def anti_alias(ratio: float) -> np.ndarray | None:
    """Low-pass taps for taking every ``ratio``-th sample, or None when not decimating.

    A Blackman-windowed sinc with its cutoff at the new Nyquist frequency, 16 new sample
    periods long, normalised to unit gain at DC. Without it, a 16 kHz microphone read by an
    8 kHz model folds everything between 4 and 8 kHz onto the band the model hears.
    """
    if ratio < 1.05:
        return None
    half = int(np.ceil(8 * ratio))
    n = np.arange(-half, half + 1)
    taps = np.sinc(n / ratio) * np.blackman(2 * half + 1)
    taps /= taps.sum()
    taps.flags.writeable = False
    return taps


def _low_pass(column: np.ndarray, taps: np.ndarray) -> np.ndarray:
    half = len(taps) // 2
    if len(column) <= half:
        return column.astype(np.float64)
    # Odd reflection continues the signal's slope past both ends, so the edges of a window
    # are neither pulled towards zero nor bent (a straight line comes through unchanged).
    padded = np.pad(column.astype(np.float64), half, mode="reflect", reflect_type="odd")
    filtered: np.ndarray = np.convolve(padded, taps, mode="valid")
    return filtered


def _fit_frames(spec: ModalitySpec, blocks: Sequence[Block], start_ns: int, end_ns: int) -> np.ndarray:
    starts = _sample_times(blocks, start_ns)
    owners = [(b, i) for b in blocks for i in range(len(b.data))]
    order = np.argsort(starts, kind="stable")
    starts = starts[order]
    step = (end_ns - start_ns) / spec.length
    targets = (np.arange(spec.length) + 0.5) * step
    # Sample-and-hold: the newest frame captured at or before each target time.
    picks = np.clip(np.searchsorted(starts, targets, side="right") - 1, 0, len(starts) - 1)
    out = np.empty(spec.shape, np.uint8)
    for j, pick in enumerate(picks):
        block, i = owners[order[pick]]
        out[j] = _to_spec(block.data[i], spec)
    return out


def _to_spec(frame: np.ndarray, spec: ModalitySpec) -> np.ndarray:
    image = frame if frame.ndim == 3 else frame[:, :, None]
    if image.shape[2] == 3 and spec.channels == 1:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)[:, :, None]
    elif image.shape[2] == 1 and spec.channels == 3:
        image = np.repeat(image, 3, axis=2)
    if image.shape[:2] != (spec.height, spec.width):
        image = cv2.resize(image, (spec.width, spec.height), interpolation=cv2.INTER_AREA)
    return image.reshape(spec.height, spec.width, spec.channels)
