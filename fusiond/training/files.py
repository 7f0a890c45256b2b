"""Read a config's file sources as fast as they decode, for training and evaluation.

Each source runs its own ``read`` with a context that never waits, so the blocks carry
the same media timeline as live playback (anchored at the moment reading began). The
blocks are framed exactly as the runner frames them for the bus, so what follows (ingest,
clock, aligner) is the daemon's own code path.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from fusiond.config import Config
from fusiond.errors import ConfigError
from fusiond.plugin import Plugins
from fusiond.sources.base import SourceContext
from fusiond.sources.runner import encode_block

__all__ = ["file_messages", "Message", "OfflineContext"]

Message = tuple[int, list[bytes | memoryview]]
"""A bus message and the processing time it is handed to ingest at."""


@dataclass(frozen=True)
class OfflineContext(SourceContext):
    """A context whose clock never makes the source wait."""

    def sleep_until(self, t_ns: int) -> bool:
        return not self.stop.is_set()


def _messages(config: Config, plugins: Plugins, rig: str, stream: str, anchor_ns: int) -> Iterator[Message]:
    section = config.rigs[rig].sources[stream]
    options = config.source_options(plugins.sources)[rig, stream]  # raises on an unknown kind
    cls = plugins.sources.get(section.kind)
    assert cls is not None
    if "loop" in type(options).model_fields:
        options = options.model_copy(update={"loop": False})  # a looping file never ends
    logger = logging.getLogger(f"fusiond.source.{rig}.{stream}")
    modality = section.modality or cls.modality
    context = OfflineContext(rig, stream, modality, anchor_ns, threading.Event(), logger)
    source = cls(options, context)
    info = source.open()
    try:
        if not source.from_file():
            msg = f"a live {cls.kind!r} source cannot be read offline: train on a `fusiond record` of it"
            raise ConfigError(msg, path=f"rigs.{rig}.sources.{stream}")
        for seq, block in enumerate(source.read()):
            t_ns = block.t_ns if block.t_ns is not None else anchor_ns
            rate = block.rate_hz or info.rate_hz
            end = t_ns + round(len(block.data) * 1e9 / rate)
            # Published and received the moment its last sample was captured.
            yield end, encode_block(context, seq, block, rate, end)
    finally:
        source.close()


def file_messages(config: Config, plugins: Plugins) -> tuple[int, Iterator[Message]]:
    """Every source of every rig, read to the end and merged in processing-time order,
    and the capture time at which the files start."""
    # The timeline starts ahead of the clock: a source that opens late would otherwise
    # seek past the start of its file to stay in step.
    anchor = time.time_ns() + 3600 * 10**9
    streams = [
        _messages(config, plugins, rig, name, anchor)
        for rig, section in config.rigs.items()
        for name, source in section.sources.items()
        if not source.external
    ]
    return anchor, heapq.merge(*streams, key=lambda m: m[0])
