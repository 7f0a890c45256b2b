"""Well-formed messages with absurd values, and fuzzed ones: counted and dropped, never fatal.

Each case is a message that once crashed, hung or wedged the daemon. They go through the
daemon's own Ingest and RigAligner (real wire frames), then the aligner is polled well
past the message, which is where a bad block used to blow up or spin.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections import Counter

import cv2
import msgpack
import numpy as np
import pytest

from fusiond.align.spec import ModalitySpec
from fusiond.align.windows import RigAligner, WindowConfig
from fusiond.bus import wire
from fusiond.errors import FrameError
from fusiond.ingest import Ingest, Limits
from fusiond.metrics import Stats

S = 1_000_000_000
T0 = 1_800_000_000 * S  # a realtime clock reading
SPECS = {
    "video": ModalitySpec("frames", 4, 1, 32, 32),
    "audio": ModalitySpec("series", 800, 1),
    "imu": ModalitySpec("series", 100, 1),
}
STREAMS = {("r", "cam"): "video", ("r", "mic"): "audio", ("r", "imu"): "imu"}
# Drop reasons that count a whole message; the others count samples, windows or losses (and
# decode_error also counts a taken JPEG frame that a window picked and could not decode).
MESSAGE_REASONS = {
    "unknown_stream",
    "over_rate",
    "bad_header",
    "bad_framing",
    "bad_size",
    "bad_version",
    "bad_value",
    "bad_shape",
    "decode_error",
    "wrong_modality",
    "clock_skew",
    "seq_reset",
    "late",
    "duplicate",
    "clock_outlier",
    "clock_step",
}


class Rig:
    """Ingest and aligner of one rig with a camera, a microphone and an IMU, fed on a clock."""

    def __init__(self, limits: Limits | None = None, templates: bool = True) -> None:
        self.stats = Stats()
        config = WindowConfig(S, S // 2, 3 * S // 10)
        self.aligner = RigAligner(
            "r", {s: m for (_, s), m in STREAMS.items()}, SPECS, config, self.stats.drops
        )
        self.ingest = Ingest({"r": self.aligner}, STREAMS, self.stats, limits, templates=templates)
        self.now = T0
        self.seq: Counter[str] = Counter()
        self.windows: list = []

    def honest(self, seconds: float) -> None:
        """The three streams at their rates for ``seconds``, each message handled on time."""
        for _ in range(round(seconds * 10)):
            self.send("cam", np.full((1, 32, 32, 3), 100, np.uint8), 10.0)
            self.send("mic", np.zeros((100, 1), np.int16), 1000.0)
            self.send("imu", np.zeros((10, 1), np.float32), 100.0)
            self.now += S // 10
            self.poll()

    def frames(self, stream: str, data: np.ndarray, rate: float) -> list[bytes]:
        """The stream's next message, stamped 100 ms before now and published now."""
        frames = wire.encode_sample(
            rig="r",
            stream=stream,
            modality=STREAMS["r", stream],
            seq=self.seq[stream],
            t_ns=self.now - S // 10,
            t_pub_ns=self.now,
            rate_hz=rate,
            data=data,
        )
        self.seq[stream] += 1
        return [bytes(f) for f in frames]

    def send(self, stream: str, data: np.ndarray, rate: float, /, **header) -> bool:
        frames = self.frames(stream, data, rate)
        return self.raw(_with_header(frames, header) if header else frames)

    def raw(self, frames) -> bool:
        return self.ingest.handle(frames, self.now)

    def poll(self, later_ns: int = 0) -> list:
        closed = self.aligner.poll(self.now + later_ns)
        self.windows += closed
        return closed


def _with_header(frames, changes) -> list[bytes]:
    header = msgpack.unpackb(frames[1])
    for key, value in changes.items():
        if key.startswith("buffer."):
            header["buffers"][0][key.removeprefix("buffer.")] = value
        else:
            header[key] = value
    return [bytes(frames[0]), msgpack.packb(header), *map(bytes, frames[2:])]


def _jpeg(height: int, width: int) -> bytes:
    ok, data = cv2.imencode(".jpg", np.full((height, width, 3), 128, np.uint8))
    assert ok
    return data.tobytes()


def _declaring(jpeg: bytes, height: int, width: int) -> bytes:
    """The same JPEG with its frame header claiming another size (a decompression bomb)."""
    at = jpeg.index(b"\xff\xc0")
    return jpeg[: at + 5] + height.to_bytes(2, "big") + width.to_bytes(2, "big") + jpeg[at + 9 :]


def test_the_honest_rig_gives_every_window_with_every_modality():
    rig = Rig()
    rig.honest(5)
    assert len(rig.windows) >= 8 and all(all(w.present.values()) for w in rig.windows[1:])
    assert not rig.stats.drops


def jpeg_frames(rig: Rig, payload: bytes, shape: list[int], stream: str = "cam") -> list[bytes]:
    frames = wire.encode_sample(
        rig="r",
        stream=stream,
        modality="video",
        seq=rig.seq[stream],
        t_ns=rig.now,
        t_pub_ns=rig.now,
        rate_hz=10.0,
        data=np.zeros(shape, np.uint8),
        encoding="jpeg",
        payload=payload,
    )
    rig.seq[stream] += 1
    return [bytes(f) for f in frames]


HOSTILE = {
    # (what it once did) -> (the message, the reason it is counted under)
    "jpeg_size_differs": (lambda r: r.raw(jpeg_frames(r, _jpeg(8, 8), [1, 32, 32, 3])), "decode_error"),
    "jpeg_on_unconfigured_stream": (
        lambda r: r.raw(jpeg_frames(r, _jpeg(8, 8), [1, 32, 32, 3], "x")),
        "unknown_stream",
    ),
    "dtype_is_a_list": (
        lambda r: r.send("imu", np.zeros((10, 1), np.float32), 100.0, **{"buffer.dtype": ["<f4"]}),
        "bad_header",
    ),
    "encoding_is_a_map": (
        lambda r: r.send("imu", np.zeros((10, 1), np.float32), 100.0, **{"buffer.encoding": {"a": 1}}),
        "bad_header",
    ),
    "rate_1e-300": (lambda r: r.send("imu", np.zeros((10, 1), np.float32), 1e-300), "bad_value"),
    "rate_1e-10": (lambda r: r.send("imu", np.zeros((10, 1), np.float32), 1e-10), "bad_value"),
    "rate_nan": (lambda r: r.send("imu", np.zeros((10, 1), np.float32), math.nan), "bad_value"),
    "empty_block": (lambda r: r.send("imu", np.zeros((0, 1), np.float32), 100.0), "bad_shape"),
    "frame_is_2d": (lambda r: r.send("cam", np.zeros((1, 5), np.uint8), 10.0), "bad_shape"),
    "frame_has_2_channels": (lambda r: r.send("cam", np.zeros((1, 4, 4, 2), np.uint8), 10.0), "bad_shape"),
    "frame_is_float": (lambda r: r.send("cam", np.zeros((1, 4, 4, 3), np.float32), 10.0), "bad_shape"),
    "t_near_2_63": (
        lambda r: r.send("imu", np.zeros((10, 1), np.float32), 100.0, t_ns=2**63 - 2),
        "clock_skew",
    ),
    "t_pub_near_2_63": (
        lambda r: r.send("imu", np.zeros((10, 1), np.float32), 100.0, t_pub_ns=2**63 - 2),
        "clock_skew",
    ),
    "t_one_hour_ahead": (
        lambda r: r.send("imu", np.zeros((10, 1), np.float32), 100.0, t_ns=r.now + 3600 * S),
        "clock_skew",
    ),
    "t_in_1970": (lambda r: r.send("imu", np.zeros((10, 1), np.float32), 100.0, t_ns=5), "clock_skew"),
    "t_negative": (lambda r: r.send("imu", np.zeros((10, 1), np.float32), 100.0, t_ns=-5), "bad_value"),
    "nan_values": (lambda r: r.send("imu", np.full((10, 1), np.nan, np.float32), 100.0), "bad_value"),
    "inf_values": (lambda r: r.send("mic", np.full((10, 1), np.inf, np.float64), 1000.0), "bad_value"),
    "header_for_another_stream": (
        lambda r: r.send("imu", np.zeros((10, 1), np.float32), 100.0, stream="mic", modality="audio"),
        "bad_header",
    ),
    "block_of_a_day": (lambda r: r.send("imu", np.zeros((10, 1), np.float32), 1e-3 * 10 / 86.4), "bad_value"),
    "huge_declared_shape": (
        lambda r: r.send("imu", np.zeros((10, 1), np.float32), 100.0, **{"buffer.shape": [2**40, 1]}),
        "bad_header",
    ),
    "jpeg_bomb_declared": (
        lambda r: r.raw(jpeg_frames(r, _declaring(_jpeg(8, 8), 16384, 16384), [1, 16384, 16384, 3])),
        "bad_shape",
    ),
    "jpeg_bomb_hidden": (
        lambda r: r.raw(jpeg_frames(r, _declaring(_jpeg(8, 8), 16384, 16384), [1, 32, 32, 3])),
        "decode_error",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_message_is_counted_under_its_reason_and_the_rig_goes_on(case):
    send, reason = HOSTILE[case]
    rig = Rig()
    rig.honest(2)
    before = len(rig.windows)
    assert send(rig) is False
    assert rig.stats.drops == Counter({reason: 1}), rig.stats.drops
    # Poll far ahead: this is where a bad block used to raise or spin through 2**63 windows.
    rig.poll(later_ns=0)
    rig.honest(3)
    after = rig.windows[before:]
    assert len(after) >= 5 and all(all(w.present.values()) for w in after[1:]), after
    indexes = [w.index for w in rig.windows]
    assert indexes == list(range(indexes[0], indexes[0] + len(indexes)))


def test_a_future_watermark_within_the_skew_cannot_close_the_others_windows():
    rig = Rig()
    rig.honest(2)
    # The IMU's clock runs 4 s ahead (inside the 5 s skew): its watermark jumps ahead,
    # but the camera's and microphone's windows are not closed before they arrive.
    assert rig.send("imu", np.zeros((10, 1), np.float32), 100.0, t_ns=rig.now + 4 * S - S // 10)
    rig.poll()
    rig.honest(2)
    assert rig.stats.drops["late"] == 0
    assert all(w.present["video"] and w.present["audio"] for w in rig.windows[1:])


def test_a_seq_jump_is_a_reset_not_a_billion_lost_and_real_losses_still_count():
    rig = Rig()
    rig.honest(1)
    rig.seq["imu"] += 10**9
    assert rig.send("imu", np.zeros((10, 1), np.float32), 100.0) is False
    assert rig.stats.drops["seq_reset"] == 1 and rig.stats.drops["lost_in_transport"] == 0
    rig.seq["imu"] -= 10**9 + 1  # the real source carries on from where it was: the forged one moved nothing
    rig.honest(1)
    rig.seq["mic"] += 3  # three messages lost
    rig.honest(1)
    assert rig.stats.drops["lost_in_transport"] == 3


def test_a_stream_over_its_rate_is_dropped_and_its_neighbours_are_not():
    rig = Rig(Limits(max_message_rate=50.0))
    rig.honest(1)
    flood = [rig.send("imu", np.zeros((10, 1), np.float32), 100.0) for _ in range(1000)]
    assert 0 < rig.stats.drops["over_rate"] <= 1000 and sum(flood) <= 50
    before = len(rig.windows)
    rig.honest(3)  # the other streams were never touched; the IMU's bucket refills
    assert all(all(w.present.values()) for w in rig.windows[before + 1 :])
    assert rig.stats.drops["over_rate"] <= 1000 - sum(flood) + 1  # the first honest one may find it empty


def test_a_rig_back_after_an_hour_skips_the_empty_windows_in_one_step():
    rig = Rig()
    rig.honest(1)
    rig.now += 3600 * S
    rig.poll()
    assert rig.stats.drops["window_empty"] >= 7000
    rig.honest(2)
    assert all(all(w.present.values()) for w in rig.windows[-2:])


def test_the_stream_buffer_is_bounded_in_bytes():
    stats = Stats()
    config = WindowConfig(S, S // 2, 10**12, max_bytes=4 * 2**20)  # a huge lateness keeps blocks
    aligner = RigAligner("r", {"cam": "video"}, SPECS, config, stats.drops)
    frame = np.zeros((1, 512, 512, 3), np.uint8)  # 768 KiB each
    for i in range(20):
        aligner.add("cam", T0 + i * S // 10, 10.0, frame, T0 + i * S // 10)
    held = sum(b.data.nbytes for b in aligner._streams["cam"].blocks)
    assert held <= 4 * 2**20 and stats.drops["buffer_full"] == 20 - 5


def test_jpeg_size_reads_the_frame_header_without_decoding():
    assert wire.jpeg_size(_jpeg(24, 40)) == (24, 40, 3)
    assert wire.jpeg_size(_declaring(_jpeg(8, 8), 16384, 16384)) == (16384, 16384, 3)
    assert wire.jpeg_size(b"\xff\xd8\xff") is None and wire.jpeg_size(b"GIF89a") is None


def _mutations(rng: np.random.Generator, base: list[bytes]) -> list[bytes]:
    """One message broken in one of many ways."""
    header = msgpack.unpackb(base[1])
    weird = [
        None,
        True,
        -1,
        2**64 - 1,
        -(2**63),
        1e308,
        math.nan,
        -math.inf,
        "",
        "x" * 300,
        [],
        {},
        [1, 2],
        {"a": []},
        b"\x00",
        0.5,
    ]
    kind = rng.integers(0, 7)
    if kind == 0:  # a field replaced by a value of another type or range
        key = rng.choice(sorted(header))
        header[key] = weird[rng.integers(len(weird))]
    elif kind == 1:  # a buffer description broken
        key = rng.choice(["dtype", "shape", "encoding"])
        header["buffers"][0][key] = weird[rng.integers(len(weird))]
    elif kind == 2:  # a shape of random rank and size
        header["buffers"][0]["shape"] = [int(n) for n in rng.integers(0, 70, rng.integers(0, 8))]
    elif kind == 3:  # truncated header bytes
        packed = msgpack.packb(header)
        return [base[0], packed[: rng.integers(0, len(packed))], *base[2:]]
    elif kind == 4:  # frames missing or extra
        return base[: rng.integers(0, 3)] if rng.random() < 0.5 else [*base, b"\x00" * 8]
    elif kind == 5:  # a buffer of the wrong size
        return [*base[:2], base[2][: rng.integers(0, len(base[2]))]]
    else:  # random bytes as the header
        return [base[0], rng.bytes(int(rng.integers(0, 64))), *base[2:]]
    return [base[0], msgpack.packb(header), *base[2:]]


def test_ten_thousand_fuzzed_messages_are_each_counted_and_nothing_raises():
    rig = Rig(Limits(max_message_rate=1e6))
    rng = np.random.default_rng(20261123)
    bases = {
        "cam": (np.full((1, 32, 32, 3), 7, np.uint8), 10.0),
        "mic": (np.zeros((100, 1), np.int16), 1000.0),
        "imu": (np.zeros((10, 1), np.float32), 100.0),
    }
    dropped = accepted = 0
    for i in range(10_000):
        stream = ("cam", "mic", "imu")[i % 3]
        data, rate = bases[stream]
        frames = [
            bytes(f)
            for f in wire.encode_sample(
                rig="r",
                stream=stream,
                modality=STREAMS["r", stream],
                seq=i,
                t_ns=rig.now - S // 10,
                t_pub_ns=rig.now,
                rate_hz=rate,
                data=data,
            )
        ]
        if rig.raw(_mutations(rng, frames)):
            accepted += 1
        else:
            dropped += 1
        rig.now += S // 100
        rig.poll()
    counted = sum(n for reason, n in rig.stats.drops.items() if reason in MESSAGE_REASONS)
    assert dropped == counted, rig.stats.drops
    assert dropped > 9000 and "internal_error" not in rig.stats.drops
    assert rig.windows  # what was well-formed still made windows


def _odd_packings(rng: np.random.Generator, base: list[bytes]) -> list[bytes]:
    """One message whose header differs from its stream's usual one in what a byte-wise
    template must notice, or only in its stamps, which it must read right."""
    header = msgpack.unpackb(base[1])
    kind = rng.integers(0, 9)
    if kind == 0:  # a stamp packed as a signed integer (positive, or not)
        key = rng.choice(["seq", "t_ns", "t_pub_ns"])
        value = header[key] if rng.random() < 0.5 else -int(rng.integers(1, 1000))
        marker = 2**62 + 12345
        packed = msgpack.packb({**header, key: marker})
        signed = b"\xd3" + int(value).to_bytes(8, "big", signed=True)
        return [base[0], packed.replace(b"\xcf" + marker.to_bytes(8, "big"), signed), *base[2:]]
    if kind == 1:  # a number of the same value and another type
        header["buffers"][0]["shape"] = [float(n) for n in header["buffers"][0]["shape"]]
    elif kind == 2:
        header["v"] = [True, header["v"][1]]
    elif kind == 3:  # the same fields in another order, or one more
        header = dict(reversed(header.items())) if rng.random() < 0.5 else {**header, "extra": 1}
    elif kind == 4:  # stamps replayed, jumped, far off, or past 2**63
        key = rng.choice(["seq", "t_ns", "t_pub_ns"])
        header[key] = int(rng.choice([0, 1, header[key] - 1, header[key] + 10**6, 2**63 - 1])) + (
            2**63 if rng.random() < 0.1 else 0
        )
    elif kind == 5:  # one byte of the header changed
        packed = bytearray(base[1])
        packed[rng.integers(len(packed))] = rng.integers(256)
        return [base[0], bytes(packed), *base[2:]]
    elif kind == 6:  # a byte more or less at the end
        return [base[0], base[1] + b"\x00" if rng.random() < 0.5 else base[1][:-1], *base[2:]]
    elif kind == 7:
        return _mutations(rng, base)
    else:  # another clock
        header["clock"] = "monotonic"
    return [base[0], msgpack.packb(header), *base[2:]]


def test_a_header_that_matches_its_streams_template_is_judged_as_the_full_checks_judge_it():
    """The header template (fusiond.bus.template) skips checks only for headers that would
    pass them: fed the same messages, an ingest that always runs the full checks (one that
    makes no templates) takes and drops exactly the same ones."""
    fast, full = Rig(Limits(max_message_rate=1e6)), Rig(Limits(max_message_rate=1e6), templates=False)
    rng = np.random.default_rng(20261129)
    bases = {
        "cam": (np.full((1, 32, 32, 3), 7, np.uint8), 10.0),
        "mic": (np.zeros((100, 1), np.int16), 1000.0),
        "imu": (np.zeros((10, 1), np.float32), 100.0),
    }
    verdicts = []
    for i in range(6000):
        stream = ("cam", "mic", "imu")[i % 3]
        frames = fast.frames(stream, *bases[stream])
        if rng.random() < 0.3:
            frames = _odd_packings(rng, frames)
        took = fast.raw(frames), full.raw(frames)
        assert took[0] == took[1], (i, frames[1], fast.stats.drops, full.stats.drops)
        verdicts.append(took[0])
        for rig in (fast, full):
            rig.now += S // 100
            rig.poll()
    assert fast.stats.drops == full.stats.drops
    assert [(w.index, w.present) for w in fast.windows] == [(w.index, w.present) for w in full.windows]
    for a, b in zip(fast.windows, full.windows, strict=True):
        for modality in SPECS:
            np.testing.assert_array_equal(a.inputs[modality], b.inputs[modality])
    hits = fast.ingest.template_hits
    assert hits > 3000 and full.ingest.template_hits == 0, hits
    assert 500 < verdicts.count(False) < 2000, fast.stats.drops


def test_a_header_frame_that_is_no_buffer_is_a_bad_header_whether_the_stream_has_a_template_or_not():
    """Frames are bytes, memoryviews or zmq frames; anything else in a header's place is
    counted, as the full checks count it, never raised (with a template or without)."""
    for templates in (True, False):
        rig = Rig(templates=templates)
        rig.honest(1)  # the streams have their templates (if they make them)
        took = []
        for header in (bytearray, memoryview, lambda raw: 12345):
            frames = rig.frames("imu", np.zeros((10, 1), np.float32), 100.0)
            took.append(rig.raw([frames[0], header(frames[1]), frames[2]]))
        assert took == [False, True, False] and rig.stats.drops == Counter({"bad_header": 2}), rig.stats.drops


def test_wire_checks_reject_absurd_header_values():
    frames = wire.encode_sample(
        rig="r",
        stream="s",
        modality="m",
        seq=0,
        t_ns=1,
        t_pub_ns=1,
        rate_hz=1.0,
        data=np.zeros((1, 1), np.float32),
    )
    for change in (
        {"seq": -1},
        {"t_ns": 2**64 - 1},
        {"rate_hz": 1e-300},
        {"rate_hz": math.inf},
        {"buffer.shape": [2**31, 2**31]},
        {"buffer.dtype": {"x": 1}},
    ):
        with pytest.raises(FrameError):
            wire.decode_sample(_with_header(frames, change))


@pytest.mark.slow
def test_the_real_daemon_survives_every_attack_and_its_rig_keeps_rate_and_accuracy(tmp_path, endpoints):
    """Each crash, hang and wedge class over real sockets, plus a flood on a topic nobody reads."""
    import json
    import threading
    import time

    import zmq

    from fusiond.client import Subscriber

    from .helpers import DaemonProcess, demo_config, free_port, fusiond, truth

    control = f"tcp://127.0.0.1:{free_port()}"
    d = DaemonProcess(demo_config(tmp_path, *endpoints, control), tmp_path / "daemon.log")
    ctx = zmq.Context()
    try:
        with Subscriber(endpoints[1], rigs=["demo"], timeout_s=30) as predictions:
            assert predictions.next() is not None
            anchor = int(d.wait_for(r"media anchor: file sources start at (\d+)").group(1))
            pub = ctx.socket(zmq.PUB)
            pub.setsockopt(zmq.LINGER, 0)
            pub.connect(endpoints[0])
            time.sleep(1.0)  # the daemon's subscriptions reach this new publisher
            stop = threading.Event()
            flood = threading.Thread(target=_flood, args=(ctx, endpoints[0], stop))
            flood.start()
            for frames in _attacks(time.time_ns()):
                pub.send_multipart(frames)
            req = ctx.socket(zmq.REQ)
            req.setsockopt(zmq.LINGER, 0)
            req.connect(control)
            req.send_multipart([b"status", b"and more"])
            assert req.poll(5000) and "error" in json.loads(req.recv())
            req.close()
            got = [predictions.next() for _ in range(16)]
            stop.set()
            flood.join()
            pub.close()
    finally:
        ctx.term()
    assert None not in got
    indexes = [p.extra["window_index"] for p in got]
    assert indexes == list(range(indexes[0], indexes[0] + 16)), indexes  # none lost: the rate held
    assert all(p.missing == [] for p in got), [p.missing for p in got]
    inside = [(p, truth(anchor, p.window_start_ns)) for p in got]
    inside = [(p, digit) for p, digit in inside if digit is not None]
    assert sum(p.label == str(digit) for p, digit in inside) >= 0.85 * len(inside) > 0
    status = fusiond("status", "--json", "--connect", control)
    assert status.returncode == 0, status.stderr
    drops = json.loads(status.stdout)["drops"]
    for reason in ("decode_error", "bad_header", "bad_value", "bad_shape", "clock_skew", "seq_reset"):
        assert drops.get(reason, 0) >= 1, (reason, drops)
    assert "unknown_stream" not in drops  # the flood never reached the daemon: nobody subscribed to it
    assert "internal_error" not in drops and d.proc.poll() is None
    d.stop()
    assert d.proc.returncode == 0, d.text()
    assert "Traceback" not in d.text()
    d.close()


def _attacks(now_ns: int) -> list[list[bytes]]:
    def sample(stream: str, modality: str, data: np.ndarray, rate: float, **change) -> list[bytes]:
        frames = wire.encode_sample(
            rig="demo",
            stream=stream,
            modality=modality,
            seq=0,
            t_ns=now_ns,
            t_pub_ns=now_ns,
            rate_hz=rate,
            data=data,
        )
        return _with_header(frames, change) if change else [bytes(f) for f in frames]

    def jpeg(payload: bytes, shape: list[int]) -> list[bytes]:
        frames = wire.encode_sample(
            rig="demo",
            stream="cam",
            modality="video",
            seq=0,
            t_ns=now_ns,
            t_pub_ns=now_ns,
            rate_hz=10.0,
            data=np.zeros(shape, np.uint8),
            encoding="jpeg",
            payload=payload,
        )
        return [bytes(f) for f in frames]

    imu = np.zeros((10, 1), np.float32)
    return [
        jpeg(_jpeg(8, 8), [1, 96, 96, 3]),
        jpeg(_declaring(_jpeg(8, 8), 16384, 16384), [1, 16384, 16384, 3]),
        jpeg(_declaring(_jpeg(8, 8), 16384, 16384), [1, 96, 96, 3]),
        sample("imu", "imu", imu, 100.0, **{"buffer.dtype": ["<f4"]}),
        sample("imu", "imu", imu, 100.0, **{"buffer.encoding": {"a": 1}}),
        sample("imu", "imu", imu, 1e-300),
        sample("imu", "imu", imu, 1e-10),
        sample("imu", "imu", np.zeros((0, 1), np.float32), 100.0),
        sample("cam", "video", np.zeros((1, 5), np.uint8), 10.0),
        sample("cam", "video", np.zeros((1, 4, 4, 2), np.uint8), 10.0),
        sample("imu", "imu", imu, 100.0, t_ns=2**63 - 2),
        sample("imu", "imu", imu, 100.0, t_ns=now_ns + 3600 * S),
        sample("imu", "imu", np.full((10, 1), np.nan, np.float32), 100.0),
        sample("imu", "imu", imu, 100.0, seq=10**9),
    ]


def _flood(ctx, endpoint: str, stop) -> None:
    """Well-formed samples on a stream of the demo rig that its config lacks, as fast as one thread
    sends (at most 5 s)."""
    import time

    import zmq

    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.connect(endpoint)
    frames = [
        bytes(f)
        for f in wire.encode_sample(
            rig="demo",
            stream="x",
            modality="imu",
            seq=0,
            t_ns=time.time_ns(),
            t_pub_ns=time.time_ns(),
            rate_hz=100.0,
            data=np.zeros((10, 1), np.float32),
        )
    ]
    deadline = time.monotonic() + 5
    while not stop.is_set() and time.monotonic() < deadline:
        for _ in range(1000):
            pub.send_multipart(frames)
    pub.close()


def test_a_forged_counters_snapshot_cannot_grow_the_daemons_tables():
    """On Ray the daemon's counters inbox is a TCP port: only its own components, streams
    and rigs are taken, and a malformed snapshot is refused whole."""
    stats = Stats()
    known = [("demo", "cam")]
    forged = {
        "name": "worker-0",
        "drops": {"x": 1},
        "streams": {f"r{i}/s": [1, 1, 1.0, 1, 1.0, "", None, 1.0, 0, ""] for i in range(10_000)},
        "clocks": {f"r{i}/s": [0, 0.0, 0, 0, 0, 0] for i in range(10_000)},
        "masked": {f"r{i}": {"video": 1} for i in range(10_000)},
    }
    assert stats.absorb(forged, ["worker-0", "server"], known)
    assert not stats.streams and not stats.masked
    assert not stats.absorb({**forged, "name": "intruder"}, ["worker-0"], known)
    assert not stats.absorb({"name": "worker-0", "streams": {"demo/cam": [1, 2]}}, ["worker-0"], known)
    assert not stats.absorb({"name": "worker-0", "drops": {"x": "many"}}, ["worker-0"], known)
    for clock in ([0, 0.0, 0], [0, float("nan"), 0, 0, 0, 0], [0, 1.0, "x", 0, 0, 0], [2**70, 0.0, 0, 0, 0]):
        assert not stats.absorb({"name": "worker-0", "clocks": {"demo/cam": clock}}, ["worker-0"], known)
    # messages, samples, sample rate, last, msg/s, error, when, samples/s, error reports, channels
    row = [5, 50, 10.0, 7, 1.0, "", None, 9.5, 3, "az [g]"]
    good = {
        "name": "worker-0",
        "drops": {"late": 2},
        "streams": {"demo/cam": row},
        "clocks": {"demo/cam": [-3_000_000, 20_000.0, 150_000, 1, 2, 0]},
        "masked": {"demo": {"video": 1}},
        "last_window_ns": 9,
    }
    assert stats.absorb(good, ["worker-0"], known)
    cam = stats.stream("demo", "cam")
    assert (cam.messages, cam.samples, cam.sample_rate_hz) == (5, 50, 10.0) and stats.all_drops()["late"] == 2
    assert cam.samples_per_s(0) == 9.5 and cam.clock is not None
    assert (cam.clock.steps, cam.clock.outliers) == (2, 1) and cam.errors == 3 and cam.channels == "az [g]"


def test_every_message_is_counted_once_and_the_counts_add_up():
    """A real stream with losses on the way, mixed with duplicates, replays and forged
    messages of every kind: every message that arrives is accepted or dropped under exactly
    one reason, a dropped one never moves the stream's numbering, and what never arrived is
    exactly what is counted lost."""
    stats = Stats()
    window = WindowConfig(10**9, 5 * 10**8, 3 * 10**8)
    aligner = RigAligner("r", {"imu": "imu"}, {"imu": ModalitySpec("series", 100, 1)}, window, stats.drops)
    ingest = Ingest({"r": aligner}, {("r", "imu"): "imu"}, stats, Limits(max_message_rate=10_000))
    rng = np.random.default_rng(5)
    t0, period = 10**18, 10_000_000
    data = np.zeros((1, 1), np.float32)

    def message(seq, t, t_pub=None, block=data, shape=None):
        frames = [
            bytes(f)
            for f in wire.encode_sample(
                rig="r",
                stream="imu",
                modality="imu",
                seq=seq,
                t_ns=t,
                t_pub_ns=t if t_pub is None else t_pub,
                rate_hz=100.0,
                data=block,
            )
        ]
        if shape is not None:  # the header says one shape, the buffer holds another
            header = msgpack.unpackb(frames[1])
            header["buffers"][0]["shape"] = shape
            frames[1] = msgpack.packb(header)
        return frames

    received, lost = 0, 0
    for i in range(3000):
        t = t0 + i * period
        real = message(i, t)
        r = rng.random()
        hostile = []
        if r < 0.03:
            hostile.append(message(i + 1, t, shape=[7, 1]))  # bad_size, the next seq
        elif r < 0.05:
            hostile.append(message(i + 10**6, t))  # a seq far ahead
        elif r < 0.10:
            hostile.append(message(i + 1, t, block=np.full((1, 1), np.nan, np.float32)))  # bad_value
        elif r < 0.13:
            hostile.append(message(i + 1, t, t_pub=t + 10**10))  # clock_skew, the next seq
        elif r < 0.15:
            hostile.append(message(i + 1, t + 2 * 10**9, t_pub=t + 2 * 10**9))  # an outlier
        if r > 0.97:  # never arrives
            lost += 1
            continue
        for frames in [*hostile, real, *([real] if 0.5 < r < 0.55 else [])]:  # some twice
            received += 1
            ingest.handle(frames, t + 50_000)
    drops = Counter(stats.drops)
    counted = {k: v for k, v in drops.items() if k not in ("lost_in_transport", "window_empty", "late")}
    accepted = stats.stream("r", "imu").messages
    assert received == accepted + sum(counted.values()), (received, accepted, counted)
    assert drops["lost_in_transport"] == lost, (drops, lost)
    assert {"bad_size", "bad_value", "clock_skew", "clock_outlier", "duplicate", "seq_reset"} <= set(counted)
    assert accepted == 3000 - lost


def test_source_errors_are_counted_per_stream_and_logged_once_a_minute_forged_or_not(caplog):
    """On an unsecured bus anyone may send an ``e/`` report: each is counted on its stream,
    a flood is one log line a minute, and a malformed or unknown one is a drop."""
    rig = Rig()

    def report(stream: str, error: object = "device gone", **header) -> bool:
        frames = wire.encode_source_error(
            rig="r", stream=stream, kind="camera", error="x", attempt=1, retry_in_s=1.0, t_ns=rig.now
        )
        frames = _with_header(frames, {"error": error, **header})
        return rig.ingest.source_error(frames, rig.now, frames[0])

    with caplog.at_level("WARNING", logger="fusiond.ingest"):
        assert all(report("cam", f"forged {i}") for i in range(1000))
        assert report("mic")
        rig.now += 61 * S
        assert report("cam", "the last")
    cam = rig.stats.stream("r", "cam")
    assert cam.errors == 1001 and cam.error == "the last" and rig.stats.stream("r", "mic").errors == 1
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3 and "1000 since the last line" in lines[-1] and "errors" in lines[-1], lines
    assert not report("nope") and rig.stats.drops["unknown_stream"] == 1
    assert not report("cam", error=["not", "text"]) and not report("cam", type="sample")
    assert not rig.ingest.source_error([b"e/r/cam", b"\xc1"], rig.now, b"e/r/cam")
    assert rig.stats.drops["bad_header"] == 3 and cam.errors == 1001
    assert report("cam", "x" * 100_000) and len(cam.error) == 500


def test_a_header_packed_with_bin_keys_is_named_for_what_it_is():
    header = msgpack.packb({b"v": [1, 0], b"type": b"sample"}, use_bin_type=True)
    with pytest.raises(FrameError, match="header keys must be str, got bin"):
        wire.decode_sample_header([b"s/r/imu", header, b""])


def test_drops_are_logged_per_reason_and_stream_at_most_once_a_minute(caplog):
    """One kind of bad message must not silence the log about another, or about another
    stream; a flood of one kind is one line a minute, with its count."""
    rig = Rig()
    rig.honest(1)
    nan = np.full((10, 1), np.nan, np.float32)
    with caplog.at_level("WARNING", logger="fusiond.ingest"):
        for _ in range(5):
            rig.send("imu", nan, 100.0)
        rig.send("imu", np.zeros((10, 1), np.float32), 100.0, t_pub_ns=rig.now + 60 * S)  # clock_skew
        rig.send("mic", np.full((100, 1), 0, np.int16), 1000.0, rate_hz=-1.0)  # another stream
        rig.now += 61 * S
        rig.send("imu", nan, 100.0)
    lines = [r.getMessage() for r in caplog.records]
    assert len([x for x in lines if "NaN" in x]) == 2, lines
    assert "5 since the last line" in lines[-1] and "r/imu" in lines[-1], lines
    assert any("clock_skew" in x for x in lines) and any("r/mic" in x or "rate_hz" in x for x in lines), lines


@pytest.mark.slow
@pytest.mark.alone
def test_a_flood_of_idle_connections_cannot_take_status_or_source_restarts(tmp_path, endpoints):
    """More idle TCP connections than the daemon may open files: each is closed when it has
    not completed a handshake in 5 s (libzmq's default: 30 s), so status still answers and a
    killed source still restarts while the flood is held open."""
    import select
    import signal
    import socket

    from .helpers import DaemonProcess, demo_config, free_port, fusiond

    control = f"tcp://127.0.0.1:{free_port()}"
    config = demo_config(tmp_path, *endpoints, control)
    with DaemonProcess(config, tmp_path / "daemon.log", prefix=("prlimit", "--nofile=256:256", "--")) as d:
        d.wait_for(r"fusiond ready", timeout_s=120)
        assert "this process may open 256 files" in d.text()
        port = int(endpoints[0].rsplit(":", 1)[1])
        flood = []
        for _ in range(400):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            flood.append(s)
        try:
            status = fusiond("status", "--json", "--connect", control, "--timeout", "25")
            assert status.returncode == 0, status.stderr
            opened = len(re.findall(r"source demo/\w+ \(", d.text()))
            os.kill(sorted(d.source_pids())[0], signal.SIGKILL)
            d.wait_for(r"\(signal 9\); restarting", timeout_s=60)
            # The daemon closes them. Connects its listen backlog refused wait for the
            # kernel's SYN retries (1, 2, 4 ... 64 s apart): on a busy host some come late.
            closed, deadline = set(), time.monotonic() + 150
            while len(closed) < 300 and time.monotonic() < deadline:
                readable, _, _ = select.select([s for s in flood if s not in closed], [], [], 0.5)
                for s in readable:
                    try:
                        if not s.recv(4096):
                            closed.add(s)
                    except OSError:
                        closed.add(s)
            assert len(closed) >= 300, len(closed)
            deadline = time.monotonic() + 60  # the killed source came back and opened its file again
            while len(re.findall(r"source demo/\w+ \(", d.text())) <= opened:
                assert time.monotonic() < deadline, d.text()
                time.sleep(0.2)
        finally:
            for s in flood:
                s.close()


def test_a_jpeg_is_decoded_no_larger_than_its_input_needs_and_one_that_decodes_huge_is_refused():
    """A VGA JPEG for a 32x32 input is decoded at 1/8 (80x60: libjpeg scales while it
    decodes, at a fraction of the cost) and still fills the window; a 631-byte one that
    declares 3840x2160 would cost 64 times the input even at 1/8: refused unread."""
    rig = Rig()
    assert SPECS["video"].decode_scale((1, 480, 640, 3), "jpeg") == 8
    ok, vga = cv2.imencode(".jpg", np.full((480, 640, 3), 200, np.uint8))
    frames = jpeg_frames(rig, vga.tobytes(), [1, 480, 640, 3])
    assert wire.decode_arrays(wire.decode_sample_header(frames), frames, 8)[0].shape == (1, 60, 80, 3)
    rig.seq["cam"] -= 1  # that one was only decoded here
    for _ in range(20):
        assert rig.ingest.handle(jpeg_frames(rig, vga.tobytes(), [1, 480, 640, 3]), rig.now)
        rig.send("mic", np.zeros((100, 1), np.int16), 1000.0)
        rig.send("imu", np.zeros((10, 1), np.float32), 100.0)
        rig.now += S // 10
        rig.poll()
    video = [w.inputs["video"] for w in rig.windows if w.present["video"]]
    assert video and all(abs(float(v.mean()) - 200) < 3 for v in video)
    bomb = _declaring(_jpeg(8, 8), 2160, 3840)
    assert len(bomb) < 1000
    assert not rig.ingest.handle(jpeg_frames(rig, bomb, [1, 2160, 3840, 3]), rig.now)
    assert rig.stats.drops["bad_shape"] == 1


def _rss_mb(pid: int) -> float:
    from pathlib import Path

    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@pytest.mark.slow
def test_the_control_endpoint_answers_a_many_part_request_and_bounds_what_waits(tmp_path, endpoints):
    """A hundred-frame request is answered with an error; frames over 64 KiB are refused by
    the socket, and at most 16 requests wait, so concurrent huge requests cannot take the
    daemon's memory."""
    import json

    import zmq

    from .helpers import DaemonProcess, demo_config, free_port

    control = f"tcp://127.0.0.1:{free_port()}"
    with DaemonProcess(demo_config(tmp_path, *endpoints, control), tmp_path / "daemon.log") as d:
        d.wait_for(r"fusiond ready", timeout_s=120)
        before = _rss_mb(d.proc.pid)
        ctx = zmq.Context()
        try:
            req = ctx.socket(zmq.REQ)
            req.connect(control)
            req.send_multipart([b"status"] * 100)
            assert req.poll(30_000), "no answer to a hundred-frame control request"
            assert "unknown request" in json.loads(req.recv())["error"]
            flood = []
            for _ in range(20):  # 100 frames of 900 KB each: every frame over the socket's limit
                sock = ctx.socket(zmq.REQ)
                sock.connect(control)
                sock.send_multipart([b"\0" * 900_000] * 100)
                flood.append(sock)
            req.send(b"status")
            assert req.poll(30_000), "status stopped answering"
            assert "sources" in json.loads(req.recv())
            assert _rss_mb(d.proc.pid) - before < 300
        finally:
            ctx.destroy(linger=0)


def test_forged_output_reports_are_refused_and_cannot_break_status():
    """On an open bus anyone may send an ``o/`` report: only a configured output's, with
    counts and a small JSON-safe health, is taken; status stays JSON."""
    import json

    from fusiond.outputs.watch import OutputReports

    reports = OutputReports(["plant"])

    def report(**fields):
        header = {
            "v": [1, 1],
            "type": "output",
            "name": "plant",
            "kind": "mqtt",
            "counts": {"sent": 1},
            "health": {"connected": True},
            "t_ns": 1,
            **fields,
        }
        return [b"o/plant", msgpack.packb(header, use_bin_type=True)]

    forged = [
        report(name="other"),
        report(name=["plant"]),
        report(counts={"sent": 2**63 - 1}),
        report(counts={"sent": -1}),
        report(counts="many"),
        report(health={"connected": b"\x00"}),
        report(health={"x": float("nan")}),
        report(health={str(i): i for i in range(17)}),
        report(health={"x": "y" * 201}),
        [b"o/plant", b"\xc1"],
        [b"o/plant"],
    ]
    reports.take(forged)
    assert reports.refused == len(forged) and not reports.last
    reports.take([report(counts={"sent": 7, "dropped": 1, "bogus": 5})])
    (row,) = reports.rows([], 2)
    assert (row["sent"], row["dropped"], row["health"]) == (7, 1, {"connected": True})
    json.dumps(row, allow_nan=False)  # status and /metrics get nothing JSON cannot carry


def test_a_recorder_counts_only_plausible_tallies(tmp_path):
    """A tally's ``last_seq`` is type- and range-checked, and a jump no stream could have
    made since its last message is no loss: only a plausible tally adds to the count."""
    from fusiond.recording.recorder import RecordingWriter

    with RecordingWriter(tmp_path / "t.mcap") as writer:
        for seq in range(5):
            frames = wire.encode_sample(
                rig="r",
                stream="s",
                modality="imu",
                seq=seq,
                t_ns=T0 + seq,
                t_pub_ns=T0,
                rate_hz=100.0,
                data=np.zeros((1, 1), np.float32),
            )
            writer.write([bytes(f) for f in frames], T0 + seq)
        for last in (2**63, -1, "9", True, 1.5e3, 10**12, None):
            header = {"v": [1, 1], "type": "tally", "rig": "r", "stream": "s", "last_seq": last, "t_ns": T0}
            writer.write([b"t/r/s", msgpack.packb(header)], T0 + 10)
        assert sum(writer.gaps.values()) == 0, writer.gaps
        writer.write([bytes(f) for f in wire.encode_tally(rig="r", stream="s", last_seq=6, t_ns=T0)], T0 + 20)
        assert writer.gaps == {"s/r/s": 2}


def test_an_output_bridge_sends_each_prediction_once_and_counts_what_it_missed():
    """Predictions replayed (a seq already sent) are not sent again; a gap in a rig's
    numbers is counted lost; a forged jump far ahead is a reset, not billions lost."""
    import logging
    import threading

    from fusiond.outputs import Output, OutputConfig, OutputContext
    from fusiond.outputs.runner import _Bridge

    class Keep(Output[OutputConfig]):
        kind = "keep"
        Config = OutputConfig

        def open(self) -> str:
            self.got: list[int] = []
            return "kept"

        def send(self, prediction) -> bool:
            self.got.append(prediction.seq)
            return True

    output = Keep(OutputConfig(), OutputContext("k", threading.Event(), logging.getLogger("k")))
    output.open()
    counts: Counter[str] = Counter()
    bridge = _Bridge(output, output.context, counts, set())

    def prediction(seq: int) -> list[bytes]:
        p = wire.Prediction("demo", seq, 0, 1, "a", ["a"], [1.0], ["imu"], [], {"name": "m"}, {}, T0 + seq)
        return [bytes(f) for f in wire.encode_prediction(p)]

    for seq in (0, 1, 1, 0 + 2, 5, 3, 10**12, 10**12 + 1, 10**12 + 2, 10**12 + 3):
        bridge.take(prediction(seq))
    bridge.take([b"p/demo", b"\xc1"])
    assert output.got[:4] == [0, 1, 2, 5] and counts["lost"] == 2, (output.got, counts)
    assert counts["malformed"] == 3 and counts["lost"] < 10  # the replays 1 and 3, the garbage
    assert counts["sent"] == len(output.got)


def test_mqtt_topics_prefixes_and_json_paths_are_checked_before_anything_connects():
    from fusiond_plugins.mqtt import MqttConfig, MqttSourceConfig
    from pydantic import ValidationError

    from fusiond.sources.lines import LineOptions, line_problems

    for topic in ("", "a/#/b", "a/b#", "a+/b", "x\0"):
        with pytest.raises(ValidationError, match="topic"):
            MqttSourceConfig(topic=topic, values=["x"], rate_hz=10.0)
    assert MqttSourceConfig(topic="plant/+/imu/#", values=["x"], rate_hz=10.0).topic == "plant/+/imu/#"
    for prefix in ("", "a/#", "+", "/a", "a/"):
        with pytest.raises(ValidationError, match="prefix"):
            MqttConfig(prefix=prefix)
    for host in ("", "a b", "x/y"):
        with pytest.raises(ValidationError, match="host"):
            MqttConfig(host=host)
    bad = LineOptions(format="json", values=["a..b", "ok"], rate_hz=10.0)
    assert line_problems(bad) == [
        "values: 'a..b' is not a JSON path (fields by name and [index], e.g. accel.z or data[0].v)"
    ]
    with pytest.raises(ValidationError, match="one unit per value"):
        LineOptions(values=["x", "y"], units=["g"], rate_hz=10.0)


STOPPED_SUBSCRIBER = """
import sys, time, zmq
ctx = zmq.Context()
sub = ctx.socket(zmq.SUB)
sub.subscribe(b"")
monitor = sub.get_monitor_socket(zmq.EVENT_DISCONNECTED)
sub.connect(sys.argv[1])
print("up", flush=True)
deadline = time.monotonic() + 60
while time.monotonic() < deadline:  # after SIGCONT: was the connection closed under it?
    if monitor.poll(200):
        print("disconnected", flush=True)
        break
    while sub.poll(0):
        sub.recv_multipart()
else:
    print("still connected", flush=True)
"""


def test_a_subscriber_that_stops_reading_is_disconnected_and_what_waited_for_it_freed(sockets, endpoints):
    """ZeroMQ bounds each frame, not a many-part message: a subscriber process that reads
    nothing (stopped, or hostile) would make the broker hold up to its queue's length of
    many-part messages. It stops answering the broker's heartbeat and is disconnected."""
    import signal
    import subprocess
    import sys

    import zmq

    from fusiond.bus.broker import HEARTBEAT_TIMEOUT_MS, Broker
    from fusiond.bus.sockets import Sockets

    publish, subscribe = endpoints
    bus = Sockets(sockets.ctx, hwm=1000)
    command = [sys.executable, "-c", STOPPED_SUBSCRIBER, subscribe]
    slow = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        with Broker(bus, publish, subscribe):
            assert slow.stdout is not None and slow.stdout.readline().strip() == "up"
            sender = sockets.make(zmq.PUB)
            sender.connect(publish)
            time.sleep(0.5)  # its subscription reaches the broker
            slow.send_signal(signal.SIGSTOP)
            part = b"x" * 1_000_000
            until = time.monotonic() + 3 * HEARTBEAT_TIMEOUT_MS / 1000  # stopped well past it
            while time.monotonic() < until:  # 20 MB messages it never reads
                sender.send_multipart([b"s/r/big", *([part] * 20)])
                time.sleep(0.1)
            slow.send_signal(signal.SIGCONT)
            said = slow.stdout.readline().strip()
        assert said == "disconnected", said
    finally:
        slow.kill()
        slow.wait()
        if slow.stdout is not None:
            slow.stdout.close()
        bus.close()


def _grey_jpeg(size: int, value: int) -> bytes:
    ok, data = cv2.imencode(".jpg", np.full((size, size, 3), value, np.uint8))
    assert ok
    return data.tobytes()


def test_a_jpeg_whose_data_is_cut_short_is_counted_when_a_window_picks_it_and_never_stalls_the_rig():
    """A JPEG's frame header is read when it comes, its pixels when a window picks it: a
    frame cut short after a sound header (a camera losing bytes, or an attacker) is counted
    as decode_error then, once; its window holds the frame before it, and a camera sending
    nothing else is masked while the rig's other streams go on."""
    rig = Rig()
    corrupt = {12, 13} | set(range(40, 60))
    for i in range(60):
        jpeg = _grey_jpeg(64, 4 * i)  # decoded at half size for the 32x32 input
        payload = jpeg[: len(jpeg) // 2] if i in corrupt else jpeg
        assert rig.raw(jpeg_frames(rig, payload, [1, 64, 64, 3]))  # taken: its header is sound
        rig.send("mic", np.zeros((100, 1), np.int16), 1000.0)
        rig.send("imu", np.zeros((10, 1), np.float32), 100.0)
        rig.now += S // 10
        rig.poll()
    rig.poll(10 * S)
    drops = rig.stats.drops
    assert 1 <= drops["decode_error"] <= len(corrupt) and drops["internal_error"] == 0, drops
    shown = []
    for w in rig.windows:
        if (w.start_ns - T0) // (S // 10) in range(5, 36) and w.present["audio"]:
            assert w.present["video"], w
            shown += [round(float(v) / 4) for v in w.inputs["video"][:, 0, 0, 0]]
        elif w.start_ns - T0 >= 4 * S and w.end_ns <= T0 + 6 * S:
            assert not w.present["video"] and w.present["audio"] and w.present["imu"], w
    assert not {12, 13} & set(shown), shown
    # Its targets are frames 11, 13, 16 and 18: frame 11 is held over 13.
    second = next(w for w in rig.windows if w.start_ns == T0 + S)
    assert [round(float(v) / 4) for v in second.inputs["video"][:, 0, 0, 0]] == [11, 11, 16, 18]
