"""Attack benchmark: the demo rig's prediction rate and accuracy under each attack. Prints, asserts nothing.

    python bench/bench_attacks.py [--seconds 10]

The real daemon on config.toml (fresh ports). For each attack, a clean span then the same
span under attack, over real sockets from another process: predictions per second of
rig demo, accuracy on windows wholly inside one demo segment (labels in demo/labels.csv),
the daemon's resident memory before, at the end of the attack and one span after it
(memory given back), and what the daemon counted.
Among the attacks: 600 idle TCP connections held open (and opened again as the daemon
closes them), 200 tiny JPEGs a second that declare 3840x2160, and messages of 100 frames
of 900 KB each while a subscriber that never reads is connected.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import zmq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_daemon import demo_config, free_endpoint  # noqa: E402

from fusiond.bus.wire import encode_sample  # noqa: E402
from fusiond.client import Subscriber  # noqa: E402

SEGMENTS = [int(r["label"]) for r in csv.DictReader((ROOT / "demo/labels.csv").read_text().splitlines())]


def truth(anchor: int, start: int) -> int | None:
    offset = (start - anchor) % (len(SEGMENTS) * 2 * 10**9)
    segment = offset // (2 * 10**9)
    return None if offset + 10**9 > (segment + 1) * 2 * 10**9 else SEGMENTS[segment]


def imu(seq: int, t_ns: int, t_pub_ns: int | None = None) -> list:
    return encode_sample(
        rig="demo",
        stream="imu",
        modality="imu",
        seq=seq,
        t_ns=t_ns,
        t_pub_ns=t_pub_ns if t_pub_ns is not None else time.time_ns(),
        rate_hz=100.0,
        data=np.zeros((10, 1), np.float32),
    )


def future(pub: zmq.Socket, stop: threading.Event) -> None:
    pub.send_multipart(imu(10**6, time.time_ns() + 3600 * 10**9))


def seq_jump(pub: zmq.Socket, stop: threading.Event) -> None:
    pub.send_multipart(imu(10**9, time.time_ns()))


def flood(rig: str) -> Callable[[zmq.Socket, threading.Event], None]:
    """Samples of stream x of ``rig`` (no config has it), as fast as one thread sends."""

    def attack(pub: zmq.Socket, stop: threading.Event) -> None:
        frames = encode_sample(
            rig=rig,
            stream="x",
            modality="imu",
            seq=0,
            t_ns=time.time_ns(),
            t_pub_ns=time.time_ns(),
            rate_hz=100.0,
            data=np.zeros((10, 1), np.float32),
        )
        while not stop.is_set():
            for _ in range(1000):
                pub.send_multipart(frames)

    return attack


def idle_connections(pub: zmq.Socket, stop: threading.Event) -> None:
    """600 TCP connections to the publish port that never say anything, kept at 600."""
    import socket

    host, port = PUBLISH[0].removeprefix("tcp://").rsplit(":", 1)
    held: list[socket.socket] = []
    while not stop.is_set():
        alive = []
        for s in held:
            try:
                if s.recv(4096, socket.MSG_DONTWAIT) == b"":
                    s.close()
                    continue
            except BlockingIOError:
                pass
            except OSError:
                s.close()
                continue
            alive.append(s)
        held = alive
        while len(held) < 600:
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex((host, int(port)))
            held.append(s)
        stop.wait(0.2)
    for s in held:
        s.close()


def jpeg_bombs(pub: zmq.Socket, stop: threading.Event) -> None:
    """200 a second of a 631-byte-class JPEG whose frame header declares 3840x2160."""
    import cv2

    ok, small = cv2.imencode(".jpg", np.full((8, 8, 3), 128, np.uint8))
    data = small.tobytes()
    at = data.index(b"\xff\xc0")
    bomb = data[: at + 5] + (2160).to_bytes(2, "big") + (3840).to_bytes(2, "big") + data[at + 9 :]
    seq = 10**6
    while not stop.is_set():
        for _ in range(20):
            now = time.time_ns()
            pub.send_multipart(
                encode_sample(
                    rig="demo",
                    stream="cam",
                    modality="video",
                    seq=seq,
                    t_ns=now,
                    t_pub_ns=now,
                    rate_hz=10.0,
                    encoding="jpeg",
                    payload=bomb,
                    data=np.zeros((1, 2160, 3840, 3), np.uint8),
                )
            )
            seq += 1
        stop.wait(0.1)


def many_parts(pub: zmq.Socket, stop: threading.Event) -> None:
    """Five a second of a 100-frame message of 900 KB frames, while a subscriber process is
    stopped (SIGSTOP: its socket reads nothing more, so the daemon's queue for it fills)."""
    import signal

    code = (
        f"import zmq, time\ns = zmq.Context().socket(zmq.SUB)\ns.connect({SUBSCRIBE[0]!r})\n"
        "s.subscribe(b'')\nprint('up', flush=True)\ntime.sleep(3600)"
    )
    slow = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    slow.stdout.readline()
    time.sleep(0.5)
    slow.send_signal(signal.SIGSTOP)
    part = b"\0" * 900_000
    while not stop.is_set():
        pub.send_multipart([b"s/demo/imu", *([part] * 100)])
        stop.wait(0.2)
    slow.kill()
    slow.wait()


ATTACKS: dict[str, Callable[[zmq.Socket, threading.Event], None]] = {
    "one IMU sample 1 h ahead": future,
    "seq jump of 1e9": seq_jump,
    "flood, unconfigured rig": flood("evil"),
    "flood, unconfigured stream of rig demo": flood("demo"),
    "600 idle connections held": idle_connections,
    "200 JPEGs/s declaring 3840x2160": jpeg_bombs,
    "100-frame messages, a stalled reader": many_parts,
}
PUBLISH: list[str] = []
SUBSCRIBE: list[str] = []


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def span(predictions: Subscriber, anchor: int, seconds: float) -> tuple[float, float, int]:
    got = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        p = predictions.next()
        if p is not None:
            got.append(p)
    inside = [(p, truth(anchor, p.window_start_ns)) for p in got if not p.missing]
    inside = [(p, d) for p, d in inside if d is not None]
    accuracy = sum(p.label == str(d) for p, d in inside) / len(inside) if inside else float("nan")
    return len(got) / seconds, accuracy, len(inside)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--only", default="", help="run only the attacks whose name holds this text")
    args = parser.parse_args()
    publish, subscribe, control = free_endpoint(), free_endpoint(), free_endpoint()
    PUBLISH.append(publish)
    SUBSCRIBE.append(subscribe)
    with tempfile.TemporaryDirectory() as tmp:
        config = demo_config(Path(tmp), publish, subscribe)
        config.write_text(
            config.read_text().replace(
                re.search(r'control = "[^"]+"', config.read_text())[0], f'control = "{control}"'
            )
        )
        log = (Path(tmp) / "log").open("w")
        daemon = subprocess.Popen(
            [sys.executable, "-m", "fusiond", "run", "--config", str(config)], stderr=log
        )
        ctx = zmq.Context()
        try:
            with Subscriber(subscribe, rigs=["demo"], timeout_s=1) as predictions:
                while predictions.next() is None:
                    pass
                anchor = int(
                    re.search(r"media anchor: file sources start at (\d+)", (Path(tmp) / "log").read_text())[
                        1
                    ]
                )
                pub = ctx.socket(zmq.PUB)
                pub.setsockopt(zmq.SNDHWM, 100_000)
                pub.connect(publish)
                time.sleep(1.0)
                print(
                    f"{'attack':<40} {'clean /s':>8} {'acc':>5} {'MB':>6} {'attacked /s':>11} {'acc':>5} "
                    f"{'MB':>6} {'after MB':>8}  counted"
                )
                clean_rate, clean_acc, _ = span(predictions, anchor, args.seconds)
                for name, attack in ATTACKS.items():
                    if args.only not in name:
                        continue
                    clean_mb = rss_mb(daemon.pid)
                    stop = threading.Event()
                    thread = threading.Thread(target=attack, args=(pub, stop))
                    thread.start()
                    rate, acc, _ = span(predictions, anchor, args.seconds)
                    attacked_mb = rss_mb(daemon.pid)
                    stop.set()
                    thread.join()
                    # The next clean span is also this attack's recovery: memory given back?
                    next_rate, next_acc, _ = span(predictions, anchor, args.seconds)
                    print(
                        f"{name:<40} {clean_rate:8.2f} {clean_acc:5.2f} {clean_mb:6.0f} {rate:11.2f} "
                        f"{acc:5.2f} {attacked_mb:6.0f} {rss_mb(daemon.pid):8.0f}  {_drops(ctx, control)}",
                        flush=True,
                    )
                    clean_rate, clean_acc = next_rate, next_acc
                pub.close(linger=0)
        finally:
            daemon.terminate()
            daemon.wait(10)
            ctx.term()


def _drops(ctx: zmq.Context, control: str) -> dict[str, int]:
    req = ctx.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    req.connect(control)
    req.send(b"status")
    reply = json.loads(req.recv()) if req.poll(5000) else {"drops": {"no_status": 1}}
    req.close()
    return {k: v for k, v in reply["drops"].items() if v}


if __name__ == "__main__":
    main()
