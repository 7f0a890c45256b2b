"""``microphone``: audio from a PortAudio input device (sounddevice).

Each block is stamped with PortAudio's ADC time of its first sample, mapped from the
stream's clock onto realtime by the smallest offset seen (the same minimum-delay rule as
the daemon's clock correction). Where the host API reports no ADC time, the block is
stamped at its callback minus its own length. Input overflows are counted and logged.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from fusiond.errors import SourceError
from fusiond.plugin import SourceRegistry, hookimpl
from fusiond.sources import Block, Source, SourceConfig, StreamInfo


class MicrophoneConfig(SourceConfig):
    """Options of the ``microphone`` kind."""

    device: str | int | None = None
    """A device name (or part of it), an index, or the default input."""
    rate_hz: int = Field(16000, gt=0)
    channels: int = Field(1, ge=1)
    block: int = Field(1024, ge=16)
    """Samples per message."""
    latency: Literal["low", "high"] | float = "low"
    device_rate_hz: int | None = Field(None, ge=1000, le=384_000)
    """Open the device at this rate and resample to ``rate_hz`` (soxr, high quality), for a
    device that cannot deliver ``rate_hz`` itself; unset: the device runs at ``rate_hz``."""


class MicrophoneSource(Source[MicrophoneConfig]):
    """Blocks of int16 samples [block, channels]."""

    kind = "microphone"
    modality = "audio"
    Config = MicrophoneConfig

    @classmethod
    def check(cls, config: MicrophoneConfig, base_dir: Path) -> list[str]:
        """PortAudio is there and knows the input device (asked, not opened)."""
        cfg = config
        try:
            import sounddevice as sd
        except OSError as exc:
            return [f"PortAudio is not available: {exc}"]
        try:
            sd.query_devices(cfg.device, kind="input")
        except (sd.PortAudioError, ValueError) as exc:
            return [f"device: no input device {cfg.device!r}: {exc}"]
        return []

    def open(self) -> StreamInfo:
        cfg = self.config
        try:
            import sounddevice as sd
        except OSError as exc:  # no libportaudio2
            msg = f"PortAudio is not available: {exc}"
            raise SourceError(msg) from None
        self.blocks: queue.Queue[tuple[np.ndarray, int]] = queue.Queue(maxsize=256)
        self.overflows = self.dropped = 0
        self.offset_ns: int | None = None
        device_rate = cfg.device_rate_hz or cfg.rate_hz
        self.resampler = None
        if device_rate != cfg.rate_hz:
            import soxr

            self.resampler = soxr.ResampleStream(
                device_rate, cfg.rate_hz, cfg.channels, dtype="int16", quality="HQ"
            )
        try:
            self.stream = sd.InputStream(
                device=cfg.device,
                samplerate=device_rate,
                channels=cfg.channels,
                dtype="int16",
                blocksize=cfg.block,
                latency=cfg.latency,
                callback=self._callback,
            )
            self.stream.start()
        except (sd.PortAudioError, ValueError) as exc:
            msg = f"cannot open input device {cfg.device!r}: {exc}"
            raise SourceError(msg) from None
        info = sd.query_devices(self.stream.device)
        resampled = f" (the device at {device_rate} Hz, resampled)" if self.resampler is not None else ""
        return StreamInfo(
            float(cfg.rate_hz),
            f"{info['name']!r}: {cfg.rate_hz} Hz{resampled}, {cfg.channels} ch, {cfg.block}-sample blocks, "
            f"input latency {self.stream.latency * 1000:.0f} ms",
        )

    def _callback(self, indata: np.ndarray, frames: int, when: Any, status: Any) -> None:
        now_ns = time.time_ns()
        if status.input_overflow:
            self.overflows += 1
        adc = when.inputBufferAdcTime
        if adc > 0:
            offset = now_ns - round(when.currentTime * 1e9)
            if self.offset_ns is None or offset < self.offset_ns:
                self.offset_ns = offset
            t_ns = round(adc * 1e9) + self.offset_ns
        else:
            t_ns = now_ns - round(frames * 1e9 / self.stream.samplerate)
        try:
            self.blocks.put_nowait((indata.copy(), t_ns))  # PortAudio reuses indata
        except queue.Full:
            self.dropped += 1

    def read(self) -> Iterator[Block]:
        cfg = self.config
        reported = 0
        while not self.context.stop.is_set():
            try:
                data, t_ns = self.blocks.get(timeout=0.5)
            except queue.Empty:
                if not self.stream.active:
                    msg = f"input device {cfg.device!r} stopped delivering audio"
                    raise SourceError(msg) from None
                continue
            if self.overflows + self.dropped > reported:
                reported = self.overflows + self.dropped
                self.context.log.warning(
                    "microphone: %d input overflow(s), %d block(s) dropped so far",
                    self.overflows,
                    self.dropped,
                )
            if self.resampler is None:
                yield Block(data, t_ns)
                continue
            out = self.resampler.resample_chunk(data)
            if len(out):
                # The chunk ends where the input did, less what the resampler still holds.
                end_ns = t_ns + round(len(data) * 1e9 / self.stream.samplerate)
                held_ns = round((self.resampler.delay() + len(out)) * 1e9 / cfg.rate_hz)
                yield Block(out.reshape(len(out), -1), end_ns - held_ns)

    def close(self) -> None:
        stream = getattr(self, "stream", None)
        if stream is not None:
            # abort, not stop: stop waits for pending buffers, which never come from a
            # device that went silent (a PulseAudio pipe source without a writer).
            stream.abort()
            stream.close()


@hookimpl
def fusiond_add_sources(registry: SourceRegistry) -> None:
    """Register the microphone kind."""
    registry.add(MicrophoneSource)
