from __future__ import annotations

import dataclasses
import os
import socket

import msgpack
import numpy as np
import pytest
import zmq

from fusiond.bus import wire
from fusiond.bus.template import HeaderTemplate
from fusiond.errors import FrameError, VersionError, WireError


def sample_frames(data: np.ndarray, **overrides):
    fields = dict(
        rig="r1", stream="cam", modality="video", seq=7, t_ns=123, t_pub_ns=456, rate_hz=30.0, data=data
    )
    fields.update(overrides)
    return wire.encode_sample(**fields)


@pytest.fixture
def pair(sockets):
    a, b = sockets.make(zmq.PAIR), sockets.make(zmq.PAIR)
    b.bind("inproc://wire")
    a.connect("inproc://wire")
    return a, b


def test_sample_round_trip_over_real_sockets_is_a_view_of_the_frame(pair):
    a, b = pair
    frame = np.random.default_rng(0).integers(0, 255, (1, 48, 64, 3), dtype=np.uint8)
    a.send_multipart(sample_frames(frame), copy=False)
    received = b.recv_multipart(copy=False)
    sample = wire.decode_sample(received)
    assert sample.rig == "r1" and sample.stream == "cam" and sample.seq == 7
    assert sample.t_ns == 123 and sample.rate_hz == 30.0
    np.testing.assert_array_equal(sample.data, frame)
    # No copy: the array's memory is the received frame's buffer.
    assert np.shares_memory(sample.data, np.frombuffer(received[2].buffer, np.uint8))
    assert not sample.data.flags.writeable


def test_a_block_ends_one_period_past_its_last_sample():
    sample = wire.decode_sample(sample_frames(np.zeros((10, 3), np.float32), rate_hz=100.0, t_ns=0))
    assert wire.block_end_ns(sample.t_ns, len(sample.data), sample.rate_hz) == 100_000_000
    assert wire.block_end_ns(5, 10, 0.0) == 6  # irregular events: a nanosecond each


def test_topics():
    frames = sample_frames(np.zeros((1, 2), np.float32))
    assert frames[0] == b"s/r1/cam"
    assert wire.prediction_topic("r1") == "p/r1"


def _header(frames) -> dict:
    return msgpack.unpackb(frames[1])


def _with_header(frames, header):
    return [frames[0], msgpack.packb(header), *frames[2:]]


@pytest.mark.parametrize(
    ("change", "error", "reason"),
    [
        (lambda h: h.update(v=[2, 0]), VersionError, "bad_version"),
        (lambda h: h.update(v="1.0"), FrameError, "bad_header"),
        (lambda h: h.pop("seq"), FrameError, "bad_header"),
        (lambda h: h.update(t_ns="soon"), FrameError, "bad_header"),
        (lambda h: h.update(rig="bad rig/name"), FrameError, "bad_header"),
        (lambda h: h.update(clock="sundial"), FrameError, "bad_header"),
        (lambda h: h["buffers"][0].update(dtype="object"), FrameError, "bad_header"),
        (lambda h: h["buffers"][0].update(shape=[5, 3]), FrameError, "bad_size"),
        (lambda h: h["buffers"][0].update(shape=[-1]), FrameError, "bad_header"),
        (lambda h: h["buffers"].append(h["buffers"][0]), FrameError, "bad_size"),
    ],
)
def test_malformed_headers_are_rejected_with_a_reason(change, error, reason):
    frames = sample_frames(np.zeros((4, 3), np.float32))
    header = _header(frames)
    change(header)
    with pytest.raises(error) as info:
        wire.decode_sample(_with_header(frames, header))
    assert info.value.reason == reason


@pytest.mark.parametrize(
    "frames",
    [[b"s/x"], [b"s/x", b"\xc1\xc1"], [b"s/x", msgpack.packb([1, 2])], [b"s/x", b""]],
)
def test_garbage_is_a_wire_error(frames):
    with pytest.raises(WireError):
        wire.decode_sample(frames)


def test_minor_version_bump_is_accepted():
    frames = sample_frames(np.zeros((2, 1), np.float32))
    header = _header(frames)
    header["v"] = [1, 9]
    header["future_field"] = "ignored"
    assert wire.decode_sample(_with_header(frames, header)).seq == 7


def test_jpeg_buffers_decode_to_the_declared_shape():
    import cv2

    image = np.full((32, 40, 3), 90, np.uint8)
    ok, jpeg = cv2.imencode(".jpg", image)
    assert ok
    frames = wire.encode_sample(
        rig="r",
        stream="c",
        modality="video",
        seq=0,
        t_ns=0,
        t_pub_ns=0,
        rate_hz=1,
        data=image[None],
        encoding="jpeg",
        payload=jpeg.tobytes(),
    )
    decoded = wire.decode_sample(frames).data
    assert decoded.shape == (1, 32, 40, 3)
    assert abs(int(decoded.mean()) - 90) <= 2


def test_prediction_round_trip():
    p = wire.Prediction(
        rig="r",
        seq=3,
        window_start_ns=1,
        window_end_ns=2,
        label="7",
        classes=["6", "7"],
        scores=[0.1, 0.9],
        present=["video"],
        missing=["audio"],
        model={"name": "m", "hash": "h"},
        latency_ns={"infer": 5},
        t_pub_ns=9,
        extra={"window_index": 4},
    )
    back = wire.decode_prediction(wire.encode_prediction(p))
    assert back == dataclasses.replace(p, extra={**p.extra, "pub": wire.publisher_id()})  # who sent it
    with pytest.raises(FrameError):
        wire.decode_prediction(sample_frames(np.zeros((1, 1), np.float32)))


def test_the_pub_field_is_only_trusted_as_a_short_string():
    from fusiond.bus.wire import MAX_PUBLISHER_LEN, decode_header, publisher_id, publisher_of
    from fusiond.topics import MAX_TOPICS, TopicTable

    frames = wire.encode_sample(
        rig="r",
        stream="s",
        modality="imu",
        seq=0,
        t_ns=0,
        t_pub_ns=0,
        rate_hz=1.0,
        data=np.zeros((1, 1), np.float32),
    )
    assert publisher_of(decode_header(frames)) == publisher_id() == f"{socket.gethostname()}/{os.getpid()}"
    for bad in (7, b"bytes", "", "x" * (MAX_PUBLISHER_LEN + 1), ["a"], None):
        assert publisher_of({"pub": bad}) is None
    table = TopicTable()
    for i in range(MAX_TOPICS + 50):
        table.add(f"s/r/{i}", 10, {"type": "sample", "modality": "m" * 999}, None)
    assert len(table.topics) == MAX_TOPICS and table.untracked == 50
    assert table.rows(1.0)[0]["modality"] == "m" * 32 and table.rows(1.0)[0]["unnamed_messages"] == 1
    table.add("s/r/0", 10, None, None)  # unreadable header: counted, typed as before
    assert table.topics["s/r/0"].messages == 2


def test_channel_names_and_units_travel_with_a_block_and_bad_ones_are_refused():
    frames = wire.encode_sample(
        rig="r",
        stream="imu",
        modality="imu",
        seq=0,
        t_ns=1,
        t_pub_ns=1,
        rate_hz=100.0,
        data=np.zeros((10, 3), np.float32),
        channels=["ax", "ay", "az"],
        units=["g", "g", ""],
    )
    header = wire.decode_sample_header(frames)
    assert header.channels == ("ax", "ay", "az") and header.units == ("g", "g", "")
    plain = wire.decode_sample_header(sample_frames(np.zeros((10, 3), np.float32)))
    assert plain.channels == () and plain.units == ()  # optional: other publishers leave them out
    for key, bad in [
        ("channels", ["ax", "ay"]),
        ("channels", "ax"),
        ("units", [1, 2, 3]),
        ("channels", ["x" * 65, "y", "z"]),
        ("units", ["g", "g", "\n"]),
    ]:
        fields = msgpack.unpackb(bytes(frames[1]))
        fields[key] = bad
        with pytest.raises(FrameError, match=f"header field {key} must list 3 printable strings"):
            wire.decode_sample_header([frames[0], msgpack.packb(fields), frames[2]])


PREDICTION = {
    "v": [1, 2],
    "type": "prediction",
    "rig": "r",
    "seq": 3,
    "window_start_ns": 10,
    "window_end_ns": 20,
    "label": "a",
    "classes": ["a", "b"],
    "scores": [0.7, 0.3],
    "present": ["video"],
    "missing": [],
    "model": {"name": "m", "hash": "h"},
    "latency_ns": {"close_to_publish": 5},
    "t_pub_ns": 30,
    "disagreement": 0.1,
    "modality_labels": {"video": "a"},
}
"""A classifier's prediction as the daemon sends it."""


@pytest.mark.parametrize(
    "change",
    [
        {"window_end_ns": -1},
        {"seq": 2**63},
        {"present": 5},
        {"present": ["../etc"]},
        {"latency_ns": {"close_to_publish": "x"}},
        {"scores": [float("nan"), 0.5]},
        {"scores": [1.0]},
        {"classes": ["a", 7]},
        {"model": {"name": ["x"]}},
        {"disagreement": 2.0},
        {"disagreement": "high"},
        {"modality_labels": ["a"]},
        {"rig": "a b"},
        {"label": "x" * 1000},
        {"task": 123},
        {"anomaly_score": 1.0},  # anomaly fields on a classifier's prediction
        {"hop_ns": 10, "window_offset_ns": 10},  # a phase is within the hop
        {"hop_ns": 10, "window_offset_ns": -1},
        {"hop_ns": 10, "window_offset_ns": 2.5},
        {"window_offset_ns": 5},  # a phase with no grid
    ],
)
def test_a_forged_prediction_with_absurd_fields_is_refused(change):
    """Well-formed msgpack, wrong types or ranges: every reader of predictions (outputs,
    the live view, the recorder's views, the daemon's monitor) is spared them."""
    good = PREDICTION
    assert wire.decode_prediction([b"p/r", msgpack.packb(good)]).label == "a"
    staggered = wire.decode_prediction([b"p/r", msgpack.packb(good | {"hop_ns": 10, "window_offset_ns": 9})])
    assert staggered.extra["window_offset_ns"] == 9
    with pytest.raises(WireError):
        wire.decode_prediction([b"p/r", msgpack.packb(good | change)])


ANOMALY = {
    "task": "anomaly",
    "label": "anomaly",
    "classes": ["normal", "anomaly"],
    "scores": [0.3, 0.7],
    "present": ["video", "imu"],
    "anomaly_score": 2.5,
    "threshold": 1.2,
    "is_anomaly": True,
    "contributions": {"video": 0.75, "imu": 0.25},
    "nearest": "3",
}


@pytest.mark.parametrize(
    "change",
    [
        {"anomaly_score": float("nan")},
        {"anomaly_score": -1.0},
        {"anomaly_score": "high"},
        {"anomaly_score": 1.0000000150474662e30},  # float32's nearest to 1e30
        {"threshold": 1e300},
        {"threshold": 0.0},
        {"threshold": -0.0, "anomaly_score": 0.0, "is_anomaly": False, "label": "normal"},
        {"is_anomaly": 1},
        {"is_anomaly": False},  # 2.5 > 1.2 says otherwise
        {"label": "normal"},
        {"contributions": {"video": 2.0}},
        {"contributions": {"audio": 0.5}},  # not present
        {"contributions": {"video": 0.9, "imu": 0.9}},
        {"contributions": {"video\n": 0.5}},
        {"contributions": [0.5]},
        {"nearest": 3},
        {"is_anomaly": None},
    ],
)
def test_a_forged_anomaly_prediction_is_refused(change):
    """An anomaly model's fields are checked for type, range and agreement: the flag says
    score over threshold, the label says the flag, the shares are of present modalities."""
    without = ("disagreement", "modality_labels")  # a classifier's own fields
    good = {k: v for k, v in PREDICTION.items() if k not in without} | ANOMALY
    assert wire.decode_prediction([b"p/r", msgpack.packb(good)]).extra["is_anomaly"] is True
    with pytest.raises(WireError):
        wire.decode_prediction([b"p/r", msgpack.packb(good | change)])
    missing = {k: v for k, v in good.items() if k != "threshold"}
    with pytest.raises(WireError):
        wire.decode_prediction([b"p/r", msgpack.packb(missing)])


def test_a_header_template_reads_the_stamps_of_every_width_and_nothing_else():
    def header(seq: int, t_ns: int, **extra) -> bytes:
        frames = sample_frames(np.zeros((1, 3), np.float32), seq=seq, t_ns=t_ns, t_pub_ns=t_ns + 1)
        return bytes(frames[1]) if not extra else msgpack.packb({**_header(frames), **extra})

    template = HeaderTemplate.of(header(0, 5), 3)
    assert template is not None and template.frames == 3
    for seq in (0, 127, 128, 255, 256, 65535, 65536, 2**32, 2**63 - 1, 5):
        for t_ns in (0, 2**31, 2**63 - 2):
            # Twice each: the first teaches the one-call layout, the second uses it.
            assert (
                template.match(header(seq, t_ns))
                == template.match(header(seq, t_ns))
                == (seq, t_ns, t_ns + 1)
            )
    raw = header(7, 9)
    for other in (raw[:-1], raw + b"\x00", header(7, 9, rate_hz=50.0), header(7, 9, extra=1), b"", b"\x80"):
        assert template.match(other) is None
    late = header(7, 2**40)
    past = late.replace(b"\xcf" + (2**40 + 1).to_bytes(8, "big"), b"\xcf" + (2**63).to_bytes(8, "big"))
    assert past != late and template.match(past) is None
    assert HeaderTemplate.of(msgpack.packb({"seq": 1, "t_ns": 2}), 3) is None  # no t_pub_ns
    assert HeaderTemplate.of(b"\xc1", 3) is None
