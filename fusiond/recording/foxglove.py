"""What Foxglove shows of the bus: views of sample and prediction messages in Foxglove's
own schemas (``foxglove-sdk``, the ``view`` extra).

Two places use them: ``fusiond record --foxglove`` writes them into a recording beside
the bus channels (topics prefixed ``/foxglove/``), and the ``foxglove`` output serves them
live over Foxglove's WebSocket protocol (:mod:`fusiond_plugins.foxglove`). Each bus
stream becomes one view channel, chosen by what its buffers hold, not by its name:

==========================  ==============================  ====================================
stream                      view                            schema
==========================  ==============================  ====================================
JPEG frames                 the source's JPEG, not decoded  ``foxglove.CompressedImage``
raw ``uint8`` images        ``bgr8``/``mono8`` (live), or   ``foxglove.RawImage`` /
``[n, H, W, 1|3]``          JPEG (recordings: smaller)      ``foxglove.CompressedImage``
``[n, C]`` at >= 4 kHz,     16-bit PCM (floats and other    ``foxglove.RawAudio``
C <= 8, no channel names    integers scaled to full scale)
other numbers               one row per sample, each        ``fusiond.Series`` (JSON; plot
                            channel a field by its name     ``/s/<rig>/<stream>.accel_z``)
text events                 one log line per event          ``foxglove.Log``
predictions ``p/<rig>``     label, scores, present and      ``fusiond.Prediction`` (JSON)
                            missing, what each modality
                            says, disagreement, mask
==========================  ==============================  ====================================

Views are copies for looking at: replay, offline runs and training read only the bus
channels. A view never decodes a JPEG and reads only a message's first buffer (a bomb on
the bus costs the viewer nothing); one message becomes at most :data:`MAX_IMAGES` images
or :data:`MAX_ROWS` rows, and numeric streams are thinned to :data:`ROWS_PER_S` rows a
second of their declared rate. A stream keeps the view its first message gave it.

Times: a sample's view carries the stamp its source sent (``t_ns``, on the clock its
header's ``clock`` names, ``t_ns + i / rate_hz`` for its i-th sample): the bus as it is,
before the daemon's clock model corrects it, so a drifting sensor shows its drift here.
A prediction's view is stamped with its window's end, on the daemon's clock.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fusiond.bus.wire import Frame, Prediction, SampleHeader, decode_arrays, frame_view

__all__ = [
    "JPEG_QUALITY",
    "MAX_FIELDS",
    "MAX_IMAGES",
    "MAX_ROWS",
    "MAX_TIME_NS",
    "PREFIX",
    "ROWS_PER_S",
    "View",
    "Views",
    "needs",
]

PREFIX = "/foxglove/"
"""Before every view topic in a recording, apart from the bus channels."""
JPEG_QUALITY = 85
ROWS_PER_S = 500
"""Most rows a second a numeric view gets (a faster stream is thinned by a whole stride)."""
MAX_FIELDS = 64
"""Most channels a numeric view plots (an embedding of 512 is not a plot)."""
AUDIO_MIN_HZ = 4000.0
MAX_TEXT = 4096
"""Most characters of a text event shown in its log line."""
MAX_ROWS = 1000
"""Most rows one message of a numeric stream becomes, whatever its declared rate."""
MAX_IMAGES = 8
"""Most images one message of a camera stream becomes (evenly chosen)."""
MAX_TIME_NS = 2**32 * 1_000_000_000
"""Foxglove's times hold seconds in 32 bits: a stamp past 2106 has no view."""


def needs() -> Any:
    """The ``foxglove`` package, or a clear error naming the extra to install."""
    try:
        import foxglove.messages
    except ImportError as exc:
        msg = "Foxglove views need foxglove-sdk: pip install 'fusiond[view]'"
        raise ImportError(msg) from exc
    return foxglove


@dataclass(frozen=True)
class View:
    """One message of one view channel."""

    topic: str
    schema: str
    """The schema's name (``foxglove.RawAudio``); :meth:`Views.schema` has its definition."""
    encoding: str
    """``protobuf`` or ``json``."""
    t_ns: int
    body: bytes


class Views:
    """Turns bus messages into views; ``prefix`` goes before every view topic, and
    ``jpeg`` encodes raw images (recordings) instead of sending them raw (live)."""

    def __init__(self, prefix: str = "", jpeg: bool = False) -> None:
        fox = needs()
        self.messages = fox.messages
        self.prefix, self.jpeg = prefix, jpeg
        self._schemas: dict[str, tuple[str, bytes]] = {}
        self._fields: dict[str, tuple[str, ...]] = {}
        self._kind: dict[str, str] = {}
        """Each topic's schema, fixed by its first view: a stream cannot switch views."""

    def forget(self, topic: str) -> None:
        """Drop what is kept about a topic (its channel is gone)."""
        self._fields.pop(topic, None)
        schema = self._kind.pop(topic, None)
        if schema is not None and schema.startswith("fusiond.Series."):
            self._schemas.pop(schema, None)

    def schema(self, name: str) -> tuple[str, bytes]:
        """``(encoding, data)`` of a schema named in a :class:`View`: a protobuf
        ``FileDescriptorSet``, or a JSON schema."""
        return self._schemas[name]

    def topic(self, header: SampleHeader) -> str:
        """The view topic of a sample stream."""
        return f"{self.prefix}s/{header.rig}/{header.stream}"

    def sample(self, header: SampleHeader, frames: Sequence[Frame]) -> list[View]:
        """The views of one checked sample message (:func:`~fusiond.bus.wire.decode_sample_header`).
        ValueError for one that cannot have one (a stamp past 2106, a stream that changed
        from images to numbers)."""
        views = self._sample(header, frames)
        for view in views:
            kind = self._kind.setdefault(view.topic, view.schema)
            if kind != view.schema:
                msg = f"{view.topic} was shown as {kind}, and cannot become {view.schema}"
                raise ValueError(msg)
        return views

    def _sample(self, header: SampleHeader, frames: Sequence[Frame]) -> list[View]:
        spec, topic = header.buffers[0], self.topic(header)
        _check_time(header.t_ns)
        if spec.encoding == "jpeg":
            return [self._compressed(topic, header.stream, header.t_ns, frames[2])]
        # Only the first buffer is read: another one (a JPEG bomb, say) is never decoded here.
        data = decode_arrays(header._replace(buffers=header.buffers[:1]), frames[:3])[0]
        if spec.encoding == "utf-8":
            return [self._log(topic, header, str(data[0]))]
        period_ns = round(1e9 / header.rate_hz) if header.rate_hz > 0 else 0
        if data.dtype == np.uint8 and data.ndim == 4 and data.shape[3] in (1, 3) and len(data):
            count = min(len(data), MAX_IMAGES)
            chosen = np.unique(np.linspace(0, len(data) - 1, count).round().astype(int)).tolist()
            return [
                self._image(topic, header.stream, _at(header.t_ns, i, period_ns), data[i]) for i in chosen
            ]
        audio = not header.channels and header.rate_hz >= AUDIO_MIN_HZ
        if audio and data.ndim == 2 and 0 < data.shape[1] <= 8 and len(data) and data.dtype.kind in "iuf":
            return [self._audio(topic, header, data)]
        if data.dtype.kind in "biuf" and data.ndim in (1, 2) and len(data) and data[0].size:
            return self._rows(topic, header, data.reshape(len(data), -1), period_ns)
        return []

    def prediction(self, p: Prediction) -> View:
        """A prediction's view: what ``fusiond echo`` shows, as one JSON object."""
        from fusiond.outputs.base import payload

        _check_time(p.window_end_ns)
        body = payload(p)
        body["timestamp"] = _time(p.window_end_ns)
        body["mask"] = {m: 1 for m in p.present} | {m: 0 for m in p.missing}
        self._json_schema("fusiond.Prediction", PREDICTION_SCHEMA)
        topic = f"{self.prefix}p/{p.rig}"
        return View(
            topic, "fusiond.Prediction", "json", p.window_end_ns, json.dumps(body, allow_nan=False).encode()
        )

    # -- one per kind of view ----------------------------------------------------------

    def _proto(self, topic: str, t_ns: int, message: Any) -> View:
        name = type(message).__name__
        key = f"foxglove.{name}"
        if key not in self._schemas:
            schema = type(message).get_schema()
            self._schemas[key] = (schema.encoding, schema.data)
        return View(topic, key, "protobuf", t_ns, message.encode())

    def _stamp(self, t_ns: int) -> Any:
        sec, nsec = divmod(t_ns, 1_000_000_000)
        return self.messages.Timestamp(sec=sec, nsec=nsec)

    def _compressed(self, topic: str, frame_id: str, t_ns: int, jpeg: Frame) -> View:
        m = self.messages.CompressedImage(
            timestamp=self._stamp(t_ns), frame_id=frame_id, data=bytes(frame_view(jpeg)), format="jpeg"
        )
        return self._proto(topic, t_ns, m)

    def _image(self, topic: str, frame_id: str, t_ns: int, frame: np.ndarray) -> View:
        if self.jpeg:
            import cv2

            ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            if not ok:
                msg = f"cannot JPEG-encode a frame of shape {frame.shape}"
                raise ValueError(msg)
            return self._compressed(topic, frame_id, t_ns, buf.data)
        height, width, depth = frame.shape
        m = self.messages.RawImage(
            timestamp=self._stamp(t_ns),
            frame_id=frame_id,
            width=width,
            height=height,
            encoding="bgr8" if depth == 3 else "mono8",
            step=width * depth,
            data=np.ascontiguousarray(frame).tobytes(),
        )
        return self._proto(topic, t_ns, m)

    def _audio(self, topic: str, header: SampleHeader, data: np.ndarray) -> View:
        if data.dtype == np.int16:
            pcm = data
        elif data.dtype.kind == "f":  # full scale is +-1.0
            pcm = (np.clip(np.nan_to_num(data), -1.0, 1.0) * 32767).astype(np.int16)
        else:  # integers: centred (unsigned ones sit on their midpoint), then to 16 bits
            bits = data.dtype.itemsize * 8
            wide = data.astype(np.int64) - (1 << (bits - 1) if data.dtype.kind == "u" else 0)
            pcm = (wide >> (bits - 16) if bits > 16 else wide << (16 - bits)).astype(np.int16)
        m = self.messages.RawAudio(
            timestamp=self._stamp(header.t_ns),
            data=np.ascontiguousarray(pcm).astype("<i2", copy=False).tobytes(),
            format="pcm-s16",
            sample_rate=round(header.rate_hz),
            number_of_channels=data.shape[1],
        )
        return self._proto(topic, header.t_ns, m)

    def _log(self, topic: str, header: SampleHeader, text: str) -> View:
        m = self.messages.Log(
            timestamp=self._stamp(header.t_ns),
            level=self.messages.LogLevel.Info,
            message=text[:MAX_TEXT],
            name=f"{header.rig}/{header.stream}",
        )
        return self._proto(topic, header.t_ns, m)

    def _rows(self, topic: str, header: SampleHeader, data: np.ndarray, period_ns: int) -> list[View]:
        fields = self._fields.get(topic)
        if fields is None:  # fixed at the stream's first message, like its channel
            n = min(data.shape[1], MAX_FIELDS)
            names = header.channels if len(header.channels) == data.shape[1] else ()
            fields = tuple(names[:n]) if names else tuple(f"c{i}" for i in range(n))
            units = dict(zip(header.channels, header.units, strict=False)) if header.units else {}
            self._fields[topic] = fields
            self._json_schema(f"fusiond.Series.{topic}", _series_schema(fields, units))
        stride = max(1, math.ceil(header.rate_hz / ROWS_PER_S)) if header.rate_hz > 0 else len(data)
        stride = max(stride, math.ceil(len(data) / MAX_ROWS))
        values = data[::stride, : len(fields)].astype(np.float64, copy=False).tolist()
        out = []
        for i, row in enumerate(values):
            t_ns = _at(header.t_ns, i * stride, period_ns)
            body: dict[str, Any] = {"timestamp": _time(t_ns)}
            body.update((f, v if math.isfinite(v) else None) for f, v in zip(fields, row, strict=False))
            out.append(View(topic, f"fusiond.Series.{topic}", "json", t_ns, json.dumps(body).encode()))
        return out

    def _json_schema(self, name: str, schema: dict[str, Any]) -> None:
        if name not in self._schemas:
            self._schemas[name] = ("jsonschema", json.dumps({"title": name, **schema}).encode())


def _check_time(t_ns: int) -> None:
    if not 0 <= t_ns < MAX_TIME_NS:
        msg = f"a stamp of {t_ns} ns is past what a Foxglove time holds (2106)"
        raise ValueError(msg)


def _at(t_ns: int, i: int, period_ns: int) -> int:
    """The stamp of row ``i``, kept inside a Foxglove time."""
    return min(t_ns + i * period_ns, MAX_TIME_NS - 1)


def _time(t_ns: int) -> dict[str, int]:
    sec, nsec = divmod(t_ns, 1_000_000_000)
    return {"sec": sec, "nsec": nsec}


_TIME = {
    "type": "object",
    "properties": {
        "sec": {"type": "integer", "minimum": 0},
        "nsec": {"type": "integer", "minimum": 0, "maximum": 999_999_999},
    },
}


def _series_schema(fields: tuple[str, ...], units: dict[str, str]) -> dict[str, Any]:
    properties: dict[str, Any] = {"timestamp": _TIME}
    for name in fields:
        properties[name] = {"type": ["number", "null"]}
        if units.get(name):
            properties[name]["description"] = units[name]
    return {
        "description": "one sample of a fusiond stream, a field per channel",
        "type": "object",
        "properties": properties,
    }


PREDICTION_SCHEMA: dict[str, Any] = {
    "description": "one fusiond prediction (docs/protocol.md), scores keyed by class",
    "type": "object",
    "properties": {
        "timestamp": _TIME,
        "rig": {"type": "string"},
        "seq": {"type": "integer"},
        "label": {"type": "string"},
        "scores": {"type": "object", "additionalProperties": {"type": "number"}},
        "present": {"type": "array", "items": {"type": "string"}},
        "missing": {"type": "array", "items": {"type": "string"}},
        "mask": {"type": "object", "additionalProperties": {"type": "integer"}},
        "modality_labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "disagreement": {"type": "number"},
        "model": {"type": "object"},
        "window_start_ns": {"type": "integer"},
        "window_end_ns": {"type": "integer"},
        "latency_ms": {"type": "number"},
    },
}
