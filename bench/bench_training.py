"""Training-side costs: prints figures, asserts nothing.

    python bench/bench_training.py [--seconds 60] [--device auto]

1. Cutting: a recording of the demo rig (96x96 camera at 10 fps, 16 kHz audio, 100 Hz
   IMU) through ingest and the aligner, as ``fusiond train`` cuts it: windows/s.
2. Training: one optimiser step of the demo recipe's model on a batch of 64 windows,
   for every fusion strategy: ms/step and windows/s.
3. Serving: one forward pass at batch 1 and 32 for every strategy: ms per batch.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fusiond.models.runner import pick_device
from fusiond.plugin import Plugins, load_plugins
from fusiond.testing import write_recording
from fusiond.training.data import cut, recording_messages, recording_streams
from fusiond.training.loop import loss_fn
from fusiond.training.recipe import Recipe, load_recipe
from fusiond.training.streams import RecordedStream
from fusiond.training.train import build

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_700_000_000_000_000_000


def bench_cut(seconds: int) -> None:
    recipe = load_recipe(ROOT / "demo" / "train.toml")
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (seconds * 10, 96, 96, 3), np.uint8)
    audio = rng.integers(-3000, 3000, (seconds * 16000, 1), np.int16)
    imu = rng.normal(0, 1, (seconds * 100, 1)).astype(np.float32)
    streams = {
        "cam": RecordedStream("video", T0, 10.0, frames, 1),
        "mic": RecordedStream("audio", T0, 16000.0, audio, 1024),
        "imu": RecordedStream("imu", T0, 100.0, imu, 10),
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = write_recording(Path(tmp) / "r.mcap", streams)
        started = time.perf_counter()
        windows = sum(
            1
            for _ in cut(
                recording_messages(path), recording_streams(path), recipe.spec, recipe.window.to_config()
            )
        )
        took = time.perf_counter() - started
    print(
        f"cut: {seconds} s of the demo rig -> {windows} windows in {took:.2f} s "
        f"({windows / took:.0f} windows/s, {seconds / took:.0f}x real time)"
    )


def batch(spec: object, b: int, device: torch.device) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    inputs = {}
    for m, s in spec.modalities.items():  # type: ignore[attr-defined]
        x = torch.randint(0, 255, (b, *s.shape)) if s.kind == "frames" else torch.randn(b, *s.shape)
        inputs[m] = x.to(torch.uint8 if s.kind == "frames" else torch.float32).to(device)
    return inputs, torch.ones(b, len(inputs), dtype=torch.bool, device=device)


def timed(fn: object, repeat: int, device: torch.device) -> float:
    fn()  # type: ignore[operator]
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeat):
        fn()  # type: ignore[operator]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / repeat * 1e3


def bench_one(name: str, base: Recipe, plugins: Plugins, device: torch.device) -> None:
    recipe = base.model_copy(update={"fusion": name})
    model = build(recipe, [str(d) for d in range(10)], plugins).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    inputs, mask = batch(recipe.spec, 64, device)
    target = torch.randint(0, 10, (64,), device=device)

    def step() -> None:
        model.train()
        loss = loss_fn(model, model(inputs, mask), target, 0.1)
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()

    train_ms = timed(step, 5, device)
    model.eval()
    one, m1 = batch(recipe.spec, 1, device)
    many, m32 = batch(recipe.spec, 32, device)
    with torch.inference_mode():
        b1 = timed(lambda: model(one, m1), 20, device)
        b32 = timed(lambda: model(many, m32), 5, device)
    params = sum(p.numel() for p in model.parameters())
    print(f"{name:<13} {params:>8} {train_ms:>18.1f} {64e3 / train_ms:>10.0f} {b1:>13.2f} {b32:>14.2f}")


def bench_models(device: torch.device) -> None:
    plugins = load_plugins()
    base = load_recipe(ROOT / "demo" / "train.toml")
    print(f"\nmodels on {device} (demo recipe, dim {base.dim})")
    print(
        f"{'fusion':<13} {'params':>8} {'train ms/step(64)':>18} {'windows/s':>10} {'infer ms b=1':>13} "
        f"{'infer ms b=32':>14}"
    )
    for name in [n for n in plugins.fusions.modules() if n != "concat"]:
        bench_one(name, base, plugins, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    bench_cut(args.seconds)
    bench_models(pick_device(args.device))


if __name__ == "__main__":
    main()
