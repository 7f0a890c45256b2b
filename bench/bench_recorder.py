"""Recorder throughput: prints figures, asserts nothing.

    python bench/bench_recorder.py [--seconds 10]

A publisher process sends a realistic rig through a broker: 640x480x3 raw camera frames at
30 fps, 16 kHz int16 audio in 1024-sample blocks, 100 Hz 6-axis IMU in 10-sample blocks;
then the same with ``--foxglove`` (every frame also JPEG-encoded for viewing); then camera
frames as fast as the publisher can. ``fusiond record`` (a real
subprocess) writes the bus to MCAP. The figures: what the publisher sent next to what
the recorder wrote (messages/s, MB/s), and the messages the recorder saw go missing
(sequence gaps).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zmq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))


def publisher(endpoint: str, seconds: float, flood: bool) -> None:
    """Send the rig's streams for ``seconds`` (run as a child process); print what was sent."""
    from fusiond.bus.wire import encode_sample

    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUB)
    sock.setsockopt(zmq.SNDHWM, 1000)
    sock.connect(endpoint)
    time.sleep(1.5)
    frame = np.random.default_rng(0).integers(0, 255, (1, 480, 640, 3), dtype=np.uint8)
    audio = np.zeros((1024, 1), np.int16)
    imu = np.zeros((10, 6), np.float32)
    streams = [("cam", "video", frame, 30.0, 1 / 30)]
    if not flood:
        streams += [("mic", "audio", audio, 16000.0, 1024 / 16000), ("imu", "imu", imu, 100.0, 0.1)]
    seq = dict.fromkeys([s[0] for s in streams], 0)
    due = dict.fromkeys(seq, time.monotonic())
    sent_bytes = sent = 0
    start = time.monotonic()
    while (now := time.monotonic()) < start + seconds:
        for name, modality, data, rate, period in streams:
            if flood or now >= due[name]:
                t = time.time_ns()
                sock.send_multipart(
                    encode_sample(
                        rig="bench",
                        stream=name,
                        modality=modality,
                        seq=seq[name],
                        t_ns=t,
                        t_pub_ns=t,
                        rate_hz=rate,
                        data=data,
                    ),
                    copy=False,
                )
                seq[name] += 1
                due[name] += period
                sent += 1
                sent_bytes += data.nbytes
        if not flood:
            time.sleep(max(0.0, min(due.values()) - time.monotonic()))
    elapsed = time.monotonic() - start
    print(f"SENT {sent} {sent_bytes} {elapsed}", flush=True)
    sock.close(linger=3000)
    ctx.term()


def run(seconds: float, flood: bool, foxglove: bool = False) -> tuple[float, float, float, float, int, float]:
    from fusiond.bus.broker import Broker
    from fusiond.bus.sockets import Sockets

    publish, subscribe = (f"ipc://{tempfile.mkdtemp()}/{n}" for n in ("pub", "sub"))
    sockets = Sockets(hwm=1000)
    with tempfile.TemporaryDirectory() as tmp, Broker(sockets, publish, subscribe):
        out = Path(tmp) / "bench.mcap"
        recorder = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fusiond",
                "record",
                "-o",
                str(out),
                "--connect",
                subscribe,
                "--duration",
                str(seconds + 3),
                *(["--foxglove"] if foxglove else []),
            ],
            stderr=subprocess.PIPE,
            text=True,
        )
        code = f"import bench_recorder; bench_recorder.publisher({publish!r}, {seconds}, {flood})"
        pub = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            cwd=ROOT / "bench",
            env={"PYTHONPATH": str(ROOT / "bench")},
        )
        _, log = recorder.communicate(timeout=seconds + 30)
        size = out.stat().st_size
    sockets.close()
    sent, sent_bytes, elapsed = pub.stdout.split("SENT ")[1].split()
    m = re.search(r"recorded (\d+) messages \(([\d.]+) MB of messages.*sequence gaps\): (\d+)", log)
    assert m, log
    n, mb, gaps = int(m.group(1)), float(m.group(2)), int(m.group(3))
    e = float(elapsed)
    return int(sent) / e, int(sent_bytes) / e / 1e6, n / e, mb / e, gaps, size / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    print(
        f"{'run':<34} {'bus msg/s':>9} {'bus MB/s':>9} {'rec msg/s':>9} {'rec MB/s':>9} "
        f"{'gaps':>5} {'file MB':>8}"
    )
    runs = (
        ("rig: 640x480@30 + audio + IMU", False, False),
        ("same, record --foxglove", False, True),
        ("camera flood (640x480 raw)", True, False),
    )
    for label, flood, foxglove in runs:
        bus_n, bus_mb, rec_n, rec_mb, gaps, size = run(args.seconds, flood, foxglove)
        print(f"{label:<34} {bus_n:9.1f} {bus_mb:9.1f} {rec_n:9.1f} {rec_mb:9.1f} {gaps:5d} {size:8.1f}")
    print("(rec MB/s counts message bodies before compression; file MB is after zstd. In the")
    print(" flood, 'bus' counts attempted sends: a PUB socket drops what no queue can take, so")
    print(" the recorder's own rate there is its ceiling, and gaps are mostly the publisher's.")
    print(" --foxglove JPEG-encodes every frame; these frames are noise, the worst case for JPEG.)")


if __name__ == "__main__":
    main()
