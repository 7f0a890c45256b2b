"""``asr``: speech to word events, offline, with pocketsphinx (its US English model is in
the wheel: nothing is downloaded).

The audio comes from a WAV file played on the rig's media timeline (as ``audiofile``
plays it) or from a microphone (as ``microphone`` reads it); a voice-activity endpointer
cuts it into utterances, each is decoded when it ends, and every recognised word is one
text event stamped with the time it was spoken. A ``tokens`` input reads them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from fusiond.errors import SourceConfigError, SourceError
from fusiond.plugin import SourceRegistry, hookimpl
from fusiond.sources import Block, Source, SourceConfig, StreamInfo

from .audiofile import AudioFileConfig, AudioFileSource
from .microphone import MicrophoneConfig, MicrophoneSource

RATE = 16000
"""The rate of pocketsphinx's acoustic model; a WAV file must have it, a microphone is opened at it."""
FRAME_S = 0.01
"""The decoder's frame: segment times count in these."""


class Recognizer:
    """16 kHz mono int16 audio in, ``(word, spoken_at_ns)`` out, utterance by utterance.

    ``words`` restricts what can be heard to those words (a grammar of any sequence of
    them), which helps much when the vocabulary is known (digits, commands).
    """

    def __init__(self, words: Sequence[str] = ()) -> None:
        try:
            from pocketsphinx import Decoder, Endpointer, set_loglevel
        except ImportError:
            msg = "the asr kind needs pocketsphinx: pip install 'fusiond[speech]'"
            raise SourceError(msg) from None

        set_loglevel("FATAL")
        self.endpointer = Endpointer(sample_rate=RATE)
        self.frame = self.endpointer.frame_bytes // 2
        if words:
            self.decoder = Decoder(samprate=RATE, lm=None, jsgf=False)
            unknown = [w for w in words if self.decoder.lookup_word(w) is None]
            if unknown:
                msg = f"words the recogniser's dictionary does not have: {unknown}"
                raise SourceConfigError(msg)
            grammar = "#JSGF V1.0;\ngrammar words;\npublic <utterance> = ( " + " | ".join(words) + " )+ ;\n"
            self.decoder.add_jsgf_string("words", grammar)
            self.decoder.activate_search("words")
        else:
            self.decoder = Decoder(samprate=RATE)
        self.pending = np.zeros(0, np.int16)
        self.origin_ns: int | None = None  # the capture time of the endpointer's time 0
        self.fed = 0  # samples given to the endpointer

    def feed(self, samples: np.ndarray, t_ns: int) -> list[tuple[str, int]]:
        """Words of every utterance that ended in these samples (``t_ns``: the first one's time)."""
        if self.origin_ns is None:
            self.origin_ns = t_ns
        self.pending = np.concatenate([self.pending, samples.astype(np.int16).reshape(-1)])
        words: list[tuple[str, int]] = []
        while len(self.pending) >= self.frame:
            frame, self.pending = self.pending[: self.frame], self.pending[self.frame :]
            self.fed += self.frame
            was_in_speech = self.endpointer.in_speech
            speech = self.endpointer.process(frame.tobytes())
            if speech is None:
                continue
            if not was_in_speech:
                self.decoder.start_utt()
                self.started_s = self.endpointer.speech_start
            self.decoder.process_raw(speech)
            if not self.endpointer.in_speech:
                words.extend(self._end())
        return words

    def flush(self) -> list[tuple[str, int]]:
        """The words of an utterance still open when the audio ends."""
        if not self.endpointer.in_speech:
            return []
        last = np.zeros(self.frame, np.int16)  # the rest, padded to one whole frame
        last[: len(self.pending)] = self.pending[: self.frame]
        speech = self.endpointer.end_stream(last.tobytes())
        if speech:
            self.decoder.process_raw(speech)
        return self._end()

    def _end(self) -> list[tuple[str, int]]:
        self.decoder.end_utt()
        assert self.origin_ns is not None
        start_ns = self.origin_ns + round(self.started_s * 1e9)
        out = []
        for segment in self.decoder.seg():
            word = segment.word.split("(")[0]  # "two(2)": the second pronunciation of two
            if word.startswith(("<", "[")) or word in ("", "(NULL)"):
                continue  # silence, sentence marks, noise
            out.append((word, start_ns + round(segment.start_frame * FRAME_S * 1e9)))
        return out


class AsrConfig(SourceConfig):
    """Options of the ``asr`` kind: a WAV file (``path``) or a microphone (``device``)."""

    path: str = ""
    """An audio file (any format and rate the ``audiofile`` kind reads: it is resampled to
    16 kHz and mixed down to mono), played on the rig's media timeline."""
    loop: bool = False
    device: str | int | None = None
    """Without ``path``: a microphone (name, part of it, or index; default input)."""
    latency: Literal["low", "high"] | float = "high"
    device_rate_hz: int | None = Field(None, ge=1000, le=384_000)
    """Without ``path``: open the microphone at this rate (44100, 48000, ...) and resample
    to 16 kHz, for a device that cannot deliver 16 kHz itself."""
    words: list[str] = []
    """Hear only these words (lower case, in the recogniser's dictionary); empty: any English."""
    block: int = Field(1600, ge=160)
    """Audio samples read at a time (0.1 s)."""

    @model_validator(mode="after")
    def _words(self) -> AsrConfig:
        bad = [w for w in self.words if not w or w != w.lower() or not w.replace("'", "").isalpha()]
        if bad:
            msg = f"words must be lower-case English words, got {bad}"
            raise ValueError(msg)
        return self


class AsrSource(Source[AsrConfig]):
    """One text event per recognised word."""

    kind = "asr"
    modality = "text"
    Config = AsrConfig

    @classmethod
    def check(cls, config: AsrConfig, base_dir: Path) -> list[str]:
        cfg = config
        if cfg.path:
            return AudioFileSource.check(AudioFileConfig(path=Path(cfg.path), rate_hz=RATE), base_dir)
        return MicrophoneSource.check(
            MicrophoneConfig(device=cfg.device, rate_hz=RATE, device_rate_hz=cfg.device_rate_hz), base_dir
        )

    def open(self) -> StreamInfo:
        cfg = self.config
        self.audio: Source[Any]
        if cfg.path:
            self.audio = AudioFileSource(
                AudioFileConfig(path=Path(cfg.path), block=cfg.block, loop=cfg.loop, rate_hz=RATE, mono=True),
                self.context,
            )
        else:
            mic = MicrophoneConfig(
                device=cfg.device,
                rate_hz=RATE,
                channels=1,
                block=cfg.block,
                latency=cfg.latency,
                device_rate_hz=cfg.device_rate_hz,
            )
            self.audio = MicrophoneSource(mic, self.context)
        info = self.audio.open()
        if round(info.rate_hz) != RATE:
            self.audio.close()
            where = cfg.path or "the device"
            msg = f"speech recognition needs {RATE} Hz audio; {where} gives {info.rate_hz:g}"
            raise SourceError(msg)
        self.recognizer = Recognizer(cfg.words)
        heard = f"only {', '.join(cfg.words)}" if cfg.words else "any English word"
        return StreamInfo(0.0, f"words in {info.description} ({heard})")

    def from_file(self) -> bool:
        return self.audio.from_file()

    def read(self) -> Iterator[Block]:
        for block in self.audio.read():
            assert block.t_ns is not None  # both audio kinds stamp their blocks
            for word, t_ns in self.recognizer.feed(block.data[:, 0], block.t_ns):
                yield Block.text(word, t_ns)
        for word, t_ns in self.recognizer.flush():
            yield Block.text(word, t_ns)

    def close(self) -> None:
        self.audio.close()


@hookimpl
def fusiond_add_sources(registry: SourceRegistry) -> None:
    """Register the asr kind."""
    registry.add(AsrSource)
