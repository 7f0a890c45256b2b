"""Text as a modality: the speech recogniser's speed and the cost of a tokens window.
Prints figures, asserts nothing.

    python bench/bench_text.py

1. The ``asr`` kind's recogniser (pocketsphinx) over the demo's 60 s of speech, fed as the
   source feeds it (0.1 s blocks), with the full English language model and restricted to
   the digit words: seconds of CPU per second of audio, and the words it heard.
2. A ``tokens`` window fitted from text events through the real pipeline (wire frames,
   ingest, aligner): microseconds per event handled and per window closed.
"""

from __future__ import annotations

import time
import wave
from pathlib import Path

import numpy as np
from fusiond_plugins.asr import Recognizer

from fusiond.align import InputSpec, ModalitySpec, WindowConfig
from fusiond.bus.wire import encode_sample, text_block
from fusiond.pipeline import Pipeline

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "oh"]


def recogniser() -> None:
    with wave.open(str(ROOT / "demo/digits.wav")) as w:
        rate = w.getframerate()
        audio = np.frombuffer(w.readframes(w.getnframes()), np.int16)
    seconds = len(audio) / rate
    print(f"recogniser over {seconds:.0f} s of the demo's speech, 0.1 s blocks:")
    for name, words in (("any English word", ()), ("digit words only", DIGITS)):
        start = time.process_time()
        recognizer = Recognizer(words)
        heard = []
        for i in range(0, len(audio), 1600):
            heard += recognizer.feed(audio[i : i + 1600], i * 62_500)
        heard += recognizer.flush()
        cpu = time.process_time() - start
        print(
            f"  {name:<17} {cpu:5.1f} s CPU ({seconds / cpu:4.1f}x real time), {len(heard)} words: "
            f"{' '.join(w for w, _ in heard[:12])} ..."
        )


def tokens_window(events: int = 20_000) -> None:
    spec = InputSpec({"words": ModalitySpec("tokens", length=16, vocab=tuple(DIGITS))})
    window = WindowConfig(1_000_000_000, 500_000_000, 100_000_000)
    pipeline = Pipeline({("r", "words"): "words"}, spec, window)
    t0 = 1_800_000_000_000_000_000
    frames = []
    for i in range(events):  # 10 events a second, three words each
        t = t0 + i * 100_000_000
        data, payload = text_block(f"{DIGITS[i % 10]} and {DIGITS[(i + 3) % 10]}")
        message = encode_sample(
            rig="r",
            stream="words",
            modality="words",
            seq=i,
            t_ns=t,
            t_pub_ns=t,
            rate_hz=0.0,
            data=data,
            encoding="utf-8",
            payload=payload,
        )
        frames.append((t, message))
    handled = closed = 0
    started = time.perf_counter()
    ingest = 0.0
    for t, message in frames:
        a = time.perf_counter()
        handled += pipeline.handle(message, t)
        ingest += time.perf_counter() - a
        closed += len(pipeline.close_windows(t))
    total = time.perf_counter() - started
    print(f"tokens windows from {events} text events (3 words each), one core:")
    print(
        f"  {ingest / events * 1e6:6.1f} us an event through ingest; "
        f"{(total - ingest) / max(closed, 1) * 1e6:6.1f} us a window closed and fitted ({closed} windows)"
    )


if __name__ == "__main__":
    recogniser()
    tokens_window()
