"""``audiofile``: a PCM WAV file played in real time, like a microphone would deliver it."""

from __future__ import annotations

import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from fusiond.errors import SourceError
from fusiond.plugin import SourceRegistry, hookimpl
from fusiond.sources import Block, Source, SourceConfig, StreamInfo
from fusiond.sources.playback import play


class AudioFileConfig(SourceConfig):
    """Options of the ``audiofile`` kind."""

    path: Path
    """A 16-bit PCM WAV file."""
    block: int = 1024
    """Samples per message; each message leaves when its last sample has 'played'."""
    loop: bool = False


class AudioFileSource(Source[AudioFileConfig]):
    """Blocks of int16 samples [block, channels]."""

    kind = "audiofile"
    modality = "audio"
    Config = AudioFileConfig

    @classmethod
    def check(cls, config: AudioFileConfig, base_dir: Path) -> list[str]:
        """The file is there and is 16-bit PCM WAV (its header only)."""
        path = base_dir / config.path
        try:
            with wave.open(str(path)) as w:
                width = w.getsampwidth()
        except FileNotFoundError:
            return [f"path: no such file: {path}"]
        except (OSError, wave.Error, EOFError) as exc:
            return [f"path: {path} is not a readable WAV file: {exc}"]
        return [] if width == 2 else [f"path: {path} is {8 * width}-bit; only 16-bit PCM WAV is supported"]

    def open(self) -> StreamInfo:
        cfg = self.config
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

    def from_file(self) -> bool:
        return True

    def read(self) -> Iterator[Block]:
        cfg = self.config
        return play(self.samples, float(self.rate), cfg.block, cfg.loop, self.context)


@hookimpl
def fusiond_add_sources(registry: SourceRegistry) -> None:
    """Register the audiofile kind."""
    registry.add(AudioFileSource)
