"""The MCAP layout of a fusiond recording (documented in docs/recording.md).

One MCAP channel per bus topic, message encoding ``fusiond-frames``: each MCAP message is
a MessagePack array of the bus message's frames after the topic (the msgpack header,
then the raw buffers), byte for byte. ``log_time`` is when the recorder received it,
``publish_time`` the header's ``t_pub_ns``. Chunks are zstd-compressed and indexed.

Channels in other encodings (the views of ``fusiond record --foxglove``) are skipped.
Reading walks the records in file order (the order the recorder received them) and never
raises on what it finds: a file whose writer was killed ends at its cut-off tail, a
damaged chunk or record is skipped and counted, and no message is read twice.
"""

from __future__ import annotations

import io
import logging
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import msgpack
from mcap.data_stream import ReadDataStream
from mcap.reader import make_reader
from mcap.records import Channel, Chunk, Message

from fusiond.errors import FusiondError

__all__ = [
    "channel_metadata",
    "info",
    "MAGIC",
    "MAX_BODY",
    "MAX_RECORD",
    "MESSAGE_ENCODING",
    "pack",
    "PROFILE",
    "read",
    "Recorded",
    "RecordingInfo",
]

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
    frames = msgpack.unpackb(message.data, max_bin_len=MAX_BODY, max_array_len=64)
    if not isinstance(frames, list) or not all(isinstance(f, bytes) for f in frames):
        msg = "not an array of frames"
        raise ValueError(msg)
    return Recorded(topic, message.log_time, [topic.encode(), *frames])


MAGIC = b"\x89MCAP0\r\n"
MAX_RECORD = 512 << 20
"""A record (a chunk, most often) longer than this is taken as damage, not read."""
MAX_BODY = 256 << 20
_CHANNEL, _MESSAGE, _CHUNK, _DATA_END = 0x04, 0x05, 0x06, 0x0F


def read(path: Path, topics: Sequence[str] = ()) -> Iterator[Recorded]:
    """The recording's bus messages in file order (the order the recorder received them).

    Nothing in the file can make this raise: it walks the records itself, each bounded by
    the file's size, so a damaged record (a chunk that does not decompress, a body that is
    not frames, an absurd length) is skipped and counted, a file cut off mid-record ends
    there, and no message is read twice. A line in the log says what was skipped.
    """
    try:
        f = path.open("rb")
    except FileNotFoundError:
        msg = f"no such recording: {path}"
        raise FusiondError(msg) from None
    walk = _Walk(path, topics)
    with f:
        yield from walk.records(f)
    walk.report()


class _Walk:
    """One pass over a recording's records, counting what it cannot read."""

    def __init__(self, path: Path, topics: Sequence[str]) -> None:
        self.path, self.topics = path, tuple(topics)
        self.channels: dict[int, str] = {}
        self.messages = 0
        self.damaged: Counter[str] = Counter()
        self.cut = False

    def records(self, f: BinaryIO) -> Iterator[Recorded]:
        size = os.fstat(f.fileno()).st_size
        if f.read(len(MAGIC)) != MAGIC:
            self.damaged["not an MCAP file"] += 1
            return
        pos = len(MAGIC)
        while pos + 9 <= size:
            head = f.read(9)
            opcode, length = head[0], int.from_bytes(head[1:], "little")
            if length > min(size - pos - 9, MAX_RECORD):
                self.cut = length > size - pos - 9
                if not self.cut:
                    self.damaged["a record of absurd length"] += 1
                return
            body = f.read(length)
            pos += 9 + length
            if opcode == _DATA_END:
                return
            if opcode == _CHUNK:
                yield from self._chunk(body)
            else:
                yield from self._record(opcode, body)
        self.cut = pos < size

    def _chunk(self, body: bytes) -> Iterator[Recorded]:
        try:
            chunk = Chunk.read(ReadDataStream(io.BytesIO(body)))
            if chunk.uncompressed_size > MAX_RECORD:
                raise ValueError(chunk.uncompressed_size)
            data = _decompress(chunk)
        except Exception:  # noqa: BLE001 (whatever a damaged chunk makes the decoders raise)
            self.damaged["a chunk that does not decompress"] += 1
            return
        pos = 0
        while pos + 9 <= len(data):
            opcode, length = data[pos], int.from_bytes(data[pos + 1 : pos + 9], "little")
            if length > len(data) - pos - 9:
                self.damaged["a record past the end of its chunk"] += 1
                return
            yield from self._record(opcode, data[pos + 9 : pos + 9 + length])
            pos += 9 + length

    def _record(self, opcode: int, body: bytes) -> Iterator[Recorded]:
        if opcode not in (_CHANNEL, _MESSAGE):
            return
        try:
            if opcode == _CHANNEL:
                channel = Channel.read(ReadDataStream(io.BytesIO(body)))
                if _bus(channel):
                    self.channels[channel.id] = channel.topic
                return
            message = Message.read(ReadDataStream(io.BytesIO(body)), len(body))
            topic = self.channels.get(message.channel_id)
            if topic is None or (self.topics and not topic.startswith(self.topics)):
                return
            recorded = _unpack(topic, message)
        except Exception:  # noqa: BLE001 (a damaged record: skipped, counted)
            self.damaged["a record that does not parse"] += 1
            return
        self.messages += 1
        yield recorded

    def report(self) -> None:
        """One line when anything was skipped or the file was cut off."""
        if self.damaged:
            what = ", ".join(f"{n} x {why}" for why, n in self.damaged.items())
            log.warning("%s: skipped what is damaged (%s); read %d messages", self.path, what, self.messages)
        if self.cut:
            log.warning(
                "%s ends mid-record after %d messages (a recorder killed, a disk full?); the rest is lost",
                self.path,
                self.messages,
            )


def _decompress(chunk: Chunk) -> bytes:
    if chunk.compression == "":
        return chunk.data
    if chunk.compression == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().decompress(chunk.data, max_output_size=chunk.uncompressed_size)
    if chunk.compression == "lz4":
        import lz4.frame

        data: bytes = lz4.frame.decompress(chunk.data)
        return data
    msg = f"compression {chunk.compression!r}"
    raise ValueError(msg)


def channel_metadata(path: Path) -> dict[str, dict[str, str]] | None:
    """Each channel's metadata from the summary (the recorder stores a sample stream's rig,
    stream and modality there); None for a cut-off file, which has no summary."""
    try:
        with path.open("rb") as f:
            summary = make_reader(f).get_summary()
    except FileNotFoundError:
        msg = f"no such recording: {path}"
        raise FusiondError(msg) from None
    except Exception:  # a damaged summary: whatever the reader raises, there is none to use
        return None
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
    except FileNotFoundError:
        msg = f"no such recording: {path}"
        raise FusiondError(msg) from None
    except Exception:  # a damaged summary: the records are walked all the same
        summary = None
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
