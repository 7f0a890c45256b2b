"""The pure core of the daemon: bus messages in, batches of closed windows out.

    pipeline = Pipeline.from_config(config, plugins.sources, card)
    pipeline.handle(frames, now_ns)           # every message, as it arrives
    for batch in pipeline.due(now_ns): ...    # whenever the clock moves
    for batch in pipeline.flush(now_ns): ...  # at the end of a recording

It owns stream resolution, ingest (checks and clock correction), one aligner per rig,
the batcher and the counters. It reads no clock and touches no socket, so the live
daemon, each ingest worker, ``run --replay``, ``fusiond train``'s window cutting,
``check-config`` and the benchmarks all run this same object.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from fusiond.align.spec import InputSpec
from fusiond.align.windows import RigAligner, Window, WindowConfig
from fusiond.batch import Batcher
from fusiond.bus.wire import ERROR_PREFIX, Frame, sample_topic
from fusiond.ingest import Ingest, Limits
from fusiond.metrics import Stats

if TYPE_CHECKING:
    from fusiond.config import Config
    from fusiond.models.card import ModelCard
    from fusiond.plugin.registry import SourceRegistry

__all__ = ["Pipeline", "resolve_streams", "Streams"]

Streams = Mapping[tuple[str, str], str]


def resolve_streams(
    config: Config, sources: SourceRegistry, spec: InputSpec, model_name: str = "the model"
) -> dict[tuple[str, str], str]:
    """``(rig, stream) -> modality`` for every source, checked against the model's inputs."""
    modalities = spec.modalities
    out: dict[tuple[str, str], str] = {}
    for rig, section in config.rigs.items():
        seen: dict[str, str] = {}
        for name, source in section.sources.items():
            cls = sources.get(source.kind)
            modality = source.modality or (cls.modality if cls else "")
            path = f"rigs.{rig}.sources.{name}.modality"
            if modality not in modalities:
                msg = f"model {model_name!r} has no {modality!r} input (it takes {sorted(modalities)})"
                raise config.error(msg, path)
            if modality in seen:
                msg = f"rig already has a {modality!r} source ({seen[modality]}); the model takes one"
                raise config.error(msg, path)
            seen[modality] = name
            out[rig, name] = modality
    return out


class Pipeline:
    """Ingest -> per-rig aligners -> batcher, with the counters they share."""

    def __init__(
        self,
        streams: Streams,
        spec: InputSpec,
        window: WindowConfig,
        *,
        stats: Stats | None = None,
        limits: Limits | None = None,
        rates: Mapping[tuple[str, str], float] | None = None,
        max_batch: int = 32,
        max_delay_ns: int = 5_000_000,
    ) -> None:
        """``streams`` maps ``(rig, stream)`` to its modality; ``rates`` overrides the
        message-rate limit of some streams."""
        self.streams = dict(streams)
        self.spec = spec
        self.window = window
        self.stats = stats if stats is not None else Stats()
        rigs = sorted({rig for rig, _ in self.streams})
        self.aligners = {
            rig: RigAligner(
                rig,
                {s: m for (r, s), m in self.streams.items() if r == rig},
                spec.modalities,
                window,
                self.stats.drops,
            )
            for rig in rigs
        }
        self.ingest = Ingest(self.aligners, self.streams, self.stats, limits, rates)
        self.batcher = Batcher(max_batch, max_delay_ns)

    @classmethod
    def from_config(
        cls,
        config: Config,
        sources: SourceRegistry,
        card: ModelCard,
        *,
        rigs: Collection[str] | None = None,
        stats: Stats | None = None,
    ) -> Pipeline:
        """The pipeline a config describes, for all its rigs or only ``rigs`` (one worker's share)."""
        streams = resolve_streams(config, sources, card.spec, card.name)
        if rigs is not None:
            streams = {key: m for key, m in streams.items() if key[0] in rigs}
        return cls(
            streams,
            card.spec,
            config.window.with_buffer(config.ingest),
            stats=stats,
            limits=config.ingest.limits(),
            rates=config.message_rates(),
            max_batch=config.model.max_batch,
            max_delay_ns=round(config.model.max_delay_ms * 1e6),
        )

    def topics(self) -> list[bytes]:
        """The topics to subscribe to: each stream's samples and source errors.

        Subscriptions travel upstream to every publisher, which then sends only what
        somebody subscribed to: a flood on any other topic, even another stream of a
        configured rig, is dropped by its publisher before it costs this process anything.
        (Subscriptions are never dropped: the sockets that carry them have no limit.)"""
        out = []
        for rig, stream in self.streams:
            out += [sample_topic(rig, stream).encode(), f"{ERROR_PREFIX}{rig}/{stream}".encode()]
        return out

    def handle(self, frames: Sequence[Frame], now_ns: int, topic: bytes | None = None) -> bool:
        """Take one sample message; False when it was dropped (and counted)."""
        return self.ingest.handle(frames, now_ns, topic)

    def close_windows(self, now_ns: int) -> list[Window]:
        """Close every window due at ``now_ns``, rig by rig (not batched: :meth:`due` batches)."""
        return list(self.closing(now_ns))

    def closing(self, now_ns: int) -> Iterator[Window]:
        """:meth:`close_windows` one rig at a time, so a caller can pass each rig's windows
        on while the next rig's are still being fitted."""
        for rig, aligner in self.aligners.items():
            windows = aligner.poll(now_ns)
            if aligner.next_index is not None:
                self.batcher.progress(rig, aligner.next_index)
            if windows:
                self.stats.last_window_ns = now_ns
            yield from windows

    def due(self, now_ns: int) -> list[list[Window]]:
        """Close what is due and return the batches ready at ``now_ns``."""
        for window in self.close_windows(now_ns):
            self.batcher.add(window, now_ns)
        batches = []
        while batch := self.batcher.take(now_ns):
            batches.append(batch)
        return batches

    def deadline_ns(self) -> int | None:
        """When the oldest waiting window must go (None when nothing waits)."""
        return self.batcher.deadline_ns()

    def flush(self, now_ns: int) -> list[list[Window]]:
        """The end of the data: close what is left as a quiet rig's windows close, batch all."""
        final = now_ns + self.window.length_ns + self.window.lateness_ns
        for window in self.close_windows(final):
            self.batcher.add(window, final)
        batches = []
        while batch := self.batcher.take(final, flush=True):
            batches.append(batch)
        return batches

    def masked(self) -> Counter[str]:
        """Windows published with each modality masked, over every rig."""
        total: Counter[str] = Counter()
        for aligner in self.aligners.values():
            total.update({k: v for k, v in aligner.stats.items() if k.startswith("masked:")})
        return total
