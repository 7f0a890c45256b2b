"""Anomaly models of the demo rig: trained on the digits 0-7 only, scored on the held-out
sets, where the 8s and 9s are novel. Prints, asserts nothing.

    python bench/bench_anomaly.py [--data .cache/data] [--epochs 10] [--methods embedding,stats]

Trains ``demo/anomaly.toml`` with each method (``--data`` holds the folders docs/models.md,
"The demo model", says how to make: ``train`` and ``val`` to train on, ``test``, ``voice``
and ``writers`` to score), then prints for each held-out set the windows, the false-alarm
rate at the model's threshold (chosen on ``val`` for 1 %), AUROC, the detection rate at
the model's threshold and at 1 % false alarms of that set, and for the test set each
modality's faults (zeros: a covered lens or a dead microphone; noise as strong as the
signal; frozen: the first value held) with the broken modality's mean share of the score.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    from fusiond.models import load
    from fusiond.plugin import load_plugins
    from fusiond.training.recipe import load_recipe
    from fusiond.training.train import data_items, evaluate_checkpoint, train

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / ".cache/data")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--methods", default="embedding,stats")
    args = parser.parse_args()
    plugins = load_plugins()
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods.split(","):
            recipe = load_recipe(ROOT / "demo/anomaly.toml", train_epochs=args.epochs)
            recipe = recipe.model_copy(
                update={"anomaly": recipe.anomaly.model_copy(update={"method": method})}
            )
            out = Path(tmp) / f"{method}.pt"
            trained = train(
                recipe,
                data_items([args.data / "train"]),
                out,
                plugins,
                val=data_items([args.data / "val"]),
            )
            chosen = trained.metrics["anomaly"]
            print(
                f"\n{method}: threshold {chosen['threshold']:.4g}, on val {chosen['validation_false_alarm']}"
            )
            heads = ("windows", "novel", "false alarms", "AUROC", "detected", "at 1% FA")
            print(f"{'set':<8} " + " ".join(f"{h:>{max(6, len(h))}}" for h in heads))
            checkpoint = load(out)
            for name in ("test", "voice", "writers"):
                sheet = evaluate_checkpoint(checkpoint, data_items([args.data / name]), plugins, "cpu")
                print(
                    f"{name:<8} {sheet['windows']:>7} {sheet['novel']:>6} {sheet['false_alarm']:>12.1%} "
                    f"{sheet['auroc']:>6.3f} {sheet['detection']:>8.1%} {sheet['detection_at_1pct']:>8.1%}"
                )
                if name == "test":
                    faults = sheet
            print(
                f"faults on the test set's normal windows ({faults['normal']}): detected (share of the score)"
            )
            for modality, row in faults["faults"].items():
                cells = "  ".join(
                    f"{fault} {v['detection']:>6.1%} ({v['contribution']:.2f})" for fault, v in row.items()
                )
                print(f"  {modality:<6} {cells}")
            missing = ", ".join(f"{m} {v:.1%}" for m, v in faults["missing"].items())
            print(f"false alarms with one modality missing: {missing}")


if __name__ == "__main__":
    main()
