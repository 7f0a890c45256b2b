"""The live Foxglove view: a real WebSocket client subscribes to every channel and decodes
each message by the schema the server advertised (protobuf or JSON)."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import struct
import subprocess
import sys
import time

import cv2
import msgpack
import numpy as np
import pytest
import zmq

from fusiond.bus.wire import decode_sample_header, text_block
from fusiond.recording.foxglove import MAX_FIELDS, MAX_IMAGES, MAX_ROWS, ROWS_PER_S, Views

from .helpers import DaemonProcess, demo_config, free_port, fusiond
from .test_wire import sample_frames


def proto_class(name: str, data: bytes):
    """The message class of ``name`` built from a ``FileDescriptorSet`` (a schema's data)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    pool = descriptor_pool.DescriptorPool()
    for file in descriptor_pb2.FileDescriptorSet.FromString(data).file:
        pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(name))


class ViewClient:
    """A Foxglove WebSocket client: what the channels are, and each one's decoded messages."""

    def __init__(self, port: int) -> None:
        from websockets.sync.client import connect

        self.stack = contextlib.ExitStack()
        url = f"ws://127.0.0.1:{port}"
        self.ws = self.stack.enter_context(connect(url, subprotocols=["foxglove.sdk.v1"], max_size=None))
        self.channels: dict[str, dict] = {}
        self.by_sub: dict[int, str] = {}
        self.got: dict[str, list] = {}

    def pump(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                message = self.ws.recv(timeout=left)
            except TimeoutError:
                return
            if isinstance(message, str):
                body = json.loads(message)
                if body["op"] == "advertise":
                    for channel in body["channels"]:
                        self.channels[channel["topic"]] = channel
                continue
            opcode, sub, log_time = struct.unpack_from("<BIQ", message)
            assert opcode == 1
            topic = self.by_sub[sub]
            self.got.setdefault(topic, []).append((log_time, self.decode(topic, message[13:])))

    def subscribe(self, topics: list[str]) -> None:
        subscriptions = []
        for topic in topics:
            sub = len(self.by_sub) + 1
            self.by_sub[sub] = topic
            subscriptions.append({"id": sub, "channelId": self.channels[topic]["id"]})
        self.ws.send(json.dumps({"op": "subscribe", "subscriptions": subscriptions}))

    def decode(self, topic: str, payload: bytes):
        channel = self.channels[topic]
        if channel["encoding"] == "json":
            return json.loads(payload)
        assert channel["encoding"] == channel["schemaEncoding"] == "protobuf"
        cls = proto_class(channel["schemaName"], base64.b64decode(channel["schema"]))
        return cls.FromString(payload)

    def close(self) -> None:
        self.stack.close()


def _status(control: str) -> dict:
    result = fusiond("status", "--json", "--connect", control)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _view_row(control: str, check, timeout_s: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout_s
    row: dict = {}
    while time.monotonic() < deadline:
        rows = [o for o in _status(control)["outputs"] if o["name"] == "view"]
        if rows and check(row := rows[0]):
            return row
        time.sleep(0.2)
    raise AssertionError(f"the view's status row never got there: {row}")


@pytest.mark.slow
def test_the_live_view_shows_video_audio_plots_by_channel_name_and_predictions(tmp_path, endpoints):
    control = f"tcp://127.0.0.1:{free_port()}"
    path = demo_config(tmp_path, *endpoints, control)
    path.write_text(path.read_text() + '\n[outputs.view]\nkind = "foxglove"\nlisten = "127.0.0.1:0"\n')
    d = DaemonProcess(path, tmp_path / "daemon.log")
    d.control = control
    client = None
    try:
        port = _view_row(control, lambda r: r["health"].get("port"))["health"]["port"]
        client = ViewClient(port)
        wanted = ["/s/demo/cam", "/s/demo/mic", "/s/demo/imu", "/p/demo"]
        deadline = time.monotonic() + 60
        while not set(wanted) <= set(client.channels) and time.monotonic() < deadline:
            client.pump(0.5)
        assert set(wanted) <= set(client.channels), client.channels.keys()
        client.subscribe(wanted)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(len(client.got.get(t, [])) >= 3 for t in wanted):
            client.pump(0.5)
        got, channels = client.got, client.channels
        assert all(len(got.get(t, [])) >= 3 for t in wanted), {t: len(v) for t, v in got.items()}

        assert channels["/s/demo/cam"]["schemaName"] == "foxglove.RawImage"
        _, image = got["/s/demo/cam"][-1]
        assert image.encoding == "bgr8" and image.width > 0 and image.height > 0
        assert len(image.data) == image.step * image.height == image.width * 3 * image.height

        assert channels["/s/demo/mic"]["schemaName"] == "foxglove.RawAudio"
        _, audio = got["/s/demo/mic"][-1]
        assert audio.format == "pcm-s16" and audio.sample_rate == 16000 and audio.number_of_channels == 1
        assert len(audio.data) > 0 and len(audio.data) % 2 == 0
        assert np.abs(np.frombuffer(b"".join(a.data for _, a in got["/s/demo/mic"]), "<i2")).max() > 0

        imu = json.loads(channels["/s/demo/imu"]["schema"])
        assert imu["properties"]["accel_z"] == {"type": ["number", "null"], "description": "g"}
        t_ns, row = got["/s/demo/imu"][-1]
        assert isinstance(row["accel_z"], float)
        assert row["timestamp"] == {"sec": t_ns // 10**9, "nsec": t_ns % 10**9}

        _, p = got["/p/demo"][-1]
        assert p["label"] in p["scores"] and len(p["scores"]) == 10
        assert set(p["mask"]) == {"video", "audio", "imu"} and set(p["mask"].values()) <= {0, 1}
        assert [m for m, v in p["mask"].items() if v] == sorted(p["present"], key=list(p["mask"]).index)
        assert {"modality_labels", "disagreement", "latency_ms"} <= set(p)
        seqs = [p["seq"] for _, p in got["/p/demo"]]
        assert seqs == sorted(seqs)

        row = _view_row(control, lambda r: r["health"].get("subscriptions") == 4 and r["samples"] > 0)
        assert row["malformed"] == 0 and row["failed"] == 0 and row["state"] == "running", row
        client.close()  # a client that leaves ends its subscriptions: the frames cost nothing again
        client = None
        _view_row(control, lambda r: r["health"].get("subscriptions") == 0)
    finally:
        if client is not None:
            client.close()
        d.close()


def _msg(stream: str, data: np.ndarray, **fields) -> list[bytes]:
    """A sample message of rig ``r``: an imu stream at 10 Hz, stamped 0, unless told."""
    return sample_frames(
        data,
        **{
            "rig": "r",
            "stream": stream,
            "modality": "imu",
            "seq": 0,
            "t_ns": 0,
            "t_pub_ns": 0,
            "rate_hz": 10,
            **fields,
        },
    )


def _imu(stream: str, value: float, t_ns: int = 10**18) -> list[bytes]:
    return _msg(stream, np.full((1, 2), value, np.float32), t_ns=t_ns)


@pytest.mark.slow
def test_forged_streams_cannot_crowd_out_a_watched_one_and_absurd_messages_are_counted(sockets, tmp_path):
    """``fusiond view`` against a bus of the test's own. 4,000 invented streams get
    channels no faster than 16 a second (the rest are counted as failed), so the client
    that watches a real stream is never flooded with announcements and dropped, and its
    stream stays served; a stamp past 2106, a forged prediction and a malformed sample are
    counted, and the bridge goes on."""
    from fusiond_plugins.foxglove import MAX_TOPICS

    bus, bus_at = sockets.bound(zmq.PUB)
    reports, reports_at = sockets.bound(zmq.SUB, subscribe=(b"o/",))
    log = tmp_path / "view.log"
    argv = ["view", "--connect", bus_at, "--publish", reports_at, "--listen", "127.0.0.1:0"]
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fusiond", *argv],
            stderr=out,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
    client = None
    last: dict = {}

    def report(check) -> dict:
        nonlocal last
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            while reports.poll(100):
                last = msgpack.unpackb(reports.recv_multipart()[1])
            if last and check(last):
                return last
            bus.send_multipart(_imu("real", 1.0))  # the watched stream goes on meanwhile
        raise AssertionError(f"no such report: {last}\n{log.read_text()}")

    try:
        port = report(lambda r: r["health"].get("port"))["health"]["port"]
        client = ViewClient(port)
        deadline = time.monotonic() + 60
        while "/s/r/real" not in client.channels and time.monotonic() < deadline:
            bus.send_multipart(_imu("real", 1.0))
            client.pump(0.2)
        client.subscribe(["/s/r/real"])
        report(lambda r: r["health"]["subscriptions"] == 1)
        for _ in range(2):
            for i in range(2000):
                bus.send_multipart(_imu(f"f{i}", i))
                if i % 100 == 0:
                    time.sleep(0.02)  # a queue of 64: let the bridge read
        bus.send_multipart(_imu("late", 1.0, t_ns=2**63 - 1))  # a stamp Foxglove cannot hold
        bus.send_multipart([b"s/r/bad", msgpack.packb({"v": [1, 0], "type": "sample"}), b""])
        forged = {"v": [1, 2], "type": "prediction", "rig": "r", "seq": 0, "window_start_ns": 0}
        forged |= {"window_end_ns": -1, "label": "x", "classes": ["x"], "scores": [1.0], "present": 5}
        forged |= {"missing": [], "model": {}, "latency_ns": {}, "t_pub_ns": 0}
        bus.send_multipart([b"p/r", msgpack.packb(forged)])
        done = report(lambda r: r["counts"].get("failed", 0) > 0 and r["counts"].get("malformed", 0) >= 2)
        assert done["health"]["channels"] <= MAX_TOPICS and done["health"]["subscriptions"] == 1, done
        client.got.clear()
        deadline = time.monotonic() + 30

        def after_flood() -> bool:  # rows sent before it may still be on their way
            return any(row["c1"] == 2.0 for _, row in client.got.get("/s/r/real", []))

        while not after_flood() and time.monotonic() < deadline:
            bus.send_multipart(_imu("real", 2.0))
            client.pump(0.2)
        assert after_flood(), client.got.keys()  # still served after the flood
        assert proc.poll() is None, log.read_text()
    finally:
        if client is not None:
            client.close()
        proc.kill()
        proc.wait()


def test_a_full_view_closes_its_least_recently_used_unwatched_channel():
    """512 channels at most: a new stream takes the place of the one least recently used
    that no client watches; a watched one is never closed."""
    import threading

    from fusiond_plugins.foxglove import MAX_TOPICS, FoxgloveConfig, FoxgloveOutput

    from fusiond.bus.wire import decode_sample_header
    from fusiond.outputs.base import OutputContext

    context = OutputContext("view", threading.Event(), logging.getLogger("test"))
    view = FoxgloveOutput(FoxgloveConfig(listen="127.0.0.1:0"), context)
    view.open()
    view.burst = view.per_s = 10**6  # only the cap matters here
    client = None
    try:

        def show(stream: str) -> None:
            frames = _imu(stream, 1.0)
            view.sample(decode_sample_header(frames), frames)

        show("watched")
        client = ViewClient(view.server.port)
        deadline = time.monotonic() + 30
        while "/s/r/watched" not in client.channels and time.monotonic() < deadline:
            client.pump(0.1)
        client.subscribe(["/s/r/watched"])
        while not view.watched["/s/r/watched"] and time.monotonic() < deadline:
            client.pump(0.1)
        for i in range(MAX_TOPICS + 100):
            show(f"s{i}")
        assert len(view.channels) == MAX_TOPICS and view.evicted == 101
        assert "/s/r/watched" in view.channels and "/s/r/s0" not in view.channels
        assert f"/s/r/s{MAX_TOPICS + 99}" in view.channels
    finally:
        if client is not None:
            client.close()
        view.close()


def _shown(views: Views, frames: list[bytes]) -> list:
    """The views of one sample message."""
    return views.sample(decode_sample_header(frames), frames)


def test_views_refuse_what_foxglove_cannot_hold_and_never_decode_a_second_buffer():
    views = Views()
    late = _imu("s", 1.0, t_ns=2**32 * 10**9)
    with pytest.raises(ValueError, match="2106"):
        _shown(views, late)
    # A first buffer of numbers and a second that is no JPEG at all: decoding it would fail.
    frames = _msg("x", np.ones((1, 2), np.float32), rate_hz=10)
    bogus = bytes(range(200))
    header = msgpack.unpackb(frames[1])
    header["buffers"].append({"dtype": "|u1", "shape": [1, 2000, 2000, 3], "encoding": "jpeg"})
    frames = [frames[0], msgpack.packb(header), frames[2], bogus]
    [row] = _shown(views, frames)
    assert json.loads(row.body)["c0"] == 1.0
    # One message becomes a bounded number of views, whatever its size and declared rate.
    big = _msg("y", np.zeros((1_000_000, 1), np.uint8), rate_hz=500)
    assert len(_shown(views, big)) == MAX_ROWS
    many = _msg("z", np.zeros((500, 2, 2, 1), np.uint8), modality="video", rate_hz=30)
    assert len(_shown(views, many)) == MAX_IMAGES
    # A stream keeps its view: numbers on a camera's topic are refused, not sent as images.
    frames = _msg("z", np.ones((1, 2), np.float32), modality="video", seq=1, rate_hz=30)
    with pytest.raises(ValueError, match="cannot become"):
        _shown(views, frames)


@pytest.mark.parametrize(
    ("dtype", "values", "pcm"),
    [
        ("int8", [-128, 0, 127], [-32768, 0, 32512]),
        ("uint8", [0, 128, 255], [-32768, 0, 32512]),
        ("uint16", [0, 32768, 65535], [-32768, 0, 32767]),
        ("int32", [-(2**31), 0, 2**31 - 1], [-32768, 0, 32767]),
    ],
)
def test_integer_audio_is_centred_and_scaled_to_16_bits(dtype, values, pcm):
    views = Views()
    data = np.array(values, dtype).reshape(-1, 1)
    frames = _msg("m", data, modality="audio", rate_hz=8000)
    [view] = _shown(views, frames)
    audio = proto_class(view.schema, views.schema(view.schema)[1]).FromString(view.body)
    assert np.frombuffer(audio.data, "<i2").tolist() == pcm


def test_views_pass_a_sources_jpeg_through_and_scale_float_audio_to_pcm():
    views = Views()
    image = np.random.default_rng(0).integers(0, 255, (24, 32, 3), np.uint8)
    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 40])
    assert ok
    frames = _msg(
        "c",
        image[None],
        modality="video",
        t_ns=5 * 10**9 + 7,
        rate_hz=30,
        encoding="jpeg",
        payload=jpeg.tobytes(),
    )
    [view] = _shown(views, frames)
    assert (view.topic, view.schema, view.encoding, view.t_ns) == (
        "s/r/c",
        "foxglove.CompressedImage",
        "protobuf",
        5 * 10**9 + 7,
    )
    shown = proto_class(view.schema, views.schema(view.schema)[1]).FromString(view.body)
    assert shown.data == jpeg.tobytes()  # the source's JPEG, never decoded here
    assert (shown.timestamp.seconds, shown.timestamp.nanos, shown.format) == (5, 7, "jpeg")

    wave = np.array([[0.0], [0.5], [-1.0], [2.0], [np.nan]], np.float32)
    frames = _msg("m", wave, modality="audio", rate_hz=48000)
    [view] = _shown(views, frames)
    audio = proto_class(view.schema, views.schema(view.schema)[1]).FromString(view.body)
    assert (audio.sample_rate, audio.number_of_channels) == (48000, 1)
    assert np.frombuffer(audio.data, "<i2").tolist() == [0, 16383, -32767, 32767, 0]  # clipped, NaN silent


def test_numeric_views_are_thinned_named_and_capped_and_text_becomes_log_lines():
    views = Views(prefix="/foxglove/")
    data = np.arange(2000 * 3, dtype=np.float64).reshape(2000, 3)
    data[4, 0] = np.inf
    frames = _msg("i", data, t_ns=10**9, rate_hz=2000, channels=["ax", "ay", "az"], units=["g", "g", "g"])
    rows = _shown(views, frames)
    assert len(rows) == 2000 // (2000 // ROWS_PER_S) == ROWS_PER_S  # one second of signal
    first, second = (json.loads(v.body) for v in rows[:2])
    assert first == {"timestamp": {"sec": 1, "nsec": 0}, "ax": 0.0, "ay": 1.0, "az": 2.0}
    assert second["timestamp"] == {"sec": 1, "nsec": 2_000_000} and rows[1].t_ns == 10**9 + 2_000_000
    assert second["ax"] is None and second["ay"] == 13.0  # not finite: no value, the row kept
    schema = json.loads(views.schema(rows[0].schema)[1])
    assert schema["properties"]["az"]["description"] == "g"
    wide = _msg("e", np.ones((4, 300), np.float32), modality="emb", rate_hz=0)
    [row] = _shown(views, wide)  # irregular: one row per block
    assert len(json.loads(row.body)) == MAX_FIELDS + 1
    data, payload = text_block("x" * 10_000)
    text = _msg("t", data, modality="text", t_ns=3, rate_hz=0, encoding="utf-8", payload=payload)
    [line] = _shown(views, text)
    log = proto_class(line.schema, views.schema(line.schema)[1]).FromString(line.body)
    assert len(log.message) == 4096 and log.name == "r/t" and line.topic == "/foxglove/s/r/t"


@pytest.mark.parametrize(
    ("options", "where"),
    [
        ({"listen": "0.0.0.0"}, "outputs.view.listen"),
        ({"listen": "host:99999"}, "port 99999 is over 65535"),
        ({"listen": "a b:80"}, "outputs.view.listen"),
        ({"backlog": 0}, "outputs.view.backlog"),
        ({"backlog": "many"}, "outputs.view.backlog"),
        ({"port": 80}, "outputs.view.port"),
    ],
)
def test_bad_view_options_name_their_path(options, where):
    from fusiond.config import OutputSection, validate_output
    from fusiond.errors import ConfigError
    from fusiond.plugin import load_plugins

    plugins = load_plugins()
    cls = plugins.outputs.get("foxglove")
    try:
        config = validate_output(plugins.outputs, OutputSection(kind="foxglove", **options), "outputs.view")
    except ConfigError as exc:
        assert where in str(exc)
        return
    assert where in " ".join(cls.check(config))  # seen by check-config, before any start
