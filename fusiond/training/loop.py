"""The training loop: AdamW with a one-cycle schedule, modality dropout, best-epoch weights.

Runs on CPU by default and on CUDA with mixed precision when there is a GPU. With the
same seed, data and device it gives the same model.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from fusiond.align.spec import InputSpec
from fusiond.models.model import FusionModel
from fusiond.models.runner import pick_device
from fusiond.training.data import WindowSet
from fusiond.training.recipe import TrainTable

__all__ = [
    "Augments",
    "Batch",
    "batches",
    "drop_modalities",
    "Epoch",
    "run_epochs",
    "head_loss",
    "History",
    "loss_fn",
    "other_class_rows",
    "perturb",
    "seed_everything",
    "to_device",
]

log = logging.getLogger(__name__)


@dataclass
class Epoch:
    """One line of progress."""

    epoch: int
    epochs: int
    loss: float
    val_score: float | None
    seconds: float


@dataclass
class History:
    """What :func:`fit` did."""

    epochs: list[Epoch] = field(default_factory=list)
    best_epoch: int = 0
    device: str = "cpu"
    amp: str = "off"


def seed_everything(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - third-party code may draw from it
    return torch.Generator().manual_seed(seed)


def batches(data: WindowSet, size: int, order: torch.Tensor | None = None) -> Iterator[np.ndarray]:
    index = order.numpy() if order is not None else np.arange(len(data))
    for i in range(0, len(index), size):
        yield np.sort(index[i : i + size])  # sorted: faster fancy indexing, same batch


def to_device(
    data: WindowSet, index: np.ndarray, device: torch.device, arrays: dict[str, np.ndarray] | None = None
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The windows at ``index`` as tensors on ``device`` (``arrays``: their inputs, changed)."""
    if arrays is None:
        arrays = {m: a[index] for m, a in data.inputs.items()}
    inputs = {m: torch.from_numpy(a).to(device, non_blocking=True) for m, a in arrays.items()}
    return inputs, torch.from_numpy(data.mask[index]).to(device)


def drop_modalities(mask: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """Hide each present modality with probability ``p``, keeping at least one per window."""
    if p <= 0 or mask.shape[1] < 2:
        return mask
    drop = torch.rand(mask.shape, generator=gen).to(mask.device) < p
    kept = mask & ~drop
    empty = ~kept.any(dim=1)
    return torch.where(empty.unsqueeze(1), mask, kept)


Batch = dict[str, np.ndarray]


Augments = Mapping[str, tuple[tuple[str, ...], float]]
"""Modality -> (augmentation names, sample rate of the input)."""


def perturb(
    spec: InputSpec,
    inputs: Batch,
    targets: np.ndarray | None,
    options: TrainTable,
    rng: np.random.Generator,
    augments: Augments | None = None,
) -> tuple[Batch, np.ndarray]:
    """A training batch changed by each modality's kind, and which inputs are still sound.

    Each input is augmented (``train.augment``); then each modality of each window is
    corrupted with probability ``train.modality_noise`` (noise as strong as the signal,
    or the kind's equivalent: a sensor gone bad) and, for a classifier, with probability
    ``train.modality_swap`` one modality of the window, chosen at random, is swapped for
    the same modality of a window of another class while the label stays (a sensor
    confidently wrong). One at most: the others still tell the truth, so the model
    learns to side with the majority, not only to distrust a modality that has gone
    silent. Returns the inputs and ``sound`` [B, M], False where an input was corrupted
    or swapped.
    """
    out = {}
    rows_in = len(next(iter(inputs.values())))
    sound = np.ones((rows_in, len(inputs)), bool)
    liar = np.where(rng.random(rows_in) < options.modality_swap, rng.integers(len(inputs), size=rows_in), -1)
    for j, (name, batch) in enumerate(inputs.items()):
        modality = spec.modalities[name]
        kind = modality.kind_of
        names, rate = (augments or {}).get(name, (kind.default_augment, 0.0))
        x = kind.augment(modality, batch, rng, names, rate) if options.augment else batch
        rows = rng.random(len(x)) < options.modality_noise
        if rows.any():
            x = x.copy() if x is batch else x
            x[rows] = kind.corrupt(modality, x[rows], rng)
            sound[rows, j] = False
        if targets is not None and targets.ndim == 1 and options.modality_swap > 0:
            donors = other_class_rows(targets, rng)
            swap = (liar == j) & (donors >= 0) & sound[:, j]
            if swap.any():
                x = x.copy() if x is batch else x
                x[swap] = batch[donors[swap]]
                sound[swap, j] = False
        out[name] = x
    return out, sound


def other_class_rows(targets: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each row, a random row of another class (-1 where the batch has none)."""
    out = np.full(len(targets), -1)
    for i, target in enumerate(targets):
        others = np.flatnonzero(targets != target)
        if len(others):
            out[i] = others[rng.integers(len(others))]
    return out


def head_loss(own: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each modality head on the windows where its input is present and sound."""
    if not valid.any():
        return own.sum() * 0.0
    logits = own[valid]  # [N, K]
    labels = target.unsqueeze(1).expand_as(valid)[valid]
    return nn.functional.cross_entropy(logits.float(), labels)


def loss_fn(model: FusionModel, out: torch.Tensor, target: torch.Tensor, smoothing: float) -> torch.Tensor:
    if model.task == "regression":
        return nn.functional.mse_loss(out.float(), target)
    return nn.functional.cross_entropy(out.float(), target, label_smoothing=smoothing)


def _autocast(device: torch.device, enabled: bool) -> tuple[torch.autocast, str]:
    if device.type != "cuda" or not enabled:
        return torch.autocast(device.type, enabled=False), "off"
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype), str(dtype).removeprefix("torch.")


def run_epochs(
    model: FusionModel,
    train: WindowSet,
    val: WindowSet | None,
    options: TrainTable,
    score: Callable[[FusionModel, WindowSet, torch.device], float],
    progress: Callable[[Epoch], None] | None = None,
    augments: Augments | None = None,
) -> History:
    """Train in place; the model ends with the weights of its best validation epoch
    (``score``, higher is better), or of the last epoch without validation data."""
    if len(train) == 0:
        msg = "no labelled training windows"
        raise ValueError(msg)
    gen = seed_everything(options.seed)
    rng = np.random.default_rng(options.seed)
    device = pick_device(options.device)
    model.to(device)
    autocast, amp = _autocast(device, options.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == "float16")
    optimizer = torch.optim.AdamW(model.parameters(), lr=options.lr, weight_decay=options.weight_decay)
    steps = options.epochs * -(-len(train) // options.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=options.lr, total_steps=steps)
    targets = torch.from_numpy(train.targets)
    history = History(device=str(device), amp=amp)
    best: tuple[float, dict[str, torch.Tensor]] | None = None
    for epoch in range(1, options.epochs + 1):
        started = time.monotonic()
        model.train()
        total = 0.0
        for index in batches(train, options.batch_size, torch.randperm(len(train), generator=gen)):
            classes = train.targets[index] if model.task != "regression" else None
            arrays, sound = perturb(
                model.spec, {m: a[index] for m, a in train.inputs.items()}, classes, options, rng, augments
            )
            inputs, mask = to_device(train, index, device, arrays)
            mask = drop_modalities(mask, options.modality_dropout, gen)
            target = targets[index].to(device)
            with autocast:
                out, own = model.forward_all(inputs, mask)
            loss = loss_fn(model, out, target, options.label_smoothing)
            if own is not None and options.head_weight > 0:
                valid = mask & torch.from_numpy(sound).to(device)
                loss = loss + options.head_weight * head_loss(own, target, valid)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
            scaler.step(optimizer)
            scaler.update()
            schedule.step()
            total += loss.item() * len(index)
        val_score = score(model, val, device) if val is not None and len(val) else None
        line = Epoch(epoch, options.epochs, total / len(train), val_score, time.monotonic() - started)
        history.epochs.append(line)
        if progress is not None:
            progress(line)
        # On a tie the later epoch wins: it has seen more data at a lower learning rate.
        if val_score is not None and (best is None or val_score >= best[0]):
            best = (val_score, copy.deepcopy(model.state_dict()))
            history.best_epoch = epoch
    if best is not None:
        model.load_state_dict(best[1])
    else:
        history.best_epoch = options.epochs
    return history
