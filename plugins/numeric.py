"""Numeric sensors from files: ``csvfile`` replays a recording in real time; ``lines``
reads lines of numbers as they are written to a file, a FIFO or standard input."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from fusiond.errors import SourceConfigError, SourceError
from fusiond.plugin import SourceRegistry, hookimpl
from fusiond.sources import Block, Source, SourceConfig, StreamInfo
from fusiond.sources.feed import LineFeed, missing_input
from fusiond.sources.lines import LineOptions, LineReader, line_problems
from fusiond.sources.playback import play


class CsvFileConfig(SourceConfig):
    """Options of the ``csvfile`` kind."""

    path: Path
    """CSV with a header row: a time column in seconds, then numeric columns."""
    time_column: str = "t_s"
    columns: list[str] | None = None
    """Value columns to publish, in order; default: every column but the time column."""
    block: int = 10
    """Samples per message."""
    loop: bool = False
    units: list[str] = []
    """Each value column's unit (``g``, ``degC``), sent with the column names."""


class CsvFileSource(Source[CsvFileConfig]):
    """Blocks of float32 samples [block, columns] at the recording's rate."""

    kind = "csvfile"
    modality = "imu"
    Config = CsvFileConfig

    @classmethod
    def check(cls, config: CsvFileConfig, base_dir: Path) -> list[str]:
        path = base_dir / config.path
        return [] if path.is_file() else [f"path: no such recording: {path}"]

    def open(self) -> StreamInfo:
        cfg = self.config
        try:
            with cfg.path.open(newline="") as f:
                rows = list(csv.reader(f))
        except FileNotFoundError:
            msg = f"no such recording: {cfg.path.resolve()}"
            raise SourceError(msg) from None
        if len(rows) < 3:
            msg = f"{cfg.path}: needs a header and at least two rows"
            raise SourceError(msg)
        header, body = rows[0], rows[1:]
        if cfg.time_column not in header:
            msg = f"{cfg.path}: no time column {cfg.time_column!r} in {header}"
            raise SourceConfigError(msg)
        names = cfg.columns or [c for c in header if c != cfg.time_column]
        missing = [c for c in names if c not in header]
        if missing:
            msg = f"{cfg.path}: no columns {missing} in {header}"
            raise SourceConfigError(msg)
        picks = [header.index(cfg.time_column)] + [header.index(c) for c in names]
        try:
            table = np.array([[float(row[i]) for i in picks] for row in body], np.float64)
        except (ValueError, IndexError) as exc:
            msg = f"{cfg.path}: non-numeric or short row ({exc})"
            raise SourceError(msg) from None
        steps = np.diff(table[:, 0])
        if (steps <= 0).any():
            msg = f"{cfg.path}: time column must increase"
            raise SourceError(msg)
        # Nine significant digits: steps of 0.01 s read as floats would declare 100.00000000000213 Hz.
        self.rate = float(f"{1.0 / np.median(steps):.9g}")
        self.values = np.ascontiguousarray(table[:, 1:], np.float32)
        if cfg.units and len(cfg.units) != len(names):
            msg = f"units lists {len(cfg.units)}, the file's value columns {len(names)}: {names}"
            raise SourceConfigError(msg)
        about = f"{cfg.path}: {len(body)} rows of {names} at {self.rate:g} Hz"
        return StreamInfo(self.rate, about, tuple(n[:64] for n in names), tuple(u[:64] for u in cfg.units))

    def from_file(self) -> bool:
        return True

    def read(self) -> Iterator[Block]:
        cfg = self.config
        return play(self.values, self.rate, cfg.block, cfg.loop, self.context)


class LinesConfig(LineOptions):
    """Options of the ``lines`` kind (plus the line options: format, values, ...)."""

    path: str
    """A file (followed as it grows, like ``tail -f``), a FIFO, or ``-`` for standard input
    (the source ends when it does)."""


class LinesSource(Source[LinesConfig]):
    """Lines of numbers as they arrive; stamped when read unless they carry a time column.

    A reader thread does the blocking reads (a FIFO blocks until a writer comes) and hands
    lines over through a bounded queue; lines beyond it are counted as dropped.
    """

    kind = "lines"
    modality = "imu"
    Config = LinesConfig

    @classmethod
    def check(cls, config: LinesConfig, base_dir: Path) -> list[str]:
        cfg = config
        return line_problems(cfg) + missing_input(base_dir, path=cfg.path)

    def open(self) -> StreamInfo:
        cfg = self.config
        try:
            self.reader = LineReader(cfg, f"lines {cfg.path}", self.context.log)
        except ValueError as exc:
            raise SourceConfigError(str(exc)) from None
        self.feed = LineFeed(self.context.stop, self.context.log, path=cfg.path)
        self.feed.start()
        return StreamInfo(cfg.rate_hz, f"{cfg.path}: {cfg.format} {cfg.values}", **cfg.labels())

    def read(self) -> Iterator[Block]:
        while not self.context.stop.is_set():
            got = self.feed.get()
            if got is None:
                if self.feed.finished:
                    return
                continue
            block = self.reader.feed(*got)
            if block is not None:
                yield block


@hookimpl
def fusiond_add_sources(registry: SourceRegistry) -> None:
    """Register the csvfile and lines kinds."""
    registry.add(CsvFileSource)
    registry.add(LinesSource)
