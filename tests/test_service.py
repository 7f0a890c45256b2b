"""The daemon as a system service: sd_notify, reload, status, metrics, hz, journald."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from fusiond.client import Subscriber
from fusiond.models import load
from fusiond.service import Liveness, Notifier, alive

from .helpers import ROOT, DaemonProcess, demo_config, free_port, fusiond

S = 1_000_000_000


def test_liveness_rule():
    def check(**kw):
        base = dict(
            now_ns=100 * S,
            started_ns=0,
            last_sample_ns=99 * S,
            last_window_ns=99 * S,
            oldest_pending_ns=None,
            stall_ns=10 * S,
        )
        return alive(Liveness(**{**base, **kw}))

    assert check() == (True, "windows flowing")
    assert check(last_sample_ns=None)[0] and check(last_sample_ns=50 * S)[1] == "idle: no samples"
    assert check(last_window_ns=80 * S) == (False, "samples arrive but no window has closed")
    assert check(last_window_ns=None, started_ns=95 * S) == (True, "starting")
    assert not check(last_window_ns=None)[0]
    assert not check(oldest_pending_ns=85 * S)[0]


def test_notifier_sends_datagrams_to_a_real_socket(tmp_path):
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        notifier = Notifier(path)
        notifier.notify(READY=1, STATUS="two\nlines")
        notifier.close()
        assert server.recv(4096) == b"READY=1\nSTATUS=two lines"
    Notifier("").notify(READY=1)  # outside systemd: nothing to send, and nothing raised


@pytest.fixture
def daemons():
    started: list[DaemonProcess] = []

    def start(tmp, config, env=None):
        started.append(DaemonProcess(config, tmp / "daemon.log", env))
        return started[-1]

    yield start
    for d in started:
        d.close()


def endpoints_with_control(tmp_path: Path, **replace: str) -> tuple[Path, str, str, str]:
    pub, sub, control = (f"tcp://127.0.0.1:{free_port()}" for _ in range(3))
    config = demo_config(tmp_path, pub, sub, control, **replace)
    return config, pub, sub, control


@pytest.mark.slow
def test_sd_notify_ready_status_watchdog_stopping_in_order(tmp_path, daemons):
    config, *_ = endpoints_with_control(tmp_path)
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        server.settimeout(0.5)
        d = daemons(tmp_path, config, {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"})
        messages: list[tuple[float, str]] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and sum("WATCHDOG=1" in m for _, m in messages) < 6:
            with contextlib.suppress(TimeoutError):
                messages.append((time.monotonic(), server.recv(4096).decode()))
        # A reload says RELOADING=1 with the time it began, then READY=1 (Type=notify-reload).
        sent_ns = time.monotonic_ns()
        os.kill(d.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 60
        reloading = None
        while time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                text = server.recv(4096).decode()
                messages.append((time.monotonic(), text))
                if text.startswith("RELOADING=1"):
                    reloading = text
                elif reloading and text == "READY=1":
                    break
        assert reloading is not None and [t for _, t in messages][-1] == "READY=1", messages[-5:]
        usec = int(reloading.split("MONOTONIC_USEC=")[1])
        assert sent_ns // 1000 <= usec <= time.monotonic_ns() // 1000
        os.kill(d.proc.pid, signal.SIGTERM)
        d.proc.wait(5)
        server.settimeout(0.2)
        while True:
            try:
                messages.append((time.monotonic(), server.recv(4096).decode()))
            except TimeoutError:
                break
    texts = [m for _, m in messages]
    assert texts, d.text()
    assert texts[0].startswith("READY=1\nSTATUS=serving 3 of 3 source(s)"), texts
    assert texts[-1] == "STOPPING=1"
    assert sum(t == "WATCHDOG=1" for t in texts) >= 6
    assert any(t.startswith("STATUS=") and "windows/s" in t for t in texts)
    # READY only once the model is warm and every source has delivered.
    log = d.text()
    ready_at = log.index("fusiond ready: serving 3 of 3 source(s)")
    for stream in ("cam", "mic", "imu"):
        assert log.index(f"source demo/{stream} (") < ready_at


@pytest.mark.slow
def test_sighup_swaps_the_model_between_batches_without_losing_a_window(tmp_path, daemons):
    ck = load(ROOT / "demo/model.pt")
    from fusiond.models import save
    from fusiond.plugin import load_plugins

    second = tmp_path / "second.pt"
    digest = save(
        ck.build(load_plugins().parts),
        second,
        name="demo-digits-b",
        encoders=ck.encoders,
        fusion=ck.fusion,
        dim=ck.dim,
        window=ck.window,
    )
    config, _, sub, _ = endpoints_with_control(tmp_path)
    d = daemons(tmp_path, config)
    with Subscriber(sub, timeout_s=20) as predictions:
        got = [predictions.next() for _ in range(4)]
        config.write_text(config.read_text().replace(f'"{ROOT}/demo/model.pt"', f'"{second}"'))
        os.kill(d.proc.pid, signal.SIGHUP)
        while got[-1] is not None and got[-1].model["hash"] != digest or len(got) < 14:
            got.append(predictions.next())
        config.write_text("[model\nbroken = ")
        os.kill(d.proc.pid, signal.SIGHUP)
        d.wait_for(r"reload failed, still serving demo-digits-b .*not valid TOML")
        after = [predictions.next() for _ in range(3)]
    assert None not in got and None not in after
    indexes = [p.extra["window_index"] for p in got + after]
    assert indexes == list(range(indexes[0], indexes[0] + len(indexes))), indexes  # none lost
    seqs = [p.seq for p in got + after]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs  # a reload does not restart the count
    models = [p.model["name"] for p in got + after]
    switch = models.index("demo-digits-b")
    assert set(models[:switch]) == {"demo-digits"} and set(models[switch:]) == {"demo-digits-b"}
    assert all(p.model["hash"] == digest for p in got[switch:] + after)
    assert "reloaded: now serving demo-digits-b" in d.text()


@pytest.mark.slow
def test_a_sighup_during_a_reload_reloads_again_afterwards(tmp_path, daemons):
    ck = load(ROOT / "demo/model.pt")
    from fusiond.models import save
    from fusiond.plugin import load_plugins

    names = {}
    for name in ("b", "c"):
        names[name] = tmp_path / f"{name}.pt"
        save(
            ck.build(load_plugins().parts),
            names[name],
            name=f"demo-digits-{name}",
            encoders=ck.encoders,
            fusion=ck.fusion,
            dim=ck.dim,
            window=ck.window,
        )
    config, *_ = endpoints_with_control(tmp_path)
    d = daemons(tmp_path, config)
    d.wait_for("fusiond ready")
    original = config.read_text()
    config.write_text(original.replace(f'"{ROOT}/demo/model.pt"', f'"{names["b"]}"'))
    os.kill(d.proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "SIGHUP: reloading" not in d.text() and time.monotonic() < deadline:
        time.sleep(0.002)
    # The second arrives while the first still loads and warms its model.
    config.write_text(original.replace(f'"{ROOT}/demo/model.pt"', f'"{names["c"]}"'))
    os.kill(d.proc.pid, signal.SIGHUP)
    # Whether the second came during the first reload (usually) or just after it, the
    # daemon ends up serving what the file said at the last SIGHUP.
    d.wait_for(r"reloaded: now serving demo-digits-c")


BLIND = '[rigs.blind.sources.cam]\nkind = "camera"\nuri = "/nonexistent/x.mp4"\n\n'


@pytest.mark.slow
def test_status_says_why_a_rig_is_quiet_and_metrics_are_served(tmp_path, daemons):
    port = free_port()
    config, _, _, control = endpoints_with_control(
        tmp_path,
        **{'listen = ""': f'listen = "127.0.0.1:{port}"'},
        **{"[rigs.demo.sources.cam]": BLIND + "[rigs.demo.sources.cam]"},
    )
    d = daemons(tmp_path, config)
    d.wait_for(r"windows/s.*last: demo:\d")
    d.wait_for(r"no such video file: /nonexistent/x\.mp4; retrying")
    deadline = time.monotonic() + 60
    while True:  # the counters reach the daemon in snapshots, one a second
        result = fusiond("status", "--connect", control, "--json")
        assert result.returncode == 0, result.stderr
        status = json.loads(result.stdout)
        # Delivered, and for a whole second: the rate counts complete seconds only.
        delivered = {(s["rig"], s["stream"]) for s in status["sources"] if s["messages_per_s"] > 0}
        if {("demo", "cam"), ("demo", "mic"), ("demo", "imu")} <= delivered or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    rigs = {r["rig"]: r for r in status["rigs"]}
    assert "cam: no such video file: /nonexistent/x.mp4" in rigs["blind"]["quiet"]
    assert rigs["demo"]["quiet"] == "" and rigs["demo"]["predictions"] > 0
    sources = {(s["rig"], s["stream"]): s for s in status["sources"]}
    cam = sources["demo", "cam"]
    assert cam["messages_per_s"] > 0 and cam["state"] == "running"
    # Messages and samples apart: an audio message carries a block of samples.
    mic = sources["demo", "mic"]
    assert mic["samples"] >= 100 * mic["messages"] > 0 and mic["sample_rate_hz"] == 16000.0
    # Each stream's clock, as the daemon models it: one host, so no offset, no step.
    assert mic["clock"]["offset_ms"] == 0.0 and mic["clock"]["steps"] == 0, mic["clock"]
    assert set(mic["clock"]) == {"offset_ms", "drift_ppm", "jitter_ms", "outliers", "steps", "held"}
    assert mic["measured_rate_hz"] > 0
    assert sources["blind", "cam"]["messages"] == 0 and sources["blind", "cam"]["error"]
    assert sources["demo", "imu"]["channels"] == "accel_z [g]" and cam["channels"] == ""
    text = fusiond("status", "--connect", control).stdout
    assert "quiet: cam: no such video file" in text and "channels: accel_z [g]" in text
    assert re.search(r"demo/mic .* Hz measured \(16000 declared\)", text), text
    assert re.search(r"clock: offset \+0\.000 ms, drift [-+]\d+\.\d ppm", text), text
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert re.search(r'fusiond_messages_total\{rig="demo",stream="cam"\} [1-9]', metrics)
    assert re.search(r'fusiond_stream_sample_rate_hz\{rig="demo",stream="mic"\} 16000', metrics)
    assert re.search(r'fusiond_stream_measured_rate_hz\{rig="demo",stream="mic"\} \d', metrics)
    assert 'fusiond_clock_offset_seconds{rig="demo",stream="mic"} 0.0' in metrics
    assert 'fusiond_clock_steps_total{rig="demo",stream="mic"} 0.0' in metrics
    assert re.search(r'fusiond_predictions_total\{rig="demo"\} [1-9]', metrics)
    assert 'fusiond_source_up{source="demo/mic"} 1.0' in metrics
    assert 'fusiond_model_info{hash="' in metrics
    assert 'fusiond_latency_seconds{quantile="0.5",rig="demo"}' in metrics
    # A histogram per rig (it sums across daemons), and every counter there from the start.
    count = re.search(r'fusiond_close_to_publish_seconds_count\{rig="demo"\} (\d+)', metrics)
    inf = re.search(r'fusiond_close_to_publish_seconds_bucket\{le="\+Inf",rig="demo"\} (\d+)', metrics)
    assert count and inf and int(float(count[1])) == int(float(inf[1])) > 0, metrics
    assert 'fusiond_close_to_publish_seconds_count{rig="blind"} 0.0' in metrics
    assert 'fusiond_drops_total{reason="implausible_prediction"} 0.0' in metrics
    assert 'fusiond_masked_windows_total{modality="audio",rig="demo"}' in metrics


def notifications(path: str, until: Callable[[list[str]], bool], timeout_s: float) -> list[str]:
    """sd_notify datagrams received on ``path`` until ``until(texts)`` or the timeout."""
    texts: list[str] = []
    deadline = time.monotonic() + timeout_s
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        server.settimeout(0.2)
        while time.monotonic() < deadline and not until(texts):
            with contextlib.suppress(TimeoutError):
                texts.append(server.recv(4096).decode())
    return texts


@pytest.mark.slow
def test_ready_never_counts_a_source_that_never_delivered(tmp_path, daemons):
    """One broken source of four: READY only after the wait, degraded, naming it. All
    broken: never READY, and the log says why."""
    blind = {"[rigs.demo.sources.cam]": BLIND + "[rigs.demo.sources.cam]"}
    partly, *_ = endpoints_with_control(tmp_path, **blind)
    (tmp_path / "all").mkdir()
    broken, _, _, control = endpoints_with_control(
        tmp_path / "all",
        **{
            "demo/digits.mp4": "demo/absent.mp4",
            "demo/digits.wav": "demo/absent.wav",
            "demo/imu.csv": "demo/absent.csv",
        },
    )
    socket_path = str(tmp_path / "notify.sock")
    d = daemons(tmp_path, partly, {"NOTIFY_SOCKET": socket_path})
    dead = daemons(tmp_path / "all", broken)
    started = time.monotonic()
    texts = notifications(socket_path, lambda t: any(x.startswith("READY=1") for x in t), 120)
    ready = [t for t in texts if t.startswith("READY=1")]
    assert ready, d.text()
    assert time.monotonic() - started > 10  # the demo rig delivered at once; blind/cam held it back
    assert ready[0] == "READY=1\nSTATUS=serving 3 of 4 source(s); never delivered: blind/cam"
    # The log line follows the notification: wait for it, don't race it.
    d.wait_for(r"fusiond ready, degraded: serving 3 of 4 source\(s\)")
    d.wait_for(r"blind/cam \(no such video file: /nonexistent/x\.mp4")
    dead.wait_for(r"not ready after 15 s: no source has delivered a sample: demo/cam \(no such video file")
    status = json.loads(fusiond("status", "--connect", control, "--json").stdout)
    assert status["ready"] is False
    assert sorted(status["never_delivered"]) == ["demo/cam", "demo/imu", "demo/mic"]
    assert "fusiond ready" not in dead.text()


@pytest.mark.slow
def test_hz_and_topics_measure_the_bus(tmp_path, daemons):
    config, pub, sub, _ = endpoints_with_control(tmp_path)
    d = daemons(tmp_path, config)
    d.wait_for(r"fusiond ready")
    result = fusiond("hz", "s/demo/cam", "--connect", sub, "--duration", "3.5")
    rates = [float(r) for r in re.findall(r"average rate: ([\d.]+) Hz", result.stdout)]
    assert rates and abs(rates[-1] - 10.0) < 0.2, result.stdout
    # A prefix is not a topic: nothing matches it exactly, unless --prefix asks for all of them.
    exact = fusiond("hz", "s/demo", "--connect", sub, "--duration", "2.5")
    assert "average rate" not in exact.stdout, exact.stdout
    mixed = fusiond("hz", "s/demo", "--prefix", "--connect", sub, "--duration", "2.5")
    assert "average rate" in mixed.stdout, mixed.stdout
    # fusiond topics, with two more publishers (one named for another host) and an unnamed one
    # on a topic of their own.
    import numpy as np
    import zmq

    from fusiond.bus.wire import encode_sample

    stop = threading.Event()

    def publish() -> None:
        ctx = zmq.Context()
        socks = [ctx.socket(zmq.PUB) for _ in range(3)]
        for sock in socks:
            sock.connect(pub)
        data = np.zeros((10, 3), np.float32)
        seq = 0
        while not stop.wait(0.01):
            seq += 1
            for sock, who in zip(socks, (None, "far-host/7", ""), strict=True):
                now = time.time_ns()
                frames = encode_sample(
                    rig="lab",
                    stream="extra",
                    modality="imu",
                    seq=seq,
                    t_ns=now,
                    t_pub_ns=now,
                    rate_hz=100.0,
                    data=data,
                    publisher=who,
                )
                sock.send_multipart(frames)
        for sock in socks:
            sock.close(linger=0)
        ctx.term()

    thread = threading.Thread(target=publish)
    thread.start()
    try:
        listed = fusiond("topics", "--connect", sub, "--duration", "2.5", "--json")
        table = fusiond("topics", "--connect", sub, "--duration", "1.5")
    finally:
        stop.set()
        thread.join()
    assert listed.returncode == 0, listed.stderr
    rows = {row["topic"]: row for row in json.loads(listed.stdout)["topics"]}
    assert {"s/demo/cam", "s/demo/mic", "s/demo/imu", "p/demo", "s/lab/extra"} <= set(rows), rows
    cam, mic, imu = rows["s/demo/cam"], rows["s/demo/mic"], rows["s/demo/imu"]
    assert cam["type"] == "sample" and cam["modality"] == "video" and rows["p/demo"]["type"] == "prediction"
    # 96x96x3 frames at 10/s against 16 kHz of 16-bit audio
    assert 8 < cam["messages_per_s"] < 12 and cam["bytes_per_s"] > 4 * mic["bytes_per_s"] > 100_000
    assert cam["publishers"] == mic["publishers"] == imu["publishers"] == rows["p/demo"]["publishers"] == 1
    assert len({cam["publisher_ids"][0], mic["publisher_ids"][0], imu["publisher_ids"][0]}) == 3
    extra = rows["s/lab/extra"]
    assert extra["publishers"] == 2 and "far-host/7" in extra["publisher_ids"]
    assert extra["unnamed_messages"] > 0
    assert re.search(r"s/lab/extra +sample +imu +[\d.]+ +[\d.]+ KB/s 2 \+ unnamed", table.stdout), (
        table.stdout
    )  # noqa: E501


def test_logs_suit_journald_when_journal_stream_is_set(endpoints):
    import zmq

    ctx = zmq.Context()
    bus = ctx.socket(zmq.SUB)
    bus.bind(endpoints[0])
    env = {**os.environ, "JOURNAL_STREAM": "8:12345"}
    args = ["source", "camera", "--connect", endpoints[0], "--set", "uri='/nonexistent/j.mp4'"]
    cmd = [sys.executable, "-m", "fusiond", *args]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    time.sleep(2.5)
    proc.terminate()
    _, err = proc.communicate(timeout=5)
    bus.close(linger=0)
    ctx.term()
    line = next(x for x in err.splitlines() if "no such video file" in x)
    assert re.match(r"<3>fusiond\.sources\.runner\[\d+\]: source default/camera", line), line
