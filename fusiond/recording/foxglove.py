"""Extra channels that Foxglove displays, written next to the bus channels on request.

``fusiond record --foxglove`` adds, for every camera stream ``s/<rig>/<stream>``, a
channel ``foxglove/s/<rig>/<stream>`` of ``foxglove.CompressedImage`` messages (JPEG, JSON
encoded, stamped with the capture time), and for every ``p/<rig>`` a channel
``foxglove/p/<rig>`` of ``fusiond.Prediction`` JSON messages (label, per-class scores,
missing modalities), so a recording opened in Foxglove shows the video beside the
predictions. Both are copies for viewing: replay, offline runs and training read only the
``fusiond-frames`` channels.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator, Sequence
from typing import Any

import cv2
import numpy as np

from fusiond.bus.wire import decode_prediction, decode_sample

__all__ = [
    "IMAGE_SCHEMA",
    "JPEG_QUALITY",
    "MESSAGE_ENCODING",
    "PREDICTION_SCHEMA",
    "PREFIX",
    "SCHEMA_ENCODING",
    "SCHEMAS",
    "view_messages",
]

PREFIX = "foxglove/"
MESSAGE_ENCODING = "json"
SCHEMA_ENCODING = "jsonschema"
JPEG_QUALITY = 85

_TIME = {
    "type": "object",
    "title": "time",
    "properties": {
        "sec": {"type": "integer", "minimum": 0},
        "nsec": {"type": "integer", "minimum": 0, "maximum": 999_999_999},
    },
}
# The published schema of foxglove.CompressedImage (json encoding: bytes as base64).
IMAGE_SCHEMA = {
    "title": "foxglove.CompressedImage",
    "description": "A compressed image",
    "type": "object",
    "properties": {
        "timestamp": _TIME,
        "frame_id": {"type": "string"},
        "data": {"type": "string", "contentEncoding": "base64"},
        "format": {"type": "string"},
    },
}
PREDICTION_SCHEMA = {
    "title": "fusiond.Prediction",
    "description": "One fusiond prediction (docs/protocol.md), scores keyed by class",
    "type": "object",
    "properties": {
        "timestamp": _TIME,
        "rig": {"type": "string"},
        "label": {"type": "string"},
        "scores": {"type": "object", "additionalProperties": {"type": "number"}},
        "missing": {"type": "array", "items": {"type": "string"}},
        "window_start_ns": {"type": "integer"},
        "model": {"type": "string"},
    },
}
SCHEMAS = {"image": IMAGE_SCHEMA, "prediction": PREDICTION_SCHEMA}


def _time(t_ns: int) -> dict[str, int]:
    sec, nsec = divmod(t_ns, 1_000_000_000)
    return {"sec": sec, "nsec": nsec}


def _jpeg(frame: np.ndarray) -> memoryview:
    ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        msg = f"cannot JPEG-encode a frame of shape {frame.shape}"
        raise ValueError(msg)
    return buf.data


def view_messages(
    header: dict[str, Any], frames: Sequence[bytes | memoryview]
) -> Iterator[tuple[str, str, int, bytes]]:
    """``(topic, schema, publish time, JSON body)`` for what Foxglove can show of one bus
    message: each frame of a camera block, or a prediction; nothing for other messages.

    A frame that came JPEG-encoded from its source is copied as it is; a raw one is
    encoded here, which costs a few milliseconds per VGA frame (hence opt-in).
    """
    kind = header.get("type")
    if kind == "prediction":
        p = decode_prediction(frames)
        body = {
            "timestamp": _time(p.window_end_ns),
            "rig": p.rig,
            "label": p.label,
            "scores": dict(zip(p.classes, p.scores, strict=False)),
            "missing": p.missing,
            "window_start_ns": p.window_start_ns,
            "model": p.model.get("name", ""),
        }
        yield f"{PREFIX}p/{p.rig}", "prediction", p.window_end_ns, json.dumps(body).encode()
        return
    if kind != "sample" or header.get("modality") != "video":
        return
    topic = f"{PREFIX}s/{header['rig']}/{header['stream']}"
    buffer = header["buffers"][0]
    if buffer.get("encoding") == "jpeg" and buffer["shape"][0] == 1:
        yield topic, "image", header["t_ns"], _image(header["stream"], header["t_ns"], frames[2])
        return
    sample = decode_sample(frames)
    if sample.data.ndim != 4 or sample.data.dtype != np.uint8:
        return
    period_ns = round(1e9 / sample.rate_hz) if sample.rate_hz > 0 else 0
    for i, frame in enumerate(sample.data):
        t_ns = sample.t_ns + i * period_ns
        yield topic, "image", t_ns, _image(sample.stream, t_ns, _jpeg(frame))


def _image(frame_id: str, t_ns: int, jpeg: bytes | memoryview) -> bytes:
    # base64 reads any contiguous buffer: the JPEG is not copied before it is encoded.
    body = {
        "timestamp": _time(t_ns),
        "frame_id": frame_id,
        "format": "jpeg",
        "data": base64.b64encode(jpeg).decode(),
    }
    return json.dumps(body).encode()
