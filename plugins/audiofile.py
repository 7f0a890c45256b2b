"""``audiofile``: a PCM WAV file played in real time, like a microphone would deliver it."""

from __future__ import annotations

import time
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from fusiond.errors import SourceError
from fusiond.plugin import SourceRegistry, hookimpl
from fusiond.sources import Block, Source, SourceConfig, StreamInfo
from fusiond.sources.timeline import play_time, start_position


class AudioFileConfig(SourceConfig):
    """Options of the ``audiofile`` kind."""

    path: Path
    """A 16-bit PCM WAV file."""
    block: int = 1024
    """Samples per message; each message leaves when its last sample has 'played'."""
    loop: bool = False


class AudioFileSource(Source):
    """Blocks of int16 samples [block, channels]."""

    kind = "audiofile"
    modality = "audio"
    Config = AudioFileConfig

    def open(self) -> StreamInfo:
        cfg: AudioFileConfig = self.config  # type: ignore[assignment]
        try:
            with wave.open(str(cfg.path)) as w:
                if w.getsampwidth() != 2:
                    msg = f"{cfg.path}: only 16-bit PCM WAV is supported"
                    raise SourceError(msg)
                self.rate = w.getframerate()
                raw = w.readframes(w.getnframes())
                self.samples = np.frombuffer(raw, "<i2").reshape(-1, w.getnchannels())
        except FileNotFoundError:
            msg = f"no such audio file: {cfg.path.resolve()}"
            raise SourceError(msg) from None
        except (wave.Error, EOFError) as exc:
            msg = f"{cfg.path}: not a readable WAV file ({exc})"
            raise SourceError(msg) from None
        seconds = len(self.samples) / self.rate
        channels = self.samples.shape[1]
        return StreamInfo(float(self.rate), f"{cfg.path}: {seconds:.1f} s, {self.rate} Hz, {channels} ch")

    def read(self) -> Iterator[Block]:
        cfg: AudioFileConfig = self.config  # type: ignore[assignment]
        ctx = self.context
        total = len(self.samples)
        duration_ns = round(total * 1e9 / self.rate)
        start = start_position(ctx.anchor_ns, time.time_ns(), duration_ns, cfg.loop)
        if start is None or total == 0:
            return
        loop_index, offset_ns = start
        index = (offset_ns * self.rate // 1_000_000_000) // cfg.block * cfg.block
        while True:
            if index >= total:
                if not cfg.loop:
                    return
                loop_index, index = loop_index + 1, 0
            chunk = self.samples[index : index + cfg.block]
            t_ns = play_time(ctx.anchor_ns, loop_index, duration_ns, index * 1_000_000_000 // self.rate)
            if not ctx.sleep_until(t_ns + len(chunk) * 1_000_000_000 // self.rate):
                return
            yield Block(chunk, t_ns)
            index += cfg.block


@hookimpl
def fusiond_add_sources(registry: SourceRegistry) -> None:
    """Register the audiofile kind."""
    registry.add(AudioFileSource)
