"""``audiofile``: an audio file played in real time, like a microphone would deliver it.

Any format libsndfile reads (through ``soundfile``): WAV of 8, 16, 24 or 32-bit PCM or
float, FLAC, OGG Vorbis and Opus, MP3, AIFF, CAF, W64, ... Samples are published as int16
(a float file is scaled, clipped at full scale), so a model sees the same values whatever
the file's format. ``rate_hz`` resamples the whole file once, when it opens (soxr, high
quality), for a model trained at another rate.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from pydantic import Field

from fusiond.errors import SourceConfigError, SourceError
from fusiond.plugin import SourceRegistry, hookimpl
from fusiond.sources import Block, Source, SourceConfig, StreamInfo
from fusiond.sources.playback import play

__all__ = ["AudioFileConfig", "AudioFileSource", "fusiond_add_sources", "read_audio"]


class AudioFileConfig(SourceConfig):
    """Options of the ``audiofile`` kind."""

    path: Path
    """An audio file in any format libsndfile reads (WAV, FLAC, OGG, MP3, AIFF, ...)."""
    block: int = Field(1024, ge=1, le=1_000_000)
    """Samples per message; each message leaves when its last sample has 'played'."""
    loop: bool = False
    rate_hz: int | None = Field(None, ge=1000, le=384_000)
    """Publish at this rate, resampled; unset: the file's own rate."""
    mono: bool = False
    """Mix every channel down to one."""


def read_audio(path: Path, rate_hz: int | None = None, mono: bool = False) -> tuple[np.ndarray, int]:
    """``(samples [n, channels] int16, rate)`` of an audio file, resampled to ``rate_hz``
    and mixed down to one channel if asked; SourceError saying why it cannot be read."""
    import soundfile

    if not path.is_file():
        msg = f"no such audio file: {path.resolve()}"
        raise SourceError(msg)
    try:
        info = soundfile.info(str(path))
        # int16 straight from libsndfile when nothing is done to the samples: exact for
        # 16-bit files, scaled by libsndfile for other integer ones. Float files go through
        # float32: libsndfile would truncate their samples to integers, not scale them.
        convert = (
            (rate_hz is not None and rate_hz != info.samplerate)
            or (mono and info.channels > 1)
            or info.subtype in ("FLOAT", "DOUBLE")
        )
        data, rate = soundfile.read(str(path), dtype="float32" if convert else "int16", always_2d=True)
    except (OSError, soundfile.LibsndfileError, RuntimeError, TypeError) as exc:
        msg = f"{path}: not an audio file libsndfile reads ({exc})"
        raise SourceError(msg) from None
    if not convert:
        return data, int(rate)
    if mono and data.shape[1] > 1:
        data = data.mean(axis=1, keepdims=True)
    if rate_hz is not None and rate_hz != rate and len(data):
        import soxr

        data = soxr.resample(data, rate, rate_hz, quality="HQ")
        rate = rate_hz
    samples = np.clip(np.rint(data * 32768.0), -32768, 32767).astype(np.int16)
    return samples.reshape(len(samples), data.shape[1] if data.ndim > 1 else 1), int(rate)


class AudioFileSource(Source[AudioFileConfig]):
    """Blocks of int16 samples [block, channels]."""

    kind = "audiofile"
    modality = "audio"
    Config = AudioFileConfig

    @classmethod
    def check(cls, config: AudioFileConfig, base_dir: Path) -> list[str]:
        """The file is there and libsndfile reads its header."""
        import soundfile

        path = base_dir / config.path
        if not path.is_file():
            return [f"path: no such file: {path}"]
        try:
            info = soundfile.info(str(path))
        except (soundfile.LibsndfileError, RuntimeError, TypeError) as exc:
            return [f"path: {path} is not an audio file libsndfile reads: {exc}"]
        return [] if info.frames > 0 else [f"path: {path} holds no audio"]

    def open(self) -> StreamInfo:
        cfg = self.config
        self.samples, self.rate = read_audio(cfg.path, cfg.rate_hz, cfg.mono)
        if not len(self.samples):
            msg = f"{cfg.path}: holds no audio"
            raise SourceConfigError(msg)  # retrying will not put any there
        if cfg.loop and len(self.samples) < cfg.block:
            # A file shorter than one block, looped, would send a message per loop.
            self.samples = np.tile(self.samples, (-(-cfg.block // len(self.samples)), 1))
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
