"""Wire codec: ``[topic, msgpack header, raw buffers...]`` (see docs/protocol.md).

Pure code: no sockets. Decoding returns numpy views of the received frames, not copies.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import cv2
import msgpack
import numpy as np

from fusiond.errors import FrameError, VersionError, WireError

PROTOCOL_VERSION: Final = (1, 0)
SAMPLE_PREFIX: Final = "s/"
PREDICTION_PREFIX: Final = "p/"
ERROR_PREFIX: Final = "e/"
NAME_RE: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
CLOCKS: Final = frozenset({"realtime", "monotonic"})
DTYPES: Final = {s: np.dtype(s) for s in ("|u1", "|i1", "<u2", "<i2", "<i4", "<f4", "<f8")}
ENCODINGS: Final = frozenset({"raw", "jpeg"})
MAX_DIMS: Final = 6


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


class SequenceGaps:
    """Messages missing from each stream, from its ``seq`` numbers.

    ZeroMQ drops silently when a queue is full or a link breaks; a jump in ``seq`` is how
    such losses become visible. A lower number than the last is a restarted source (or a
    replay starting over), not a loss.
    """

    def __init__(self) -> None:
        self._last: dict[Any, int] = {}

    def missed(self, key: Any, seq: int) -> int:
        """How many messages of ``key`` went missing just before this one."""
        last = self._last.get(key)
        self._last[key] = seq
        return seq - last - 1 if last is not None and seq > last + 1 else 0


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

    @property
    def end_ns(self) -> int:
        """End of the time span the block covers (one sample period past the last sample)."""
        if self.rate_hz <= 0:
            return self.t_ns + 1
        return self.t_ns + round(len(self.data) * 1e9 / self.rate_hz)


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
) -> list[bytes | memoryview]:
    """Frames for one sample block; the array travels as its own buffer, not copied.

    With ``encoding="jpeg"``, ``payload`` holds the JPEG bytes and ``data`` only gives the
    decoded shape and dtype.
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
    }
    body: bytes | memoryview = payload if payload is not None else array.data.cast("B")
    return [sample_topic(rig, stream).encode(), msgpack.packb(header), body]


def encode_source_error(*, rig: str, stream: str, kind: str, error: str, attempt: int,
                        retry_in_s: float, t_ns: int) -> list[bytes]:  # fmt: skip
    """Frames telling subscribers that a source could not open or lost its device."""
    header = {"v": list(PROTOCOL_VERSION), "type": "source_error", "rig": rig, "stream": stream,
              "kind": kind, "error": error, "attempt": attempt, "retry_in_s": retry_in_s,
              "t_ns": t_ns}  # fmt: skip
    return [f"{ERROR_PREFIX}{rig}/{stream}".encode(), msgpack.packb(header)]


def encode_prediction(prediction: Prediction) -> list[bytes]:
    """Frames for one prediction (header only, no buffers)."""
    return [prediction_topic(prediction.rig).encode(), msgpack.packb(prediction.to_dict())]


def _view(frame: Frame) -> memoryview:
    if isinstance(frame, bytes | memoryview):
        return memoryview(frame)
    return frame.buffer


def decode_header(frames: Sequence[Frame]) -> dict[str, Any]:
    """Unpack and version-check the header frame; raise WireError on anything malformed."""
    if len(frames) < 2:
        msg = f"expected at least 2 frames, got {len(frames)}"
        raise FrameError(msg, "bad_framing")
    try:
        header = msgpack.unpackb(_view(frames[1]), raw=False, strict_map_key=True)
    except Exception as exc:
        msg = f"header is not msgpack: {exc}"
        raise FrameError(msg) from None
    if not isinstance(header, dict):
        msg = "header is not a map"
        raise FrameError(msg)
    version = header.get("v")
    if (
        not isinstance(version, list)
        or len(version) != 2
        or not all(isinstance(x, int) for x in version)
    ):
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
        msg = f"header field {name} must be {kind.__name__}, got {value!r}"
        raise FrameError(msg)


def _array(spec: Any, frame: Frame) -> np.ndarray:
    if not isinstance(spec, dict):
        msg = f"buffer description must be a map, got {spec!r}"
        raise FrameError(msg)
    dtype, shape, encoding = spec.get("dtype"), spec.get("shape"), spec.get("encoding", "raw")
    if dtype not in DTYPES:
        msg = f"unsupported dtype {dtype!r}"
        raise FrameError(msg)
    if (
        not isinstance(shape, list)
        or not 1 <= len(shape) <= MAX_DIMS
        or not all(isinstance(n, int) and n >= 0 for n in shape)
    ):
        msg = f"bad shape {shape!r}"
        raise FrameError(msg)
    if encoding not in ENCODINGS:
        msg = f"unsupported encoding {encoding!r}"
        raise FrameError(msg)
    view = _view(frame)
    if encoding == "jpeg":
        return _decode_jpeg(view, shape)
    expected = math.prod(shape) * DTYPES[dtype].itemsize
    if view.nbytes != expected:
        msg = f"buffer holds {view.nbytes} bytes, header shape {shape} of {dtype} needs {expected}"
        raise FrameError(msg, "bad_size")
    array = np.frombuffer(view, dtype=dtype).reshape(shape)
    array.flags.writeable = False  # a view of the received frame: never write through it
    return array


def _decode_jpeg(view: memoryview, shape: list[int]) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(view, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        msg = "JPEG buffer does not decode"
        raise FrameError(msg, "decode_error")
    image = image.reshape(shape)
    return image


@functools.lru_cache(maxsize=4096)
def _check_names(rig: str, stream: str, modality: str) -> None:
    # The same few names arrive on every message: match each triple once (errors aren't cached).
    for field_name, value in (("rig", rig), ("stream", stream), ("modality", modality)):
        if not NAME_RE.match(value):
            msg = f"header field {field_name} is not a valid name: {value!r}"
            raise FrameError(msg)


def decode_sample(frames: Sequence[Frame]) -> Sample:
    """Decode a sensor message; arrays are read-only views of the frames."""
    header = decode_header(frames)
    if header.get("type") != "sample":
        msg = f"expected a sample, got type {header.get('type')!r}"
        raise FrameError(msg)
    _check_fields(header, _SAMPLE_FIELDS)
    buffers = header["buffers"]
    if len(buffers) != len(frames) - 2 or not buffers:
        msg = f"header lists {len(buffers)} buffers, message carries {len(frames) - 2}"
        raise FrameError(msg, "bad_size")
    _check_names(header["rig"], header["stream"], header["modality"])
    if header["clock"] not in CLOCKS:
        msg = f"unknown clock {header['clock']!r}"
        raise FrameError(msg)
    arrays = tuple(_array(spec, frame) for spec, frame in zip(buffers, frames[2:], strict=True))
    return Sample(
        rig=header["rig"],
        stream=header["stream"],
        modality=header["modality"],
        seq=header["seq"],
        t_ns=header["t_ns"],
        clock=header["clock"],
        t_pub_ns=header["t_pub_ns"],
        rate_hz=float(header["rate_hz"]),
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
    extra = {k: v for k, v in header.items() if k not in _PREDICTION_KEYS | {"v", "type"}}
    return Prediction(**{k: header[k] for k in _PREDICTION_KEYS}, extra=extra)


def describe(frames: Sequence[Frame]) -> dict[str, Any]:
    """Any message as a JSON-able dict: the header plus the topic (for ``fusiond echo``)."""
    header = decode_header(frames)
    return {"topic": bytes(_view(frames[0])).decode(errors="replace"), **header}


__all__ = [
    "PREDICTION_PREFIX",
    "PROTOCOL_VERSION",
    "SAMPLE_PREFIX",
    "Prediction",
    "Sample",
    "WireError",
    "decode_prediction",
    "decode_sample",
    "describe",
    "encode_prediction",
    "encode_sample",
    "prediction_topic",
    "sample_topic",
]
