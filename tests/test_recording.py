"""Record a live demo run to MCAP, read it back, replay it, run it offline."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from mcap.reader import make_reader

from fusiond.bus.wire import decode_prediction, decode_sample, encode_sample
from fusiond.client import Subscriber
from fusiond.recording import info, read

from .helpers import demo_config, free_port, fusiond

pytestmark = pytest.mark.slow
HOP_NS = 500_000_000


def start(*args: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "fusiond", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A live demo run recorded for 8 s: (config, recording, live predictions)."""
    tmp = tmp_path_factory.mktemp("live")
    pub, sub = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    config = demo_config(tmp, pub, sub)
    daemon = start("run", "--config", str(config), log=tmp / "daemon.log")
    try:
        with Subscriber(sub, timeout_s=30) as predictions:
            # The rig is up: every stream feeds the windows (the first ones may close
            # before a stream's first samples come, on a loaded machine).
            first = predictions.next()
            while first is not None and first.missing:
                first = predictions.next()
            assert first is not None
        path = tmp / "run.mcap"
        result = fusiond("record", "-o", str(path), "--connect", sub, "--duration", "8", "--foxglove")
        assert result.returncode == 0, result.stderr
    finally:
        stop(daemon)
    recorded = [decode_prediction(r.frames) for r in read(path, ["p/"])]
    return config, path, recorded, result.stderr


def test_the_recording_is_indexed_mcap_with_every_stream(live):
    _, path, recorded, log = live
    with path.open("rb") as f:
        reader = make_reader(f)
        summary = reader.get_summary()
        topics = {c.topic: c for c in summary.channels.values()}
        counts = {topics_id: n for topics_id, n in summary.statistics.channel_message_counts.items()}
        assert summary.chunk_indexes and all(c.compression == "zstd" for c in summary.chunk_indexes)
        meta = {m.name: m.metadata for m in reader.iter_metadata()}
    bus = {t for t, c in topics.items() if c.message_encoding == "fusiond-frames"}
    streams = {f"{kind}/demo/{stream}" for kind in "st" for stream in ("cam", "mic", "imu")}
    assert bus == {*streams, "p/demo"}  # samples, the sources' tallies, predictions
    assert set(topics) - bus == {f"/foxglove/s/demo/{s}" for s in ("cam", "mic", "imu")} | {
        "/foxglove/p/demo"
    }
    assert topics["s/demo/cam"].metadata["modality"] == "video"
    by_topic = {c.topic: counts[cid] for cid, c in summary.channels.items()}
    assert 70 <= by_topic["s/demo/cam"] <= 82  # 10 fps for 8 s
    assert 14 <= by_topic["p/demo"] <= 17  # 2 windows/s
    assert meta["fusiond"]["protocol"] == "1.4"
    assert "lost before the recorder (sequence gaps): 0" in log
    assert len(recorded) == by_topic["p/demo"]


def test_foxglove_channels_hold_every_stream_and_the_predictions_in_foxglove_schemas(live):
    from .test_view import proto_class

    _, path, recorded, log = live
    with path.open("rb") as f:
        reader = make_reader(f)
        summary = reader.get_summary()
        schemas = {
            c.topic: summary.schemas[c.schema_id]
            for c in summary.channels.values()
            if c.topic.startswith("/foxglove/")
        }
        views = {t: [] for t in schemas}
        for schema, channel, message in reader.iter_messages(topics=list(schemas)):
            if schema.encoding == "protobuf":
                body = proto_class(schema.name, schema.data).FromString(message.data)
            else:
                assert schema.encoding == "jsonschema" and channel.message_encoding == "json"
                body = json.loads(message.data)
            views[channel.topic].append((message.publish_time, body))
    assert schemas["/foxglove/s/demo/cam"].name == "foxglove.CompressedImage"
    assert schemas["/foxglove/s/demo/mic"].name == "foxglove.RawAudio"
    assert json.loads(schemas["/foxglove/s/demo/imu"].data)["properties"]["accel_z"]["description"] == "g"
    assert schemas["/foxglove/p/demo"].name == "fusiond.Prediction"
    samples = [decode_sample(r.frames) for r in read(path, ["s/demo/cam"])]
    frames = {s.t_ns: s.data[0] for s in samples}
    assert len(views["/foxglove/s/demo/cam"]) == len(frames) > 0
    for t_ns, image in views["/foxglove/s/demo/cam"]:
        assert image.format == "jpeg" and image.frame_id == "cam"
        assert image.timestamp.seconds * 10**9 + image.timestamp.nanos == t_ns
        shown = cv2.imdecode(np.frombuffer(image.data, np.uint8), cv2.IMREAD_COLOR)
        raw = frames[t_ns]
        assert shown.shape == raw.shape
        assert np.abs(shown.astype(int) - raw).mean() < 4  # JPEG at quality 85
    audio = [decode_sample(r.frames) for r in read(path, ["s/demo/mic"])]
    heard = b"".join(a.data for _, a in views["/foxglove/s/demo/mic"])
    assert heard == b"".join(s.data.astype("<i2").tobytes() for s in audio)  # 16-bit PCM as it came
    imu = [decode_sample(r.frames) for r in read(path, ["s/demo/imu"])]
    plotted = [row["accel_z"] for _, row in views["/foxglove/s/demo/imu"]]
    assert plotted == pytest.approx(np.concatenate([s.data[:, 0] for s in imu]).tolist())
    shown = [p for _, p in views["/foxglove/p/demo"]]
    assert [p["label"] for p in shown] == [p.label for p in recorded]
    assert [p["scores"] for p in shown] == [dict(zip(p.classes, p.scores, strict=True)) for p in recorded]
    assert all(set(p["mask"]) == {"video", "audio", "imu"} for p in shown)
    assert "foxglove views: /foxglove/p/demo" in log


def test_info_reports_channels_counts_and_rates(live):
    result = fusiond("info", str(live[1]), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["complete"] and 7.0 <= summary["duration_s"] <= 8.5
    rates = {row["topic"]: row["rate_hz"] for row in summary["channels"]}
    assert set(rates) == {f"{k}/demo/{s}" for k in "st" for s in ("cam", "mic", "imu")} | {"p/demo"}
    assert rates["t/demo/cam"] == pytest.approx(1.0, abs=0.3)  # a source's tally, once a second
    views = {row["topic"]: row for row in summary["views"]}
    assert views["/foxglove/s/demo/cam"]["schema"] == "foxglove.CompressedImage"
    assert views["/foxglove/p/demo"]["messages"] == sum(1 for _ in read(live[1], ["p/"]))
    assert rates["s/demo/cam"] == pytest.approx(10.0, abs=0.3)
    assert rates["s/demo/imu"] == pytest.approx(10.0, abs=0.3)  # 10-sample blocks at 100 Hz
    assert summary["metadata"]["fusiond"]["topics"] == ["(every topic)"]  # a list, not ""


def offline(config: Path, path: Path, out: Path) -> list[dict]:
    result = fusiond("run", "--config", str(config), "--replay", str(path), "--output", str(out))
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_an_offline_run_is_deterministic_and_matches_the_live_windows(live, tmp_path):
    config, path, recorded, _ = live
    first = offline(config, path, tmp_path / "a.jsonl")
    second = offline(config, path, tmp_path / "b.jsonl")
    key = [(p["window_index"], p["label"], p["scores"], p["present"]) for p in first]
    assert key == [(p["window_index"], p["label"], p["scores"], p["present"]) for p in second]
    assert len(first) >= 14
    live_by_index = {p.extra["window_index"]: p for p in recorded if not p.missing}
    # The recording starts mid-stream: its first windows are only partly covered.
    same = [
        (p, live_by_index[p["window_index"]])
        for p in first[2:]
        if p["window_index"] in live_by_index and not p["missing"]
    ]
    assert len(same) >= 10
    assert [p["label"] for p, _ in same] == [q.label for _, q in same]
    diffs = [max(abs(a - b) for a, b in zip(p["scores"], q.scores, strict=True)) for p, q in same]
    # Offline, samples arrive at the recorder's receive times, live at the daemon's: on a busy
    # machine a block can miss a window in one and not the other. Most windows are the same
    # to the last digit, and none differs by much.
    assert sum(d < 1e-3 for d in diffs) >= 0.8 * len(diffs) and max(diffs) < 0.05, diffs


def test_replay_into_a_second_daemon_gives_the_live_predictions(live, tmp_path):
    _, path, recorded, _ = live
    pub, sub = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    config = demo_config(tmp_path, pub, sub)
    daemon = start("run", "--config", str(config), "--no-sources", log=tmp_path / "d.log")
    try:
        time.sleep(3)  # model loaded, broker bound
        with Subscriber(sub, timeout_s=15) as predictions:
            replay = start("replay", str(path), "--connect", pub, log=tmp_path / "replay.log")
            got = list(predictions)
            replay.wait(30)
    finally:
        stop(daemon)
    log = (tmp_path / "replay.log").read_text()
    shift_s = int(log.split("capture times move by ")[1].split(" s")[0])
    offset = shift_s * 1_000_000_000 // HOP_NS
    live_by_index = {p.extra["window_index"]: p for p in recorded if not p.missing}
    # As offline: the first windows of the recording are only partly covered.
    same = [
        (p, live_by_index[p.extra["window_index"] - offset])
        for p in got[2:]
        if p.extra["window_index"] - offset in live_by_index and not p.missing
    ]
    assert len(same) >= 10, (len(got), log)
    assert all(p.window_start_ns - q.window_start_ns == shift_s * 10**9 for p, q in same)
    assert [p.label for p, _ in same] == [q.label for _, q in same], [
        (p.extra["window_index"], p.scores, q.scores) for p, q in same if p.label != q.label
    ]


def test_a_recorder_killed_with_sigkill_leaves_a_readable_file(tmp_path):
    pub, sub = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    daemon = start("run", "--config", str(demo_config(tmp_path, pub, sub)), log=tmp_path / "d.log")
    path = tmp_path / "killed.mcap"
    try:
        with Subscriber(sub, timeout_s=30) as predictions:
            assert predictions.next() is not None
        recorder = start("record", "-o", str(path), "--connect", sub, log=tmp_path / "r.log")
        # Count from when the recorder is subscribed, not from when its process began:
        # interpreter start-up is slow and uneven on a loaded machine.
        deadline = time.monotonic() + 30
        while "recording tcp" not in (tmp_path / "r.log").read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(4)
        recorder.kill()
        recorder.wait()
    finally:
        stop(daemon)
    summary = info(path)
    assert not summary.complete
    assert summary.messages["s/demo/cam"] >= 20  # 4 s at 10 fps, less at most the last chunk
    result = fusiond("info", str(path))
    assert result.returncode == 0 and "cut off" in result.stdout


def test_a_full_disk_ends_the_recorder_with_one_clear_line(tmp_path):
    """/dev/full answers every write with ENOSPC, as a full disk does."""
    import zmq

    sub_endpoint = f"tcp://127.0.0.1:{free_port()}"
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.bind(sub_endpoint)
    cmd = [
        sys.executable,
        "-m",
        "fusiond",
        "record",
        "-o",
        "/dev/full",
        "--connect",
        sub_endpoint,
        "--duration",
        "60",
    ]
    recorder = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        seq = 0
        while recorder.poll() is None and seq < 100_000:
            now = time.time_ns()
            pub.send_multipart(
                encode_sample(
                    rig="r",
                    stream="imu",
                    modality="imu",
                    seq=seq,
                    t_ns=now,
                    t_pub_ns=now,
                    rate_hz=100.0,
                    data=np.zeros((10, 1), np.float32),
                )
            )
            seq += 1
            time.sleep(0.01)
        _, err = recorder.communicate(timeout=60)
    finally:
        pub.close(linger=0)
        ctx.term()
    assert recorder.returncode == 2, err
    assert "cannot write /dev/full: the disk is full after" in err and "Traceback" not in err, err


def _small_recording(path: Path, messages: int = 200) -> Path:
    """A recording of several chunks (small ones), one stream of small IMU blocks."""
    from fusiond.recording.recorder import RecordingWriter

    with RecordingWriter(path, "test", chunk_size=2048) as out:
        for seq in range(messages):
            t = 10**18 + seq * 10**7
            out.write(
                encode_sample(
                    rig="r",
                    stream="imu",
                    modality="imu",
                    seq=seq,
                    t_ns=t,
                    t_pub_ns=t,
                    rate_hz=100.0,
                    data=np.full((1, 3), seq, np.float32),
                ),
                t,
            )
    return path


def _read_all(path: Path) -> list[tuple[str, int]]:
    got = [(r.topic, r.log_time_ns) for r in read(path)]
    info(path)  # never raises either
    return got


def test_a_damaged_recording_never_raises_and_never_reads_a_message_twice(tmp_path):
    """Cut at every offset, bytes flipped all over, lengths made absurd: every reader walks
    what it can, skips what is damaged and counts it, and gives each message at most once."""
    good = _small_recording(tmp_path / "good.mcap")
    data = good.read_bytes()
    whole = _read_all(good)
    assert len(whole) == 200 and len(set(whole)) == 200
    damaged = tmp_path / "damaged.mcap"
    rng = np.random.default_rng(0)
    for cut in range(0, len(data), 7):  # cut short: what is read is what was written
        damaged.write_bytes(data[:cut])
        got = _read_all(damaged)
        assert len(got) == len(set(got)) <= 200 and set(got) <= set(whole)
    variants = []  # damaged inside: a value may change and still parse, and is read as it is
    for at in range(8, len(data) - 9, max(1, len(data) // 120)):  # a length field of 2^63 anywhere
        variants.append(data[:at] + b"\x06" + (2**63).to_bytes(8, "little") + data[at + 9 :])
    for _ in range(150):
        flipped = bytearray(data)
        for at in rng.integers(8, len(data), 3):
            flipped[at] ^= 1 << int(rng.integers(0, 8))
        variants.append(bytes(flipped))
    for variant in variants:
        damaged.write_bytes(variant)
        got = _read_all(damaged)
        assert len(got) == len(set(got)) <= 200
    for cut in (8, 20, 36):  # a file cut to a few bytes, through the command, as a user meets it
        damaged.write_bytes(data[:cut])
        for args in (["info", str(damaged)], ["info", str(damaged), "--json"]):
            result = fusiond(*args)
            assert "Traceback" not in result.stderr, result.stderr


def test_a_replay_faster_than_recorded_says_what_a_live_daemon_will_drop(tmp_path):
    path = _small_recording(tmp_path / "r.mcap")
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    fast = fusiond("replay", str(path), "--speed", "2", "--connect", endpoint, timeout=120)
    assert fast.returncode == 0, fast.stderr
    assert "everything after the first 10 s of the recording" in fast.stderr
    assert "fusiond run --config CONFIG --replay" in fast.stderr


def test_losses_at_a_streams_end_are_counted_from_the_sources_tally(tmp_path, endpoints):
    """A real source ends with a tally of what it sent; a recorder that missed the last
    messages counts them, where no later message would show the gap. An old or unknown
    stream's tally counts nothing."""
    import threading

    import zmq

    from fusiond.bus.wire import decode_header, encode_tally
    from fusiond.recording.recorder import Recorder

    from .test_sources import run_source

    csv = tmp_path / "imu.csv"
    csv.write_text("t_s,ax\n" + "".join(f"{i / 50:.2f},{i}\n" for i in range(100)))
    ctx = zmq.Context()
    inbox, out = ctx.socket(zmq.SUB), ctx.socket(zmq.PUB)
    inbox.bind(endpoints[0])
    inbox.subscribe(b"")
    out.bind(endpoints[1])
    stop = threading.Event()
    try:
        proc, _ = run_source(endpoints[0], "csvfile", f"path='{csv}'", "columns=['ax']", "block=10")
        got = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (got and decode_header(got[-1]).get("final")):
            if inbox.poll(100):
                got.append(inbox.recv_multipart())
        proc.communicate(timeout=10)
        samples = [m for m in got if m[0] == b"s/t/s"]
        tallies = [decode_header(m) for m in got if m[0] == b"t/t/s"]
        assert len(samples) == 10 and tallies[-1]["final"] and tallies[-1]["last_seq"] == 9, tallies
        with Recorder(tmp_path / "tail.mcap", endpoints[1]) as recorder:
            thread = threading.Thread(target=recorder.run, args=(stop,))
            thread.start()
            time.sleep(0.5)  # the subscription reaches the publisher
            for frames in samples[:7]:  # the last three never arrive
                out.send_multipart(frames)
            out.send_multipart(encode_tally(rig="t", stream="s", last_seq=2, t_ns=time.time_ns()))  # old
            out.send_multipart(encode_tally(rig="t", stream="x", last_seq=50, t_ns=time.time_ns()))  # unseen
            out.send_multipart(got[-1])  # the source's own final tally
            deadline = time.monotonic() + 30
            while recorder.messages["t/t/s"] < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            stop.set()
            thread.join()
        assert recorder.messages["s/t/s"] == 7 and recorder.gaps == {"s/t/s": 3}, recorder.gaps
    finally:
        stop.set()
        inbox.close(linger=0)
        out.close(linger=0)
        ctx.term()
