"""Check the accelerated path on this machine: which execution providers onnxruntime and
torch find, whether their outputs equal the CPU's within 1e-4, and the cost per window at
batch 1, 32 and 256.

    python bench/gpu_check.py [--model demo/model.pt] [--require-gpu]

For each of onnxruntime with ``providers = "auto"`` (judged by the providers its session
really got, not those it asked for) and torch on ``cuda`` (when there), against the same
model on the CPU, on the same random windows. It exits 1 when an output differs, and
with ``--require-gpu`` also when onnxruntime runs on no GPU provider.
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
    if not args.model.is_file():
        print(f"no model at {args.model}", file=sys.stderr)
        return 2
    checkpoint, parts = load(args.model), load_plugins().parts
    print(f"onnxruntime {onnxruntime.__version__}: {onnxruntime.get_available_providers()}")
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(f"torch {torch.__version__}: CUDA device {cuda}")
    accelerated = OnnxRunner(checkpoint, parts, providers="auto")
    # What the session really got: onnxruntime-gpu lists CUDA without a GPU, then runs on the CPU.
    found = [p for p in accelerated.providers if p in GPU]
    print(
        f'providers = "auto" asks for {choose_providers("auto")}, and the session got {accelerated.providers}'
    )
    pairs = [
        ("onnxruntime " + "+".join(accelerated.providers), accelerated,
         "onnxruntime CPU", OnnxRunner(checkpoint, parts, providers=["CPUExecutionProvider"])),
    ]  # fmt: skip
    if torch.cuda.is_available():
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
            a, b = runner.run(windows), base.run(windows)
            diff = float(np.abs(a.probs - b.probs).max())
            if a.modality_probs is not None and b.modality_probs is not None:
                diff = max(diff, float(np.abs(a.modality_probs - b.modality_probs).max()))
            ok &= diff <= 1e-4
            print(
                f"{batch:>6} {diff:>11.2e} {per_window_ms(runner, windows):>10.3f} "
                f"{per_window_ms(base, windows):>14.3f}"
            )
    same = "yes" if ok else "NO"
    print(f"\nonnxruntime on a GPU provider: {', '.join(found) or 'no'}; outputs within 1e-4: {same}")
    if args.require_gpu and not found:
        print("--require-gpu: onnxruntime runs on no GPU provider", file=sys.stderr)
    if not ok:
        print("an output differs from the CPU's by more than 1e-4", file=sys.stderr)
    return 1 if (args.require_gpu and not found) or not ok else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
