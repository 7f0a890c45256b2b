"""The real daemon, as a subprocess on the demo config, read through the real client."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import msgpack
import pytest
import zmq

from fusiond.align import WindowConfig
from fusiond.client import Subscriber
from fusiond.models import load

from .helpers import ROOT, DaemonProcess, demo_config, free_port, fusiond, truth

pytestmark = pytest.mark.slow


@pytest.fixture
def daemon(tmp_path, endpoints):
    started: list[DaemonProcess] = []

    def start(**replace: str) -> DaemonProcess:
        d = DaemonProcess(demo_config(tmp_path, *endpoints, **replace), tmp_path / "daemon.log")
        started.append(d)
        return d

    yield start
    for d in started:
        d.close()


def test_demo_predictions_are_right_and_the_daemon_stops_cleanly(daemon, endpoints):
    d = daemon()
    with Subscriber(endpoints[1], rigs=["demo"], timeout_s=30) as predictions:
        anchor = int(d.wait_for(r"media anchor: file sources start at (\d+)").group(1))
        got = []
        for p in predictions:
            if not got and p.missing:
                continue  # starting up: a stream's first samples may come after the first windows
            got.append(p)
            if len(got) == 30:
                break
    assert len(got) == 30
    checkpoint = load(ROOT / "demo/model.pt")
    assert [p.seq for p in got] == list(range(got[0].seq, got[0].seq + 30))
    inside = [(p, truth(anchor, p.window_start_ns)) for p in got]
    inside = [(p, digit) for p, digit in inside if digit is not None and not p.missing]
    assert len(inside) >= 12
    right = sum(p.label == str(digit) for p, digit in inside)
    assert right / len(inside) >= 0.9, [(p.label, d) for p, d in inside]
    for p in got:
        assert p.model == {"name": "demo-digits", "hash": checkpoint.content_hash}
        assert p.window_end_ns - p.window_start_ns == 1_000_000_000
        assert p.window_start_ns % 500_000_000 == 0
        assert abs(sum(p.scores) - 1) < 1e-3 and p.label == p.classes[p.scores.index(max(p.scores))]
        assert set(p.latency_ns) >= {"capture_to_ingest", "close_to_infer", "infer", "publish"}
        assert all(v >= 0 for v in p.latency_ns.values()), p.latency_ns
    assert re.search(r"windows/s, latency p50 [\d.]+ ms p99 [\d.]+ ms .* last: demo:\d", d.text())

    children = d.source_pids()
    assert len(children) == 3
    d.stop(signal.SIGTERM)  # how long it takes: bench/bench_lifecycle.py
    assert d.proc.returncode == 0, d.text()
    assert not [pid for pid in children if Path(f"/proc/{pid}").exists()]


def test_staggered_windows_start_at_the_rigs_own_phase_and_are_still_right(tmp_path, endpoints):
    control = f"tcp://127.0.0.1:{free_port()}"
    config = demo_config(tmp_path, *endpoints, control, **{"stagger = false": "stagger = true"})
    offset = WindowConfig(10**9, 500_000_000, 0, stagger=True).offset_ns("demo")
    assert 0 < offset < 500_000_000
    with DaemonProcess(config, tmp_path / "daemon.log") as d:
        with Subscriber(endpoints[1], rigs=["demo"], timeout_s=30) as predictions:
            anchor = int(d.wait_for(r"media anchor: file sources start at (\d+)").group(1))
            got = [p for _, p in zip(range(40), (p for p in predictions if not p.missing), strict=False)]
        assert len(got) == 40
        for p in got:
            assert p.extra["window_offset_ns"] == offset
            assert p.window_start_ns == p.extra["window_index"] * 500_000_000 + offset
        inside = [(p, truth(anchor, p.window_start_ns)) for p in got]
        inside = [(p, digit) for p, digit in inside if digit is not None]
        assert len(inside) >= 12
        assert sum(p.label == str(digit) for p, digit in inside) >= 0.85 * len(inside)
        d.wait_for(r"windows/s, latency p50")  # a summary after the predictions: the daemon believed them
        assert "implausible_prediction" not in d.text()
        status = fusiond("status", "--connect", control)
        assert status.returncode == 0, status.stderr
        assert f"windows at +{offset / 1e6:g} ms in the hop" in status.stdout, status.stdout
        d.stop()
        assert d.proc.returncode == 0, d.text()


def test_ctrl_c_stops_the_daemon_and_its_sources(daemon, endpoints):
    d = daemon()
    d.wait_for(r"demo/imu \(csvfile\)")
    d.wait_for(r"demo/cam \(camera\)")
    d.wait_for(r"demo/mic \(audiofile\)")
    children = d.source_pids()
    d.stop(signal.SIGINT, group=True)  # what a terminal's Ctrl-C does
    assert not [pid for pid in children if Path(f"/proc/{pid}").exists()]
    assert "Traceback" not in d.text()


def test_echo_prints_predictions_as_json(daemon, endpoints):
    daemon()
    result = fusiond("echo", "--connect", endpoints[1], "--json", "--count", "3", "--timeout", "30")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line]
    assert len(lines) == 3
    import json

    first = json.loads(lines[0])
    assert first["type"] == "prediction" and first["topic"] == "p/demo"
    assert first["label"] in first["classes"]
    # What each present modality says by itself, calibrated, and how much they disagree.
    for p in map(json.loads, lines):
        assert list(p["modality_scores"]) == p["present"] == list(p["modality_labels"])
        for scores in p["modality_scores"].values():
            assert len(scores) == len(p["classes"]) and abs(sum(scores) - 1) < 1e-3
        assert 0.0 <= p["disagreement"] <= 1.0
    pretty = fusiond("echo", "--connect", endpoints[1], "--count", "1", "--timeout", "30").stdout
    assert re.search(r"says\[video:\d audio:\d imu:\d\] disagreement=\d\.\d\d", pretty), pretty


def test_bad_input_is_counted_and_logged_and_the_rest_keeps_serving(daemon, endpoints, sockets):
    d = daemon(**{'uri = "': 'uri = "/nonexistent/'})
    d.wait_for(r"no such video file: /nonexistent/.*retrying in")
    pub = sockets.make(zmq.PUB)
    pub.connect(endpoints[0])
    time.sleep(1.0)  # let the daemon's subscription reach this new publisher
    now = time.time_ns()
    bad_size = {
        "v": [1, 0],
        "type": "sample",
        "rig": "demo",
        "stream": "imu",
        "modality": "imu",
        "seq": 0,
        "t_ns": now,
        "clock": "realtime",
        "t_pub_ns": now,
        "rate_hz": 100.0,
        "buffers": [{"dtype": "<f4", "shape": [10, 1], "encoding": "raw"}],
    }
    for _ in range(5):
        pub.send_multipart([b"s/demo/cam", b"\xc1garbage"])
        pub.send_multipart([b"s/demo/imu", msgpack.packb(bad_size), b"\x00" * 7])
        pub.send_multipart([b"s/demo/imu", msgpack.packb({**bad_size, "v": [9, 0]})])
    with Subscriber(endpoints[1], timeout_s=30) as predictions:
        later = [next(iter(predictions)) for _ in range(4)]
    assert all(p.missing == ["video"] and p.present == ["audio", "imu"] for p in later)
    line = d.wait_for(r"drops: ([^\n]*)bad_version=5").group(0)
    assert "bad_header=5" in line and "bad_size=5" in line
    assert d.text().count("malformed message on the bus") == 3  # once per reason, then counted
    assert d.proc.poll() is None
    d.stop()
    assert d.proc.returncode == 0, d.text()


def test_windows_of_several_rigs_share_one_forward_pass(daemon, endpoints):
    from .helpers import ROOT

    second = "\n".join(
        f'[rigs.lab.sources.{name}]\nkind = "{kind}"\n{key} = "{ROOT}/demo/{file}"\nloop = true\n'
        for name, kind, key, file in [
            ("cam", "camera", "uri", "digits.mp4"),
            ("mic", "audiofile", "path", "digits.wav"),
            ("imu", "csvfile", "path", "imu.csv"),
        ]
    )
    daemon(**{"[rigs.demo.sources.cam]": second + "\n[rigs.demo.sources.cam]"})
    got: list = []
    with Subscriber(endpoints[1], timeout_s=30) as predictions:
        # Until both rigs have spoken 8 times: on a busy host one rig's sources start later.
        for p in predictions:
            got.append(p)
            if min(sum(q.rig == rig for q in got) for rig in ("demo", "lab")) >= 8 or len(got) >= 400:
                break
    by_rig = {rig: [p for p in got if p.rig == rig] for rig in ("demo", "lab")}
    assert all(len(v) >= 8 for v in by_rig.values()), {r: len(v) for r, v in by_rig.items()}
    indexes = {rig: {p.extra["window_index"] for p in ps} for rig, ps in by_rig.items()}
    shared = indexes["demo"] & indexes["lab"]
    assert shared
    # Both rigs play the same files on the same anchor: same windows, same answers.
    demo = {p.extra["window_index"]: p for p in by_rig["demo"]}
    pairs = [(demo[p.extra["window_index"]], p) for p in by_rig["lab"] if p.extra["window_index"] in demo]
    same = [(a, b) for a, b in pairs if a.present == b.present]
    # (Two decoders seeking one mp4 may land a frame apart, so allow a borderline window.)
    agree = sum(a.label == b.label for a, b in same)
    assert same and agree >= 0.8 * len(same), [(a.label, b.label, a.present, b.present) for a, b in pairs]
    assert max(p.extra["batch_size"] for p in got) == 2


def test_a_killed_source_is_restarted_and_the_others_keep_serving(daemon, endpoints):
    d = daemon()
    d.wait_for(r"fusiond\.sources\.runner\[(\d+)\]: source demo/mic")
    mic = int(re.search(r"fusiond\.sources\.runner\[(\d+)\]: source demo/mic", d.text()).group(1))
    os.kill(mic, signal.SIGKILL)
    restart = d.wait_for(r"source demo/mic died \(signal 9\); restarting in ([\d.]+) s")
    assert 0.35 <= float(restart[1]) <= 0.5  # the first backoff, less up to a quarter (jitter)
    d.wait_for(rf"fusiond\.sources\.runner\[(?!{mic}\])\d+\]: source demo/mic")
    with Subscriber(endpoints[1], timeout_s=30) as predictions:
        after = [p for _, p in zip(range(6), predictions, strict=False)]
    assert after[-1].present == ["video", "audio", "imu"]
    d.stop()
    assert d.proc.returncode == 0, d.text()


def test_the_javascript_example_of_the_protocol_doc_runs_as_written(daemon, endpoints, tmp_path):
    """docs/protocol.md's Node.js client, in a fresh npm package, reads a prediction and a
    camera frame from the demo daemon."""
    import shutil
    import subprocess

    doc = (ROOT / "docs/protocol.md").read_text()
    section = doc[doc.index("## Reading predictions and frames from JavaScript") :]
    code = re.search(r"```js\n(.*?)```", section, re.S).group(1)
    install = re.search(r"^    (npm install .*)$", section, re.M).group(1)
    npm, node = shutil.which("npm"), shutil.which("node")
    assert npm and node, "Node.js and npm are needed (scripts/setup.sh installs them)"
    package = tmp_path / "client"
    package.mkdir()
    subprocess.run([npm, "init", "-y"], cwd=package, check=True, capture_output=True)
    subprocess.run(
        [npm, *install.split()[1:], "--no-audit", "--no-fund"],
        cwd=package,
        check=True,
        capture_output=True,
        timeout=300,
    )
    (package / "predictions.mjs").write_text(code)
    daemon()
    env = {**os.environ, "FUSIOND_SUBSCRIBE": endpoints[1]}
    result = subprocess.run(
        [node, "predictions.mjs"], cwd=package, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    found = re.search(
        r"prediction demo #\d+: (\d) \((0\.\d\d|1\.00)\) window (\d+) index (\d+) hop (\d+)", result.stdout
    )
    assert found, result.stdout
    start, index, hop = (int(found.group(i)) for i in (3, 4, 5))
    assert hop == 500_000_000 and index * hop == start and start > 2**53  # exact: BigInt, not doubles
    assert re.search(r"frame s/demo/cam 96x96 \|u1 raw BGR, first pixel rgb\(\d+, \d+, \d+\)", result.stdout)
