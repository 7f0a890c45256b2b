"""A complete third-party source kind: ``sine``, a signal generator standing in for a sensor.

Install it next to fusiond (``pip install ./examples/fusiond-sine``) and ``fusiond
plugins`` lists it; a config can then say ``kind = "sine"``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import numpy as np
from pydantic import Field

from fusiond.plugin import SourceRegistry, hookimpl
from fusiond.sources import Block, Source, SourceConfig, StreamInfo


class SineConfig(SourceConfig):
    """Options of the ``sine`` kind; unknown keys are errors, as for every kind."""

    freq_hz: float = Field(1.0, gt=0)
    amplitude: float = 1.0
    rate_hz: float = Field(100.0, gt=0)
    channels: int = Field(3, ge=1)
    block: int = Field(10, ge=1)


class SineSource(Source):
    """``channels`` sines, phase-shifted, ``block`` samples a message."""

    kind = "sine"
    modality = "imu"
    Config = SineConfig

    def open(self) -> StreamInfo:
        cfg: SineConfig = self.config  # type: ignore[assignment]
        return StreamInfo(cfg.rate_hz, f"sine {cfg.freq_hz:g} Hz x{cfg.channels} at {cfg.rate_hz:g} Hz")

    def read(self) -> Iterator[Block]:
        cfg: SineConfig = self.config  # type: ignore[assignment]
        start = time.time_ns()
        period_ns = 1e9 / cfg.rate_hz
        phases = np.arange(cfg.channels) * (2 * math.pi / cfg.channels)
        n = 0
        while True:
            t_ns = start + round(n * period_ns)
            # Release a block when its last sample is due, as a real device would.
            if not self.context.sleep_until(t_ns + round(cfg.block * period_ns)):
                return
            seconds = (n + np.arange(cfg.block))[:, None] / cfg.rate_hz
            values = cfg.amplitude * np.sin(2 * math.pi * cfg.freq_hz * seconds + phases)
            yield Block(values.astype(np.float32), t_ns)
            n += cfg.block


@hookimpl
def fusiond_add_sources(registry: SourceRegistry) -> None:
    """Register the sine kind."""
    registry.add(SineSource)
