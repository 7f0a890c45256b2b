"""Train the demo's first fusion model from packaged data and write demo/model.pt.

    python scripts/train_demo.py [--digits-png PATH] [--epochs 10] [--sequences 200] [--seed 0]

Training sequences use the training writers, voices and gesture recordings only; the
report at the end scores held-out sequences and the committed demo media. Windows are cut
by the daemon's own aligner (fusiond.align.offline), so the model sees exactly what the
daemon will feed it.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import time
import wave
from pathlib import Path

import cv2
import demo_data
import numpy as np
import torch
from torch import nn

from fusiond.align import InputSpec, ModalitySpec, WindowConfig
from fusiond.align.offline import RecordedStream, cut_windows
from fusiond.models import BUILTIN_ENCODERS, FusionModel, save

SPEC = InputSpec({
    "video": ModalitySpec("frames", length=4, channels=1, height=32, width=32),
    "audio": ModalitySpec("series", length=8000, channels=1),
    "imu": ModalitySpec("series", length=100, channels=1),
})  # fmt: skip
ENCODERS = {
    "video": {"name": "frames_cnn", "args": {}},
    "audio": {"name": "logmel_cnn", "args": {"sample_rate": 8000.0}},
    "imu": {"name": "series_cnn", "args": {}},
}
FUSION = {"name": "attention", "args": {}}
WINDOW = WindowConfig(length_ns=1_000_000_000, hop_ns=500_000_000, lateness_ns=300_000_000)
DIM = 64
CLASSES = [str(d) for d in range(10)]
T0_NS = 1_700_000_000_000_000_000


def streams(seq: demo_data.Sequence) -> dict[str, RecordedStream]:
    """The three demo streams, starting at T0_NS."""
    return {
        "cam": RecordedStream("video", T0_NS, demo_data.VIDEO_FPS, seq.frames, 1),
        "mic": RecordedStream("audio", T0_NS, demo_data.AUDIO_RATE, seq.audio[:, None], 1024),
        "imu": RecordedStream("imu", T0_NS, demo_data.IMU_RATE, seq.imu, 10),
    }


def labelled(seq: demo_data.Sequence) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Inputs, presence mask and labels of the windows that lie inside one segment."""
    seg_ns = round(seq.segment_s * 1e9)
    inputs: dict[str, list[np.ndarray]] = {m: [] for m in SPEC.modalities}
    masks, labels = [], []
    for w in cut_windows("train", streams(seq), SPEC.modalities, WINDOW):
        first, last = (w.start_ns - T0_NS) // seg_ns, (w.end_ns - 1 - T0_NS) // seg_ns
        if first != last or not 0 <= first < len(seq.labels):
            continue
        for m in SPEC.modalities:
            inputs[m].append(w.inputs[m])
        masks.append([w.present[m] for m in SPEC.modalities])
        labels.append(seq.labels[first])
    return (
        {m: np.stack(v) for m, v in inputs.items()},
        np.array(masks, bool),
        np.array(labels, np.int64),
    )


def dataset(split: str, count: int, rng: np.random.Generator) -> tuple:
    parts = [labelled(demo_data.make_sequence(list(rng.integers(0, 10, 10)), split, rng))
             for _ in range(count)]  # fmt: skip
    inputs = {m: np.concatenate([p[0][m] for p in parts]) for m in SPEC.modalities}
    return inputs, np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts])


def demo_media(folder: Path) -> demo_data.Sequence:
    """The committed demo media, read back the way the sources read them."""
    capture = cv2.VideoCapture(str(folder / "digits.mp4"))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    with wave.open(str(folder / "digits.wav")) as w:
        audio = np.frombuffer(w.readframes(w.getnframes()), np.int16)
    with (folder / "imu.csv").open() as f:
        imu = np.array([float(r["accel_z"]) for r in csv.DictReader(f)], np.float32)[:, None]
    with (folder / "labels.csv").open() as f:
        rows = list(csv.DictReader(f))
    seg = float(rows[0]["end_s"]) - float(rows[0]["start_s"])
    return demo_data.Sequence([int(r["label"]) for r in rows], seg, np.stack(frames), audio, imu)


def accuracy(model: nn.Module, inputs: dict, mask: np.ndarray, labels: np.ndarray) -> float:
    model.eval()
    with torch.inference_mode():
        tensors = {m: torch.from_numpy(a) for m, a in inputs.items()}
        logits = model(tensors, torch.from_numpy(mask))
    return float((logits.argmax(1).numpy() == labels).mean())


def train(model: FusionModel, data: tuple, epochs: int, seed: int) -> None:
    inputs, mask, labels = data
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-3)
    steps = epochs * -(-len(labels) // 64)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
    tensors = {m: torch.from_numpy(a) for m, a in inputs.items()}
    mask_t, labels_t = torch.from_numpy(mask), torch.from_numpy(labels)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(labels), generator=gen)
        total = 0.0
        for i in range(0, len(order), 64):
            idx = order[i : i + 64]
            # Modality dropout: hide each modality with p=0.3, never all of them.
            drop = torch.rand(len(idx), mask.shape[1], generator=gen) < 0.3
            drop[drop.all(dim=1), 0] = False
            batch_mask = mask_t[idx] & ~drop
            logits = model({m: t[idx] for m, t in tensors.items()}, batch_mask)
            loss = nn.functional.cross_entropy(logits, labels_t[idx], label_smoothing=0.1)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(idx)
        print(f"epoch {epoch + 1}/{epochs}: loss {total / len(labels):.3f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--digits-png", type=Path, default=demo_data.DIGITS_PNG)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--sequences", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--demo", type=Path, default=Path("demo"))
    args = parser.parse_args()
    demo_data.DIGITS_PNG = args.digits_png
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    started = time.time()
    train_data = dataset("train", args.sequences, rng)
    held_out = dataset("test", 20, rng)
    print(f"{len(train_data[2])} training windows, {len(held_out[2])} held-out windows "
          f"({time.time() - started:.0f} s to cut)", flush=True)  # fmt: skip
    model = FusionModel(SPEC, CLASSES, ENCODERS, FUSION, BUILTIN_ENCODERS, DIM)
    train(model, train_data, args.epochs, args.seed)
    demo = labelled(demo_media(args.demo))
    metrics = {
        "held_out_accuracy": accuracy(model, *held_out),
        "demo_accuracy": accuracy(model, *demo),
    }
    for i, m in enumerate(SPEC.modalities):
        inputs, mask, labels = held_out
        only = np.zeros_like(mask)
        only[:, i] = mask[:, i]
        metrics[f"held_out_accuracy_{m}_only"] = accuracy(model, inputs, only, labels)
    print({k: round(v, 4) for k, v in metrics.items()})
    digest = hashlib.sha256(b"".join(a.tobytes()[:1 << 20] for a in train_data[0].values()))
    window = {"length_ns": WINDOW.length_ns, "hop_ns": WINDOW.hop_ns}
    content = save(model, args.demo / "model.pt", name="demo-digits", encoders=ENCODERS,
                   fusion=FUSION, dim=DIM, window=window, metrics=metrics,
                   data_hash=digest.hexdigest()[:16])  # fmt: skip
    print(f"wrote {args.demo / 'model.pt'} ({content}) in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
