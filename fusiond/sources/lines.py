"""Parse lines of numbers (CSV or key=value) from serial sensors, files, FIFOs and pipes.

Pure code. A line that does not parse is garbage: counted by the caller, never fatal.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import Field

from fusiond.sources.base import Block, SourceConfig

UNITS = {"s": 1e9, "ms": 1e6, "us": 1e3, "ns": 1.0}


@dataclass(frozen=True)
class LineFormat:
    """How to read one line.

    ``csv``: ``columns`` names every comma-separated field in order; ``keyvalue``: fields
    are ``key=value`` separated by commas or spaces, in any order. ``values`` are the
    fields published (in that order); ``time_column`` is the sensor's own timestamp
    field, in ``time_unit``; ``scale`` multiplies named fields.
    """

    format: Literal["csv", "keyvalue"]
    values: tuple[str, ...]
    columns: tuple[str, ...] = ()
    time_column: str | None = None
    time_unit: str = "s"
    scale: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        if self.format == "csv":
            missing = [v for v in (*self.values, *([self.time_column] if self.time_column else []))
                       if v not in self.columns]  # fmt: skip
            if missing:
                msg = f"fields {missing} are not among the CSV columns {list(self.columns)}"
                raise ValueError(msg)
        if self.time_unit not in UNITS:
            msg = f"time_unit must be one of {sorted(UNITS)}"
            raise ValueError(msg)

    def parse(self, line: str) -> tuple[np.ndarray, int | None]:
        """``(values as float32, sensor time in ns or None)``; ValueError for garbage."""
        fields = self._fields(line.strip())
        try:
            values = np.array([float(fields[name]) for name in self.values], np.float32)
            stamp = fields[self.time_column] if self.time_column else None
            sensor_ns = None if stamp is None else round(float(stamp) * UNITS[self.time_unit])
        except KeyError as exc:
            msg = f"field {exc} missing"
            raise ValueError(msg) from None
        if not np.isfinite(values).all():
            msg = "non-finite value"
            raise ValueError(msg)
        for name, factor in self.scale:
            values[self.values.index(name)] *= factor
        return values, sensor_ns

    def _fields(self, line: str) -> dict[str, str]:
        if not line:
            msg = "empty line"
            raise ValueError(msg)
        if self.format == "csv":
            parts = [p.strip() for p in line.split(",")]
            if len(parts) != len(self.columns):
                msg = f"{len(parts)} fields, expected {len(self.columns)}"
                raise ValueError(msg)
            return dict(zip(self.columns, parts, strict=True))
        pairs = [p.split("=", 1) for p in line.replace(",", " ").split()]
        if any(len(p) != 2 for p in pairs):
            msg = "not key=value"
            raise ValueError(msg)
        return {k.strip(): v.strip() for k, v in pairs}


class SensorClock:
    """Maps a sensor's own timestamps onto realtime: the smallest ``host - sensor`` seen.

    Like :class:`fusiond.clock.OffsetEstimator`, the minimum over recent lines is the
    offset plus the smallest transfer delay, so jittery reads do not jitter the times.
    """

    def __init__(self) -> None:
        self.offset_ns: int | None = None

    def to_realtime(self, sensor_ns: int, host_ns: int) -> int:
        """The sensor time on the realtime clock."""
        delay = host_ns - sensor_ns
        off = self.offset_ns
        # The first line, a faster read, or a sensor clock that jumped (a sensor reset).
        if off is None or delay < off or abs(sensor_ns + off - host_ns) > 1_000_000_000:
            self.offset_ns = off = delay
        return sensor_ns + off


class LineOptions(SourceConfig):
    """Options shared by the kinds that read lines of numbers."""

    format: Literal["csv", "keyvalue"] = "csv"
    columns: list[str] = []
    """``csv``: the name of every field, in order."""
    values: list[str]
    """The fields to publish, in order (one channel each)."""
    time_column: str | None = None
    """The sensor's own timestamp field; without it, lines are stamped when read."""
    time_unit: Literal["s", "ms", "us", "ns"] = "s"
    scale: dict[str, float] = {}
    rate_hz: float = Field(gt=0)
    """The rate the sensor sends at; checked against what arrives."""
    block: int = Field(1, ge=1)
    """Samples per message."""

    def line_format(self) -> LineFormat:
        """The parser for these options (raises ValueError if they contradict)."""
        return LineFormat(self.format, tuple(self.values), tuple(self.columns), self.time_column,
                          self.time_unit, tuple(self.scale.items()))  # fmt: skip


def line_problems(options: LineOptions) -> list[str]:
    """What contradicts in ``options`` (for ``check``), one line each."""
    try:
        options.line_format()
    except ValueError as exc:
        return [f"columns: {exc}"]
    return []


class LineReader:
    """Turns raw lines into blocks: parse, stamp, count garbage, check the rate."""

    def __init__(self, options: LineOptions, name: str, log: logging.Logger) -> None:
        self.options = options
        self.format = options.line_format()
        self.name = name
        self.log = log
        self.clock = SensorClock()
        self.garbage = 0
        self._pending: list[np.ndarray] = []
        self._pending_t: int | None = None
        self._window_start = time.monotonic()
        self._window_count = 0
        self._logged_garbage = 0

    def feed(self, raw: bytes, host_ns: int) -> Block | None:
        """One line in; a block out when ``block`` samples are ready."""
        try:
            values, sensor_ns = self.format.parse(raw.decode("ascii", errors="strict"))
        except (ValueError, UnicodeDecodeError) as exc:
            self._garbage(raw, str(exc))
            return None
        t_ns = host_ns if sensor_ns is None else self.clock.to_realtime(sensor_ns, host_ns)
        self._check_rate()
        if self._pending_t is None:
            self._pending_t = t_ns
        self._pending.append(values)
        if len(self._pending) < self.options.block:
            return None
        block = Block(np.stack(self._pending), self._pending_t)
        self._pending, self._pending_t = [], None
        return block

    def _garbage(self, raw: bytes, why: str) -> None:
        self.garbage += 1
        if self.garbage == 1 or self.garbage >= 2 * self._logged_garbage:
            self._logged_garbage = self.garbage
            self.log.warning("%s: %d garbage line(s) so far, last %r (%s)", self.name, self.garbage,
                             raw[:60], why)  # fmt: skip

    def _check_rate(self) -> None:
        self._window_count += 1
        elapsed = time.monotonic() - self._window_start
        if elapsed < 5.0:
            return
        rate = self._window_count / elapsed
        expected = self.options.rate_hz
        if abs(rate - expected) > 0.2 * expected:
            self.log.warning("%s: %.1f lines/s arrive, rate_hz says %.1f", self.name, rate, expected)
        self._window_start, self._window_count = time.monotonic(), 0
