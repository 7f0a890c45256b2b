"""Messages between the daemon's own processes: closed windows, progress and counters.

A window travels as ``[b"w", msgpack header, one raw buffer per modality]``: arrays go as
their memory (``copy=False``) and come back as read-only numpy views of the received
frames, never pickled. The same socket carries ``[b"p", msgpack {rig: index}]``, a
worker's progress on the window grid (so the server's batcher knows who is coming, even
through empty windows), and ``[b"end", b""]`` once a worker has flushed its last window.
Counters go to the daemon as ``[b"s", msgpack snapshot]``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import msgpack
import numpy as np

from fusiond.align.windows import Window
from fusiond.bus.wire import Frame, frame_view
from fusiond.errors import FrameError

__all__ = [
    "decode_body",
    "decode_window",
    "encode_progress",
    "encode_stats",
    "encode_window",
    "END",
    "PROGRESS",
    "STATS",
    "WINDOW",
]

WINDOW = b"w"
PROGRESS = b"p"
END = b"end"
STATS = b"s"


def encode_window(window: Window) -> list[bytes | memoryview]:
    """Frames for one closed window; its arrays are not copied."""
    names = list(window.inputs)
    arrays = [np.ascontiguousarray(window.inputs[m]) for m in names]
    header = {
        "rig": window.rig,
        "index": window.index,
        "start": window.start_ns,
        "end": window.end_ns,
        "present": [window.present[m] for m in names],
        "closed_by": window.closed_by,
        "t_close": window.t_close_ns,
        "ingest": window.capture_to_ingest_ns,
        "hop": window.hop_ns,
        "offset": window.offset_ns,
        "inputs": [[m, a.dtype.str, list(a.shape)] for m, a in zip(names, arrays, strict=True)],
    }
    return [WINDOW, msgpack.packb(header), *(a.reshape(-1).view(np.uint8).data for a in arrays)]


def decode_window(frames: Sequence[Frame]) -> Window:
    """A window from :func:`encode_window`'s frames; arrays are views of the frames."""
    header = msgpack.unpackb(frame_view(frames[1]))
    inputs: dict[str, np.ndarray] = {}
    for (name, dtype, shape), frame in zip(header["inputs"], frames[2:], strict=True):
        array = np.frombuffer(frame_view(frame), dtype=_dtype(dtype))
        if array.size != math.prod(shape):
            msg = f"window buffer {name} holds {array.size} values, not {shape}"
            raise FrameError(msg, "bad_size")
        inputs[name] = array.reshape(shape)
    present = dict(zip(inputs, header["present"], strict=True))
    hop, offset = header["hop"], header["offset"]
    if type(offset) is not int or not 0 <= offset <= max(0, hop - 1):
        msg = f"window offset {offset!r} is not in [0, hop {hop!r})"
        raise FrameError(msg, "bad_value")
    return Window(
        header["rig"],
        header["index"],
        header["start"],
        header["end"],
        inputs,
        present,
        header["closed_by"],
        header["t_close"],
        header["ingest"],
        hop,
        offset,
    )


@functools.lru_cache(maxsize=64)
def _dtype(name: str) -> np.dtype:
    return np.dtype(name)


def encode_progress(progress: Mapping[str, int]) -> list[bytes]:
    """Each rig's grid index below which every window is closed."""
    return [PROGRESS, msgpack.packb(dict(progress))]


def encode_stats(snapshot: Mapping[str, Any]) -> list[bytes]:
    """A component's counters, for the daemon's status, summary and metrics."""
    return [STATS, msgpack.packb(dict(snapshot))]


def decode_body(frames: Sequence[Frame]) -> Any:
    """The msgpack body of a progress or counters message."""
    return msgpack.unpackb(frame_view(frames[1]), strict_map_key=False)
