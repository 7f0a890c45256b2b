"""Write labelled training and test recordings from real packaged data.

    python scripts/make_training_data.py --out .cache/data [--train 200] [--val 30] [--test 20]
        [--real 20] [--seed 0] [--words]

Each recording is an MCAP file of the bus, as ``fusiond record`` writes it: one rig with
a camera (digit cards, 10 fps), a microphone (spoken digits, 16 kHz, blocks of 1024) and
an IMU (Wiimote gestures, 100 Hz, blocks of 10), framed by the wire codec the sources
use; beside it ``<name>.labels.csv`` gives each 2 s segment's digit. With ``--words``, a
fourth stream ``words`` holds what the ``asr`` source kind hears in the audio (any
English word, as pocketsphinx's model recognises it: "fall" for four, "you" for one...),
one text event per word at the time it was spoken, as that source would publish it. ``train/`` uses the
training writers, voices and gesture recordings, ``val/`` its own (for ``fusiond train
--val``: the best epoch and the calibration are then chosen on voices the model has not
heard), ``test/`` only the held-out ones (see scripts/demo_data.py). Two more held-out
folders hold real data that no training or model choice ever sees: ``voice/`` speaks
with a recorded human voice (run ``bash scripts/fetch-voices.sh`` first), ``writers/``
shows other writers' handwriting (needs scikit-learn); their other streams are as in
``test/``. Then ``fusiond train`` makes the demo model (docs/models.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import demo_data
import numpy as np

from fusiond.testing import RecordedText, write_labels, write_recording
from fusiond.training.streams import RecordedStream

T0_NS = 1_700_000_000_000_000_000


def heard(audio: np.ndarray, t0_ns: int) -> list[tuple[int, str]]:
    """What the asr source kind hears in ``audio`` (16 kHz int16), fed as it reads a file."""
    from fusiond_plugins.asr import Recognizer

    recognizer = Recognizer()
    words = []
    block = 1600
    for i in range(0, len(audio), block):
        words += recognizer.feed(audio[i : i + block], t0_ns + round(i * 1e9 / demo_data.AUDIO_RATE))
    words += recognizer.flush()
    return [(t_ns, word) for word, t_ns in words]


def write(path: Path, seq: demo_data.Sequence, t0_ns: int, words: bool = False) -> None:
    streams: dict[str, RecordedStream | RecordedText] = {
        "cam": RecordedStream("video", t0_ns, demo_data.VIDEO_FPS, seq.frames, 1),
        "mic": RecordedStream("audio", t0_ns, demo_data.AUDIO_RATE, seq.audio[:, None], 1024),
        "imu": RecordedStream("imu", t0_ns, demo_data.IMU_RATE, seq.imu, 10),
    }
    if words:
        streams["words"] = RecordedText("words", heard(seq.audio, t0_ns))
    write_recording(path, streams)
    seg_ns = round(seq.segment_s * 1e9)
    rows = [(t0_ns + i * seg_ns, t0_ns + (i + 1) * seg_ns, str(d)) for i, d in enumerate(seq.labels)]
    write_labels(path.with_name(path.stem + ".labels.csv"), rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(".cache/data"))
    parser.add_argument("--train", type=int, default=200, help="training recordings (20 s each)")
    parser.add_argument("--test", type=int, default=20, help="held-out recordings")
    parser.add_argument("--val", type=int, default=30, help="validation recordings")
    parser.add_argument("--real", type=int, default=20, help="real held-out recordings")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--digits-png", type=Path, default=demo_data.DIGITS_PNG)
    parser.add_argument("--words", action="store_true", help="add the words the asr kind hears in the audio")
    args = parser.parse_args()
    demo_data.DIGITS_PNG = args.digits_png
    splits = {
        "train": args.train,
        "test": args.test,
        "voice": args.real,
        "writers": args.real,
        "val": args.val,
    }
    for n_split, (split, count) in enumerate(splits.items()):
        rng = np.random.default_rng([args.seed, n_split])  # each split the same, whatever the others' counts
        folder = args.out / split
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(count):
            labels = [int(d) for d in rng.integers(0, 10, 10)]
            # Recordings lie an hour apart on the capture clock, like separate sessions.
            write(
                folder / f"{split}-{n:03d}.mcap",
                demo_data.make_sequence(labels, split, rng),
                T0_NS + n * 3600 * 10**9,
                args.words,
            )
        print(f"{count} {split} recordings in {folder}", flush=True)


if __name__ == "__main__":
    main()
