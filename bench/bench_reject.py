"""The reject option on the demo model: thresholds chosen on the validation windows for a
target accuracy (as ``fusiond train`` chooses them), and what they keep of each held-out
set, against the accuracy with nothing rejected.

    python bench/bench_reject.py [--model demo/model.pt] [--data .cache/data] [--target 0.99]

``--data`` holds the folders docs/models.md ("The demo model") says how to make: ``val``
for choosing, ``test``, ``voice`` and ``writers`` for scoring.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    from fusiond.models import load
    from fusiond.models.runner import pick_device
    from fusiond.plugin import load_plugins
    from fusiond.training.reject import choose, keeps, reject_inputs
    from fusiond.training.train import checkpoint_window, data_items, load_windows

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "demo/model.pt")
    parser.add_argument("--data", type=Path, default=ROOT / ".cache/data")
    parser.add_argument("--target", type=float, default=0.99)
    args = parser.parse_args()
    plugins = load_plugins()
    checkpoint = load(args.model)
    model, device = checkpoint.build(plugins.parts), pick_device("cpu")

    def scored(name: str):  # noqa: ANN202 - three arrays
        items = data_items([args.data / name])
        windows, _ = load_windows(
            items, checkpoint.spec, checkpoint_window(checkpoint), plugins, checkpoint.classes
        )
        return reject_inputs(model, windows, device)

    chosen = choose(*scored("val"), args.target)
    print(f"chosen on val for {args.target:g}: {json.dumps(chosen)}")
    print(f"{'set':<8} {'kept':>6} {'accuracy kept':>14} {'accuracy all':>13}")
    for name in ("test", "voice", "writers"):
        confidence, spread, right = scored(name)
        kept = keeps(confidence, spread, right, chosen["confidence"], chosen["disagreement"])
        print(f"{name:<8} {kept['coverage']:>6.1%} {kept['accuracy'] or 0:>14.3f} {right.mean():>13.3f}")


if __name__ == "__main__":
    main()
