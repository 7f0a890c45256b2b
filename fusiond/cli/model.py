"""``fusiond train``, ``eval``, ``export``, ``plugins``: models and what they are built from."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from fusiond.errors import FusiondError

__all__ = ["cmd_eval", "cmd_export", "cmd_plugins", "cmd_train", "register"]

log = logging.getLogger("fusiond")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add this group's subcommands."""
    train = sub.add_parser(
        "train",
        help="train a model from labelled recordings",
        description="Train a model. DATA: .mcap recordings (labelled by X.labels.csv beside X.mcap "
        "unless --labels), folders of them, or a daemon config of file sources (with --labels). "
        "Windows are cut by the daemon's own aligner.",
    )
    train.add_argument("recipe", type=Path, help="the recipe TOML (inputs, encoders, fusion, [train])")
    train.add_argument("--data", type=Path, nargs="+", required=True)
    train.add_argument("--labels", type=Path, help="label CSV for every DATA item")
    train.add_argument("--test", type=Path, nargs="+", help="held-out data (default: split off DATA)")
    train.add_argument("--test-labels", type=Path)
    train.add_argument(
        "--val",
        type=Path,
        nargs="+",
        help="validation data: picks the best epoch and calibrates (default: split off DATA)",
    )
    train.add_argument("--val-labels", type=Path)
    train.add_argument("-o", "--output", type=Path, required=True, help="checkpoint to write")
    train.add_argument("--name", help="model name (default: the recipe's)")
    train.add_argument("--fusion", help="fusion strategy (default: the recipe's)")
    train.add_argument("--modalities", help="train on these inputs only, comma-separated")
    train.add_argument("--epochs", type=int)
    train.add_argument("--seed", type=int)
    train.add_argument("--device", help="auto (CUDA when present), cpu or cuda[:N]")
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser("eval", help="score a model on labelled data")
    evaluate.add_argument("model", type=Path)
    evaluate.add_argument("--data", type=Path, nargs="+", help="as for train (default: saved test scores)")
    evaluate.add_argument("--labels", type=Path)
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.add_argument("--report", type=Path, help="write report.json and confusion.png here")
    evaluate.add_argument("--device", default="auto")
    evaluate.set_defaults(func=cmd_eval)

    export = sub.add_parser("export", help="write a model as ONNX for onnxruntime")
    export.add_argument("model", type=Path)
    export.add_argument("--onnx", action="store_true", help="the format (the only one for now)")
    export.add_argument("-o", "--output", type=Path, help="default: MODEL.onnx beside the checkpoint")
    export.set_defaults(func=cmd_export)

    plugins = sub.add_parser("plugins", help="list source kinds and encoders, and their origin")
    plugins.add_argument("--json", action="store_true")
    plugins.set_defaults(func=cmd_plugins)


def cmd_train(args: argparse.Namespace) -> int:
    """Train a model from labelled recordings (or a config of file sources)."""
    from fusiond.plugin import load_plugins
    from fusiond.training.recipe import load_recipe
    from fusiond.training.train import data_items, summary_line, train

    plugins = load_plugins()  # first: a recipe may name a plugin's modality kind
    only = args.modalities.split(",") if args.modalities else None
    recipe = load_recipe(
        args.recipe,
        plugins.kinds,
        name=args.name,
        fusion=args.fusion,
        train_epochs=args.epochs,
        train_seed=args.seed,
        train_device=args.device,
    )
    if only:
        recipe = recipe.only(only)
    data = data_items(args.data, args.labels)
    test = data_items(args.test, args.test_labels) if args.test else []
    val = data_items(args.val, args.val_labels) if args.val else []
    log.info(
        "training %s (%s fusion of %s) on %d data item(s)",
        recipe.name,
        recipe.fusion,
        ", ".join(recipe.inputs),
        len(data),
    )
    trained = train(recipe, data, args.output, plugins, test=test, val=val, progress=_progress)
    metrics = trained.metrics
    if metrics["test"]:
        print(f"test: {summary_line(metrics['test'])}")
    print(
        f"wrote {args.output} ({trained.content_hash}); best epoch {metrics['best_epoch']}, "
        f"{metrics['seconds']:.0f} s on {metrics['device']}"
    )
    return 0


def _progress(line: Any) -> None:
    val = "" if line.val_score is None else f", validation {line.val_score:.3f}"
    print(f"epoch {line.epoch}/{line.epochs}: loss {line.loss:.4f}{val} ({line.seconds:.1f} s)", flush=True)


def cmd_eval(args: argparse.Namespace) -> int:
    """Score a model on labelled data, or show the scores it was saved with."""
    from fusiond.models import load
    from fusiond.plugin import load_plugins
    from fusiond.training.evaluate import confusion_png
    from fusiond.training.train import data_items, evaluate_checkpoint, summary_line

    plugins = load_plugins()  # first: a checkpoint may name a plugin's modality kind
    checkpoint = load(args.model, plugins.kinds)
    if args.data:
        data = data_items(args.data, args.labels)
        result = evaluate_checkpoint(checkpoint, data, plugins, args.device)
    else:
        result = dict(checkpoint.metrics.get("test") or {})
        if not result:
            msg = f"{args.model} carries no test scores; give --data"
            raise FusiondError(msg)
        result["model"] = {
            "name": checkpoint.name,
            "hash": checkpoint.content_hash,
            "fusion": checkpoint.fusion["name"],
        }
    if args.report:
        args.report.mkdir(parents=True, exist_ok=True)
        (args.report / "report.json").write_text(json.dumps(result, indent=2) + "\n")
        if "confusion" in result:
            confusion_png(result["confusion"], checkpoint.classes, args.report / "confusion.png")
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{checkpoint.name} ({checkpoint.content_hash}): {summary_line(result)}")
        if args.report:
            print(f"report in {args.report}/")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Write a checkpoint's model as ONNX, for ``[model] runtime = "onnx"``."""
    from fusiond.models import load
    from fusiond.models.export import export
    from fusiond.models.onnx import onnx_path
    from fusiond.plugin import load_plugins

    plugins = load_plugins()  # first: a checkpoint may name a plugin's modality kind
    checkpoint = load(args.model, plugins.kinds)
    out = args.output or onnx_path(args.model)
    export(checkpoint, plugins.parts, out)
    print(f"{out}: ONNX export of {checkpoint.name} ({checkpoint.content_hash})")
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    """List the source kinds, outputs, encoders, fusions and modality kinds found, and
    where each came from."""
    from fusiond.plugin import load_plugins

    plugins = load_plugins()
    rows = []
    for kind in plugins.sources:
        cls = plugins.sources.get(kind)
        assert cls is not None
        rows.append({"type": "source", "name": kind, "modality": cls.modality, "from": plugins.origin(cls)})
    for kind in plugins.outputs:
        output = plugins.outputs.get(kind)
        assert output is not None
        rows.append({"type": "output", "name": kind, "modality": "", "from": plugins.origin(output)})
    for name, module in plugins.encoders.modules().items():
        rows.append({"type": "encoder", "name": name, "modality": "", "from": plugins.origin(module)})
    for name, module in plugins.fusions.modules().items():
        rows.append({"type": "fusion", "name": name, "modality": "", "from": plugins.origin(module)})
    for name in plugins.kinds:
        origin = plugins.origin(type(plugins.kinds.get(name)))
        rows.append({"type": "kind", "name": name, "modality": "", "from": origin})
    for name, why in sorted(plugins.failures.items()):
        rows.append({"type": "failed", "name": name, "modality": "", "from": why})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"{'TYPE':<8} {'NAME':<14} {'MODALITY':<10} FROM")
        for row in rows:
            print(f"{row['type']:<8} {row['name']:<14} {row['modality'] or '-':<10} {row['from']}")
    return 0
