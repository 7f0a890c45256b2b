"""The runtime: one recording through one process, through worker processes and through a
two-node Ray cluster gives the same predictions, window by window; killed components
come back, their losses are counted, and the other rigs keep their rate."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zmq

from fusiond.align.spec import ModalitySpec
from fusiond.align.windows import Window
from fusiond.runtime.handoff import decode_window, encode_window

from .helpers import ROOT, DaemonProcess, demo_config, free_port, fusiond

RIGS = ("demo", "lab", "yard")


def test_a_window_crosses_a_socket_as_raw_buffers_and_comes_back_as_views(sockets):
    frames = np.random.default_rng(0).integers(0, 255, (4, 32, 32, 1), dtype=np.uint8)
    audio = np.random.default_rng(1).normal(size=(800, 1)).astype(np.float32)
    window = Window(
        "r",
        7,
        3_500_000_000,
        4_500_000_000,
        {"video": frames, "audio": audio, "imu": ModalitySpec("series", 10, 1).zeros()},
        {"video": True, "audio": True, "imu": False},
        "lateness",
        5,
        6,
    )
    push, pull = sockets.make(zmq.PUSH), sockets.make(zmq.PULL)
    pull.bind("inproc://handoff")
    push.connect("inproc://handoff")
    push.send_multipart(encode_window(window), copy=False)
    received = pull.recv_multipart(copy=False)
    back = decode_window(received)
    assert (back.rig, back.index, back.start_ns, back.end_ns, back.closed_by) == (
        "r",
        7,
        3_500_000_000,
        4_500_000_000,
        "lateness",
    )
    assert back.present == window.present and back.missing == ["imu"]
    np.testing.assert_array_equal(back.inputs["video"], frames)
    np.testing.assert_array_equal(back.inputs["audio"], audio)
    # Not unpickled copies: views of the received frames' memory.
    assert np.shares_memory(back.inputs["audio"], np.frombuffer(received[3].buffer, np.uint8))


def rigs_config(tmp_path, runtime: str = "", rigs=RIGS, loop: bool = False) -> tuple:
    """The demo config with one rig per name, all playing the demo media, on fresh ports."""
    flag = str(loop).lower()
    sections = "\n".join(
        f'[rigs.{rig}.sources.{name}]\nkind = "{kind}"\n{key} = "{ROOT}/demo/{file}"\nloop = {flag}\n'
        for rig in rigs
        for name, kind, key, file in [
            ("cam", "camera", "uri", "digits.mp4"),
            ("mic", "audiofile", "path", "digits.wav"),
            ("imu", "csvfile", "path", "imu.csv"),
        ]
    )
    pub, sub, control = (f"tcp://127.0.0.1:{free_port()}" for _ in range(3))
    text = (ROOT / "config.toml").read_text().split("[rigs.")[0]
    text = text.replace("tcp://127.0.0.1:7710", pub).replace("tcp://127.0.0.1:7711", sub)
    text = text.replace("tcp://127.0.0.1:7712", control).replace('"demo/', f'"{ROOT}/demo/')
    text = text.replace("summary_s = 5", "summary_s = 1")
    path = tmp_path / "config.toml"
    text = re.sub(r"\[runtime\]\nworkers = 1[^\n]*\n", "", text)  # the test's own [runtime] instead
    path.write_text(text + "\n" + runtime + "\n" + sections)
    return path, pub, sub, control


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    """Three rigs of the demo media, read offline and written as a bus recording."""
    from fusiond import config as config_mod
    from fusiond.plugin import load_plugins
    from fusiond.recording.recorder import RecordingWriter
    from fusiond.training.files import file_messages

    tmp = tmp_path_factory.mktemp("runtime")
    config_path, *_ = rigs_config(tmp)
    _, messages = file_messages(config_mod.load(config_path), load_plugins())
    path = tmp / "three-rigs.mcap"
    with RecordingWriter(path) as writer:
        for i, (now, frames) in enumerate(messages):
            writer.write([bytes(f) for f in frames], now)
            if i > 3000:
                break
    return path


def offline(tmp_path, recording, runtime: str, name: str) -> dict:
    config, *_ = rigs_config(tmp_path, runtime)
    out = tmp_path / f"{name}.jsonl"
    result = fusiond(
        "run", "--config", str(config), "--replay", str(recording), "--output", str(out), timeout=300
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    return {(p["rig"], p["window_index"]): p for p in lines}


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key]["label"] == b[key]["label"], key
        assert a[key]["present"] == b[key]["present"], key
        np.testing.assert_allclose(a[key]["scores"], b[key]["scores"], atol=1e-4, err_msg=str(key))


@pytest.mark.slow
def test_one_process_and_two_worker_processes_give_the_same_predictions(tmp_path, recording):
    single = offline(tmp_path, recording, "", "single")
    assert len(single) >= 3 * 20 and {rig for rig, _ in single} == set(RIGS)
    sharded = offline(tmp_path, recording, "[runtime]\nworkers = 2", "sharded")
    assert_same(single, sharded)
    for p in [*single.values(), *sharded.values()]:  # one clock, the recording's: no wall time mixed in
        lat = p["latency_ns"]
        assert all(0 <= v < 60 * 10**9 for v in lat.values()), lat
        assert lat["close_to_publish"] == lat["close_to_infer"] + lat["infer"] + lat["publish"], lat


@pytest.mark.slow
def test_a_two_node_ray_cluster_gives_the_same_predictions(tmp_path, recording):
    from ray.cluster_utils import Cluster

    single = offline(tmp_path, recording, "", "single")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=2)
        cluster.wait_for_nodes()
        runtime = f'[runtime]\nengine = "ray"\nworkers = 2\naddress = "{cluster.address}"'
        on_ray = offline(tmp_path, recording, runtime, "ray")
    finally:
        cluster.shutdown()
    assert_same(single, on_ray)


def _pids(d: DaemonProcess, role: str) -> list[int]:
    status = json.loads(fusiond("status", "--json", "--connect", d.control).stdout)
    return [c["pid"] for c in status["runtime"]["components"] if c["name"].startswith(role) and c["pid"]]


@pytest.mark.slow
def test_killed_workers_and_server_are_restarted_their_losses_counted_and_other_rigs_go_on(tmp_path):
    from fusiond.client import Subscriber

    config, _, sub, control = rigs_config(tmp_path, "[runtime]\nworkers = 2", loop=True)
    d = DaemonProcess(config, tmp_path / "daemon.log")
    d.control = control
    try:
        with Subscriber(sub, timeout_s=40) as predictions:
            assert predictions.next() is not None
            d.wait_for(r"fusiond ready")
            status = json.loads(fusiond("status", "--json", "--connect", control).stdout)
            components = {c["name"]: c for c in status["runtime"]["components"]}
            assert set(components) == {"server", "worker-0", "worker-1"}
            victim = components["worker-0"]  # rigs demo and yard; worker-1 has lab
            assert victim["rigs"] == ["demo", "yard"] and components["worker-1"]["rigs"] == ["lab"]
            os.kill(victim["pid"], signal.SIGKILL)
            d.wait_for(r"worker worker-0 died \(signal 9\); restarting")
            got = [predictions.next() for _ in range(36)]
            assert None not in got
            lab = [p.extra["window_index"] for p in got if p.rig == "lab"]
            assert lab == list(range(lab[0], lab[0] + len(lab))), lab  # the untouched rig lost nothing
            assert {"demo", "yard"} <= {p.rig for p in got[-12:]}  # the killed worker's rigs resumed
            server = _pids(d, "server")[0]
            os.kill(server, signal.SIGKILL)
            d.wait_for(r"server server died \(signal 9\); restarting")
            after = [predictions.next() for _ in range(24)]
            assert None not in after and {p.rig for p in after} == set(RIGS)
            seqs = {rig: [p.seq for p in got + after if p.rig == rig] for rig in RIGS}
            assert all(s == sorted(s) and len(set(s)) == len(s) for s in seqs.values())  # numbering goes on
        deadline = time.monotonic() + 60
        while True:  # until a counters snapshot has brought the losses to the daemon
            status = json.loads(fusiond("status", "--json", "--connect", control).stdout)
            if status["drops"].get("lost_in_restart", 0) >= 1 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        restarts = {c["name"]: c["restarts"] for c in status["runtime"]["components"]}
        assert restarts["worker-0"] >= 1 and restarts["server"] >= 1
        assert status["drops"].get("lost_in_restart", 0) >= 1, status["drops"]
        assert re.search(r"lost_in_restart=\d+", d.text())
    finally:
        d.close()


@pytest.mark.slow
def test_a_server_that_cannot_load_its_model_again_stops_the_daemon_with_the_reason(tmp_path):
    """The model file is damaged while the daemon serves, then its server dies: every new
    server fails before its first heartbeat, and after three such starts the daemon stops
    with exit status 1 and says why, instead of restarting it forever."""
    from fusiond.client import Subscriber

    model = tmp_path / "model.pt"
    model.write_bytes((ROOT / "demo/model.pt").read_bytes())
    config, _, sub, control = rigs_config(tmp_path, "[runtime]\nworkers = 2", loop=True)
    config.write_text(config.read_text().replace(f'"{ROOT}/demo/model.pt"', f'"{model}"'))
    d = DaemonProcess(config, tmp_path / "daemon.log")
    d.control = control
    try:
        with Subscriber(sub, timeout_s=60) as predictions:
            assert predictions.next() is not None
        d.wait_for(r"fusiond ready")
        model.write_bytes(b"not a checkpoint")
        os.kill(_pids(d, "server")[0], signal.SIGKILL)
        assert d.proc.wait(120) == 1
        log = d.text()
        assert re.search(r"server ended 3 times in a row before it began .*; stopping", log), log
        assert log.count("server server died") >= 3, log
    finally:
        d.close()


@pytest.mark.slow
def test_a_source_clock_37_ms_off_with_5_ms_jitter_is_corrected_to_half_a_millisecond(tmp_path, endpoints):
    """Round-trip probes against the real daemon's control endpoint, from a clock that runs
    37 ms ahead and a path that delays each leg of each probe by 0 to 5 ms at random."""
    import random

    from fusiond.bus.sockets import Sockets
    from fusiond.sources.clocksync import ClockFollower

    control = f"tcp://127.0.0.1:{free_port()}"
    d = DaemonProcess(demo_config(tmp_path, *endpoints, control), tmp_path / "daemon.log")
    rng = random.Random(37)

    def skewed_jittery_clock() -> int:
        # Sleeping before the stamp delays t4 (the way back); after it, the send of t1 (the way out).
        time.sleep(rng.uniform(0, 0.005))
        t = time.time_ns() + 37_000_000
        time.sleep(rng.uniform(0, 0.005))
        return t

    try:
        d.wait_for("fusiond started")
        with Sockets() as sockets:
            follower = ClockFollower(control, sockets, skewed_jittery_clock, burst=32, every_s=0.01)
            follower.start(wait_s=20)
            deadline = time.monotonic() + 30
            while follower.sync.bursts < 15 and time.monotonic() < deadline:
                time.sleep(0.05)
            follower.stop()
        assert follower.sync.bursts >= 15
        # A stamp of this clock, corrected, against the daemon's clock: 37 ms + offset apart.
        true_ns = time.time_ns()
        corrected_ns = (true_ns + 37_000_000) + follower.offset_ns
        assert abs(corrected_ns - true_ns) < 500_000, follower.offset_ns
    finally:
        d.close()


@pytest.mark.slow
def test_an_external_stream_is_expected_not_started_and_fed_from_another_process(tmp_path, endpoints):
    import subprocess
    import sys

    from fusiond.client import Subscriber

    control = f"tcp://127.0.0.1:{free_port()}"
    imu = '[rigs.demo.sources.imu]\nkind = "csvfile"\npath = "'
    config = demo_config(tmp_path, *endpoints, control)
    text = config.read_text()
    head, tail = text.split(imu)
    config.write_text(
        head
        + '[rigs.demo.sources.imu]\nexternal = true\nmodality = "imu"\n'
        + "\n".join(line for line in tail.splitlines()[1:] if not line.startswith(("loop", "units")))
    )
    d = DaemonProcess(config, tmp_path / "daemon.log")
    remote = None
    try:
        d.wait_for("fusiond started")
        status = json.loads(fusiond("status", "--json", "--connect", control).stdout)
        assert {s["stream"]: s["state"] for s in status["sources"]}["imu"] == "external"
        assert "demo/imu (" not in d.text()  # no process was started for it
        remote = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fusiond",
                "source",
                "csvfile",
                "--connect",
                endpoints[0],
                "--rig",
                "demo",
                "--stream",
                "imu",
                "--modality",
                "imu",
                "--sync-clock",
                control,
                "--set",
                f"path='{ROOT}/demo/imu.csv'",
                "--set",
                "loop=true",
            ],
            stderr=subprocess.PIPE,
            text=True,
        )
        with Subscriber(endpoints[1], rigs=["demo"], timeout_s=30) as predictions:
            got = [predictions.next() for _ in range(12)]
        assert None not in got
        assert any("imu" in p.present for p in got[-4:]), [p.present for p in got]
    finally:
        if remote is not None:
            remote.terminate()
            _, err = remote.communicate(timeout=10)
            assert "clock: " in err and "from the daemon's" in err, err
        d.close()


def test_the_server_counts_a_malformed_inbox_message_and_goes_on(tmp_path):
    """On Ray the server's inbox is a TCP port anyone on the network reaches."""
    import threading
    from dataclasses import asdict

    import msgpack

    from fusiond.align.spec import InputSpec
    from fusiond.bus.sockets import Sockets
    from fusiond.plugin import load_plugins
    from fusiond.runtime.server import ServerSpec, run_server
    from fusiond.testing import random_windows, tiny_model

    spec_in = InputSpec({"imu": ModalitySpec("series", 32, 1)})
    model = tmp_path / "tiny.pt"
    tiny_model(model, spec_in)
    with Sockets() as sockets:
        out = sockets.pull("inproc://out", bind=True)
        stats = sockets.pull("inproc://stats", bind=True)
        spec = ServerSpec(
            "server",
            str(model),
            "inproc://inbox",
            "inproc://out",
            "inproc://stats",
            runtime="torch",
            max_delay_ns=0,
            offline=True,
        )
        stop = threading.Event()
        thread = threading.Thread(
            target=run_server, args=(ServerSpec(**asdict(spec)), stop, load_plugins(), sockets.ctx)
        )
        thread.start()
        time.sleep(0.5)
        push = sockets.push("inproc://inbox")
        for junk in ([b"w", b"\x00not msgpack"], [b"w", b"\x81\xa1x\x01"], [b"p", b"\xc1"], [b"?"]):
            push.send_multipart(junk)
        for offset, hop in ((5, 0), (10, 10), (-1, 10)):  # a phase outside its grid's hop
            forged = random_windows(spec_in, 1)[0]
            forged.offset_ns, forged.hop_ns = offset, hop
            push.send_multipart(encode_window(forged), copy=False)
        push.send_multipart(encode_window(random_windows(spec_in, 1)[0]), copy=False)
        push.send_multipart([b"end", b"worker-0"])
        got = []
        while out.poll(10_000):
            frames = out.recv_multipart()
            if frames[0] == b"end":
                break
            got.append(frames)
        thread.join(10)
        assert len(got) == 1 and not thread.is_alive()
        snapshots = []
        while stats.poll(0):
            snapshots.append(msgpack.unpackb(stats.recv_multipart()[1], strict_map_key=False))
        assert snapshots[-1]["drops"] == {"bad_window": 7}  # counted, not fatal


@pytest.mark.slow
def test_two_offline_runs_with_workers_at_once_both_finish_and_leave_no_socket_files(tmp_path, recording):
    """Each run has endpoints of its own (they used to share fixed ipc paths and hang)."""
    from fusiond.runtime.engine import runtime_dir

    runs = []
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        config, *_ = rigs_config(folder, "[runtime]\nworkers = 2")
        out = folder / "out.jsonl"
        cmd = [
            sys.executable,
            "-m",
            "fusiond",
            "run",
            "--config",
            str(config),
            "--replay",
            str(recording),
            "--output",
            str(out),
        ]
        runs.append((subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True), out))
    for proc, _ in runs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    a, b = ([json.loads(line) for line in out.read_text().splitlines()] for _, out in runs)
    assert len(a) >= 60 and [p["label"] for p in a] == [p["label"] for p in b]
    owners = {f"-{proc.pid}-" for proc, _ in runs}
    left = [p.name for p in runtime_dir().iterdir() if any(o in p.name for o in owners)]
    assert not left, left


@pytest.mark.slow
def test_a_worker_that_hangs_is_ended_and_started_again_and_status_names_it(tmp_path):
    """A worker stopped (SIGSTOP) keeps its process but sends nothing: after 10 s without
    its heartbeat it is ended and started again, counted, and its rigs come back."""
    from fusiond.client import Subscriber

    config, _, sub, control = rigs_config(tmp_path, "[runtime]\nworkers = 2", loop=True)
    d = DaemonProcess(config, tmp_path / "daemon.log")
    d.control = control
    try:
        with Subscriber(sub, timeout_s=60) as predictions:
            assert predictions.next() is not None
            d.wait_for(r"fusiond ready")
            victim = _pids(d, "worker-0")[0]
            os.kill(victim, signal.SIGSTOP)
            d.wait_for(r"worker-0 sent no heartbeat for \d+ s: hung; ended, to be started", timeout_s=120)
            d.wait_for(r"worker worker-0 died \(signal 9\); restarting")
            got = [predictions.next() for _ in range(60)]
            assert None not in got and {"demo", "yard"} <= {p.rig for p in got[-12:]}
        status = json.loads(fusiond("status", "--json", "--connect", control).stdout)
        worker = next(c for c in status["runtime"]["components"] if c["name"] == "worker-0")
        assert worker["hung"] == 1 and worker["pid"] != victim and worker["state"] == "running", worker
    finally:
        d.close()


def test_socket_files_left_by_a_killed_process_are_swept_and_live_ones_kept(tmp_path, monkeypatch):
    import socket

    from fusiond.runtime.engine import sweep_runtime_dir

    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmp_path))

    def bound(name: str) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(tmp_path / name))
        return sock

    bound("stats-4242-7f00aa").close()  # what SIGKILL leaves: a file nobody listens on
    live = bound("windows-4243-7f00bb")
    live.listen()
    bound("offline-feed-0").close()  # not a name with an owner: not ours to judge
    (tmp_path / "stats-4244-7f00cc").write_text("not a socket")
    try:
        assert sweep_runtime_dir() == ["stats-4242-7f00aa"]
        assert sorted(p.name for p in tmp_path.iterdir()) == [
            "offline-feed-0",
            "stats-4244-7f00cc",
            "windows-4243-7f00bb",
        ]
    finally:
        live.close()
