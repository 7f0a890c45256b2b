"""Labelled windows: bus messages -> the daemon's ingest and aligner -> arrays to train on.

Messages come from an MCAP recording of the bus or from a config's file sources read
offline (fusiond/training/files.py); either way they pass through the same
:class:`~fusiond.ingest.Ingest` (clock correction included) and
:class:`~fusiond.align.windows.RigAligner` as in the running daemon, so a model is trained
on exactly the windows it will be served.

A label file is CSV with a header: ``label`` (classification) or one column per target
(regression), and either ``start_s,end_s`` (seconds from the first sample of the data)
or ``start_ns,end_ns`` (capture time, realtime ns); an optional ``rig`` column limits a
row to one rig. A window is used when it lies wholly inside one row's range; windows
across a boundary, or outside every range, are left out.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fusiond.align.spec import InputSpec
from fusiond.align.windows import Window, WindowConfig
from fusiond.bus.wire import SAMPLE_PREFIX, decode_header
from fusiond.errors import ConfigError, FusiondError
from fusiond.pipeline import Pipeline

__all__ = [
    "cut",
    "first_capture_ns",
    "label_windows",
    "LabelRange",
    "Message",
    "read_labels",
    "recording_messages",
    "recording_streams",
    "split",
    "WindowSet",
]

log = logging.getLogger(__name__)

Message = tuple[int, Sequence[bytes | memoryview]]


@dataclass(frozen=True, slots=True)
class LabelRange:
    """One row of a label file, on the capture clock."""

    start_ns: int
    end_ns: int
    label: str | tuple[float, ...]
    rig: str | None = None


@dataclass
class WindowSet:
    """Labelled windows as arrays, modalities in spec order.

    ``groups[i]`` numbers the label range window ``i`` came from: windows of one range
    overlap each other, so splits keep a group together (see :func:`split`).
    """

    modalities: list[str]
    inputs: dict[str, np.ndarray]
    mask: np.ndarray  # [N, M] bool
    targets: np.ndarray  # [N] int64 class indices, or [N, K] float32 values
    groups: np.ndarray  # [N] int64
    counts: Counter[str] = field(default_factory=Counter)
    """What happened to the windows: used, unlabelled, across_boundary, all_missing."""

    def __len__(self) -> int:
        return len(self.targets)

    def take(self, index: np.ndarray) -> WindowSet:
        return WindowSet(
            self.modalities,
            {m: a[index] for m, a in self.inputs.items()},
            self.mask[index],
            self.targets[index],
            self.groups[index],
        )

    def select(self, modalities: Sequence[str]) -> WindowSet:
        """Only some modalities, in the given order."""
        cols = [self.modalities.index(m) for m in modalities]
        return WindowSet(
            list(modalities),
            {m: self.inputs[m] for m in modalities},
            self.mask[:, cols],
            self.targets,
            self.groups,
        )

    def digest(self) -> str:
        """Hash of the inputs, mask and targets: the ``data_hash`` of a checkpoint."""
        h = hashlib.sha256()
        for m in self.modalities:
            h.update(np.ascontiguousarray(self.inputs[m]).data)
        h.update(self.mask.data)
        h.update(np.ascontiguousarray(self.targets).data)
        return h.hexdigest()[:16]

    @staticmethod
    def concat(parts: Sequence[WindowSet]) -> WindowSet:
        first = parts[0]
        counts: Counter[str] = Counter()
        for p in parts:
            counts.update(p.counts)
        return WindowSet(
            first.modalities,
            {m: np.concatenate([p.inputs[m] for p in parts]) for m in first.modalities},
            np.concatenate([p.mask for p in parts]),
            np.concatenate([p.targets for p in parts]),
            np.concatenate([p.groups for p in parts]),
            counts,
        )


def read_labels(path: Path, origin_ns: int, targets: Sequence[str] = ()) -> list[LabelRange]:
    """A label file's rows; ``start_s``/``end_s`` count from ``origin_ns``."""
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        msg = f"label file not found: {path}"
        raise ConfigError(msg) from None
    out = []
    for line, row in enumerate(rows, start=2):
        try:
            if "start_ns" in row:
                start, end = int(row["start_ns"]), int(row["end_ns"])
            else:
                start = origin_ns + round(float(row["start_s"]) * 1e9)
                end = origin_ns + round(float(row["end_s"]) * 1e9)
            label: str | tuple[float, ...]
            label = tuple(float(row[t]) for t in targets) if targets else row["label"].strip()
        except (KeyError, TypeError, ValueError) as exc:
            columns = ", ".join(targets) if targets else "label"
            msg = (
                f"line {line}: needs start_s,end_s (or start_ns,end_ns) and {columns} "
                f"({type(exc).__name__}: {exc}; row {row})"
            )
            raise ConfigError(msg, source=str(path)) from None
        if end <= start:
            msg = f"line {line}: the range ends before it starts ({row})"
            raise ConfigError(msg, source=str(path))
        out.append(LabelRange(start, end, label, (row.get("rig") or "").strip() or None))
    if not out:
        msg = "no label rows"
        raise ConfigError(msg, source=str(path))
    return out


def recording_messages(path: Path) -> Iterator[Message]:
    """A recording's sample messages, handed over at their recorded receive time."""
    from fusiond.recording import read

    for rec in read(path, [SAMPLE_PREFIX]):
        yield rec.log_time_ns, rec.frames


def recording_streams(path: Path) -> dict[tuple[str, str], str]:
    """``(rig, stream) -> modality`` of every sample stream in a recording."""
    from fusiond.recording.mcapfile import channel_metadata

    out: dict[tuple[str, str], str] = {}
    channels = channel_metadata(path) or {}
    for topic, meta in channels.items():
        if topic.startswith(SAMPLE_PREFIX) and {"rig", "stream", "modality"} <= meta.keys():
            out[meta["rig"], meta["stream"]] = meta["modality"]
    if out:
        return out
    for _, frames in recording_messages(path):
        try:
            header = decode_header(frames)
            out.setdefault((header["rig"], header["stream"]), header["modality"])
        except (FusiondError, KeyError, TypeError):
            continue  # ingest counts it as malformed
    if not out:
        msg = f"{path} holds no sensor samples"
        raise FusiondError(msg)
    return out


def cut(
    messages: Iterable[Message],
    streams: dict[tuple[str, str], str],
    spec: InputSpec,
    window: WindowConfig,
) -> Iterator[Window]:
    """Every window the daemon would close over these messages, in processing order.

    Streams of a modality the model does not take are left out, as the daemon would
    refuse them; a rig may have at most one stream per modality.
    """
    used: dict[tuple[str, str], str] = {}
    for (rig, stream), modality in sorted(streams.items()):
        if modality not in spec.modalities:
            continue
        other = next((s for (r, s), m in used.items() if r == rig and m == modality), None)
        if other is not None:
            msg = f"rig {rig} has two {modality!r} streams ({other}, {stream}); the model takes one"
            raise FusiondError(msg)
        used[rig, stream] = modality
    if not used:
        found = sorted(set(streams.values()))
        msg = f"no stream of the model's modalities {list(spec.modalities)} (found {found})"
        raise FusiondError(msg)
    pipeline = Pipeline(used, spec, window)
    now = 0
    for now, frames in messages:
        if frames and bytes(frames[0][:2]) == SAMPLE_PREFIX.encode() and _configured(frames, used):
            pipeline.handle(frames, now)
        yield from pipeline.close_windows(now)
    yield from pipeline.close_windows(now + window.length_ns + window.lateness_ns)
    if pipeline.stats.drops:
        log.debug("while cutting windows: %s", dict(pipeline.stats.drops))


def _configured(frames: Sequence[bytes | memoryview], used: dict[tuple[str, str], str]) -> bool:
    # Streams the model does not take are skipped before ingest, so they are not counted
    # as drops. The topic is s/<rig>/<stream>.
    parts = bytes(frames[0]).decode(errors="replace").split("/")
    return len(parts) == 3 and (parts[1], parts[2]) in used


def label_windows(
    windows: Iterable[Window],
    labels: Sequence[LabelRange],
    spec: InputSpec,
    classes: Sequence[str] | None,
    group_base: int = 0,
) -> WindowSet:
    """Keep the windows that lie inside one label range; ``classes=None`` for regression."""
    modalities = list(spec.modalities)
    ranges = sorted(enumerate(labels), key=lambda r: r[1].start_ns)
    starts = np.array([r.start_ns for _, r in ranges], np.int64)
    inputs: dict[str, list[np.ndarray]] = {m: [] for m in modalities}
    mask: list[list[bool]] = []
    targets: list[int | str | tuple[float, ...]] = []
    groups: list[int] = []
    counts: Counter[str] = Counter()
    index = {c: i for i, c in enumerate(classes)} if classes is not None else {}
    for w in windows:
        hit = _range_of(w, ranges, starts)
        if hit is None:
            counts["unlabelled"] += 1
            continue
        if hit < 0:
            counts["across_boundary"] += 1
            continue
        row = labels[hit]
        if not any(w.present.values()):
            counts["all_missing"] += 1
            continue
        if classes is not None:
            if not isinstance(row.label, str) or row.label not in index:
                counts["unknown_class"] += 1
                continue
            targets.append(index[row.label])
        else:
            targets.append(row.label)
        for m in modalities:
            inputs[m].append(w.inputs[m])
        mask.append([w.present[m] for m in modalities])
        groups.append(group_base + hit)
        counts["used"] += 1
    n = len(targets)
    return WindowSet(
        modalities,
        {
            m: np.stack(v) if n else np.zeros((0, *spec.modalities[m].shape), spec.modalities[m].dtype)
            for m, v in inputs.items()
        },
        np.array(mask, bool).reshape(n, len(modalities)),
        np.array(targets, np.int64) if classes is not None else np.array(targets, np.float32).reshape(n, -1),
        np.array(groups, np.int64),
        counts,
    )


def _range_of(w: Window, ranges: list[tuple[int, LabelRange]], starts: np.ndarray) -> int | None:
    """Index of the range holding the window; -1 if it straddles a boundary; None if none."""
    i = int(np.searchsorted(starts, w.start_ns, side="right")) - 1
    overlap = False
    for j in (i, i + 1):
        if not 0 <= j < len(ranges):
            continue
        k, r = ranges[j]
        if r.rig is not None and r.rig != w.rig:
            continue
        if r.start_ns <= w.start_ns and w.end_ns <= r.end_ns:
            return k
        if r.start_ns < w.end_ns and w.start_ns < r.end_ns:
            overlap = True
    return -1 if overlap else None


def first_capture_ns(messages: Iterable[Message]) -> int:
    """The earliest capture time among the messages (the origin of ``start_s``)."""
    first = None
    for _, frames in messages:
        try:
            t = int(decode_header(frames)["t_ns"])
        except (FusiondError, KeyError, TypeError, ValueError):
            continue
        first = t if first is None else min(first, t)
    if first is None:
        msg = "the data holds no sensor samples"
        raise FusiondError(msg)
    return first


def split(data: WindowSet, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Window indices for each fraction (and the rest, last), whole groups at a time.

    Windows of one label range overlap, so they never land on both sides. For
    classification the groups of every class are split separately (stratified).
    """
    rng = np.random.default_rng(seed)
    keys = data.targets if data.targets.ndim == 1 else np.zeros(len(data), np.int64)
    parts: list[list[int]] = [[] for _ in range(len(fractions) + 1)]
    for key in np.unique(keys):
        groups = np.unique(data.groups[keys == key])
        rng.shuffle(groups)
        bounds = np.cumsum([round(f * len(groups)) for f in fractions])
        for part, chosen in enumerate(np.split(groups, bounds)):
            parts[part].extend(chosen.tolist())
    return [np.flatnonzero(np.isin(data.groups, p)) for p in parts]
