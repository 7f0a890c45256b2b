"""Parse lines of numbers (CSV, key=value or JSON) from serial sensors, files, FIFOs,
pipes and message brokers.

Pure code. A line that does not parse is garbage: counted by the caller, never fatal.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from fusiond.clock import ClockModel
from fusiond.sources.base import Block, SourceConfig

__all__ = [
    "line_problems",
    "LineClock",
    "LineFormat",
    "LineOptions",
    "LineReader",
    "RATE_TOLERANCE",
    "UNITS",
]

UNITS = {"s": 1e9, "ms": 1e6, "us": 1e3, "ns": 1.0}
MAX_JSON_BYTES = 65536
"""A JSON message longer than this is garbage, unread."""
_STEP = re.compile(r"([^.\[\]]+)|\[(\d+)\]")
RATE_TOLERANCE = 0.05
"""Lines arriving this much faster or slower than ``rate_hz`` are worth a warning."""


@dataclass(frozen=True)
class LineFormat:
    """How to read one line.

    ``csv``: ``columns`` names every comma-separated field in order; ``keyvalue``: fields
    are ``key=value`` separated by commas or spaces, in any order; ``json``: one JSON
    object, fields named by paths into it (``accel.z``, ``readings[2].value``). ``values``
    are the fields published (in that order); ``time_column`` is the sensor's own
    timestamp field, in ``time_unit``; ``scale`` multiplies named fields.
    """

    format: Literal["csv", "keyvalue", "json"]
    values: tuple[str, ...]
    columns: tuple[str, ...] = ()
    time_column: str | None = None
    time_unit: str = "s"
    scale: tuple[tuple[str, float], ...] = ()
    _paths: dict[str, tuple[str | int, ...]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.format == "json":
            for name in (*self.values, *([self.time_column] if self.time_column else [])):
                self._paths[name] = _json_path(name)
        if self.format == "csv":
            missing = [
                v
                for v in (*self.values, *([self.time_column] if self.time_column else []))
                if v not in self.columns
            ]
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

    def _fields(self, line: str) -> dict[str, Any]:
        if not line:
            msg = "empty line"
            raise ValueError(msg)
        if self.format == "json":
            return self._json_fields(line)
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

    def _json_fields(self, line: str) -> dict[str, Any]:
        if len(line) > MAX_JSON_BYTES:
            msg = f"a JSON message over {MAX_JSON_BYTES} bytes"
            raise ValueError(msg)
        try:
            doc = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as exc:
            msg = f"not JSON: {str(exc)[:80]}"
            raise ValueError(msg) from None
        out = {}
        for name, path in self._paths.items():
            node = doc
            for step in path:
                node = _step(node, step)
                if node is _MISSING:
                    msg = f"no {name!r} in the message"
                    raise ValueError(msg)
            if isinstance(node, bool) or not isinstance(node, int | float | str):
                msg = f"{name!r} is not a number"
                raise ValueError(msg)
            out[name] = node
        return out


_MISSING = object()


def _step(node: Any, step: str | int) -> Any:
    """``node[step]`` for an object's key or an array's index; :data:`_MISSING` otherwise."""
    if isinstance(step, int):
        return node[step] if isinstance(node, list) and step < len(node) else _MISSING
    return node[step] if isinstance(node, dict) and step in node else _MISSING


def _json_path(name: str) -> tuple[str | int, ...]:
    """``a.b[2].c`` as its steps; ValueError for one that is not a path."""
    steps: list[str | int] = []
    at = 0
    for match in _STEP.finditer(name):
        if match.start() != at + (1 if steps and name[at : at + 1] == "." else 0):
            break
        key, index = match.groups()
        steps.append(int(index) if index is not None else key)
        at = match.end()
    if not steps or at != len(name):
        msg = f"{name!r} is not a JSON path (fields by name and [index], e.g. accel.z or data[0].v)"
        raise ValueError(msg)
    return tuple(steps)


class LineClock:
    """Stamps for lines: from the sensor's own clock, or on the declared rate's grid.

    With a time column, the sensor's stamps are mapped onto the host's realtime clock by a
    :class:`fusiond.clock.ClockModel` over ``(sensor time, read time)``: its offset and its
    drift, so a sensor clock a few percent off still lands within a millisecond, and one
    stamp that jumps is an outlier that moves nothing (that line is stamped when read).
    Without one, line ``n`` is stamped ``n / rate_hz`` on a line fitted under the read
    times (dejitter): a burst of lines read at once gets stamps one period apart, and a
    pause in the sensor re-anchors the grid at once.
    """

    def __init__(self, rate_hz: float, sensor_clock: bool) -> None:
        self.sensor_clock = sensor_clock
        self.period_ns = 1e9 / rate_hz
        self.model = ClockModel() if sensor_clock else ClockModel(follow_rises=True)
        self.lines = 0
        self._last = 0

    def stamp(self, sensor_ns: int | None, host_ns: int) -> int:
        """The realtime stamp of one line read at ``host_ns``; never before the last one's."""
        self.lines += 1
        x = sensor_ns if sensor_ns is not None else round((self.lines - 1) * self.period_ns)
        offset = self.model.update(x, host_ns)
        stamp = host_ns if offset is None else x + offset
        self._last = stamp = max(stamp, self._last + 1)
        return stamp


class LineOptions(SourceConfig):
    """Options shared by the kinds that read lines of numbers."""

    format: Literal["csv", "keyvalue", "json"] = "csv"
    columns: list[str] = []
    """``csv``: the name of every field, in order."""
    values: list[str]
    """The fields to publish, in order (one channel each)."""
    time_column: str | None = None
    """The sensor's own timestamp field (its offset and drift from the host's clock are
    followed); without it, lines are stamped on ``rate_hz``'s grid, anchored to when they
    are read."""
    time_unit: Literal["s", "ms", "us", "ns"] = "s"
    scale: dict[str, float] = {}
    rate_hz: float = Field(gt=0)
    """The rate the sensor sends at; checked against what arrives."""
    block: int = Field(1, ge=1)
    """Samples per message."""
    units: list[str] = []
    """Each value's unit (``g``, ``degC``, ``""`` for none), sent with the channel names."""

    @model_validator(mode="after")
    def _units(self) -> LineOptions:
        if self.units and len(self.units) != len(self.values):
            msg = f"units lists {len(self.units)}, values {len(self.values)}: give one unit per value"
            raise ValueError(msg)
        if any(len(u) > 64 or not u.isprintable() for u in self.units):
            msg = "each unit must be printable, at most 64 characters"
            raise ValueError(msg)
        return self

    def labels(self) -> dict[str, tuple[str, ...]]:
        """``channels`` and ``units`` for :class:`~fusiond.sources.StreamInfo`."""
        return {"channels": tuple(v[:64] for v in self.values), "units": tuple(self.units)}

    def line_format(self) -> LineFormat:
        """The parser for these options (raises ValueError if they contradict)."""
        return LineFormat(
            self.format,
            tuple(self.values),
            tuple(self.columns),
            self.time_column,
            self.time_unit,
            tuple(self.scale.items()),
        )


def line_problems(options: LineOptions) -> list[str]:
    """What contradicts in ``options`` (for ``check``), one line each."""
    try:
        options.line_format()
    except ValueError as exc:
        return [f"{'values' if options.format == 'json' else 'columns'}: {exc}"]
    return []


class LineReader:
    """Turns raw lines into blocks: parse, stamp, count garbage, check the rate."""

    def __init__(self, options: LineOptions, name: str, log: logging.Logger) -> None:
        self.options = options
        self.format = options.line_format()
        self.name = name
        self.log = log
        self.clock = LineClock(options.rate_hz, options.time_column is not None)
        self.garbage = 0
        self._rate_logged = False
        self._steps = 0
        self._pending: list[np.ndarray] = []
        self._pending_t: int | None = None
        self._window_start = time.monotonic()
        self._window_count = 0
        self._logged_garbage = 0

    def feed(self, raw: bytes, host_ns: int) -> Block | None:
        """One line in; a block out when ``block`` samples are ready."""
        try:
            values, sensor_ns = self.format.parse(raw.decode("utf-8", errors="strict"))
        except (ValueError, UnicodeDecodeError) as exc:
            self._garbage(raw, str(exc))
            return None
        t_ns = self.clock.stamp(sensor_ns, host_ns)
        self._check_clock()
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
            self.log.warning(
                "%s: %d garbage line(s) so far, last %r (%s)", self.name, self.garbage, raw[:60], why
            )

    def _check_clock(self) -> None:
        model = self.clock.model
        if not self.clock.sensor_clock or model.steps == self._steps:
            return  # the grid of arrival-stamped lines re-anchors after every pause: nothing to say
        self._steps = model.steps
        if model.steps & (model.steps - 1) == 0:  # the 1st, 2nd, 4th, 8th ... step
            self.log.warning(
                "%s: the sensor's clock stepped by %+.3f s; followed (%d step(s) so far)",
                self.name,
                -model.last_step_ns / 1e9,
                model.steps,
            )

    def _check_rate(self) -> None:
        """Warn once when lines arrive at another rate than ``rate_hz`` (5 s of them, off by
        more than :data:`RATE_TOLERANCE`), again only after the rate was right in between."""
        self._window_count += 1
        elapsed = time.monotonic() - self._window_start
        if elapsed < 5.0:
            return
        rate = self._window_count / elapsed
        expected = self.options.rate_hz
        off = abs(rate - expected) > RATE_TOLERANCE * expected
        if off and not self._rate_logged:
            how = (
                "the sensor's own stamps are used"
                if self.clock.sensor_clock
                else "lines are stamped on the declared rate's grid, so set rate_hz to the real rate"
            )
            self.log.warning(
                "%s: %.1f lines/s arrive, rate_hz declares %.1f; %s", self.name, rate, expected, how
            )
        self._rate_logged = off
        self._window_start, self._window_count = time.monotonic(), 0
