"""Check the accelerated path on this machine: which execution providers onnxruntime and
torch find, whether their outputs equal the CPU's within 1e-4, and the cost per window at
batch 1, 32 and 256.

    python bench/gpu_check.py [--model demo/model.pt] [--require-gpu]

For each of onnxruntime with ``providers = "auto"`` and torch on ``cuda`` (when there),
against the same model on the CPU, on the same random windows. With ``--require-gpu`` it
exits 1 when no GPU provider is found or an output differs; otherwise it only prints.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BATCHES = (1, 32, 256)
GPU = ("CUDAExecutionProvider", "TensorrtExecutionProvider", "OpenVINOExecutionProvider")


def per_window_ms(runner, windows, repeats: int = 5) -> float:  # noqa: ANN001 - any runner
    runner.run(windows)  # warm
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        runner.run(windows)
        times.append((time.perf_counter() - t0) / len(windows) * 1e3)
    return statistics.median(times)


def main() -> int:
    import onnxruntime
    import torch

    from fusiond.models import load
    from fusiond.models.onnx import OnnxRunner, choose_providers
    from fusiond.models.runner import ModelRunner
    from fusiond.plugin import load_plugins
    from fusiond.testing import random_windows

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "demo/model.pt")
    parser.add_argument("--require-gpu", action="store_true")
    args = parser.parse_args()
    checkpoint, parts = load(args.model), load_plugins().parts
    print(f"onnxruntime {onnxruntime.__version__}: {onnxruntime.get_available_providers()}")
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(f"torch {torch.__version__}: CUDA device {cuda}")
    chosen = choose_providers("auto")
    found = [p for p in chosen if p in GPU]
    print(f'providers = "auto" chooses {chosen}')
    pairs = [
        ("onnxruntime " + "+".join(chosen), OnnxRunner(checkpoint, parts, providers="auto"),
         "onnxruntime CPU", OnnxRunner(checkpoint, parts, providers=["CPUExecutionProvider"])),
    ]  # fmt: skip
    if torch.cuda.is_available():
        found.append("torch cuda")
        pairs.append(
            (
                "torch cuda",
                ModelRunner(checkpoint, parts, "cuda"),
                "torch cpu",
                ModelRunner(checkpoint, parts, "cpu"),
            )
        )
    ok = True
    for name, runner, base_name, base in pairs:
        print(f"\n{name} against {base_name}")
        print(f"{'batch':>6} {'max |diff|':>11} {'ms/window':>10} {'CPU ms/window':>14}")
        for batch in BATCHES:
            windows = random_windows(checkpoint.spec, batch, seed=batch)
            diff = float(np.abs(runner.run(windows).probs - base.run(windows).probs).max())
            ok &= diff <= 1e-4
            print(
                f"{batch:>6} {diff:>11.2e} {per_window_ms(runner, windows):>10.3f} "
                f"{per_window_ms(base, windows):>14.3f}"
            )
    print(f"\nGPU provider found: {', '.join(found) or 'none'}; outputs within 1e-4: {'yes' if ok else 'NO'}")
    return 1 if args.require_gpu and not (found and ok) else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
