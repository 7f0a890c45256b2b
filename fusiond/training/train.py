"""``fusiond train`` and ``fusiond eval``: data in, checkpoint and score sheet out."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fusiond import config as config_mod
from fusiond.align.fit import words
from fusiond.align.spec import InputSpec
from fusiond.align.windows import WindowConfig
from fusiond.bus.wire import decode_arrays, decode_sample_header
from fusiond.errors import ConfigError, WireError
from fusiond.models.checkpoint import Checkpoint, save
from fusiond.models.model import FusionModel
from fusiond.models.runner import pick_device
from fusiond.plugin import Plugins
from fusiond.training.anomaly import check_classes, evaluate_anomaly, fit_anomaly
from fusiond.training.data import (
    LabelRange,
    WindowSet,
    cut,
    first_capture_ns,
    label_windows,
    read_labels,
    recording_messages,
    recording_streams,
    split,
)
from fusiond.training.evaluate import calibrate, evaluate, headline
from fusiond.training.loop import Epoch, History, run_epochs, seed_everything
from fusiond.training.recipe import Recipe
from fusiond.training.reject import choose, curve, keeps, reject_inputs

__all__ = [
    "build",
    "checkpoint_window",
    "data_items",
    "DataItem",
    "evaluate_checkpoint",
    "fit_recipe",
    "LABELS_SUFFIX",
    "load_windows",
    "prepare",
    "Splits",
    "summary_line",
    "train",
    "Trained",
    "with_vocab",
]

log = logging.getLogger("fusiond.train")

LABELS_SUFFIX = ".labels.csv"


@dataclass(frozen=True)
class DataItem:
    """One piece of labelled data: a recording, or a daemon config of file sources."""

    path: Path
    labels: Path

    @property
    def is_config(self) -> bool:
        return self.path.suffix == ".toml"


def data_items(paths: Sequence[Path], labels: Path | None = None) -> list[DataItem]:
    """Recordings (``X.mcap`` labelled by ``X.labels.csv`` beside it, unless ``labels``
    is given), folders of recordings, and configs (which need ``labels``)."""
    items = []
    for path in paths:
        found = sorted(path.glob("*.mcap")) if path.is_dir() else [path]
        if path.is_dir() and not found:
            msg = f"no .mcap recordings in {path}"
            raise ConfigError(msg)
        for p in found:
            if not p.exists():
                msg = f"no such data: {p}"
                raise ConfigError(msg)
            if p.suffix == ".toml" and labels is None:
                msg = f"{p}: a config of file sources needs --labels"
                raise ConfigError(msg)
            sidecar = p.with_name(p.name.removesuffix(p.suffix) + LABELS_SUFFIX)
            items.append(DataItem(p, labels or sidecar))
    return items


def _labels(
    item: DataItem, messages: Callable[[], Any], origin: int | None, targets: Sequence[str]
) -> list[LabelRange]:
    try:
        with item.labels.open() as f:
            header = f.readline()
    except FileNotFoundError:
        msg = f"label file not found for {item.path}: {item.labels}"
        raise ConfigError(msg) from None
    if "start_ns" in header:
        origin = 0
    elif origin is None:
        origin = first_capture_ns(messages())
    return read_labels(item.labels, origin, targets)


def _messages(item: DataItem, plugins: Plugins) -> tuple[dict[tuple[str, str], str], int | None, Any]:
    """``(streams, origin, make_messages)`` for one item."""
    if item.is_config:
        from fusiond.training.files import file_messages

        config = config_mod.load(item.path)
        streams = {}
        for rig, section in config.rigs.items():
            for name, source in section.sources.items():
                cls = plugins.sources.get(source.kind)
                streams[rig, name] = source.modality or (cls.modality if cls else "")
        anchor, messages = file_messages(config, plugins)
        return streams, anchor, lambda: messages
    return recording_streams(item.path), None, lambda: recording_messages(item.path)


def load_windows(
    items: Sequence[DataItem],
    spec: InputSpec,
    window: WindowConfig,
    plugins: Plugins,
    classes: list[str] | None,
    targets: Sequence[str] = (),
) -> tuple[WindowSet, list[str]]:
    """Labelled windows of every item and the class list (found in the labels when not given)."""
    loaded: list[tuple[DataItem, Any, list[LabelRange]]] = []
    for item in items:
        streams, origin, messages = _messages(item, plugins)
        loaded.append((item, (streams, messages), _labels(item, messages, origin, targets)))
    if classes is None and not targets:
        classes = _sorted_labels({str(r.label) for _, _, rows in loaded for r in rows})
    parts, base = [], 0
    next_log = time.monotonic() + 5
    for n, (item, (streams, messages), rows) in enumerate(loaded, start=1):
        windows = cut(messages(), streams, spec, window)
        part = label_windows(windows, rows, spec, None if targets else classes, base)
        log.debug("%s: %d windows (%s)", item.path, len(part), dict(part.counts))
        if not len(part):
            log.warning(
                "%s: no window lies inside a labelled range of %s (%s); do the label "
                "times match the data's capture times?",
                item.path,
                item.labels,
                dict(part.counts),
            )
        if time.monotonic() >= next_log:
            log.info("cutting windows: %d/%d data items", n, len(loaded))
            next_log += 5
        parts.append(part)
        base += len(rows)
    joined = WindowSet.concat(parts)
    counts = ", ".join(f"{k} {v}" for k, v in sorted(joined.counts.items()))
    log.info("%d data item(s): %d labelled windows (%s)", len(items), len(joined), counts)
    return joined, list(classes or targets)


def _sorted_labels(labels: set[str]) -> list[str]:
    try:
        return sorted(labels, key=float)
    except ValueError:
        return sorted(labels)


def with_vocab(recipe: Recipe, data: Sequence[DataItem], plugins: Plugins) -> Recipe:
    """The recipe with each text input's (``tokens``) vocabulary filled in, unless it lists one:
    the ``vocab_size`` commonest words of that modality's text events in ``data`` (ties in
    alphabetical order, so the same data gives the same vocabulary). The vocabulary is
    part of the input spec: it travels in the checkpoint with the model."""
    wanted = {m: Counter[str]() for m, t in recipe.inputs.items() if t.kind_of.vocabulary and not t.vocab}
    if not wanted:
        return recipe
    for item in data:
        _, _, messages = _messages(item, plugins)
        for _, frames in messages():
            try:
                header = decode_sample_header(frames)
                if header.modality in wanted and header.buffers[0].encoding == "utf-8":
                    wanted[header.modality].update(words(str(decode_arrays(header, frames)[0][0])))
            except WireError:
                continue  # ingest counts it when the windows are cut
    inputs = dict(recipe.inputs)
    for modality, counts in wanted.items():
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: inputs[modality].vocab_size]
        if not ranked:
            msg = f"the data holds no words of modality {modality!r} to build its vocabulary from"
            raise ConfigError(msg, path=f"inputs.{modality}")
        inputs[modality] = inputs[modality].model_copy(update={"vocab": [w for w, _ in ranked]})
        log.info("inputs.%s: a vocabulary of %d words (of %d seen)", modality, len(ranked), len(counts))
    return recipe.model_copy(update={"inputs": inputs})


def build(recipe: Recipe, classes: list[str], plugins: Plugins) -> FusionModel:
    """The recipe's untrained model; encoders with pretrained weights read them now."""
    fusion = {"name": recipe.fusion, "args": dict(recipe.fusion_args)}
    model = FusionModel(
        recipe.spec,
        classes,
        recipe.encoders,
        fusion,
        plugins.parts,
        recipe.dim,
        recipe.task,
        recipe.modality_scores,
        recipe.anomaly.method,
    )
    for encoder in model.encoders.values():
        load = getattr(encoder, "load_pretrained", None)
        if callable(load):
            load()
    return model


@dataclass
class Trained:
    """What :func:`train` made."""

    model: FusionModel
    metrics: dict[str, Any]
    content_hash: str


@dataclass
class Splits:
    """Training, validation and test windows, and the class (or target) names."""

    train: WindowSet
    val: WindowSet
    test: WindowSet
    classes: list[str]

    def select(self, modalities: Sequence[str]) -> Splits:
        """The same windows with only some modalities (for a model over fewer inputs)."""
        train, val, test = (s.select(modalities) for s in (self.train, self.val, self.test))
        return Splits(train, val, test, self.classes)


def prepare(
    recipe: Recipe,
    data: Sequence[DataItem],
    plugins: Plugins,
    test: Sequence[DataItem] = (),
    val: Sequence[DataItem] = (),
) -> Splits:
    """Cut and label every item's windows, then split them (whole label ranges at a time).

    Validation and test windows come from ``val`` and ``test`` where given, else they are
    split off ``data``. Separate validation recordings (another session, another person,
    another sensor) make the best epoch and the calibration honest about data the model
    has not seen; windows split off the training recordings share their conditions.
    """
    started = time.monotonic()
    window = recipe.window.to_config()
    targets = recipe.targets if recipe.task == "regression" else ()
    windows, classes = load_windows(data, recipe.spec, window, plugins, recipe.classes or None, targets)
    options = recipe.train
    fractions = [0.0 if val else options.val_fraction, 0.0 if test else options.test_fraction]
    val_index, test_index, train_index = split(windows, fractions, options.seed)

    def own(items: Sequence[DataItem], index: Any) -> WindowSet:
        if not items:
            return windows.take(index)
        return load_windows(items, recipe.spec, window, plugins, classes, targets)[0]

    held_out = own(test, test_index)
    splits = Splits(windows.take(train_index), own(val, val_index), held_out, classes)
    log.info(
        "%d training, %d validation, %d test windows (%s validation, %s test data; cut in %.0f s)",
        len(splits.train),
        len(splits.val),
        len(held_out),
        "separate" if val else "split-off",
        "separate" if test else "split-off",
        time.monotonic() - started,
    )
    if len(splits.train) == 0:
        msg = "no labelled training windows: check the label file's times against the data (fusiond info)"
        raise ConfigError(msg)
    return splits


def fit_recipe(
    recipe: Recipe, splits: Splits, plugins: Plugins, progress: Callable[[Epoch], None] | None = None
) -> tuple[FusionModel, dict[str, Any]]:
    """Build the recipe's model, train it, and score it on the test windows."""
    started = time.monotonic()
    seed_everything(recipe.train.seed)  # the initial weights too
    model = build(recipe, splits.classes, plugins)
    seconds = recipe.window.length_ms / 1000
    augments = {m: (t.augmentations, t.length / seconds) for m, t in recipe.inputs.items()}
    device = pick_device(recipe.train.device)
    options = recipe.train
    if recipe.task == "anomaly":
        check_classes(recipe.anomaly.method, splits.classes, splits.train.targets)
        # Noise and swaps teach the encoders to overlook a broken sensor, which is what an
        # anomaly model must see: off unless the recipe asks for them.
        unset = {"modality_noise", "modality_swap"} - options.model_fields_set
        options = options.model_copy(update=dict.fromkeys(unset, 0.0))
    if recipe.task == "anomaly" and recipe.anomaly.method == "stats":
        history = History(device=str(device))  # nothing to train: the statistics are fixed
    else:
        history = run_epochs(model, splits.train, splits.val, options, headline, progress, augments)
    if recipe.task == "anomaly":
        chosen = fit_anomaly(model, splits.train, splits.val, recipe.anomaly.false_alarm, device)
        return model.cpu(), {
            "anomaly": chosen,
            "test": (
                evaluate_anomaly(model, splits.test, splits.classes, device) if len(splits.test) else {}
            ),
            "windows": {"train": len(splits.train), "validation": len(splits.val), "test": len(splits.test)},
            "best_epoch": history.best_epoch,
            "epochs": recipe.train.epochs if recipe.anomaly.method == "embedding" else 0,
            "seed": recipe.train.seed,
            "device": history.device,
            "seconds": round(time.monotonic() - started, 1),
        }
    temperatures = calibrate(model, splits.val, device)
    reject: dict[str, Any] = {}
    if model.task == "classification" and len(splits.val):
        reject = choose(*reject_inputs(model, splits.val, device), recipe.train.reject_target)
        if len(splits.test):  # what the thresholds chosen on validation keep of the test windows
            scored = reject_inputs(model, splits.test, device)
            reject["test"] = {
                **keeps(*scored, reject["confidence"], reject["disagreement"]),
                "curve": curve(*scored),
            }
    metrics: dict[str, Any] = {
        "test": evaluate(model, splits.test, device) if len(splits.test) else {},
        "validation": headline(model, splits.val, device) if len(splits.val) else None,
        "windows": {"train": len(splits.train), "validation": len(splits.val), "test": len(splits.test)},
        "best_epoch": history.best_epoch,
        "temperatures": temperatures,
        "reject": reject,
        "epochs": recipe.train.epochs,
        "seed": recipe.train.seed,
        "device": history.device,
        "amp": history.amp,
        "seconds": round(time.monotonic() - started, 1),
    }
    return model.cpu(), metrics


def train(
    recipe: Recipe,
    data: Sequence[DataItem],
    output: Path,
    plugins: Plugins,
    *,
    test: Sequence[DataItem] = (),
    val: Sequence[DataItem] = (),
    progress: Callable[[Epoch], None] | None = None,
) -> Trained:
    """Cut, split, train, score on the test windows and write the checkpoint."""
    recipe = with_vocab(recipe, data, plugins)
    splits = prepare(recipe, data, plugins, test, val)
    model, metrics = fit_recipe(recipe, splits, plugins, progress)
    window = recipe.window.to_config()
    window_meta = {
        "length_ns": window.length_ns,
        "hop_ns": window.hop_ns,
        "lateness_ns": window.lateness_ns,
        "min_coverage": window.min_coverage,
    }
    digest = save(
        model,
        output,
        name=recipe.name,
        encoders=recipe.encoders,
        fusion={"name": recipe.fusion, "args": dict(recipe.fusion_args)},
        dim=recipe.dim,
        window=window_meta,
        metrics=metrics,
        data_hash=splits.train.digest(),
    )
    return Trained(model, metrics, digest)


def checkpoint_window(checkpoint: Checkpoint) -> WindowConfig:
    """The window a checkpoint was trained on (defaults for what it does not say)."""
    base = config_mod.WindowSection().to_config()
    w = checkpoint.window
    return WindowConfig(
        length_ns=int(w.get("length_ns", base.length_ns)),
        hop_ns=int(w.get("hop_ns", base.hop_ns)),
        lateness_ns=int(w.get("lateness_ns", base.lateness_ns)),
        min_coverage=float(w.get("min_coverage", base.min_coverage)),
    )


def evaluate_checkpoint(
    checkpoint: Checkpoint,
    data: Sequence[DataItem],
    plugins: Plugins,
    device: str = "auto",
    window: WindowConfig | None = None,
) -> dict[str, Any]:
    """Score a checkpoint on labelled data, cut with the checkpoint's own window."""
    model = checkpoint.build(plugins.parts)
    if window is None:
        window = checkpoint_window(checkpoint)
    if checkpoint.task == "anomaly":  # every label, the normal ones and those never seen
        every, labels = load_windows(data, checkpoint.spec, window, plugins, None)
        result = evaluate_anomaly(model, every, labels, pick_device(device))
        result["model"] = {"name": checkpoint.name, "hash": checkpoint.content_hash}
        return result
    targets = checkpoint.classes if checkpoint.task == "regression" else ()
    windows, _ = load_windows(
        data, checkpoint.spec, window, plugins, None if targets else checkpoint.classes, targets
    )
    result = evaluate(model, windows, pick_device(device))
    if checkpoint.task == "classification":  # what saying "unknown" would keep, and how right
        scored = reject_inputs(model, windows, pick_device(device))
        chosen = checkpoint.metrics.get("reject") or {}
        result["reject"] = {"curve": curve(*scored)}
        if chosen:
            thresholds = {"confidence": chosen["confidence"], "disagreement": chosen["disagreement"]}
            result["reject"] |= thresholds | keeps(*scored, *thresholds.values())
    result["model"] = {
        "name": checkpoint.name,
        "hash": checkpoint.content_hash,
        "fusion": checkpoint.fusion["name"],
    }
    return result


def summary_line(metrics: dict[str, Any]) -> str:
    """One line of the headline figures of a score sheet."""
    if metrics.get("task") == "anomaly":
        return anomaly_line(metrics)
    if metrics.get("task") == "regression":
        head = f"MAE {metrics['mae']:.4g}, RMSE {metrics['rmse']:.4g}"
    else:
        head = f"accuracy {metrics['accuracy']:.3f}, macro F1 {metrics['macro_f1']:.3f}"
    parts = [f"{metrics.get('windows', 0)} windows: {head}"]
    for key in ("ablation", "noisy"):
        if key in metrics:
            parts.append(f"{key}: " + ", ".join(f"{m} {v:.3f}" for m, v in metrics[key].items()))
    reject = metrics.get("reject") or {}
    if reject.get("coverage") is not None:
        parts.append(
            f"reject (confidence < {reject['confidence']:g} or disagreement > {reject['disagreement']:g}): "
            f"keeps {reject['coverage']:.1%}, accuracy {reject['accuracy'] or 0:.3f} on what it keeps"
        )
    if reject.get("curve"):
        cells = ", ".join(
            f">={row['confidence']:g}: {row['coverage']:.0%} at {row['accuracy'] or 0:.3f}"
            for row in reject["curve"]
        )
        parts.append(f"coverage at accuracy by confidence: {cells}")
    return "; ".join(parts)


def anomaly_line(metrics: dict[str, Any]) -> str:
    """The headline figures of an anomaly model's score sheet."""
    cells = [
        f"{metrics['windows']} windows ({metrics['normal']} normal, {metrics['novel']} novel)",
        f"false alarms {_pct(metrics['false_alarm'])} at threshold {metrics['threshold']:g} (every modality)",
    ]
    if metrics.get("novel") and metrics.get("auroc") is not None:
        cells.append(f"detection {_pct(metrics['detection'])}, AUROC {metrics['auroc']:.3f}")
        cells.append(f"detection at 1% false alarms {_pct(metrics.get('detection_at_1pct'))}")
    if metrics.get("threshold_for_1pct") is not None:
        cells.append(f"1% of these normal windows score over {metrics['threshold_for_1pct']:g}")
    for modality, faults in (metrics.get("faults") or {}).items():
        row = ", ".join(
            f"{f} {_pct(v['detection'])} (share {v['contribution']:.2f})" for f, v in faults.items()
        )
        cells.append(f"{modality} broken: {row}")
    if metrics.get("missing"):
        cells.append(
            "false alarms with one missing: "
            + ", ".join(f"{m} {_pct(v)}" for m, v in metrics["missing"].items())
        )
    return "; ".join(cells)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"
