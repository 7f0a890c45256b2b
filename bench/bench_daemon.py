"""Daemon benchmark: prints figures, asserts nothing.

    python bench/bench_daemon.py [--seconds 30] [--messages 200000]

1. Latency on the demo rig: the real daemon on config.toml (fresh ports), predictions read
   with fusiond.client; percentiles of the latency breakdown each prediction carries.
2. Ingest rate for small messages (one 3-axis float32 sample each): a publisher process
   floods the daemon's publish endpoint; the daemon (in this process, so its counters can
   be read) decodes, clock-corrects and aligns them. The same publisher then floods a
   bare pyzmq SUB socket that only unpacks the msgpack header. The ratio is the figure.
3. Fitting one second of microphone audio to an 8000-sample input (what the demo model
   takes): ms per window, and the share of it spent in the anti-alias low-pass filter.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import msgpack
import numpy as np
import zmq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def demo_config(folder: Path, publish: str, subscribe: str, extra: str = "") -> Path:
    text = (ROOT / "config.toml").read_text()
    text = text.replace("tcp://127.0.0.1:7710", publish).replace("tcp://127.0.0.1:7711", subscribe)
    text = text.replace("tcp://127.0.0.1:7712", free_endpoint())
    text = text.replace('"demo/', f'"{ROOT}/demo/') + extra
    path = folder / "config.toml"
    path.write_text(text)
    return path


def bench_latency(seconds: float) -> None:
    from fusiond.client import Subscriber

    publish, subscribe = free_endpoint(), free_endpoint()
    with tempfile.TemporaryDirectory() as tmp:
        config = demo_config(Path(tmp), publish, subscribe)
        log = Path(tmp) / "log"
        with log.open("w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "fusiond", "run", "--config", str(config)],
                stderr=out,
                start_new_session=True,
            )
        try:
            got = []
            with Subscriber(subscribe, timeout_s=30) as predictions:
                first = predictions.next()
                deadline = time.monotonic() + seconds
                for p in predictions:
                    got.append(p)
                    if time.monotonic() > deadline:
                        break
            del first
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
        device = re.search(r"on (\w+), \d+ rig", log.read_text())
    print(
        f"\n## Latency, demo rig (3 sources), {len(got)} predictions over {seconds:.0f} s, "
        f"model on {device.group(1) if device else '?'}"
    )
    print(f"{'stage':<22} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for key in (
        "capture_to_ingest",
        "close_to_infer",
        "infer",
        "publish",
        "close_to_publish",
        "end_to_publish",
    ):
        values = np.array([p.latency_ns[key] for p in got]) / 1e6
        p50, p99 = np.percentile(values, [50, 99])
        print(f"{key:<22} {p50:8.2f} {p99:8.2f} {values.max():8.2f}")
    print("(end_to_publish includes waiting for the window's last samples and the batch delay)")


def publisher(endpoint: str, count: int) -> None:
    """Flood ``endpoint`` with small sample messages (run as a child process)."""
    from fusiond.bus.security import client_keys
    from fusiond.bus.sockets import Sockets
    from fusiond.bus.wire import encode_sample

    sockets = Sockets(hwm=100_000, keys=client_keys())  # CURVE when FUSIOND_KEY is set
    sock = sockets.publisher(endpoint, linger_ms=2000)
    time.sleep(1.0)
    data = np.zeros((1, 3), np.float32)
    for i in range(count):
        t = time.time_ns()  # captured now: a flood of real samples, not a timeline racing ahead
        sock.send_multipart(
            encode_sample(
                rig="bench",
                stream="imu",
                modality="imu",
                seq=i,
                t_ns=t,
                t_pub_ns=t,
                rate_hz=1000.0,
                data=data,
            )
        )
    time.sleep(2.0)
    sockets.close()


def spawn_publisher(endpoint: str, count: int, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT / 'bench')!r}); import bench_daemon; "
        f"bench_daemon.publisher({endpoint!r}, {count})"
    )
    return subprocess.Popen([sys.executable, "-c", code], env={**os.environ, **(env or {})})


def measure(count_fn, proc: subprocess.Popen[bytes], total: int) -> tuple[float, int]:
    """Messages/s from the first to the last message received, and how many arrived."""
    first_t = last_t = None
    seen = 0
    while proc.poll() is None or seen != count_fn():
        now, seen = time.perf_counter(), count_fn()
        if seen and first_t is None:
            first_t, first_n = now, seen
        if first_t is not None and seen > first_n:
            last_t, last_n = now, seen
        if seen >= total:
            break
        time.sleep(0.002)
    proc.wait()
    if first_t is None or last_t is None:
        return 0.0, seen
    return (last_n - first_n) / (last_t - first_t), seen


def bench_raw(count: int) -> tuple[float, int]:
    endpoint = free_endpoint()
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 100_000)
    sub.bind(endpoint)
    sub.subscribe(b"s/")
    received = [0]
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            if sub.poll(50):
                for _ in range(512):
                    try:
                        frames = sub.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    msgpack.unpackb(frames[1].buffer)
                    received[0] += 1

    thread = threading.Thread(target=loop)
    thread.start()
    result = measure(lambda: received[0], spawn_publisher(endpoint, count), count)
    stop.set()
    thread.join()
    sub.close(linger=0)
    ctx.term()
    return result


def secure(folder: Path, rules: bool) -> tuple[str, dict[str, str]]:
    """Keys for a CURVE bench: the config section, and the publisher's environment."""
    from fusiond.bus.security import generate

    generate("server", folder / "keys")
    for name in ("daemon", "bench"):
        generate(name, folder / "clients")
    section = (
        f'\n[bus.security]\nmode = "curve"\nserver_key = "{folder}/keys/server.key_secret"\n'
        f'clients = "{folder}/clients"\nclient_key = "{folder}/clients/daemon.key_secret"\n'
    )
    if rules:
        section += '\n[bus.security.publishers]\nbench = ["bench"]\n'
    env = {
        "FUSIOND_KEY": f"{folder}/clients/bench.key_secret",
        "FUSIOND_SERVER_KEY": f"{folder}/keys/server.key",
    }
    return section, env


def bench_daemon_ingest(
    count: int, workers: int | str = 1, security: str = "none"
) -> tuple[float, int, dict[str, int]]:
    from fusiond import config as config_mod
    from fusiond.daemon import Daemon
    from fusiond.plugin import load_plugins

    publish, subscribe = free_endpoint(), free_endpoint()
    extra = '\n[rigs.bench.sources.imu]\nkind = "csvfile"\npath = "unused.csv"\nmax_message_rate = 1e6\n'
    with tempfile.TemporaryDirectory() as tmp:
        env: dict[str, str] = {}
        if security != "none":
            section, env = secure(Path(tmp), rules=security == "curve+rules")
            extra = section + extra
        cfg = config_mod.load(demo_config(Path(tmp), publish, subscribe, extra))
        # Queues of 100,000 small messages: max_message_mb bounds their bytes (10 KB each).
        bus = cfg.bus.model_copy(update={"queue": 100_000, "max_message_mb": 0.01})
        cfg = cfg.model_copy(
            update={
                "bus": bus,
                "runtime": cfg.runtime.model_copy(update={"workers": workers}),
                "rigs": {"bench": cfg.rigs["bench"]},
            }
        )
        stop = threading.Event()
        with Daemon(cfg, load_plugins(), start_sources=False) as daemon:
            thread = threading.Thread(target=daemon.run, args=(stop,))
            thread.start()
            rate, seen = measure(
                lambda: daemon.stats.stream("bench", "imu").messages,
                spawn_publisher(publish, count, env),
                count,
            )
            stop.set()
            thread.join()
            time.sleep(0.6)  # the worker's last counters reach the daemon
            drops = dict(daemon.stats.all_drops())
    return rate, seen, drops


def bench_core(count: int) -> float:
    """Decode + clock + align with no sockets: the per-message cost of the daemon's loop."""
    from fusiond.align import InputSpec, ModalitySpec, WindowConfig
    from fusiond.bus.wire import encode_sample
    from fusiond.ingest import Limits
    from fusiond.pipeline import Pipeline

    spec = InputSpec({"imu": ModalitySpec("series", 100, 3)})
    window = WindowConfig(10**9, 5 * 10**8, 3 * 10**8)
    pipeline = Pipeline({("bench", "imu"): "imu"}, spec, window, limits=Limits(max_message_rate=1e6))
    data = np.zeros((1, 3), np.float32)
    t0 = time.time_ns()
    messages = [
        [
            bytes(f)
            for f in encode_sample(
                rig="bench",
                stream="imu",
                modality="imu",
                seq=i,
                t_ns=t0 + i * 10**6,
                t_pub_ns=t0 + i * 10**6,
                rate_hz=1000.0,
                data=data,
            )
        ]
        for i in range(count)
    ]
    started = time.perf_counter()
    for i, frames in enumerate(messages):
        pipeline.handle(frames, t0 + i * 10**6)
        if i % 512 == 0:
            pipeline.due(t0 + i * 10**6)
    return count / (time.perf_counter() - started)


def bench_fit(repeats: int = 200) -> None:
    """One audio window through the aligner's fit, at two microphone rates."""
    from fusiond.align import ModalitySpec
    from fusiond.align.fit import Span, _low_pass, anti_alias, fit_window

    spec = ModalitySpec("series", length=8000, channels=1)
    print("\n## Fitting one 1 s audio window to 8000 samples")
    print(f"{'microphone':<12} {'fit ms':>8} {'of which low-pass ms':>21} {'taps':>5}")
    for rate in (16_000, 48_000):
        period = 1e9 / rate
        audio = np.random.default_rng(0).normal(0, 3000, (rate, 1)).astype(np.int16)
        blocks = [
            Span(round(i * period), round((i + 1024) * period), period, audio[i : i + 1024], 0)
            for i in range(0, rate, 1024)
        ]
        taps = anti_alias(round(rate / 8000, 2))
        assert taps is not None
        fit_ms = _ms_per_call(lambda b=blocks: fit_window(spec, b, 0, 10**9), repeats)
        filter_ms = _ms_per_call(lambda a=audio[:, 0], t=taps: _low_pass(a, t), repeats)
        print(f"{rate / 1000:>6.0f} kHz   {fit_ms:8.2f} {filter_ms:21.2f} {len(taps):5d}")
    # The other two inputs of the demo model, as the demo's sources send them.
    frames = ModalitySpec("frames", length=4, channels=1, height=32, width=32)
    rng = np.random.default_rng(1)
    video = [
        Span(i * 10**8, (i + 1) * 10**8, 1e8, rng.integers(0, 255, (1, 96, 96, 3), dtype=np.uint8), 0)
        for i in range(10)
    ]
    imu = [
        Span(i * 10**8, (i + 1) * 10**8, 1e7, rng.normal(size=(10, 1)).astype(np.float32), 0)
        for i in range(10)
    ]
    video_ms = _ms_per_call(lambda: fit_window(frames, video, 0, 10**9), repeats)
    imu_ms = _ms_per_call(
        lambda: fit_window(ModalitySpec("series", length=100, channels=1), imu, 0, 10**9), repeats
    )
    print(f"video, 10 frames 96x96x3 -> 4x32x32x1: {video_ms:.2f} ms; imu, 100 samples: {imu_ms:.2f} ms")


def _ms_per_call(work: Callable[[], object], repeats: int) -> float:
    work()
    started = time.perf_counter()
    for _ in range(repeats):
        work()
    return (time.perf_counter() - started) / repeats * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--fit", action="store_true", help="only the window fits and the ingest core")
    parser.add_argument(
        "--curve", action="store_true", help="only the ingest rate: plain, CURVE, CURVE + publish rules"
    )
    args = parser.parse_args()
    if args.fit:
        bench_fit()
        core = bench_core(50_000)
        print(
            f"\ningest core alone (decode, checks, clock, align; no sockets): {core:.0f} msg/s, "
            f"{1e6 / core:.1f} us a message"
        )
        from bench_clock import cost  # the clock model alone, and the sliding minimum it replaced

        cost()
        return
    if args.curve:
        print(f"\n## Ingest, {args.messages} small messages, by bus security")
        for security in ("none", "curve", "curve+rules"):
            rate, seen, drops = bench_daemon_ingest(args.messages, security=security)
            print(f"{security:<12} {rate:10.0f} msg/s  received {seen}  drops {drops or 'none'}", flush=True)
        return
    bench_latency(args.seconds)
    raw_rate, raw_seen = bench_raw(args.messages)
    rate, seen, drops = bench_daemon_ingest(args.messages)
    core = bench_core(50_000)
    print(f"\n## Ingest, {args.messages} small messages ([1, 3] float32 each) from one publisher process")
    print(f"{'subscriber':<42} {'msg/s':>10} {'received':>9}")
    print(f"{'raw pyzmq SUB + msgpack.unpackb':<42} {raw_rate:10.0f} {raw_seen:9d}")
    print(f"{'fusiond daemon (decode, clock, align)':<42} {rate:10.0f} {seen:9d}")
    print(f"ratio daemon / raw: {rate / raw_rate:.2f}   daemon drops: {drops or 'none'}")
    print(f"ingest core alone (decode, clock, align; no sockets, no model): {core:.0f} msg/s")
    print("(the daemon's figure also pays the broker hop and the model run on each window the")
    print(" flood closes: one every 500 messages here, on the same 2 cores as the publisher)")
    if seen < args.messages:
        print(f"(the daemon received {seen} of {args.messages}: the publisher quits 2 s after its last send,")
        print(" so what was still queued then is never sent; a cut-off tail, no gap in seq)")
    bench_fit()


if __name__ == "__main__":
    main()
