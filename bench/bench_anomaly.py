"""Anomaly models of the demo rig: trained on the digits 0-7 only, scored on the held-out
sets, where the 8s and 9s are novel. Prints, asserts nothing.

    python bench/bench_anomaly.py [--data .cache/data] [--epochs 10] [--methods embedding,stats]
                                  [--noise-swap]

Trains ``demo/anomaly.toml`` with each method (``--data`` holds the folders docs/models.md,
"The demo model", says how to make: ``train`` and ``val`` to train on, ``test``, ``voice``
and ``writers`` to score), then prints for each held-out set the windows, the false-alarm
rate at the model's threshold (chosen on ``val`` for 1 %), AUROC, the detection rate at
the model's threshold and at 1 % false alarms of that set, and for the test set each
modality's faults (zeros: a covered lens or a dead microphone; noise as strong as the
signal; frozen: the first value held) with the broken modality's mean share of the score.
For ``embedding`` it also prints the test set's AUROC with the score's modality part
alone, without the fused classifier's doubt. ``--noise-swap`` trains as the demo
classifier does, with ``modality_noise = 0.15`` and ``modality_swap = 0.1`` (an anomaly
recipe leaves both off).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    import numpy as np
    import torch

    from fusiond.models import load
    from fusiond.models.anomaly import SCORE
    from fusiond.plugin import load_plugins
    from fusiond.training.anomaly import auroc, features
    from fusiond.training.recipe import load_recipe
    from fusiond.training.train import checkpoint_window, data_items, evaluate_checkpoint, load_windows, train

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / ".cache/data")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--methods", default="embedding,stats")
    parser.add_argument(
        "--noise-swap", action="store_true", help="train with the classifier's noise and swaps"
    )
    args = parser.parse_args()
    plugins = load_plugins()
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods.split(","):
            recipe = load_recipe(ROOT / "demo/anomaly.toml", train_epochs=args.epochs)
            recipe = recipe.model_copy(
                update={"anomaly": recipe.anomaly.model_copy(update={"method": method})}
            )
            if args.noise_swap:
                noisy = recipe.train.model_copy(update={"modality_noise": 0.15, "modality_swap": 0.1})
                noisy.model_fields_set.update({"modality_noise", "modality_swap"})
                recipe = recipe.model_copy(update={"train": noisy})
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
            if method == "embedding":  # the modality part of the score alone
                model = checkpoint.build(plugins.parts)
                window = checkpoint_window(checkpoint)
                data, labels = load_windows(
                    data_items([args.data / "test"]), checkpoint.spec, window, plugins, None
                )
                novel = np.array([labels[t] not in checkpoint.classes for t in data.targets])
                assert model.anomaly is not None
                with torch.inference_mode():
                    found = torch.from_numpy(features(model, data, torch.device("cpu"))).float()
                    own = model.anomaly(found, torch.from_numpy(data.mask))[:, SCORE].numpy()
                print(
                    f"test AUROC without the fused classifier's doubt: {auroc(own[~novel], own[novel]):.3f}"
                )


if __name__ == "__main__":
    main()
