"""The MCAP layout of a fusiond recording (documented in docs/recording.md).

One MCAP channel per bus topic, message encoding ``fusiond-frames``: each MCAP message is
a MessagePack array of the bus message's frames after the topic (the msgpack header,
then the raw buffers), byte for byte. ``log_time`` is when the recorder received it,
``publish_time`` the header's ``t_pub_ns``. Chunks are zstd-compressed and indexed.

Channels in other encodings (the views of ``fusiond record --foxglove``) are skipped.
Reading tolerates a file whose writer was killed: without a summary section the records
are walked in order and the cut-off tail is dropped.
"""

from __future__ import annotations

import logging
import struct
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
from mcap.exceptions import McapError
from mcap.reader import make_reader
from mcap.records import Channel, Message
from mcap.stream_reader import StreamReader

from fusiond.errors import FusiondError

log = logging.getLogger(__name__)
MESSAGE_ENCODING = "fusiond-frames"
PROFILE = "fusiond"


def pack(frames: Sequence[bytes | memoryview]) -> bytes:
    """One MCAP message body: the frames after the topic, as a msgpack array of bins."""
    body: bytes = msgpack.packb(list(frames[1:]))
    return body


@dataclass(frozen=True, slots=True)
class Recorded:
    """One recorded bus message."""

    topic: str
    log_time_ns: int
    frames: list[bytes]
    """All frames, topic first: what ``decode_sample`` and friends take."""


@dataclass
class RecordingInfo:
    """What ``fusiond info`` prints."""

    path: Path
    complete: bool
    messages: Counter[str] = field(default_factory=Counter)
    first_ns: dict[str, int] = field(default_factory=dict)
    last_ns: dict[str, int] = field(default_factory=dict)
    metadata: dict[str, dict[str, str]] = field(default_factory=dict)
    views: dict[str, tuple[str, int]] = field(default_factory=dict)
    """Channels for other tools (``record --foxglove``): topic -> (schema, messages)."""

    @property
    def duration_s(self) -> float:
        """From the first to the last message, any topic."""
        if not self.first_ns:
            return 0.0
        return (max(self.last_ns.values()) - min(self.first_ns.values())) / 1e9


def _bus(channel: Channel) -> bool:
    """A channel of bus messages (not a view written for another tool)."""
    return channel.message_encoding == MESSAGE_ENCODING


def _unpack(topic: str, message: Message) -> Recorded:
    frames = msgpack.unpackb(message.data)
    return Recorded(topic, message.log_time, [topic.encode(), *frames])


def read(path: Path, topics: Sequence[str] = ()) -> Iterator[Recorded]:
    """Messages in log-time order (a complete file) or file order (a cut-off one)."""
    try:
        with path.open("rb") as f:
            reader = make_reader(f)
            reader.get_summary()
            for _, channel, message in reader.iter_messages(log_time_order=True):
                if not _bus(channel):
                    continue  # a view for other tools (fusiond.recording.foxglove)
                if not topics or channel.topic.startswith(tuple(topics)):
                    yield _unpack(channel.topic, message)
            return
    except (McapError, struct.error, ValueError, EOFError, AssertionError):
        pass
    except FileNotFoundError:
        msg = f"no such recording: {path}"
        raise FusiondError(msg) from None
    yield from _read_cut_off(path, topics)


def _read_cut_off(path: Path, topics: Sequence[str]) -> Iterator[Recorded]:
    channels: dict[int, str] = {}
    count = 0
    with path.open("rb") as f:
        records = StreamReader(f).records
        while True:
            try:
                record = next(records)
            except StopIteration:
                return
            except Exception as exc:  # the tail a killed writer left half-written
                log.warning("%s ends mid-record after %d messages (%s); the rest is lost",
                            path, count, type(exc).__name__)  # fmt: skip
                return
            if isinstance(record, Channel) and _bus(record):
                channels[record.id] = record.topic
            elif isinstance(record, Message) and record.channel_id in channels:
                topic = channels[record.channel_id]
                if not topics or topic.startswith(tuple(topics)):
                    count += 1
                    yield _unpack(topic, record)


def channel_metadata(path: Path) -> dict[str, dict[str, str]] | None:
    """Each channel's metadata from the summary (the recorder stores a sample stream's rig,
    stream and modality there); None for a cut-off file, which has no summary."""
    try:
        with path.open("rb") as f:
            summary = make_reader(f).get_summary()
    except (McapError, struct.error, ValueError, EOFError, AssertionError):
        return None
    except FileNotFoundError:
        msg = f"no such recording: {path}"
        raise FusiondError(msg) from None
    if summary is None:
        return None
    return {c.topic: dict(c.metadata) for c in summary.channels.values() if _bus(c)}


def info(path: Path) -> RecordingInfo:
    """Channels, counts and times of a recording (read through, so cut-off files work too)."""
    result = RecordingInfo(path, complete=False)
    try:
        with path.open("rb") as f:
            reader = make_reader(f)
            summary = reader.get_summary()
            if summary is not None:
                result.complete = True
                result.metadata = {meta.name: dict(meta.metadata) for meta in reader.iter_metadata()}
    except (McapError, struct.error, ValueError, EOFError, AssertionError):
        summary = None
    except FileNotFoundError:
        msg = f"no such recording: {path}"
        raise FusiondError(msg) from None
    if summary is not None:
        counts = summary.statistics.channel_message_counts if summary.statistics else {}
        for cid, channel in summary.channels.items():
            if not _bus(channel):
                schema = summary.schemas.get(channel.schema_id)
                result.views[channel.topic] = (schema.name if schema else "", counts.get(cid, 0))
    for rec in read(path):
        result.messages[rec.topic] += 1
        result.first_ns.setdefault(rec.topic, rec.log_time_ns)
        result.last_ns[rec.topic] = rec.log_time_ns
    return result
