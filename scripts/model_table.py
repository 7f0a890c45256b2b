"""Measure every fusion strategy and every single-modality model on held-out data, clean
and with one modality missing or corrupted, and write the table into docs/models.md.

    python scripts/model_table.py --data .cache/data/train --test .cache/data/test
    python scripts/model_table.py --recipe demo/words.toml --table words-table \
        --data .cache/words/train --test .cache/words/test

Every model is trained by the code ``fusiond train`` runs, from the recipe (same
windows, split, seed and epochs), changing only the fusion strategy or the inputs. The
table replaces the one between ``<!-- TABLE:begin -->`` and ``<!-- TABLE:end -->``.
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
from fusiond.training.train import data_items, fit_recipe, prepare, with_vocab

STRATEGIES = ["early", "late", "intermediate", "gated", "attention", "agreement"]


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


def markdown(rows: dict[str, dict[str, float | None]], seconds: dict[str, float], columns: list[str],
             windows: dict[str, int]) -> str:  # fmt: skip
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
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=Path("demo/train.toml"))
    parser.add_argument("--data", type=Path, nargs="+", default=[Path(".cache/data/train")])
    parser.add_argument("--test", type=Path, nargs="+", default=[Path(".cache/data/test")])
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--doc", type=Path, default=Path("docs/models.md"))
    parser.add_argument("--table", default="model-table", help="the marker of the table in --doc")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level="INFO", format="%(asctime)s %(message)s")
    plugins = load_plugins()
    recipe = with_vocab(load_recipe(args.recipe, train_epochs=args.epochs), data_items(args.data), plugins)
    splits = prepare(recipe, data_items(args.data), plugins, data_items(args.test))
    modalities = list(recipe.inputs)
    columns = ["clean"] + [f"{m} {how}" for how in ("missing", "noisy", "swapped") for m in modalities]
    rows: dict[str, dict[str, float | None]] = {}
    seconds: dict[str, float] = {}
    for m in modalities:
        model, metrics = fit_recipe(recipe.only([m]), splits.select([m]), plugins)
        rows[f"{m} only"] = unimodal_row(model, splits.test.select([m]), m, modalities)
        seconds[f"{m} only"] = metrics["seconds"]
        print(f"{m} only: {rows[f'{m} only']}", flush=True)
    for strategy in STRATEGIES:
        model, metrics = fit_recipe(recipe.model_copy(update={"fusion": strategy}), splits, plugins)
        rows[strategy] = fusion_row(metrics["test"], modalities)
        seconds[strategy] = metrics["seconds"]
        print(f"{strategy}: {rows[strategy]}", flush=True)
    windows = {"train": len(splits.train), "test": len(splits.test)}
    table = markdown(rows, seconds, columns, windows)
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
