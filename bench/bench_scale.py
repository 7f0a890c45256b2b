"""Scale benchmark: prints figures, asserts nothing.

    python bench/bench_scale.py [--rigs 1,16,64,128,160,192,256] [--seconds 12] [--workers 1,auto]

1. Rigs kept up. N synthetic rigs at the demo's rates (camera 96x96x3 at 10 fps, 16 kHz
   audio in 1024-sample blocks, IMU in 10-sample blocks at 100 Hz), published from one
   process to ``external`` streams of the real daemon (a subprocess, demo model). A rig
   is kept up when it got >= 1.9 predictions/s over the measured span and the daemon
   counted no drop at all; close -> publish p50/p99 over every prediction, and the same
   for its parts (close -> inference, inference, publish) with the mean batch size. For
   ``workers = 1`` (one process) and ``workers = auto`` (one ingest worker per core).
2. Flood ingest against raw pyzmq + msgpack, in the same run (bench_daemon's figures).
3. Torch against onnxruntime: ms per batch of the demo model at batch 1 and 32 (``onnx/1``:
   on one intra-op thread, as the server runs it with ``workers = "auto"`` on 2 cores).

``--engine`` and ``--threads`` set ``[runtime] engine`` and ``[model] threads`` for part 1
(``--engine processes --workers 1``: one worker process beside the server process), and
``--grid aligned,staggered`` runs it with ``[window] stagger`` off and on.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zmq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

STREAMS = (("cam", "video", 10.0, 1), ("mic", "audio", 16_000.0, 1024), ("imu", "imu", 100.0, 10))


def free_endpoint() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def config_text(
    rigs: int,
    workers: str,
    publish: str,
    subscribe: str,
    control: str,
    engine: str = "local",
    threads: int = 0,
    stagger: bool = False,
) -> str:
    head = (ROOT / "config.toml").read_text().split("[rigs.")[0]
    head = head.replace("tcp://127.0.0.1:7710", publish).replace("tcp://127.0.0.1:7711", subscribe)
    head = head.replace("tcp://127.0.0.1:7712", control).replace('"demo/', f'"{ROOT}/demo/')
    head = re.sub(r"\[runtime\]\nworkers = 1[^\n]*\n", "", head)
    count = workers if workers == "1" else json.dumps(workers)
    runtime = f"[runtime]\nengine = {json.dumps(engine)}\nworkers = {count}\n"
    if threads:
        head = head.replace("[model]\n", f"[model]\nthreads = {threads}\n", 1)
    if stagger:
        head = head.replace("stagger = false", "stagger = true", 1)
    rigs_text = "".join(
        f'[rigs.r{i:03d}.sources.{name}]\nexternal = true\nmodality = "{modality}"\n'
        for i in range(rigs)
        for name, modality, _, _ in STREAMS
    )
    return head + runtime + rigs_text


def publisher(endpoint: str, rigs: int, seconds: float) -> None:
    """Every rig's three streams in real time from this one process (run as a subprocess)."""
    from fusiond.bus.wire import encode_sample

    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUB)
    sock.setsockopt(zmq.SNDHWM, 100_000)
    sock.connect(endpoint)
    time.sleep(1.5)  # subscriptions reach this publisher
    rng = np.random.default_rng(0)
    data = {
        "cam": rng.integers(0, 255, (1, 96, 96, 3), dtype=np.uint8),
        "mic": rng.integers(-3000, 3000, (1024, 1), dtype=np.int16),
        "imu": rng.normal(0, 1, (10, 1)).astype(np.float32),
    }
    start = time.time_ns()
    due = {name: start for name, *_ in STREAMS}
    seq = {name: 0 for name, *_ in STREAMS}
    periods = {name: round(block * 1e9 / rate) for name, _, rate, block in STREAMS}
    end = start + round(seconds * 1e9)
    sent = 0
    while time.time_ns() < end:
        name = min(due, key=due.__getitem__)
        wait = (due[name] - time.time_ns()) / 1e9
        if wait > 0:
            time.sleep(wait)
        _, modality, rate, _ = next(s for s in STREAMS if s[0] == name)
        now = time.time_ns()
        for i in range(rigs):
            sock.send_multipart(
                encode_sample(
                    rig=f"r{i:03d}",
                    stream=name,
                    modality=modality,
                    seq=seq[name],
                    t_ns=due[name],
                    t_pub_ns=now,
                    rate_hz=rate,
                    data=data[name],
                ),
                copy=False,
            )
            sent += 1
        seq[name] += 1
        due[name] += periods[name]
    print(f"SENT {sent}", flush=True)
    sock.close(linger=2000)
    ctx.term()


def run_scale(
    rigs: int, workers: str, seconds: float, engine: str = "local", threads: int = 0, stagger: bool = False
) -> dict[str, float]:
    from fusiond.bus.wire import decode_prediction

    publish, subscribe, control = free_endpoint(), free_endpoint(), free_endpoint()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.toml"
        config.write_text(config_text(rigs, workers, publish, subscribe, control, engine, threads, stagger))
        log = (Path(tmp) / "daemon.log").open("w")
        daemon = subprocess.Popen(
            [sys.executable, "-m", "fusiond", "run", "--config", str(config)],
            stderr=log,
            stdout=subprocess.DEVNULL,
        )
        ctx = zmq.Context()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.RCVHWM, 1_000_000)
        sub.connect(subscribe)
        sub.subscribe(b"p/")
        time.sleep(4.0)  # model loaded, workers up
        warm = 3.0
        code = f"import bench_scale; bench_scale.publisher({publish!r}, {rigs}, {seconds + warm + 2})"
        pub = subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=ROOT / "bench",
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": f"{ROOT / 'bench'}:{ROOT}"},
        )
        time.sleep(1.5 + warm)
        counts: dict[str, int] = {}
        latencies: list[int] = []
        parts: dict[str, list[int]] = {"close_to_infer": [], "infer": [], "publish": []}
        batches: list[int] = []
        t_end = time.monotonic() + seconds
        while time.monotonic() < t_end:
            if sub.poll(100):
                while True:
                    try:
                        frames = sub.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    p = decode_prediction(frames)
                    counts[p.rig] = counts.get(p.rig, 0) + 1
                    latencies.append(p.latency_ns["close_to_publish"])
                    for name, values in parts.items():
                        values.append(p.latency_ns[name])
                    batches.append(int(p.extra.get("batch_size", 1)))
        drops = _drops(ctx, control)
        pub.wait(60)
        daemon.terminate()
        daemon.wait(20)
        log.close()
        sub.close(linger=0)
        ctx.term()
    rates = [counts.get(f"r{i:03d}", 0) / seconds for i in range(rigs)]
    p50, p99 = (np.percentile(latencies, [50, 99]) / 1e6) if latencies else (float("nan"),) * 2
    return {
        "min_rate": min(rates),
        "mean_rate": float(np.mean(rates)),
        "p50": float(p50),
        "p99": float(p99),
        "drops": sum(drops.values()),
        "drop_kinds": drops,
        "parts": {name: np.percentile(v, [50, 99]) / 1e6 for name, v in parts.items() if v},
        "batch": float(np.mean(batches)) if batches else 0.0,
    }  # type: ignore[dict-item]


def _drops(ctx: zmq.Context, control: str) -> dict[str, int]:
    req = ctx.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    req.connect(control)
    req.send(b"status")
    if not req.poll(5000):
        req.close()
        return {"no_status": 1}
    status = json.loads(req.recv())
    req.close()
    return {k: v for k, v in status["drops"].items() if v}


def bench_runtimes(repeats: int = 30) -> None:
    from fusiond.models import load
    from fusiond.models.onnx import OnnxRunner
    from fusiond.models.runner import ModelRunner
    from fusiond.plugin import load_plugins
    from fusiond.testing import random_windows

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.pt"
        path.write_bytes((ROOT / "demo/model.pt").read_bytes())
        checkpoint = load(path)
        encoders = load_plugins().parts
        runners = {
            "torch": ModelRunner(checkpoint, encoders, "cpu"),
            "onnx": OnnxRunner(checkpoint, encoders),
            "onnx/1": OnnxRunner(checkpoint, encoders, threads=1),  # the server's one thread, auto on 2 cores
        }
        print("\n## Model per batch, demo model, CPU")
        print(f"{'runtime':<8} {'batch':>5} {'ms/batch':>9} {'ms/window':>10}")
        for batch in (1, 32):
            windows = random_windows(checkpoint.spec, batch)
            for name, runner in runners.items():
                runner.run(windows)
                started = time.perf_counter()
                for _ in range(repeats):
                    runner.run(windows)
                ms = (time.perf_counter() - started) / repeats * 1e3
                print(f"{name:<8} {batch:5d} {ms:9.2f} {ms / batch:10.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rigs", default="1,16,64,128,160,192,256")
    parser.add_argument("--workers", default="1,auto")
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--skip-scale", action="store_true")
    parser.add_argument("--engine", default="local", help="[runtime] engine (processes: workers = 1 too)")
    parser.add_argument("--threads", type=int, default=0, help="[model] threads (0: what the workers leave)")
    parser.add_argument(
        "--grid", default="aligned", help="aligned,staggered: [window] stagger off, on (comma list: both)"
    )
    args = parser.parse_args()
    if not args.skip_scale:
        print(f"## Rigs kept up ({os.cpu_count()} cores; >= 1.9 predictions/s per rig and no drop)")
        print(
            f"{'grid':<9} {'workers':<8} {'rigs':>5} {'min/s':>6} {'mean/s':>7} {'p50 ms':>7} {'p99 ms':>7} "
            f"{'kept up':>8}  drops"
        )
        for grid, workers in itertools.product(args.grid.split(","), args.workers.split(",")):
            for rigs in (int(n) for n in args.rigs.split(",")):
                r = run_scale(rigs, workers, args.seconds, args.engine, args.threads, grid == "staggered")
                kept = r["min_rate"] >= 1.9 and r["drops"] == 0
                print(
                    f"{grid:<9} {workers:<8} {rigs:5d} {r['min_rate']:6.2f} {r['mean_rate']:7.2f} "
                    f"{r['p50']:7.1f} {r['p99']:7.1f} {'yes' if kept else 'no':>8}  {r['drop_kinds'] or '-'}",
                    flush=True,
                )
                shares = "; ".join(f"{k} {v[0]:.1f}/{v[1]:.1f}" for k, v in r["parts"].items())
                print(f"{'':24} of which (p50/p99 ms): {shares}; mean batch {r['batch']:.1f}", flush=True)
    import bench_daemon

    raw_rate, _ = bench_daemon.bench_raw(args.messages)
    rate, seen, drops = bench_daemon.bench_daemon_ingest(args.messages)
    print(f"\n## Flood ingest, {args.messages} small messages from one publisher process")
    print(
        f"raw pyzmq + msgpack {raw_rate:.0f} msg/s; daemon {rate:.0f} msg/s; ratio {rate / raw_rate:.2f}; "
        f"daemon drops {drops or 'none'}"
    )
    bench_runtimes()


if __name__ == "__main__":
    main()
