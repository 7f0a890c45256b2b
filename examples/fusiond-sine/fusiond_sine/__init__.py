"""A complete third-party plugin: ``sine``, a signal generator standing in for a sensor;
``spectrum``, a modality kind that reads a window of samples as its magnitude spectrum;
and ``maxpool``, a fusion strategy (in :mod:`fusiond_sine.fusion`).

Install it next to fusiond (``pip install ./examples/fusiond-sine``) and ``fusiond
plugins`` lists all three; a config can then say ``kind = "sine"``, a recipe
``[inputs.tone] kind = "spectrum"`` and ``fusion = "maxpool"``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence

import numpy as np
from pydantic import Field

from fusiond.align import ModalitySpec
from fusiond.align.fit import Span
from fusiond.align.kinds import KindRegistry, ModalityKind
from fusiond.plugin import FusionRegistry, SourceRegistry, hookimpl
from fusiond.sources import Block, Source, SourceConfig, StreamInfo


class SineConfig(SourceConfig):
    """Options of the ``sine`` kind; unknown keys are errors, as for every kind."""

    freq_hz: float = Field(1.0, gt=0)
    noise: float = Field(0.0, ge=0)
    """Gaussian noise added to every sample (its standard deviation)."""
    amplitude: float = 1.0
    rate_hz: float = Field(100.0, gt=0)
    channels: int = Field(3, ge=1)
    block: int = Field(10, ge=1)


class SineSource(Source[SineConfig]):
    """``channels`` sines, phase-shifted, ``block`` samples a message."""

    kind = "sine"
    modality = "imu"
    Config = SineConfig

    def open(self) -> StreamInfo:
        cfg = self.config
        return StreamInfo(cfg.rate_hz, f"sine {cfg.freq_hz:g} Hz x{cfg.channels} at {cfg.rate_hz:g} Hz")

    def read(self) -> Iterator[Block]:
        cfg = self.config
        start = time.time_ns()
        period_ns = 1e9 / cfg.rate_hz
        phases = np.arange(cfg.channels) * (2 * math.pi / cfg.channels)
        rng = np.random.default_rng()
        n = 0
        while True:
            t_ns = start + round(n * period_ns)
            # Release a block when its last sample is due, as a real device would.
            if not self.context.sleep_until(t_ns + round(cfg.block * period_ns)):
                return
            seconds = (n + np.arange(cfg.block))[:, None] / cfg.rate_hz
            values = cfg.amplitude * np.sin(2 * math.pi * cfg.freq_hz * seconds + phases)
            if cfg.noise:
                values = values + rng.normal(0, cfg.noise, values.shape)
            yield Block(values.astype(np.float32), t_ns)
            n += cfg.block


class SpectrumKind(ModalityKind):
    """``length`` magnitudes of the window's spectrum (float32, the strongest bin is 1),
    from 0 Hz to the Nyquist frequency, of the samples' first channel: a tone's pitch
    read off one window, whatever its phase."""

    name = "spectrum"
    dtype = np.dtype(np.float32)
    default_encoder = "vector_mlp"

    def shape(self, spec: ModalitySpec) -> tuple[int, ...]:
        return (spec.length,)

    def fit(self, spec: ModalitySpec, blocks: Sequence[Span], start_ns: int, end_ns: int) -> np.ndarray:
        values = []
        for block in sorted(blocks, key=lambda b: b.t_ns):
            period = block.period_ns if block.period_ns > 0 else 1.0
            times = block.t_ns + np.arange(len(block.data)) * period
            inside = (times >= start_ns) & (times < end_ns)
            values.append(block.data.reshape(len(block.data), -1)[inside, 0].astype(np.float64))
        samples = np.concatenate(values) if values else np.zeros(0)
        out = np.zeros(spec.length, np.float32)
        if len(samples) < 4:
            return out
        magnitude = np.abs(np.fft.rfft(samples - samples.mean()))
        bins = np.interp(np.linspace(0, 1, spec.length), np.linspace(0, 1, len(magnitude)), magnitude)
        out[:] = bins / max(bins.max(), 1e-9)
        return out


@hookimpl
def fusiond_add_sources(registry: SourceRegistry) -> None:
    """Register the sine kind."""
    registry.add(SineSource)


@hookimpl
def fusiond_add_modality_kinds(registry: KindRegistry) -> None:
    """Register the spectrum kind."""
    registry.add(SpectrumKind)


@hookimpl
def fusiond_add_fusions(registry: FusionRegistry) -> None:
    """Register maxpool by reference: torch is imported only when a model needs it."""
    registry.add("maxpool", "fusiond_sine.fusion:MaxPoolFusion")
