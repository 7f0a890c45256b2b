"""Real single-modality data, paired by label into digit sequences.

* Handwritten digits: OpenCV's ``digits.png`` (5000 digits, 20x20, 500 a class; Debian
  package ``opencv-doc``). The first 350 of each class train, the last 150 are held out.
* Spoken digits: ``espeak-ng`` voices and ``flite`` voices (built from human
  recordings). Voices are split: the held-out voices never appear in training.
* Gestures: ``PickupGestureWiimoteZ`` (Wiimote accelerometer, 10 gestures by 10
  subjects) as shipped inside the ``aeon`` wheel; its own TRAIN/TEST split is kept.
  Gesture class ``k`` stands for digit ``k - 1``.

No package ships a real audio-visual data set: the modalities are real, but they are
paired by label, not recorded together.
"""

from __future__ import annotations

import importlib.util
import subprocess
import tempfile
import wave
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import cv2
import numpy as np

DIGITS_PNG = Path("/usr/share/doc/opencv-doc/examples/data/digits.png")
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
AUDIO_RATE = 16000
IMU_RATE = 100.0
VIDEO_FPS = 10.0
CARD = 96

TRAIN_VOICES = [
    *(f"espeak:{v}" for v in (
        "en-us", "en-gb", "en-gb-x-rp", "en-gb-x-gbclan", "en-us-nyc", "en-029",
        "en-us+f2", "en-gb+f4", "en-us+m3", "en-gb+m7", "en-gb-x-rp+f1", "en-029+m2",
        "en-us+Andy", "en-gb+belinda", "en-us+david", "en-gb+Alicia",
    )),
    "flite:awb", "flite:rms", "flite:kal16",
]  # fmt: skip
TEST_VOICES = ["flite:slt", "espeak:en-gb-scotland+f3", "espeak:en-gb-x-gbcwmd+m4"]


@dataclass
class Sequence:
    """One rig's streams: frames at VIDEO_FPS, audio at AUDIO_RATE, IMU at IMU_RATE."""

    labels: list[int]
    segment_s: float
    frames: np.ndarray  # [n, CARD, CARD, 3] uint8, BGR
    audio: np.ndarray  # [n] int16
    imu: np.ndarray  # [n, 1] float32, acceleration in g


@cache
def digits_png(path: Path | None = None) -> np.ndarray:
    """The 5000 digits as [10, 500, 20, 20] uint8."""
    path = path or DIGITS_PNG
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        msg = f"{path} not found: apt-get download opencv-doc && dpkg -x opencv-doc_*.deb DIR"
        raise SystemExit(msg)
    cells = np.array([np.hsplit(row, 100) for row in np.vsplit(image, 50)])
    return cells.reshape(10, 500, 20, 20)


def digit_split(images: np.ndarray, split: str) -> np.ndarray:
    """Writers' samples for one split: [10, n, 20, 20]."""
    return images[:, :350] if split == "train" else images[:, 350:]


def _read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        rate, data = w.getframerate(), np.frombuffer(w.readframes(w.getnframes()), np.int16)
    times = np.arange(int(len(data) * AUDIO_RATE / rate)) / AUDIO_RATE
    audio = np.interp(times, np.arange(len(data)) / rate, data.astype(np.float32))
    nonzero = np.flatnonzero(np.abs(audio) > 300)
    return audio[nonzero[0] : nonzero[-1] + 1] if len(nonzero) else audio


@cache
def spoken(voice: str, digit: int, speed: int) -> np.ndarray:
    """One spoken digit, trimmed, float32 at AUDIO_RATE."""
    engine, name = voice.split(":")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "clip.wav"
        if engine == "espeak":
            cmd = ["espeak-ng", "-v", name, "-s", str(speed), "-w", str(out), WORDS[digit]]
        else:
            stretch = f"{150 / speed:.2f}"
            cmd = ["flite", "-voice", name, "--setf", f"duration_stretch={stretch}",
                   "-t", WORDS[digit], "-o", str(out)]  # fmt: skip
        subprocess.run(cmd, check=True, capture_output=True)
        return _read_wav(out)


def _read_ts(path: Path) -> tuple[list[np.ndarray], list[int]]:
    series, labels = [], []
    in_data = False
    for line in path.read_text().splitlines():
        if line.startswith("@data"):
            in_data = True
        elif in_data and line.strip():
            values, label = line.rsplit(":", 1)
            row = np.array([float(v) for v in values.split(",") if v not in ("?", "NaN")])
            series.append(row.astype(np.float32))
            labels.append(int(label) - 1)
    return series, labels


def gestures(split: str) -> dict[int, list[np.ndarray]]:
    """Wiimote Z-acceleration gestures by digit, from the aeon wheel's data folder."""
    spec = importlib.util.find_spec("aeon")
    if spec is None or spec.origin is None:
        msg = "the gesture data ships in aeon: pip install --no-deps aeon"
        raise SystemExit(msg)
    folder = Path(spec.origin).parent / "datasets" / "data" / "PickupGestureWiimoteZ"
    series, labels = _read_ts(folder / f"PickupGestureWiimoteZ_{split.upper()}.ts")
    out: dict[int, list[np.ndarray]] = {d: [] for d in range(10)}
    for s, label in zip(series, labels, strict=True):
        out[label].append(s)
    return out


def _card(digit_image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    ink = cv2.resize(255 - digit_image, (60, 60), interpolation=cv2.INTER_CUBIC)
    card = np.full((CARD, CARD), 235, np.uint8)
    dx, dy = rng.integers(8, 28, size=2)
    card[dy : dy + 60, dx : dx + 60] = np.minimum(card[dy : dy + 60, dx : dx + 60], ink)
    angle = rng.uniform(-12, 12)
    matrix = cv2.getRotationMatrix2D((CARD / 2, CARD / 2), angle, 1.0)
    card = cv2.warpAffine(card, matrix, (CARD, CARD), borderValue=235)
    tint = rng.uniform(0.85, 1.0, size=3)
    return (card[:, :, None] * tint).astype(np.uint8)


def make_sequence(
    labels: list[int], split: str, rng: np.random.Generator, segment_s: float = 2.0
) -> Sequence:
    """Streams for a run of digit segments, each ``segment_s`` long."""
    images = digit_split(digits_png(), split)
    voices = TRAIN_VOICES if split == "train" else TEST_VOICES
    moves = gestures(split)
    frames_per, audio_per, imu_per = (
        round(segment_s * VIDEO_FPS), round(segment_s * AUDIO_RATE), round(segment_s * IMU_RATE)
    )
    frames, audio, imu = [], [], []
    for digit in labels:
        card = _card(images[digit, rng.integers(images.shape[1])], rng)
        for _ in range(frames_per):
            noise = rng.normal(0, 4, card.shape)
            frames.append(np.clip(card + noise, 0, 255).astype(np.uint8))
        track = rng.normal(0, 60, audio_per).astype(np.float32)
        voice = voices[rng.integers(len(voices))]
        for start_s in (rng.uniform(0.05, 0.3), segment_s / 2 + rng.uniform(0.05, 0.3)):
            clip = spoken(voice, digit, int(rng.choice([130, 150, 170, 190])))
            clip = clip[: audio_per - round(start_s * AUDIO_RATE)] * rng.uniform(0.5, 1.0)
            at = round(start_s * AUDIO_RATE)
            track[at : at + len(clip)] += clip
        audio.append(track)
        gesture = moves[digit][rng.integers(len(moves[digit]))]
        stretched = np.interp(
            np.linspace(0, len(gesture) - 1, imu_per), np.arange(len(gesture)), gesture
        )
        imu.append((stretched + rng.normal(0, 0.02, imu_per)).astype(np.float32))
    return Sequence(
        labels=list(labels),
        segment_s=segment_s,
        frames=np.stack(frames),
        audio=np.clip(np.concatenate(audio), -32768, 32767).astype(np.int16),
        imu=np.concatenate(imu)[:, None],
    )
