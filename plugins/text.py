"""``text``: lines of text as timestamped events (operator notes, logs, a chat, a recogniser).

Each non-empty line is one event: one message whose buffer is the line in UTF-8
(docs/protocol.md, ``encoding = "utf-8"``), stamped when it was read. A ``tokens`` input
reads the words of the events in its window, in order, with their times.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

from pydantic import Field, model_validator

from fusiond.bus.wire import MAX_TEXT_BYTES
from fusiond.errors import SourceError
from fusiond.plugin import SourceRegistry, hookimpl
from fusiond.sources import Block, Source, SourceConfig, StreamInfo
from fusiond.sources.feed import LineFeed, missing_input
from fusiond.sources.timeline import play_time, start_position


class TextConfig(SourceConfig):
    """Options of the ``text`` kind: exactly one of ``path``, ``port`` and ``listen``."""

    path: str = ""
    """A file (followed as it grows, like ``tail -f``), a FIFO, or ``-`` for standard input;
    with ``transcript = true``, a file of ``seconds<TAB>text`` lines played at their times."""
    port: str = ""
    """A serial port (``/dev/ttyUSB0``) or pyserial URL."""
    baud: int = Field(115200, gt=0)
    listen: str = ""
    """``host:port``: a TCP server; every line any client sends is an event
    (``echo "door open" | nc host port``)."""
    transcript: bool = False
    """``path`` is a transcript: each line ``seconds<TAB>text``, played at the media anchor
    plus its seconds, as the other file kinds play their media."""
    loop: bool = False
    """Transcripts: start again after ``duration_s``."""
    duration_s: float | None = Field(None, gt=0)
    """Transcripts: the length of the media it belongs to (default: the last line's time)."""
    max_line_bytes: int = Field(4096, ge=1, le=MAX_TEXT_BYTES)

    @model_validator(mode="after")
    def _one_input(self) -> TextConfig:
        given = [k for k in ("path", "port", "listen") if getattr(self, k)]
        if len(given) != 1:
            msg = f"give exactly one of path, port and listen (got {given or 'none'})"
            raise ValueError(msg)
        if self.transcript and not self.path:
            msg = "a transcript is a file: give path"
            raise ValueError(msg)
        return self


class TextSource(Source[TextConfig]):
    """One event per line; lines that are not UTF-8, or longer than ``max_line_bytes``,
    are counted and skipped."""

    kind = "text"
    modality = "text"
    Config = TextConfig

    @classmethod
    def check(cls, config: TextConfig, base_dir: Path) -> list[str]:
        cfg = config
        return missing_input(base_dir, path=cfg.path, port=cfg.port)

    def open(self) -> StreamInfo:
        cfg = self.config
        self.garbage = 0
        if cfg.transcript:
            self.events = read_transcript(Path(cfg.path))
            last = self.events[-1][0] if self.events else 0.0
            self.duration_s = cfg.duration_s or last
            about = f"transcript {cfg.path}: {len(self.events)} lines over {self.duration_s:g} s"
            return StreamInfo(0.0, about)
        self.feed = LineFeed(
            self.context.stop,
            self.context.log,
            path=cfg.path,
            port=cfg.port,
            baud=cfg.baud,
            listen=cfg.listen,
            max_line=cfg.max_line_bytes,
        )
        where = self.feed.start()
        return StreamInfo(0.0, f"lines of text from {where}")

    def from_file(self) -> bool:
        return bool(self.config.transcript)

    def read(self) -> Iterator[Block]:
        cfg = self.config
        if cfg.transcript:
            yield from self._play()
            return
        while not self.context.stop.is_set():
            got = self.feed.get()
            if got is None:
                if self.feed.finished:
                    return
                continue
            line, read_ns = got
            try:
                text = line.decode("utf-8").strip()
            except UnicodeDecodeError:
                self._skip("not UTF-8")
                continue
            if text:
                yield Block.text(text, read_ns)

    def _play(self) -> Iterator[Block]:
        """Transcript lines at the media anchor plus their seconds, from where the rig's
        timeline is now (a loop every ``duration_s``), as :func:`~fusiond.sources.playback.play`."""
        cfg = self.config
        period_ns = max(1, round(self.duration_s * 1e9))
        start = start_position(self.context.anchor_ns, time.time_ns(), period_ns, cfg.loop)
        if start is None:
            return
        lap, offset_ns = start
        while True:
            for seconds, text in self.events:
                position = round(seconds * 1e9)
                if position < offset_ns:
                    continue  # joined mid-lap: what was said before now is past
                if not self.context.sleep_until(play_time(self.context.anchor_ns, lap, period_ns, position)):
                    return
                yield Block.text(text, play_time(self.context.anchor_ns, lap, period_ns, position))
            if not cfg.loop:
                return
            lap, offset_ns = lap + 1, 0

    def _skip(self, why: str) -> None:
        self.garbage += 1
        if self.garbage in (1, 10, 100, 1000) or self.garbage % 10000 == 0:
            self.context.log.warning("%d line(s) skipped so far (last: %s)", self.garbage, why)


def read_transcript(path: Path) -> list[tuple[float, str]]:
    """``seconds<TAB>text`` lines, in time order (SourceError naming the line otherwise)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        msg = f"cannot read transcript {path}: {exc}"
        raise SourceError(msg) from None
    events = []
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.startswith("#"):
            continue
        seconds, sep, text = line.partition("\t")
        try:
            t = float(seconds)
        except ValueError:
            t = -1.0
        if not sep or not t >= 0 or not text.strip():
            msg = f"{path}:{number}: a transcript line is seconds<TAB>text, got {line[:60]!r}"
            raise SourceError(msg)
        events.append((t, text.strip()))
    return sorted(events, key=lambda e: e[0])


@hookimpl
def fusiond_add_sources(registry: SourceRegistry) -> None:
    """Register the text kind."""
    registry.add(TextSource)
