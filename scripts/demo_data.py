"""Real single-modality data, paired by label into digit sequences.

* Handwritten digits: OpenCV's ``digits.png`` (5000 digits, 20x20, 500 a class; Debian
  package ``opencv-doc``). The first 300 of each class train, the next 50 validate,
  the last 150 are held out.
* Spoken digits: every English ``espeak-ng`` accent with every one of its voice
  variants, the ``flite`` voices and the ``festival`` diphone voices (the last two are
  built from human recordings). Voices are split three ways: validation voices (one
  accent, two recorded voices) and held-out test voices (two accents, one recorded
  voice) never appear in training, nor test voices in validation.
* Held out, real and never trained or tuned on (``split="voice"`` and
  ``split="writers"``): a recorded human voice, Allison Smith's digits from the Debian
  package ``asterisk-core-sounds-en-wav`` (8 kHz telephone prompts, one recording a
  digit), and handwriting by other writers, scikit-learn's 8x8 digits (1797 digits from
  the 13 writers of the UCI set's test part, other people than digits.png's; in the
  scikit-learn wheel).
* Gestures: ``PickupGestureWiimoteZ`` (Wiimote accelerometer, 10 gestures by 10
  subjects) as shipped inside the ``aeon`` wheel; its TRAIN file trains (4 a class) and
  validates (1 a class), its TEST file serves every held-out split.
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

TRAIN_ACCENTS = ["en-us", "en-gb", "en-gb-x-rp", "en-gb-x-gbclan", "en-us-nyc"]
RECORDED_VOICES = ["flite:awb", "flite:kal16", "flite:kal", "festival:kal_diphone"]
VAL_ACCENTS = ["en-029"]
VAL_RECORDED = ["flite:rms", "festival:ked_diphone"]
TEST_VOICES = ["flite:slt", "espeak:en-gb-scotland+f3", "espeak:en-gb-x-gbcwmd+m4"]
ASTERISK_DIGITS = (
    Path(__file__).resolve().parent.parent
    / ".cache/asterisk/root/usr/share/asterisk/sounds"
    / "en_US_f_Allison/digits"
)
REAL_VOICES = ["asterisk:allison"]


@cache
def espeak_variants() -> list[str]:
    """Every voice variant espeak-ng has (``+f3``, ``+klatt``, ``+whisper``...)."""
    listing = subprocess.run(["espeak-ng", "--voices=variant"], check=True, capture_output=True, text=True)
    return [line.split()[4].removeprefix("!v/") for line in listing.stdout.splitlines()[1:] if line.strip()]


def pick_voice(split: str, rng: np.random.Generator) -> str:
    """A voice of ``split``. Training and validation: half the time one of their espeak
    accents with a random variant (or none), else one of their voices built from human
    recordings. Test: one of the held-out voices; ``voice``: the recorded human voice."""
    if split in ("test", "writers", "voice"):
        voices = REAL_VOICES if split == "voice" else TEST_VOICES
        return voices[rng.integers(len(voices))]
    accents, recorded = (TRAIN_ACCENTS, RECORDED_VOICES) if split == "train" else (VAL_ACCENTS, VAL_RECORDED)
    if rng.random() < 0.5:
        accent = accents[rng.integers(len(accents))]
        variants = espeak_variants()
        pick = rng.integers(len(variants) + 1)
        return f"espeak:{accent}" + (f"+{variants[pick]}" if pick < len(variants) else "")
    return recorded[rng.integers(len(recorded))]


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
    """Writers' samples for one split: [10, n, 20, 20]: 300 a class train, 50 validate,
    and the held-out 150 serve every other split."""
    return {"train": images[:, :300], "val": images[:, 300:350]}.get(split, images[:, 350:])


def _read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        rate, data = w.getframerate(), np.frombuffer(w.readframes(w.getnframes()), np.int16)
    times = np.arange(int(len(data) * AUDIO_RATE / rate)) / AUDIO_RATE
    audio = np.interp(times, np.arange(len(data)) / rate, data.astype(np.float32))
    nonzero = np.flatnonzero(np.abs(audio) > 300)
    return audio[nonzero[0] : nonzero[-1] + 1] if len(nonzero) else audio


@cache
def spoken(voice: str, digit: int, speed: int) -> np.ndarray:
    """One spoken digit, trimmed, float32 at AUDIO_RATE (a recorded voice has one
    recording a digit: ``speed`` is not used). Every source peaks at 14000-24000."""
    engine, name = voice.split(":")
    if engine == "asterisk":
        path = ASTERISK_DIGITS / f"{digit}.wav"
        if not path.exists():
            msg = f"{path} not found: bash scripts/fetch-voices.sh"
            raise SystemExit(msg)
        return _read_wav(path)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "clip.wav"
        stretch = f"{150 / speed:.2f}"
        if engine == "espeak":
            cmd = ["espeak-ng", "-v", name, "-s", str(speed), "-w", str(out), WORDS[digit]]
        elif engine == "festival":
            cmd = [
                "text2wave",
                "-eval",
                f"(voice_{name})",
                "-eval",
                f"(Parameter.set 'Duration_Stretch {stretch})",
                "-o",
                str(out),
            ]
        else:
            cmd = [
                "flite",
                "-voice",
                name,
                "--setf",
                f"duration_stretch={stretch}",
                "-t",
                WORDS[digit],
                "-o",
                str(out),
            ]
        text = WORDS[digit] if engine == "festival" else None
        subprocess.run(cmd, check=True, capture_output=True, input=text, text=text is not None)
        return _read_wav(out)


@cache
def other_writers() -> np.ndarray:
    """scikit-learn's handwritten digits (other writers than digits.png's), drawn like
    digits.png's: 20x20, bright ink on black, the digit in the middle 16x16. [10, n, 20, 20]."""
    try:
        from sklearn.datasets import load_digits  # type: ignore[import-untyped]
    except ImportError:
        msg = "the other writers' digits ship in scikit-learn: pip install scikit-learn"
        raise SystemExit(msg) from None
    data = load_digits()
    n = min(int((data.target == d).sum()) for d in range(10))
    out = np.zeros((10, n, 20, 20), np.uint8)
    for d in range(10):
        for i, image in enumerate(data.images[data.target == d][:n]):
            ink = cv2.resize((image * 255 / 16).astype(np.uint8), (16, 16), interpolation=cv2.INTER_CUBIC)
            out[d, i, 2:18, 2:18] = ink
    return out


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
    """Wiimote Z-acceleration gestures by digit, from the aeon wheel's data folder: its
    TRAIN file (5 a class) gives 4 a class to ``train`` and 1 to ``val``, its TEST file
    serves every other split."""
    spec = importlib.util.find_spec("aeon")
    if spec is None or spec.origin is None:
        msg = "the gesture data ships in aeon: pip install --no-deps aeon"
        raise SystemExit(msg)
    folder = Path(spec.origin).parent / "datasets" / "data" / "PickupGestureWiimoteZ"
    part = "TRAIN" if split in ("train", "val") else "TEST"
    series, labels = _read_ts(folder / f"PickupGestureWiimoteZ_{part}.ts")
    out: dict[int, list[np.ndarray]] = {d: [] for d in range(10)}
    for s, label in zip(series, labels, strict=True):
        out[label].append(s)
    if split == "train":
        return {d: moves[:-1] for d, moves in out.items()}
    return {d: moves[-1:] for d, moves in out.items()} if split == "val" else out


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
    images = other_writers() if split == "writers" else digit_split(digits_png(), split)
    moves = gestures(split)
    frames_per, audio_per, imu_per = (
        round(segment_s * VIDEO_FPS),
        round(segment_s * AUDIO_RATE),
        round(segment_s * IMU_RATE),
    )
    frames, audio, imu = [], [], []
    for digit in labels:
        card = _card(images[digit, rng.integers(images.shape[1])], rng)
        for _ in range(frames_per):
            noise = rng.normal(0, 4, card.shape)
            frames.append(np.clip(card + noise, 0, 255).astype(np.uint8))
        track = rng.normal(0, 60, audio_per).astype(np.float32)
        voice = pick_voice(split, rng)
        for start_s in (rng.uniform(0.05, 0.3), segment_s / 2 + rng.uniform(0.05, 0.3)):
            clip = spoken(voice, digit, int(rng.choice([130, 150, 170, 190])))
            clip = clip[: audio_per - round(start_s * AUDIO_RATE)] * rng.uniform(0.5, 1.0)
            at = round(start_s * AUDIO_RATE)
            track[at : at + len(clip)] += clip
        audio.append(track)
        gesture = moves[digit][rng.integers(len(moves[digit]))]
        stretched = np.interp(np.linspace(0, len(gesture) - 1, imu_per), np.arange(len(gesture)), gesture)
        imu.append((stretched + rng.normal(0, 0.02, imu_per)).astype(np.float32))
    return Sequence(
        labels=list(labels),
        segment_s=segment_s,
        frames=np.stack(frames),
        audio=np.clip(np.concatenate(audio), -32768, 32767).astype(np.int16),
        imu=np.concatenate(imu)[:, None],
    )
