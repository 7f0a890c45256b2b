"""Helpers for testing plugins and programs that use fusiond (as ``tox.pytest`` does for tox).

* :class:`FakeSource` -- a source kind (``fake``) that publishes a known ramp, so a test
  can check what comes out of the bus or the aligner.
* :func:`bus_pair` -- a connected PUB/SUB pair on inproc, to feed or read messages.
* :func:`tiny_model` -- writes a small untrained checkpoint for any input spec.
* :func:`write_recording` and :func:`write_labels` -- a labelled MCAP recording of
  arrays you choose, as ``fusiond record`` would have written it, for ``fusiond train``.

Register the fake kind with ``load_plugins(extra=[fusiond.testing])``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zmq

from fusiond.align.spec import InputSpec, ModalitySpec
from fusiond.align.windows import Window
from fusiond.bus.sockets import Sockets
from fusiond.plugin import SourceRegistry, hookimpl
from fusiond.sources import Block, Source, SourceConfig, StreamInfo
from fusiond.training.streams import RecordedStream

if TYPE_CHECKING:
    from fusiond.align.kinds import ModalityKind
    from fusiond.models.model import Parts

__all__ = [
    "bus_pair",
    "example_spec",
    "FakeConfig",
    "FakeSource",
    "fusiond_add_sources",
    "random_windows",
    "RecordedText",
    "tiny_model",
    "write_labels",
    "write_recording",
]


class FakeConfig(SourceConfig):
    """Options of the ``fake`` kind."""

    rate_hz: float = 100.0
    block: int = 10
    channels: int = 1
    count: int | None = None
    """Stop after this many messages (default: run until stopped)."""


class FakeSource(Source[FakeConfig]):
    """Publishes float32 blocks whose values are the sample index: 0, 1, 2, ..."""

    kind = "fake"
    modality = "imu"
    Config = FakeConfig

    def open(self) -> StreamInfo:
        cfg = self.config
        return StreamInfo(cfg.rate_hz, f"fake ramp at {cfg.rate_hz:g} Hz, {cfg.channels} ch")

    def read(self) -> Iterator[Block]:
        cfg = self.config
        start = time.time_ns()
        sent = 0
        while cfg.count is None or sent < cfg.count:
            first = sent * cfg.block
            t_ns = start + round(first * 1e9 / cfg.rate_hz)
            if not self.context.sleep_until(t_ns + round(cfg.block * 1e9 / cfg.rate_hz)):
                return
            ramp = np.arange(first, first + cfg.block, dtype=np.float32)
            yield Block(np.repeat(ramp[:, None], cfg.channels, axis=1), t_ns)
            sent += 1


@hookimpl
def fusiond_add_sources(registry: SourceRegistry) -> None:
    """Register the fake kind."""
    registry.add(FakeSource)


@contextmanager
def bus_pair(topic: bytes = b"") -> Iterator[tuple[zmq.Socket[bytes], zmq.Socket[bytes]]]:
    """``(pub, sub)`` connected over inproc, ``sub`` subscribed to ``topic``."""
    with Sockets() as sockets:
        # Over inproc, a SUB that binds never hears back from a later PUB: the PUB binds.
        endpoint = f"inproc://fusiond-testing-{id(sockets)}"
        pub = sockets.publisher(endpoint, bind=True)
        sub = sockets.subscriber(endpoint, [topic])
        time.sleep(0.05)  # the subscription reaches the publisher
        yield pub, sub


def random_windows(spec: InputSpec, count: int, seed: int = 0, rig: str = "r") -> list[Window]:
    """``count`` closed windows of random inputs for ``spec``, some modalities masked."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        inputs = {name: s.kind_of.random(s, 1, rng)[0] for name, s in spec.modalities.items()}
        present = {name: bool(rng.random() > 0.2) or j == 0 for j, name in enumerate(spec.modalities)}
        start = i * 500_000_000
        out.append(Window(rig, i, start, start + 10**9, inputs, present, "complete", 0, 0))
    return out


def example_spec(kind: ModalityKind) -> ModalitySpec:
    """A small spec of ``kind`` (its :meth:`~fusiond.align.kinds.ModalityKind.example`
    fields), for a test that goes through every kind of ``load_plugins().kinds``."""
    return ModalitySpec(kind.name, **kind.example(), kind_of=kind)


def tiny_model(
    path: Path,
    spec: InputSpec | None = None,
    classes: list[str] | None = None,
    fusion: str = "attention",
    seed: int = 0,
    modality_heads: bool = False,
    parts: Parts | None = None,
) -> str:
    """Write an untrained checkpoint with small encoders (and a head per modality, if
    asked); returns its content hash. ``parts``: the encoders and fusions to build from
    (default: the installed plugins', ``load_plugins().parts``), so a plugin's fusion or
    encoder can be named."""
    import torch

    from fusiond.models import FusionModel, save
    from fusiond.plugin import load_plugins

    parts = parts if parts is not None else load_plugins().parts

    spec = spec or InputSpec({"imu": ModalitySpec("series", length=32, channels=1)})
    encoders: dict[str, dict[str, Any]] = {
        m: {"name": s.kind_of.default_encoder, "args": {}} for m, s in spec.modalities.items()
    }
    torch.manual_seed(seed)
    classes = classes or ["low", "high"]
    model = FusionModel(
        spec, classes, encoders, {"name": fusion}, parts, dim=16, modality_heads=modality_heads
    )
    window = {"length_ns": 1_000_000_000, "hop_ns": 500_000_000}
    return save(
        model.eval(), path, name="tiny", encoders=encoders, fusion={"name": fusion}, dim=16, window=window
    )


@dataclass(frozen=True)
class RecordedText:
    """A whole text stream: ``(t_ns, text)`` events, each one message (a ``tokens`` input reads them)."""

    modality: str
    events: list[tuple[int, str]]


def write_recording(path: Path, streams: dict[str, RecordedStream | RecordedText], rig: str = "rig") -> Path:
    """An MCAP recording of whole streams, framed as sources frame them; each block is
    received the moment its last sample was captured (a text event the moment it was said)."""
    import heapq

    from fusiond.bus.wire import encode_sample, text_block
    from fusiond.recording.recorder import RecordingWriter

    Message = tuple[int, list[bytes | memoryview]]

    def messages(name: str, s: RecordedStream | RecordedText) -> Iterator[Message]:
        if isinstance(s, RecordedText):
            for seq, (t_ns, text) in enumerate(sorted(s.events)):
                data, payload = text_block(text)
                yield (
                    t_ns,
                    encode_sample(
                        rig=rig,
                        stream=name,
                        modality=s.modality,
                        seq=seq,
                        t_ns=t_ns,
                        t_pub_ns=t_ns,
                        rate_hz=0.0,
                        data=data,
                        encoding="utf-8",
                        payload=payload,
                    ),
                )
            return
        for seq, i in enumerate(range(0, len(s.data), s.block)):
            chunk = s.data[i : i + s.block]
            t_ns = s.t0_ns + round(i * 1e9 / s.rate_hz)
            end = t_ns + round(len(chunk) * 1e9 / s.rate_hz)
            yield (
                end,
                encode_sample(
                    rig=rig,
                    stream=name,
                    modality=s.modality,
                    seq=seq,
                    t_ns=t_ns,
                    t_pub_ns=end,
                    rate_hz=s.rate_hz,
                    data=chunk,
                ),
            )

    with RecordingWriter(path, "fusiond.testing") as out:
        for t_recv, frames in heapq.merge(*(messages(n, s) for n, s in streams.items()), key=lambda m: m[0]):
            out.write(frames, t_recv)
    return path


def write_labels(path: Path, rows: list[tuple[int, int, str]]) -> Path:
    """A label file of ``(start_ns, end_ns, label)`` rows (see fusiond/training/data.py)."""
    lines = ["start_ns,end_ns,label", *(f"{a},{b},{label}" for a, b, label in rows)]
    path.write_text("\n".join(lines) + "\n")
    return path
