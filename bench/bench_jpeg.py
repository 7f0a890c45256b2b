"""A JPEG camera into the demo's video input: what ingest and the fit cost per second of
camera, with frames decoded only when a window picks them. Prints figures, asserts nothing.

    python bench/bench_jpeg.py [--seconds 20] [--fps 30] [--size 640x480] [--repeat 3]

The camera is the demo video's frames (``demo/digits.mp4``) resized to ``--size`` and sent
as JPEG (quality 90) at ``--fps``, one frame a message, through the daemon's own
``Ingest`` and ``RigAligner`` with the demo model's video input (4 frames of 32 x 32 grey a
window, 1 s windows every 500 ms). Two rows:

- ``ingest + fit``: every message handled and every window cut, frames decoded only when a
  window picks them (and at the reduced size the input needs);
- ``decode every frame``: only the decoding that ingest did before for the same frames, at
  the same reduced size: one ``decode_arrays`` a message.

Figures are milliseconds of one core per second of camera (best of ``--repeat``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

S = 1_000_000_000


def camera(seconds: float, fps: float, size: tuple[int, int]) -> list[list[bytes]]:
    import cv2

    from fusiond.bus.wire import encode_sample

    video = cv2.VideoCapture(str(ROOT / "demo/digits.mp4"))
    images = []
    while len(images) < 90:
        ok, image = video.read()
        if not ok:
            break
        images.append(cv2.resize(image, size, interpolation=cv2.INTER_AREA))
    video.release()
    t0 = time.time_ns()
    out = []
    for i in range(round(seconds * fps)):
        ok, jpeg = cv2.imencode(".jpg", images[i % len(images)], [cv2.IMWRITE_JPEG_QUALITY, 90])
        t = t0 + round(i * S / fps)
        frames = encode_sample(
            rig="bench",
            stream="cam",
            modality="video",
            seq=i,
            t_ns=t,
            t_pub_ns=t,
            rate_hz=fps,
            data=np.zeros((1, size[1], size[0], 3), np.uint8),
            encoding="jpeg",
            payload=jpeg.tobytes(),
        )
        out.append([bytes(f) for f in frames])
    return out


def run(messages: list[list[bytes]], fps: float) -> tuple[float, int, dict[str, int]]:
    """Seconds of CPU to take every message and cut every window, windows cut, drops."""
    from fusiond.align.spec import ModalitySpec
    from fusiond.align.windows import RigAligner, WindowConfig
    from fusiond.bus.wire import decode_sample_header
    from fusiond.ingest import Ingest
    from fusiond.metrics import Stats

    stats = Stats()
    spec = ModalitySpec("frames", 4, 1, 32, 32)
    aligner = RigAligner(
        "bench", {"cam": "video"}, {"video": spec}, WindowConfig(S, S // 2, S // 5), stats.drops
    )
    ingest = Ingest({"bench": aligner}, {("bench", "cam"): "video"}, stats)
    first = decode_sample_header(messages[0]).t_ns
    windows = 0
    started = time.process_time()
    for i, frames in enumerate(messages):
        now = first + round((i + 1) * S / fps)  # each frame taken as it ends, as a camera delivers it
        ingest.handle(frames, now)
        windows += len(aligner.poll(now))
    return time.process_time() - started, windows, {k: v for k, v in stats.drops.items() if v}


def decode_all(messages: list[list[bytes]]) -> float:
    from fusiond.align.spec import ModalitySpec
    from fusiond.bus.wire import decode_arrays, decode_sample_header

    header = decode_sample_header(messages[0])
    first = header.buffers[0]
    scale = ModalitySpec("frames", 4, 1, 32, 32).decode_scale(first.shape, first.encoding)
    started = time.process_time()
    for frames in messages:
        decode_arrays(decode_sample_header(frames), frames, scale)
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    messages = camera(args.seconds, args.fps, (width, height))
    kb = sum(len(m[2]) for m in messages) / len(messages) / 1024
    print(f"## A {width}x{height} JPEG camera at {args.fps:g} fps ({kb:.0f} kB a frame), {args.seconds:g} s")
    best = min(run(messages, args.fps) for _ in range(args.repeat))
    every = min(decode_all(messages) for _ in range(args.repeat))
    per_s = 1e3 / args.seconds
    print(f"{'ingest + fit':<20} {best[0] * per_s:7.1f} ms/s  ({best[1]} windows, drops {best[2] or 'none'})")
    print(f"{'decode every frame':<20} {every * per_s:7.1f} ms/s  (what ingest decoded before, alone)")


if __name__ == "__main__":
    main()
