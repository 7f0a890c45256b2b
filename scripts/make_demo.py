"""Write the demo rig's media into demo/ from packaged data (see demo_data.py).

    python scripts/make_demo.py [--digits-png PATH] [--out demo]

Needs Debian's espeak-ng and flite, opencv-doc's digits.png, and the aeon wheel
(``pip install --no-deps aeon``: only its data files are read). The outputs are
committed, so running the demo needs none of these.
"""

from __future__ import annotations

import argparse
import csv
import wave
from pathlib import Path

import cv2
import demo_data
import numpy as np

# The first digits of pi.
DEMO_LABELS = [
    3,
    1,
    4,
    1,
    5,
    9,
    2,
    6,
    5,
    3,
    5,
    8,
    9,
    7,
    9,
    3,
    2,
    3,
    8,
    4,
    6,
    2,
    6,
    4,
    3,
    3,
    8,
    3,
    2,
    7,
    9,
    5,
    0,
    2,
    8,
    8,
    4,
    1,
    9,
    7,
    1,
    6,
    9,
    3,
    9,
    9,
    3,
    7,
    5,
    1,
    0,
    5,
    8,
    2,
    0,
    9,
    7,
    4,
    9,
    4,
    4,
    5,
    9,
    2,
    3,
    0,
    7,
    8,
    1,
    6,
    4,
    0,
    6,
    2,
    8,
    6,
    2,
    0,
    8,
    9,
    9,
    8,
    6,
    2,
    8,
    0,
    3,
    4,
    8,
    2,
    5,
    3,
    4,
    2,
    1,
    1,
    7,
    0,
    6,
    7,
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--digits-png", type=Path, default=demo_data.DIGITS_PNG)
    parser.add_argument("--out", type=Path, default=Path("demo"))
    parser.add_argument("--segments", type=int, default=30)
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    demo_data.DIGITS_PNG = args.digits_png
    labels = DEMO_LABELS[: args.segments]
    seq = demo_data.make_sequence(labels, "test", np.random.default_rng(args.seed))
    args.out.mkdir(parents=True, exist_ok=True)

    fourcc = cv2.VideoWriter_fourcc(*"mp4v")
    size = seq.frames.shape[2], seq.frames.shape[1]
    writer = cv2.VideoWriter(str(args.out / "digits.mp4"), fourcc, demo_data.VIDEO_FPS, size)
    for frame in seq.frames:
        writer.write(frame)
    writer.release()

    with wave.open(str(args.out / "digits.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(demo_data.AUDIO_RATE)
        w.writeframes(seq.audio.tobytes())

    with (args.out / "imu.csv").open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["t_s", "accel_z"])
        for i, value in enumerate(seq.imu[:, 0]):
            out.writerow([f"{i / demo_data.IMU_RATE:.2f}", f"{value:.4f}"])

    with (args.out / "labels.csv").open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["start_s", "end_s", "label"])
        for i, label in enumerate(labels):
            out.writerow([i * seq.segment_s, (i + 1) * seq.segment_s, label])
    print(f"wrote {len(labels)} segments of {seq.segment_s} s to {args.out}/")


if __name__ == "__main__":
    main()
