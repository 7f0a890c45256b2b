"""What a source kind implements. The framework does the rest (see sources/runner.py).

A source opens its device or file, then yields :class:`Block` objects: arrays whose first
axis is time. It never touches sockets, sequence numbers or framing.
"""

from __future__ import annotations

import abc
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Generic, TypeVar

import numpy as np

from fusiond.strict import Strict

__all__ = ["Block", "ConfigT", "Source", "SourceConfig", "SourceContext", "StreamInfo"]


class SourceConfig(Strict):
    """Base of every kind's typed config: unknown keys are errors."""


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """What :meth:`Source.open` found: the sample rate and a line for the log."""

    rate_hz: float
    description: str
    channels: tuple[str, ...] = ()
    """Each channel's name (the last axis of the blocks), sent with every message."""
    units: tuple[str, ...] = ()
    """Each channel's unit (``g``, ``degC``, ``""`` for none), sent with every message."""


@dataclass(frozen=True, slots=True)
class Block:
    """Samples ``data[i]`` captured at ``t_ns + i / rate_hz`` (realtime clock, ns).

    ``t_ns=None`` lets the framework stamp the time the block was read. ``payload``
    carries an already-encoded image (JPEG) whose decoded form ``data`` describes, or
    the UTF-8 of one text event (``encoding="utf-8"``; :meth:`text` makes one).
    """

    data: np.ndarray
    t_ns: int | None = None
    payload: bytes | None = None
    encoding: str = ""
    """The wire encoding: ``raw`` without a payload, ``jpeg`` with one, unless set."""
    rate_hz: float | None = None
    """This block's own rate, where it differs from the stream's (:class:`StreamInfo`):
    a frame of a variable-frame-rate video, a camera's measured rate."""

    @classmethod
    def text(cls, text: str, t_ns: int | None = None) -> Block:
        """One text event (a line, a recognised phrase) at ``t_ns``."""
        from fusiond.bus.wire import text_block

        data, payload = text_block(text)
        return cls(data, t_ns, payload, "utf-8")


@dataclass(frozen=True)
class SourceContext:
    """What the framework hands a source: who it is and when to stop."""

    rig: str
    stream: str
    modality: str
    anchor_ns: int
    stop: threading.Event
    log: logging.Logger

    def sleep_until(self, t_ns: int) -> bool:
        """Wait until realtime ``t_ns``; False when the source is asked to stop first."""
        delay = (t_ns - time.time_ns()) / 1e9
        if delay > 0:
            return not self.stop.wait(delay)
        return not self.stop.is_set()


ConfigT = TypeVar("ConfigT", bound=SourceConfig)


class Source(abc.ABC, Generic[ConfigT]):
    """One source kind. Subclasses set ``kind``, ``modality`` and ``Config``, and name
    their config class as the type parameter (``class Camera(Source[CameraConfig])``),
    so ``self.config`` has its type."""

    kind: ClassVar[str]
    modality: ClassVar[str]
    Config: ClassVar[type[SourceConfig]]

    def __init__(self, config: ConfigT, context: SourceContext) -> None:
        self.config: ConfigT = config
        self.context = context

    @classmethod
    def check(cls, config: ConfigT, base_dir: Path) -> list[str]:
        """What is wrong with ``config`` that can be seen without opening the device: a
        missing file, an absent device node. One line per problem; relative paths are
        taken from ``base_dir`` (where the source will run). ``fusiond check-config`` asks."""
        return []

    @abc.abstractmethod
    def open(self) -> StreamInfo:
        """Open the device or file; raise :class:`fusiond.errors.SourceError` if it can't."""

    @abc.abstractmethod
    def read(self) -> Iterator[Block]:
        """Yield blocks until the end of the data or ``context.stop`` is set."""

    def from_file(self) -> bool:
        """True when the open source reads a finite file, so ``fusiond train`` may read it
        as fast as it decodes rather than in real time (asked after :meth:`open`)."""
        return False

    def close(self) -> None:  # noqa: B027 - optional for subclasses
        """Release the device or file."""
