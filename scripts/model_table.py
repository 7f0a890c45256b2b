"""Measure every fusion strategy and every single-modality model on held-out data, clean
and with one modality missing or corrupted, and write the table into docs/models.md.

    python scripts/model_table.py --data .cache/data/train --val .cache/data/val --test .cache/data/test \
        --held-out "real voice=.cache/data/voice" "other writers=.cache/data/writers"
    python scripts/model_table.py --recipe demo/words.toml --table words-table \
        --data .cache/words/train --test .cache/words/test

Every model is trained by the code ``fusiond train`` runs, from the recipe (same
windows, split, seed and epochs), changing only the fusion strategy or the inputs. The
single-modality models all use ``--single-fusion`` (intermediate: over one modality,
the encoder, two residual layers and a head), whatever the recipe's strategy, so the
baseline does not change with it: decision-level strategies reduce to a linear head. The
table replaces the one between ``<!-- TABLE:begin -->`` and ``<!-- TABLE:end -->``.
Each ``--held-out NAME=PATH`` adds a column: the clean accuracy on recordings that neither
training nor the choice of model ever sees (real data, see make_training_data.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from pathlib import Path
from typing import Any

import torch

from fusiond.plugin import load_plugins
from fusiond.training.evaluate import corrupt, headline, swapped
from fusiond.training.recipe import load_recipe
from fusiond.training.train import data_items, fit_recipe, load_windows, prepare, with_vocab

STRATEGIES = ["early", "late", "intermediate", "gated", "attention", "agreement", "consensus"]


def unimodal_row(model: Any, test: Any, modality: str, all_modalities: list[str]) -> dict[str, float | None]:
    device = torch.device("cpu")
    clean = headline(model, test, device)
    row: dict[str, float | None] = {"clean": clean}
    noisy = headline(model, corrupt(test, model.spec, modality), device)
    wrong = headline(model, swapped(test, modality), device)
    for m in all_modalities:
        row[f"{m} missing"] = None if m == modality else clean
        row[f"{m} noisy"] = noisy if m == modality else clean
        row[f"{m} swapped"] = wrong if m == modality else clean
    return row


def fusion_row(metrics: dict[str, Any], all_modalities: list[str]) -> dict[str, float | None]:
    row: dict[str, float | None] = {"clean": metrics["accuracy"]}
    for m in all_modalities:
        row[f"{m} missing"] = metrics["ablation"][m]
        row[f"{m} noisy"] = metrics["noisy"][m]
        row[f"{m} swapped"] = metrics["swapped"][m]
    return row


def markdown(
    rows: dict[str, dict[str, float | None]],
    seconds: dict[str, float],
    columns: list[str],
    windows: dict[str, int],
    held_out: list[str],
) -> str:
    best_single = {c: max((v[c] or 0.0) for k, v in rows.items() if k.endswith(" only")) for c in columns}
    lines = [
        f"Held-out accuracy ({windows['test']} test windows; {windows['train']} training windows). "
        "Bold: a fusion model above the best single-modality model in that column.",
        "",
        "| model | " + " | ".join(columns) + " | train s |",
        "| --- | " + " | ".join("---:" for _ in columns) + " | ---: |",
    ]
    for name, row in rows.items():
        cells = []
        for c in columns:
            v = row[c]
            if v is None:
                cells.append("no input")
            elif not name.endswith(" only") and v > best_single[c]:
                cells.append(f"**{v:.3f}**")
            else:
                cells.append(f"{v:.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {seconds[name]:.0f} |")
    lines += ["", verdict(rows, [c for c in columns if c not in held_out], best_single)]
    return "\n".join(lines)


Rows = dict[str, dict[str, float | None]]


def verdict(rows: Rows, columns: list[str], best_single: dict[str, float]) -> str:
    """The rule for the default model: no column below the best single-modality model.
    Names the fusion models that keep it or, if none does, the one that falls least far.
    The held-out real data take no part: they are for reporting, never for choosing."""
    shortfall = {}
    for name, row in rows.items():
        if not name.endswith(" only"):
            gaps = {c: best_single[c] - (row[c] or 0.0) for c in columns}
            worst = max(gaps, key=lambda c: gaps[c])
            shortfall[name] = (gaps[worst], worst)
    keep = [name for name, (gap, _) in shortfall.items() if gap <= 0]
    if keep:
        return "Never below the best single-modality model, in any column: " + ", ".join(keep) + "."
    name, (gap, column) = min(shortfall.items(), key=lambda item: item[1][0])
    return (
        f"No fusion model stays at or above the best single-modality model in every column. "
        f"The one that falls least far: {name}, {gap:.3f} below it in '{column}'."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=Path("demo/train.toml"))
    parser.add_argument("--data", type=Path, nargs="+", default=[Path(".cache/data/train")])
    parser.add_argument("--test", type=Path, nargs="+", default=[Path(".cache/data/test")])
    parser.add_argument("--val", type=Path, nargs="*", default=[], help="default: split off --data")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--doc", type=Path, default=Path("docs/models.md"))
    parser.add_argument("--table", default="model-table", help="the marker of the table in --doc")
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--single-fusion",
        default="intermediate",
        help="the strategy of the single-modality models, whatever the recipe's",
    )
    parser.add_argument(
        "--held-out",
        nargs="*",
        default=[],
        metavar="NAME=PATH",
        help="a column of clean accuracy on these recordings",
    )
    args = parser.parse_args()
    named_paths = {}
    for entry in args.held_out:  # checked now, before minutes of cutting windows
        name, _, path = entry.partition("=")
        if not name or not path or name in named_paths:
            parser.error(f"--held-out {entry!r}: expected NAME=PATH, each NAME once")
        named_paths[name] = Path(path)
    logging.basicConfig(level="INFO", format="%(asctime)s %(message)s")
    plugins = load_plugins()
    recipe = with_vocab(load_recipe(args.recipe, train_epochs=args.epochs), data_items(args.data), plugins)
    splits = prepare(recipe, data_items(args.data), plugins, data_items(args.test), data_items(args.val))
    modalities = list(recipe.inputs)
    columns = ["clean"] + [f"{m} {how}" for how in ("missing", "noisy", "swapped") for m in modalities]
    held_out = {}
    window = recipe.window.to_config()
    for name, path in named_paths.items():
        held_out[name], _ = load_windows(data_items([path]), recipe.spec, window, plugins, splits.classes)
        columns.append(name)
    device = torch.device("cpu")
    rows: dict[str, dict[str, float | None]] = {}
    seconds: dict[str, float] = {}
    for m in modalities:
        alone = recipe.only([m]).model_copy(update={"fusion": args.single_fusion})
        model, metrics = fit_recipe(alone, splits.select([m]), plugins)
        rows[f"{m} only"] = unimodal_row(model, splits.test.select([m]), m, modalities)
        for name, windows in held_out.items():
            rows[f"{m} only"][name] = headline(model, windows.select([m]), device)
        seconds[f"{m} only"] = metrics["seconds"]
        print(f"{m} only: {rows[f'{m} only']}", flush=True)
    for strategy in STRATEGIES:
        model, metrics = fit_recipe(recipe.model_copy(update={"fusion": strategy}), splits, plugins)
        rows[strategy] = fusion_row(metrics["test"], modalities)
        for name, windows in held_out.items():
            rows[strategy][name] = headline(model, windows, device)
        seconds[strategy] = metrics["seconds"]
        print(f"{strategy}: {rows[strategy]}", flush=True)
    windows = {"train": len(splits.train), "test": len(splits.test)}
    table = markdown(rows, seconds, columns, windows, list(held_out))
    print(table)
    out = args.json or Path(f".cache/{args.table}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "seconds": seconds, "windows": windows}, indent=2))
    begin, end = f"<!-- {args.table}:begin -->", f"<!-- {args.table}:end -->"
    text = args.doc.read_text()
    if begin in text:
        text = re.sub(re.escape(begin) + ".*?" + re.escape(end), f"{begin}\n{table}\n{end}", text, flags=re.S)
        args.doc.write_text(text)
        print(f"updated {args.doc}")


if __name__ == "__main__":
    main()
