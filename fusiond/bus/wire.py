"""Wire codec: ``[topic, msgpack header, raw buffers...]`` (see docs/protocol.md).

Pure code: no sockets. Decoding returns numpy views of the received frames, not copies.
"""

from __future__ import annotations

import functools
import math
import os
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple, Protocol

import msgpack
import numpy as np

from fusiond.errors import FrameError, VersionError, WireError

PROTOCOL_VERSION: Final = (1, 4)
SAMPLE_PREFIX: Final = "s/"
PREDICTION_PREFIX: Final = "p/"
ERROR_PREFIX: Final = "e/"
TALLY_PREFIX: Final = "t/"
OUTPUT_PREFIX: Final = "o/"
TALLY_EVERY_NS: Final = 1_000_000_000
"""How often a publishing source says how many messages it has sent (and once at its end)."""
NAME_RE: Final = re.compile(r"\A[A-Za-z0-9_-]{1,64}\Z")  # \Z: "$" would let a trailing newline in
CLOCKS: Final = frozenset({"realtime", "monotonic"})
DTYPES: Final = {s: np.dtype(s) for s in ("|u1", "|i1", "<u2", "<i2", "<i4", "<f4", "<f8")}
ENCODINGS: Final = frozenset({"raw", "jpeg", "utf-8"})
MAX_TEXT_BYTES: Final = 65536
"""Largest text event (``utf-8`` buffer) a reader accepts."""
MAX_DIMS: Final = 6
MAX_INT: Final = 2**63 - 1
MIN_RATE_HZ: Final = 1e-3
"""The slowest regular rate a block may declare: one sample per 1000 s."""
MAX_RATE_HZ: Final = 1e8
MAX_ELEMENTS: Final = 2**31
"""No buffer may declare more elements than this, whatever its encoding."""


class _Buffer(Protocol):
    @property
    def buffer(self) -> memoryview: ...


Frame = bytes | memoryview | _Buffer


def sample_topic(rig: str, stream: str) -> str:
    """Topic of one sensor stream."""
    return f"{SAMPLE_PREFIX}{rig}/{stream}"


def prediction_topic(rig: str) -> str:
    """Topic of one rig's predictions."""
    return f"{PREDICTION_PREFIX}{rig}"


DUPLICATE: Final = -1
"""What :meth:`SequenceGaps.missed` says of a message it has seen already."""


class SequenceGaps:
    """Messages missing from each stream, from its ``seq`` numbers.

    ZeroMQ drops silently when a queue is full or a link breaks; a jump in ``seq`` is how
    such losses become visible. Only accepted messages move a stream's state
    (:meth:`accept`): one that is dropped for any reason, forged or not, changes nothing.

    - ``seq`` 0 after a higher number is a restarted publisher (every publisher starts
      counting at 0), not a loss.
    - Any other ``seq`` not above the last accepted one is a duplicate: the same message
      again, or a captured one replayed (:data:`DUPLICATE`).
    - A jump larger than the stream could have sent since its last message (``slack``
      plus ``max_rate_hz`` messages a second) is a reset (None): one forged ``seq`` must
      not add a billion to the loss counter.
    - :data:`RENUMBERED` messages in a row, each one more than the last, that jumped or went
      back together are a publisher that really renumbered: the last of them is taken. So a
      forged run can take a stream's numbering over for as long as it keeps sending, and the
      real publisher takes it back as soon as it sends that many.
    """

    RENUMBERED = 3

    def __init__(self, max_rate_hz: float = 10_000.0, slack: int = 1000) -> None:
        self.max_rate_hz = max_rate_hz
        self.slack = slack
        self._last: dict[Any, tuple[int, int]] = {}
        self._run: dict[Any, tuple[int, int]] = {}

    def missed(self, key: Any, seq: int, now_ns: int) -> int | None:
        """How many messages of ``key`` went missing just before this one, :data:`DUPLICATE`,
        or None for a jump too large to be a loss; nothing changes until :meth:`accept`.
        ``now_ns`` is the message's publish time (or, failing that, its receive time)."""
        last = self._last.get(key)
        if last is None or seq == last[0] + 1 or (seq == 0 and last[0] > 0):
            return 0
        gap = seq - last[0] - 1
        verdict: int | None = gap
        if seq <= last[0]:
            verdict = DUPLICATE
        elif gap > self.slack + max(0, now_ns - last[1]) * self.max_rate_hz / 1e9:
            verdict = None
        else:
            return gap
        run = self._run.get(key)
        count = run[1] + 1 if run is not None and seq == run[0] + 1 else 1
        self._run[key] = (seq, count)
        return 0 if count >= self.RENUMBERED else verdict

    def accept(self, key: Any, seq: int, now_ns: int) -> None:
        """The message was taken: the stream continues from ``seq``."""
        self._last[key] = (seq, now_ns)
        self._run.pop(key, None)


class BufferSpec(NamedTuple):
    """How one buffer frame is laid out, as its header declares it (checked, not decoded)."""

    dtype: str
    shape: tuple[int, ...]
    encoding: str

    @property
    def nbytes(self) -> int:
        """Bytes of the decoded array."""
        return math.prod(self.shape) * DTYPES[self.dtype].itemsize


class SampleHeader(NamedTuple):
    """A sample message's header, every field type- and range-checked; buffers not decoded.

    (A named tuple: one is made for every message, and a tuple is the cheapest to make.)
    """

    rig: str
    stream: str
    modality: str
    seq: int
    t_ns: int
    clock: str
    t_pub_ns: int
    rate_hz: float
    buffers: tuple[BufferSpec, ...]
    channels: tuple[str, ...] = ()
    """The name of each channel (the first buffer's last axis), if the source gave them."""
    units: tuple[str, ...] = ()
    """The unit of each channel (``g``, ``degC``, ``""`` for none), if the source gave them."""


MAX_LABEL_LEN = 64


def _labels(
    header: dict[str, Any], buffers: tuple[BufferSpec, ...]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The optional ``channels`` and ``units`` of a sample header, checked: lists of short
    printable strings, one per channel of the first buffer; FrameError otherwise."""
    channels, units = header.get("channels"), header.get("units")
    if channels is None and units is None:
        return (), ()
    width = buffers[0].shape[-1] if len(buffers[0].shape) > 1 else 1
    out = []
    for key, value in (("channels", channels), ("units", units)):
        if value is None:
            out.append(())
            continue
        ok = (
            type(value) is list
            and len(value) == width
            and all(type(v) is str and len(v) <= MAX_LABEL_LEN and v.isprintable() for v in value)
        )
        if not ok:
            msg = (
                f"header field {key} must list {width} printable strings of at most {MAX_LABEL_LEN} "
                f"characters, got {_short(value)}"
            )
            raise FrameError(msg)
        out.append(tuple(value))
    return out[0], out[1]


def block_end_ns(t_ns: int, length: int, rate_hz: float) -> int:
    """End of a block of ``length`` samples from ``t_ns`` (``t_ns + 1`` when irregular)."""
    if rate_hz <= 0:
        return t_ns + 1
    return t_ns + round(length * 1e9 / rate_hz)


@dataclass(frozen=True, slots=True)
class Sample:
    """A block of samples from one stream: ``data[i]`` was captured at ``t_ns + i / rate_hz``."""

    rig: str
    stream: str
    modality: str
    seq: int
    t_ns: int
    clock: str
    t_pub_ns: int
    rate_hz: float
    arrays: tuple[np.ndarray, ...]

    @property
    def data(self) -> np.ndarray:
        """The first (usually only) array of the message."""
        return self.arrays[0]


@dataclass(frozen=True, slots=True)
class Prediction:
    """One prediction for one window of one rig."""

    rig: str
    seq: int
    window_start_ns: int
    window_end_ns: int
    label: str
    classes: list[str]
    scores: list[float]
    present: list[str]
    missing: list[str]
    model: dict[str, str]
    latency_ns: dict[str, int]
    t_pub_ns: int
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The header fields, as they travel on the wire."""
        return {
            "v": list(PROTOCOL_VERSION),
            "type": "prediction",
            "rig": self.rig,
            "seq": self.seq,
            "window_start_ns": self.window_start_ns,
            "window_end_ns": self.window_end_ns,
            "label": self.label,
            "classes": self.classes,
            "scores": self.scores,
            "present": self.present,
            "missing": self.missing,
            "model": self.model,
            "latency_ns": self.latency_ns,
            "t_pub_ns": self.t_pub_ns,
            **self.extra,
        }


def encode_sample(
    *,
    rig: str,
    stream: str,
    modality: str,
    seq: int,
    t_ns: int,
    t_pub_ns: int,
    rate_hz: float,
    data: np.ndarray,
    clock: str = "realtime",
    encoding: str = "raw",
    payload: bytes | None = None,
    publisher: str | None = None,
    channels: Sequence[str] = (),
    units: Sequence[str] = (),
) -> list[bytes | memoryview]:
    """Frames for one sample block; the array travels as its own buffer, not copied.

    ``channels`` and ``units`` name and qualify each channel (the array's last axis), so
    plots, ``fusiond echo`` and recordings can label them.

    With ``encoding="jpeg"``, ``payload`` holds the JPEG bytes and ``data`` only gives the
    decoded shape and dtype; with ``encoding="utf-8"``, ``payload`` is one text event and
    ``data`` a uint8 array of shape [1] (:func:`text_block` makes both).
    """
    array = data if data.flags.c_contiguous else np.ascontiguousarray(data)
    header = {
        "v": list(PROTOCOL_VERSION),
        "type": "sample",
        "rig": rig,
        "stream": stream,
        "modality": modality,
        "seq": seq,
        "t_ns": t_ns,
        "clock": clock,
        "t_pub_ns": t_pub_ns,
        "rate_hz": float(rate_hz),
        "buffers": [{"dtype": array.dtype.str, "shape": list(array.shape), "encoding": encoding}],
        "pub": publisher_id() if publisher is None else publisher,
    }
    if channels:
        header["channels"] = list(channels)
    if units:
        header["units"] = list(units)
    # A flat byte view of the array's memory (no copy; works for empty arrays too).
    body: bytes | memoryview = payload if payload is not None else array.reshape(-1).view(np.uint8).data
    return [sample_topic(rig, stream).encode(), msgpack.packb(header), body]


def encode_source_error(
    *, rig: str, stream: str, kind: str, error: str, attempt: int, retry_in_s: float, t_ns: int
) -> list[bytes]:
    """Frames telling subscribers that a source could not open or lost its device."""
    header = {
        "v": list(PROTOCOL_VERSION),
        "type": "source_error",
        "rig": rig,
        "stream": stream,
        "kind": kind,
        "error": error,
        "attempt": attempt,
        "retry_in_s": retry_in_s,
        "t_ns": t_ns,
        "pub": publisher_id(),
    }
    return [f"{ERROR_PREFIX}{rig}/{stream}".encode(), msgpack.packb(header)]


def encode_tally(*, rig: str, stream: str, last_seq: int, t_ns: int, final: bool = False) -> list[bytes]:
    """Frames telling subscribers the last ``seq`` a source has sent on ``s/<rig>/<stream>``:
    a subscriber that saw less lost the difference, even at the end of a stream, where no
    later message shows the gap (``final``: the source has ended)."""
    header = {
        "v": list(PROTOCOL_VERSION),
        "type": "tally",
        "rig": rig,
        "stream": stream,
        "last_seq": last_seq,
        "t_ns": t_ns,
        "final": final,
        "pub": publisher_id(),
    }
    return [f"{TALLY_PREFIX}{rig}/{stream}".encode(), msgpack.packb(header)]


def encode_output_report(
    *, name: str, kind: str, counts: dict[str, int], health: dict[str, Any], t_ns: int
) -> list[bytes]:
    """Frames an output bridge sends once a second on ``o/<name>``: its running counts
    (``sent``, ``dropped``, ``failed``, ``lost``, ``malformed``) and its own health."""
    header = {
        "v": list(PROTOCOL_VERSION),
        "type": "output",
        "name": name,
        "kind": kind,
        "counts": counts,
        "health": health,
        "t_ns": t_ns,
    }
    return [f"{OUTPUT_PREFIX}{name}".encode(), msgpack.packb(header)]


def tally_of(header: dict[str, Any]) -> int | None:
    """A checked tally header's ``last_seq`` (None when it is not a well-formed tally)."""
    last = header.get("last_seq")
    if header.get("type") != "tally" or type(last) is not int or not 0 <= last < 2**63:
        return None
    return last


def encode_prediction(prediction: Prediction) -> list[bytes]:
    """Frames for one prediction (header only, no buffers)."""
    header = prediction.to_dict()
    header.setdefault("pub", publisher_id())
    return [prediction_topic(prediction.rig).encode(), msgpack.packb(header)]


_publisher: tuple[int, str] = (0, "")
MAX_PUBLISHER_LEN = 128


def publisher_id() -> str:
    """``host/pid`` of this process: the ``pub`` field, which tells publishers of one topic
    apart (``fusiond topics``); informational, never trusted (use CURVE for that)."""
    global _publisher
    pid = os.getpid()
    if _publisher[0] != pid:  # computed once per process, again after a fork
        _publisher = (pid, f"{socket.gethostname()}/{pid}"[:MAX_PUBLISHER_LEN])
    return _publisher[1]


def publisher_of(header: dict[str, Any]) -> str | None:
    """A header's ``pub`` when it is a string of at most 128 characters, else None."""
    pub = header.get("pub")
    return pub if type(pub) is str and 0 < len(pub) <= MAX_PUBLISHER_LEN else None


def frame_view(frame: Frame) -> memoryview:
    """The bytes of a received frame (bytes, a memoryview or a ``zmq.Frame``), not copied."""
    if isinstance(frame, bytes | memoryview):
        return memoryview(frame)
    return frame.buffer


def decode_header(frames: Sequence[Frame]) -> dict[str, Any]:
    """Unpack and version-check the header frame; raise WireError on anything malformed."""
    return _check_version(_unpack(frames))


def _unpack(frames: Sequence[Frame]) -> Any:
    if len(frames) < 2:
        msg = f"expected at least 2 frames, got {len(frames)}"
        raise FrameError(msg, "bad_framing")
    try:
        return msgpack.unpackb(frame_view(frames[1]), raw=False, strict_map_key=True)
    except Exception as exc:
        msg = f"header is not msgpack: {exc}"
        raise FrameError(msg) from None


def _check_version(header: Any) -> dict[str, Any]:
    if not isinstance(header, dict):
        msg = "header is not a map"
        raise FrameError(msg)
    bad_keys = {type(k).__name__ for k in header if type(k) is not str}
    if bad_keys:  # an old msgpack library packs str as bin unless told use_bin_type=True
        names = ", ".join(sorted("bin" if k == "bytes" else k for k in bad_keys))
        msg = f"header keys must be str, got {names} (pack with use_bin_type=True)"
        raise FrameError(msg)
    version = header.get("v")
    if not isinstance(version, list) or len(version) != 2 or not all(isinstance(x, int) for x in version):
        msg = f"header field v must be [major, minor], got {version!r}"
        raise FrameError(msg)
    if version[0] != PROTOCOL_VERSION[0]:
        msg = f"protocol major version {version[0]} is not {PROTOCOL_VERSION[0]}"
        raise VersionError(msg)
    return header


_SAMPLE_FIELDS: Final = (
    ("rig", str),
    ("stream", str),
    ("modality", str),
    ("seq", int),
    ("t_ns", int),
    ("clock", str),
    ("t_pub_ns", int),
    ("rate_hz", float),
    ("buffers", list),
)


def _check_fields(header: dict[str, Any], fields: Sequence[tuple[str, type]]) -> None:
    for name, kind in fields:
        value = header.get(name)
        if type(value) is kind or (kind is float and type(value) is int):
            continue
        msg = f"header field {name} must be {kind.__name__}, got {_short(value)}"
        raise FrameError(msg)


def _short(value: Any) -> str:
    # Hostile headers can carry megabytes in one field: never log more than a glimpse.
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_ranges(header: dict[str, Any]) -> None:
    for name in ("seq", "t_ns", "t_pub_ns"):
        if not 0 <= header[name] <= MAX_INT:
            msg = f"header field {name} must lie in [0, 2**63), got {header[name]}"
            raise FrameError(msg, "bad_value")
    rate = float(header["rate_hz"])
    if not (rate == 0.0 or MIN_RATE_HZ <= rate <= MAX_RATE_HZ):
        msg = (
            f"header field rate_hz must be 0 (irregular) or in [{MIN_RATE_HZ:g}, {MAX_RATE_HZ:g}], "
            f"got {rate!r}"
        )
        raise FrameError(msg, "bad_value")


def buffer_spec(spec: Any) -> BufferSpec:
    """Check one entry of ``header.buffers`` (types, ranges, element count)."""
    if not isinstance(spec, dict):
        msg = f"buffer description must be a map, got {_short(spec)}"
        raise FrameError(msg)
    dtype, shape, encoding = spec.get("dtype"), spec.get("shape"), spec.get("encoding", "raw")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        msg = f"unsupported dtype {_short(dtype)}"
        raise FrameError(msg)
    if (
        not isinstance(shape, list)
        or not 1 <= len(shape) <= MAX_DIMS
        or not all(type(n) is int and 0 <= n <= MAX_ELEMENTS for n in shape)
        or math.prod(shape) > MAX_ELEMENTS
    ):
        msg = f"bad shape {_short(shape)}"
        raise FrameError(msg)
    if not isinstance(encoding, str) or encoding not in ENCODINGS:
        msg = f"unsupported encoding {_short(encoding)}"
        raise FrameError(msg)
    if encoding == "jpeg" and (dtype != "|u1" or _jpeg_dims(shape) is None):
        msg = f"a JPEG buffer is one |u1 image [1, H, W, 1|3], [H, W, 1|3] or [H, W]; got {dtype} {shape}"
        raise FrameError(msg)
    if encoding == "utf-8" and (dtype != "|u1" or shape != [1]):
        msg = f"a utf-8 buffer is one text event, dtype |u1 and shape [1]; got {dtype} {shape}"
        raise FrameError(msg)
    return BufferSpec(dtype, tuple(shape), encoding)


def _jpeg_dims(shape: Sequence[int]) -> tuple[int, int, int] | None:
    """``(H, W, C)`` of a JPEG buffer's declared shape, or None if it is not one image."""
    dims = list(shape)
    if len(dims) == 4 and dims[0] == 1:
        dims = dims[1:]
    if len(dims) == 2:
        dims.append(1)
    if len(dims) != 3 or dims[2] not in (1, 3) or min(dims) < 1:
        return None
    return dims[0], dims[1], dims[2]


def decode_sample_header(frames: Sequence[Frame]) -> SampleHeader:
    """Check a sample message's header (and frame count) without touching its buffers.

    The common case, a well-formed header, takes one pass of plain comparisons; anything
    else goes through the field-by-field checks, which say what is wrong.
    """
    header = _unpack(frames)
    if type(header) is dict:
        g = header.get
        v, rig, stream, modality, clock = g("v"), g("rig"), g("stream"), g("modality"), g("clock")
        seq, t_ns, t_pub, rate, buffers = g("seq"), g("t_ns"), g("t_pub_ns"), g("rate_hz"), g("buffers")
        if (
            type(v) is list
            and len(v) == 2
            and v[0] == PROTOCOL_VERSION[0]
            and type(v[0]) is int
            and type(v[1]) is int
            and g("type") == "sample"
            and type(rig) is str
            and type(stream) is str
            and type(modality) is str
            and type(clock) is str
            and clock in CLOCKS
            and type(seq) is int
            and 0 <= seq <= MAX_INT
            and type(t_ns) is int
            and 0 <= t_ns <= MAX_INT
            and type(t_pub) is int
            and 0 <= t_pub <= MAX_INT
            and (type(rate) is float or type(rate) is int)
            and (rate == 0 or MIN_RATE_HZ <= rate <= MAX_RATE_HZ)
            and type(buffers) is list
            and 0 < len(buffers) == len(frames) - 2
        ):
            _check_names(rig, stream, modality)
            specs = tuple(_cached_spec(b) for b in buffers)
            channels, units = (
                _labels(header, specs) if "channels" in header or "units" in header else ((), ())
            )
            return SampleHeader(
                rig, stream, modality, seq, t_ns, clock, t_pub, float(rate), specs, channels, units
            )
    return _checked_sample_header(_check_version(header), frames)


def _cached_spec(spec: Any) -> BufferSpec:
    # The same few layouts arrive on every message: check each once (errors aren't cached).
    if type(spec) is dict and type(shape := spec.get("shape")) is list and len(shape) <= MAX_DIMS:
        key = (spec.get("dtype"), tuple(shape), spec.get("encoding", "raw"))
        if all(type(n) is int for n in key[1]) and type(key[0]) is str and type(key[2]) is str:
            return _spec_of(*key)
    return buffer_spec(spec)


@functools.lru_cache(maxsize=1024)
def _spec_of(dtype: str, shape: tuple[int, ...], encoding: str) -> BufferSpec:
    return buffer_spec({"dtype": dtype, "shape": list(shape), "encoding": encoding})


def _checked_sample_header(header: dict[str, Any], frames: Sequence[Frame]) -> SampleHeader:
    if header.get("type") != "sample":
        msg = f"expected a sample, got type {_short(header.get('type'))}"
        raise FrameError(msg)
    _check_fields(header, _SAMPLE_FIELDS)
    buffers = header["buffers"]
    if len(buffers) != len(frames) - 2 or not buffers:
        msg = f"header lists {len(buffers)} buffers, message carries {len(frames) - 2}"
        raise FrameError(msg, "bad_size")
    _check_names(header["rig"], header["stream"], header["modality"])
    if header["clock"] not in CLOCKS:
        msg = f"unknown clock {_short(header['clock'])}"
        raise FrameError(msg)
    _check_ranges(header)
    return SampleHeader(
        rig=header["rig"],
        stream=header["stream"],
        modality=header["modality"],
        seq=header["seq"],
        t_ns=header["t_ns"],
        clock=header["clock"],
        t_pub_ns=header["t_pub_ns"],
        rate_hz=float(header["rate_hz"]),
        buffers=(specs := tuple(buffer_spec(b) for b in buffers)),
        channels=(labels := _labels(header, specs))[0],
        units=labels[1],
    )


def decode_arrays(header: SampleHeader, frames: Sequence[Frame], scale: int = 1) -> tuple[np.ndarray, ...]:
    """The buffers of a checked header as arrays: read-only views of raw frames, or decoded
    JPEGs (``scale``: 2, 4 or 8 decodes them that many times smaller on each side)."""
    return tuple(_array(spec, frame, scale) for spec, frame in zip(header.buffers, frames[2:], strict=True))


def _array(spec: BufferSpec, frame: Frame, scale: int = 1) -> np.ndarray:
    view = frame_view(frame)
    if spec.encoding == "jpeg":
        return decode_jpeg(view, spec.shape, scale)
    if spec.encoding == "utf-8":
        return _decode_text(view)
    expected = spec.nbytes
    if view.nbytes != expected:
        msg = f"buffer holds {view.nbytes} bytes, shape {list(spec.shape)} of {spec.dtype} needs {expected}"
        raise FrameError(msg, "bad_size")
    array = np.frombuffer(view, dtype=spec.dtype).reshape(spec.shape)
    array.flags.writeable = False  # a view of the received frame: never write through it
    return array


def _decode_text(view: memoryview) -> np.ndarray:
    """One text event as a read-only object array of one ``str``."""
    if view.nbytes > MAX_TEXT_BYTES:
        msg = f"a text event of {view.nbytes} bytes is over {MAX_TEXT_BYTES}"
        raise FrameError(msg, "bad_size")
    try:
        text = str(view, "utf-8")
    except UnicodeDecodeError as exc:
        msg = f"text event is not UTF-8: {exc.reason} at byte {exc.start}"
        raise FrameError(msg, "bad_value") from None
    array = np.empty(1, object)
    array[0] = text
    array.flags.writeable = False
    return array


def text_block(text: str) -> tuple[np.ndarray, bytes]:
    """``(data, payload)`` of one text event for :func:`encode_sample` (``encoding="utf-8"``)."""
    payload = text.encode()
    if len(payload) > MAX_TEXT_BYTES:
        msg = f"a text event of {len(payload)} bytes is over {MAX_TEXT_BYTES}"
        raise ValueError(msg)
    return np.zeros(1, np.uint8), payload


def jpeg_size(data: memoryview | bytes) -> tuple[int, int, int] | None:
    """``(H, W, components)`` from a JPEG's frame header, without decoding; None if absent.

    Walks the marker segments up to the first start-of-frame, so a small file that
    declares a huge image is caught before any pixel is decoded.
    """
    buf = bytes(data[: min(len(data), 1 << 16)])
    if buf[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 4 <= len(buf):
        if buf[i] != 0xFF:
            return None
        marker = buf[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        length = int.from_bytes(buf[i + 2 : i + 4], "big")
        if marker in _SOF_MARKERS:
            if i + 10 > len(buf):
                return None
            h = int.from_bytes(buf[i + 5 : i + 7], "big")
            w = int.from_bytes(buf[i + 7 : i + 9], "big")
            return h, w, buf[i + 9]
        if marker == 0xDA or length < 2:  # scan data before any frame header
            return None
        i += 2 + length
    return None


_SOF_MARKERS: Final = frozenset(
    {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
)


def check_jpeg(view: memoryview, shape: tuple[int, ...], scale: int = 1) -> tuple[int, ...]:
    """The shape a JPEG buffer decodes to at ``scale``, once its own frame header (read
    without decoding) says the size its message header declares; else ``decode_error``."""
    declared = _jpeg_dims(shape)
    found = jpeg_size(view)
    if declared is None or found is None or found[:2] != declared[:2]:
        msg = f"JPEG frame header says {found}, message header says {list(shape)}"
        raise FrameError(msg, "decode_error")
    # libjpeg rounds a scaled size up.
    return (shape[0], -(-declared[0] // scale), -(-declared[1] // scale), *shape[3:])


def decode_jpeg(view: memoryview, shape: tuple[int, ...], scale: int = 1) -> np.ndarray:
    """A JPEG buffer's pixels, decoded ``scale`` (1, 2, 4 or 8) times smaller on each side:
    ``decode_error`` when its frame header or its data do not give the declared shape."""
    out = check_jpeg(view, shape, scale)
    import cv2  # here, not at the top: a client that reads predictions never loads OpenCV

    grey = (_jpeg_dims(shape) or (0, 0, 1))[2] == 1  # check_jpeg found it one image
    full = cv2.IMREAD_GRAYSCALE if grey else cv2.IMREAD_COLOR
    flag = _REDUCED[scale][grey] if scale in _REDUCED else full
    image = cv2.imdecode(np.frombuffer(view, dtype=np.uint8), flag)
    if image is None or image.size != math.prod(out):
        msg = "JPEG buffer does not decode to its declared shape"
        raise FrameError(msg, "decode_error")
    return image.reshape(out)


_REDUCED: Final = {2: (17, 16), 4: (33, 32), 8: (65, 64)}
"""OpenCV's ``IMREAD_REDUCED_{COLOR,GRAYSCALE}_{2,4,8}`` (fixed values of its API), by scale:
(colour, grey). Named here so that reading this module never loads OpenCV."""


@functools.lru_cache(maxsize=4096)
def _check_names(rig: str, stream: str, modality: str) -> None:
    # The same few names arrive on every message: match each triple once (errors aren't cached).
    for field_name, value in (("rig", rig), ("stream", stream), ("modality", modality)):
        if not NAME_RE.match(value):
            msg = f"header field {field_name} is not a valid name: {_short(value)}"
            raise FrameError(msg)


def decode_sample(frames: Sequence[Frame]) -> Sample:
    """Decode a sensor message; arrays are read-only views of the frames."""
    header = decode_sample_header(frames)
    return sample_of(header, decode_arrays(header, frames))


def sample_of(header: SampleHeader, arrays: tuple[np.ndarray, ...]) -> Sample:
    """A :class:`Sample` from a checked header and its decoded arrays."""
    return Sample(
        rig=header.rig,
        stream=header.stream,
        modality=header.modality,
        seq=header.seq,
        t_ns=header.t_ns,
        clock=header.clock,
        t_pub_ns=header.t_pub_ns,
        rate_hz=header.rate_hz,
        arrays=arrays,
    )


_PREDICTION_KEYS: Final = frozenset(Prediction.__dataclass_fields__) - {"extra"}


def decode_prediction(frames: Sequence[Frame]) -> Prediction:
    """Decode a prediction message."""
    header = decode_header(frames)
    if header.get("type") != "prediction":
        msg = f"expected a prediction, got type {header.get('type')!r}"
        raise FrameError(msg)
    missing = _PREDICTION_KEYS - header.keys()
    if missing:
        msg = f"prediction lacks {sorted(missing)}"
        raise FrameError(msg)
    _check_prediction(header)
    extra = {k: v for k, v in header.items() if k not in _PREDICTION_KEYS | {"v", "type"}}
    return Prediction(**{k: header[k] for k in _PREDICTION_KEYS}, extra=extra)


MAX_CLASSES: Final = 4096
"""Most classes (or regression targets) a prediction may carry."""
MAX_CLASS_LEN: Final = 256


def _check_prediction(h: dict[str, Any]) -> None:
    """Types and ranges of a prediction's fields: what every reader (outputs, the view, the
    recorder's views, the daemon's monitor) may take as given. A forged one is refused."""
    _check_fields(
        h,
        (
            ("rig", str),
            ("seq", int),
            ("window_start_ns", int),
            ("window_end_ns", int),
            ("t_pub_ns", int),
            ("label", str),
            ("classes", list),
            ("scores", list),
            ("present", list),
            ("missing", list),
            ("model", dict),
            ("latency_ns", dict),
        ),
    )
    if not NAME_RE.match(h["rig"]):
        msg = f"prediction rig is not a valid name: {_short(h['rig'])}"
        raise FrameError(msg)
    for name in ("seq", "window_start_ns", "window_end_ns", "t_pub_ns"):
        if not 0 <= h[name] <= MAX_INT:
            msg = f"prediction field {name} must lie in [0, 2**63), got {h[name]}"
            raise FrameError(msg, "bad_value")
    classes, scores = h["classes"], h["scores"]
    if (
        len(classes) > MAX_CLASSES
        or len(scores) != len(classes)
        or not all(type(c) is str and len(c) <= MAX_CLASS_LEN for c in classes)
        or not all(type(x) in (float, int) and math.isfinite(x) for x in scores)
        or len(h["label"]) > MAX_CLASS_LEN
    ):
        msg = "prediction classes and scores must be lists of short names and finite numbers of one length"
        raise FrameError(msg, "bad_value")
    for name in ("present", "missing"):
        if len(h[name]) > 256 or not all(type(m) is str and NAME_RE.match(m) for m in h[name]):
            msg = f"prediction field {name} must list modality names, got {_short(h[name])}"
            raise FrameError(msg)
    if not all(type(k) is str and type(v) is str and len(v) <= 256 for k, v in h["model"].items()):
        msg = f"prediction model must map names to short strings, got {_short(h['model'])}"
        raise FrameError(msg)
    if not all(type(k) is str and type(v) is int and abs(v) <= MAX_INT for k, v in h["latency_ns"].items()):
        msg = f"prediction latency_ns must map names to ints, got {_short(h['latency_ns'])}"
        raise FrameError(msg)
    spread = h.get("disagreement", 0.0)
    if type(spread) not in (float, int) or not 0.0 <= spread <= 1.0:
        msg = f"prediction disagreement must be a number in [0, 1], got {_short(spread)}"
        raise FrameError(msg, "bad_value")
    for name in ("window_index", "hop_ns", "window_offset_ns", "batch_size"):
        value = h.get(name, 0)
        if type(value) is not int or not 0 <= value <= MAX_INT:
            msg = f"prediction field {name} must be an int in [0, 2**63), got {_short(value)}"
            raise FrameError(msg, "bad_value")
    offset = h.get("window_offset_ns", 0)
    if offset and offset >= h.get("hop_ns", 0):
        msg = f"prediction window_offset_ns must be below hop_ns, got {_short(offset)}"
        raise FrameError(msg, "bad_value")
    said = h.get("modality_labels", {})
    if not isinstance(said, dict) or not all(type(k) is str and type(v) is str for k, v in said.items()):
        msg = f"prediction modality_labels must map modalities to labels, got {_short(said)}"
        raise FrameError(msg)
    _check_anomaly(h)


def _check_anomaly(h: dict[str, Any]) -> None:
    """An anomaly model's fields (docs/protocol.md): all of them with ``task: "anomaly"``,
    none without, and agreeing with each other."""
    task = h.get("task", "")
    if type(task) is not str or len(task) > 32:
        msg = f"prediction task must be a short string, got {_short(task)}"
        raise FrameError(msg, "bad_value")
    fields = ("anomaly_score", "threshold", "is_anomaly", "contributions")
    if task != "anomaly":
        if any(f in h for f in (*fields, "nearest")):
            msg = "prediction has anomaly fields but is not of task anomaly"
            raise FrameError(msg, "bad_value")
        return
    if not all(f in h for f in fields):
        msg = f"an anomaly prediction carries {', '.join(fields)}; got {sorted(k for k in fields if k in h)}"
        raise FrameError(msg, "bad_value")
    score, threshold, flag = h["anomaly_score"], h["threshold"], h["is_anomaly"]
    for name, value in (("anomaly_score", score), ("threshold", threshold)):
        if type(value) not in (float, int) or not (math.isfinite(value) and 0 <= value <= 1e30):
            msg = f"prediction {name} must be a finite number in [0, 1e30], got {_short(value)}"
            raise FrameError(msg, "bad_value")
    if not threshold > 0 or type(flag) is not bool or flag != (score > threshold):
        msg = f"prediction is_anomaly must say anomaly_score > threshold (> 0), got {_short(flag)}"
        raise FrameError(msg, "bad_value")
    if h["label"] != ("anomaly" if flag else "normal"):
        msg = (
            f"an anomaly prediction's label is anomaly or normal as is_anomaly says, got {_short(h['label'])}"
        )
        raise FrameError(msg, "bad_value")
    shares, present = h["contributions"], set(h["present"])
    if (
        not isinstance(shares, dict)
        or not set(shares) <= present
        or not all(type(v) in (float, int) and 0.0 <= v <= 1.0 for v in shares.values())
        or sum(shares.values()) > 1.01
    ):
        msg = f"prediction contributions must share at most 1 among present modalities, got {_short(shares)}"
        raise FrameError(msg, "bad_value")
    nearest = h.get("nearest", "")
    if type(nearest) is not str or len(nearest) > MAX_CLASS_LEN:
        msg = f"prediction nearest must be a class name, got {_short(nearest)}"
        raise FrameError(msg, "bad_value")


def describe(frames: Sequence[Frame]) -> dict[str, Any]:
    """Any message as a JSON-able dict: the header plus the topic (for ``fusiond echo``)."""
    header = decode_header(frames)
    return {"topic": bytes(frame_view(frames[0])).decode(errors="replace"), **header}


__all__ = [
    "block_end_ns",
    "buffer_spec",
    "BufferSpec",
    "check_jpeg",
    "CLOCKS",
    "decode_arrays",
    "decode_header",
    "decode_jpeg",
    "decode_prediction",
    "decode_sample",
    "decode_sample_header",
    "describe",
    "DTYPES",
    "DUPLICATE",
    "encode_output_report",
    "encode_prediction",
    "encode_sample",
    "encode_source_error",
    "encode_tally",
    "ENCODINGS",
    "ERROR_PREFIX",
    "Frame",
    "frame_view",
    "jpeg_size",
    "MAX_CLASS_LEN",
    "MAX_CLASSES",
    "MAX_DIMS",
    "MAX_LABEL_LEN",
    "MAX_ELEMENTS",
    "MAX_INT",
    "MAX_PUBLISHER_LEN",
    "MAX_RATE_HZ",
    "MAX_TEXT_BYTES",
    "MIN_RATE_HZ",
    "NAME_RE",
    "OUTPUT_PREFIX",
    "Prediction",
    "PREDICTION_PREFIX",
    "prediction_topic",
    "PROTOCOL_VERSION",
    "publisher_id",
    "publisher_of",
    "Sample",
    "sample_of",
    "SAMPLE_PREFIX",
    "sample_topic",
    "SampleHeader",
    "SequenceGaps",
    "TALLY_EVERY_NS",
    "tally_of",
    "TALLY_PREFIX",
    "text_block",
    "WireError",
]
