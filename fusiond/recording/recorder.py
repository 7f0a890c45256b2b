"""``fusiond record``: subscribe to the bus and write every message to MCAP."""

from __future__ import annotations

import contextlib
import errno
import logging
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Self

from mcap.writer import CompressionType, Writer

from fusiond import __version__
from fusiond.bus.security import Keys, client_keys
from fusiond.bus.sockets import Sockets, drain
from fusiond.bus.wire import (
    PROTOCOL_VERSION,
    TALLY_PREFIX,
    SequenceGaps,
    decode_header,
    decode_prediction,
    decode_sample_header,
    sample_topic,
    tally_of,
)
from fusiond.errors import FusiondError, WireError
from fusiond.recording import foxglove as foxglove_views
from fusiond.recording.mcapfile import MESSAGE_ENCODING, PROFILE, pack

__all__ = ["FLUSH_EVERY_NS", "Recorder", "RecordingWriter"]

log = logging.getLogger(__name__)
FLUSH_EVERY_NS = 500_000_000


class RecordingWriter:
    """An MCAP file of bus messages: ``with RecordingWriter(path) as w: w.write(frames, t)``.

    Used by the recorder, and by programs that write recordings of their own. With
    ``foxglove``, every stream and prediction is also written as a channel Foxglove
    displays (:mod:`fusiond.recording.foxglove`: images, audio, plots, logs).
    """

    def __init__(
        self,
        path: Path,
        endpoint: str = "",
        topics: Sequence[str] = (),
        chunk_size: int = 4 << 20,
        foxglove: bool = False,
    ) -> None:
        self.path = path
        self.endpoint = endpoint
        self.topics = list(topics) or [""]
        self.chunk_size = chunk_size
        self.foxglove = foxglove
        if foxglove:  # fails here, before any file is written, when the extra is missing
            self._views = foxglove_views.Views(prefix=foxglove_views.PREFIX, jpeg=True)
        self.views: Counter[str] = Counter()
        self.view_failures = 0
        self._schemas: dict[str, int] = {}
        self.messages: Counter[str] = Counter()
        self.bytes = 0
        self.gaps: Counter[str] = Counter()
        self.malformed = 0
        self._channels: dict[str, int] = {}
        self._seq = SequenceGaps()

    def __enter__(self) -> Self:
        self._file: BinaryIO = self.path.open("wb")
        self.writer = Writer(self._file, chunk_size=self.chunk_size, compression=CompressionType.ZSTD)
        self.writer.start(profile=PROFILE, library=f"fusiond {__version__}")
        self.writer.add_metadata(
            "fusiond",
            {
                "protocol": ".".join(map(str, PROTOCOL_VERSION)),
                "version": __version__,
                "endpoint": self.endpoint,
                "topics": ",".join(self.topics),
            },
        )
        return self

    def write(self, frames: Sequence[bytes | memoryview], t_recv_ns: int) -> None:
        """One bus message, received at ``t_recv_ns``; malformed ones are counted, not written."""
        topic = bytes(frames[0]).decode(errors="replace")
        try:
            header = decode_header(frames)
        except WireError:
            self.malformed += 1
            return
        channel = self._channels.get(topic)
        if channel is None:
            channel = self._register(topic, header)
        if topic.startswith(TALLY_PREFIX):
            self._tally(header, t_recv_ns)
        seq = header.get("seq")
        if isinstance(seq, int):  # recorded whatever it is: only the gaps are counted
            missed = self._seq.missed(topic, seq, t_recv_ns)
            if missed is not None and missed > 0:
                self.gaps[topic] += missed
            self._seq.accept(topic, seq, t_recv_ns)
        body = pack(frames)
        t_pub = header.get("t_pub_ns")
        # MCAP stores these as uint64 and uint32: a hostile header must not break the file.
        self.writer.add_message(
            channel,
            log_time=t_recv_ns,
            data=body,
            publish_time=t_pub if isinstance(t_pub, int) and 0 <= t_pub < 2**64 else t_recv_ns,
            sequence=seq % 2**32 if isinstance(seq, int) else 0,
        )
        self.messages[topic] += 1
        self.bytes += len(body)
        if self.foxglove:
            self._write_views(header, frames, t_recv_ns)

    def _tally(self, header: dict[str, Any], t_recv_ns: int) -> None:
        """A source said which seq it sent last: what this recorder has not seen up to it
        was lost, also at the stream's end where no later message shows the gap. Only a
        tally ahead of the stream counts (an old one, or a restarted source's, says nothing)."""
        last, rig, stream = tally_of(header), header.get("rig"), header.get("stream")
        if last is None or not isinstance(rig, str) or not isinstance(stream, str):
            return
        topic = sample_topic(rig, stream)
        if topic not in self._channels:  # never seen: this recording started after it ended
            return
        missed = self._seq.missed(topic, last + 1, t_recv_ns)
        if missed is not None and missed > 0:
            self.gaps[topic] += missed
            self._seq.accept(topic, last, t_recv_ns)

    def _write_views(
        self, header: dict[str, Any], frames: Sequence[bytes | memoryview], t_recv_ns: int
    ) -> None:
        try:
            if header.get("type") == "prediction":
                views = [self._views.prediction(decode_prediction(frames))]
            elif header.get("type") == "sample":
                views = self._views.sample(decode_sample_header(frames), frames)
            else:
                return
        except (WireError, ValueError, OverflowError):
            self.view_failures += 1  # the bus copy is written; only the view is missing
            return
        for view in views:
            channel = self._channels.get(view.topic)
            if channel is None:
                channel = self._register_view(view)
            self.writer.add_message(channel, log_time=t_recv_ns, publish_time=view.t_ns, data=view.body)
            self.views[view.topic] += 1

    def _register_view(self, view: foxglove_views.View) -> int:
        schema_id = self._schemas.get(view.schema)
        if schema_id is None:
            encoding, data = self._views.schema(view.schema)
            schema_id = self.writer.register_schema(view.schema, encoding, data)
            self._schemas[view.schema] = schema_id
        self._channels[view.topic] = self.writer.register_channel(view.topic, view.encoding, schema_id)
        return self._channels[view.topic]

    def _register(self, topic: str, header: dict[str, object]) -> int:
        keys = ("type", "rig", "stream", "modality", "rate_hz")
        metadata = {k: str(header[k]) for k in keys if k in header}
        for key in ("channels", "units"):  # a list of short strings, checked by the daemon; here, kept short
            labels = header.get(key)
            if isinstance(labels, list):
                metadata[key] = ",".join(str(v)[:64] for v in labels[:256])
        self._channels[topic] = self.writer.register_channel(topic, MESSAGE_ENCODING, 0, metadata)
        return self._channels[topic]

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            self.writer.finish()  # type: ignore[no-untyped-call]
            self._file.close()
        except OSError as error:  # a full disk: what is written stays readable (as a cut-off file)
            with contextlib.suppress(OSError):
                self._file.close()
            if exc is None:
                raise _write_error(self.path, error, sum(self.messages.values())) from None


def _write_error(path: Path, error: OSError, messages: int) -> FusiondError:
    why = "the disk is full" if error.errno == errno.ENOSPC else error.strerror or str(error)
    msg = (
        f"cannot write {path}: {why} after {messages} messages; the recording stops there and "
        f"reads as a cut-off file (fusiond info {path})"
    )
    return FusiondError(msg)


class Recorder(RecordingWriter):
    """Writes what a SUB socket receives into a chunked, compressed, indexed MCAP file.

    A chunk is closed when it holds ``chunk_size`` bytes or, at the latest, half a second
    after the last one, and written out at once: a recorder killed with SIGKILL loses at
    most the chunk it was filling (half a second of data).
    """

    def __init__(
        self,
        path: Path,
        endpoint: str,
        topics: Sequence[str] = (),
        chunk_size: int = 4 << 20,
        queue: int = 10_000,
        foxglove: bool = False,
        keys: Keys | None = None,
    ) -> None:
        super().__init__(path, endpoint, topics, chunk_size, foxglove)
        self.queue = queue
        self.keys = keys

    def __enter__(self) -> Self:
        super().__enter__()
        self.sockets = Sockets(hwm=self.queue, keys=self.keys if self.keys is not None else client_keys())
        self.sock = self.sockets.subscriber(self.endpoint, self.topics)
        return self

    def run(self, stop: threading.Event, duration_s: float | None = None) -> None:
        """Record until ``stop`` is set or ``duration_s`` has passed."""
        end = None if duration_s is None else time.monotonic() + duration_s
        next_flush = time.time_ns() + FLUSH_EVERY_NS
        try:
            while not stop.is_set() and (end is None or time.monotonic() < end):
                if self.sock.poll(100):
                    for frames in drain(self.sock, 256):
                        self.write([f.buffer for f in frames], time.time_ns())
                if time.time_ns() >= next_flush:
                    self.writer.flush()  # type: ignore[no-untyped-call]
                    next_flush = time.time_ns() + FLUSH_EVERY_NS
        except OSError as error:  # the disk filled up (or went away): say so once, keep what is there
            raise _write_error(self.path, error, sum(self.messages.values())) from None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.sockets.close()
        super().__exit__(exc_type, exc, tb)
