"""Text as a modality: the ``text`` and ``asr`` source kinds, text events on the wire, and
``tokens`` windows that keep each word's time."""

from __future__ import annotations

import os
import socket
import time
import wave

import numpy as np
import pytest

from fusiond.align import InputSpec, ModalitySpec, WindowConfig
from fusiond.align.fit import PAD, UNKNOWN
from fusiond.bus import wire
from fusiond.pipeline import Pipeline

from .helpers import ROOT
from .test_serial import Collector
from .test_sources import collect, run_source

T0 = 1_800_000_000_000_000_000
VOCAB = ("door", "open", "closed", "alarm")


def text_frames(text: bytes | str, t_ns: int, seq: int = 0, stream: str = "words") -> list:
    payload = text.encode() if isinstance(text, str) else text
    data = np.zeros(1, np.uint8)
    return wire.encode_sample(
        rig="r",
        stream=stream,
        modality="words",
        seq=seq,
        t_ns=t_ns,
        t_pub_ns=t_ns,
        rate_hz=0.0,
        data=data,
        encoding="utf-8",
        payload=payload,
    )


def test_text_events_are_aligned_into_windows_with_their_times():
    spec = InputSpec({"words": ModalitySpec("tokens", length=6, vocab=VOCAB)})
    window = WindowConfig(length_ns=1_000_000_000, hop_ns=1_000_000_000, lateness_ns=100_000_000)
    pipeline = Pipeline({("r", "words"): "words"}, spec, window)
    start = T0  # a multiple of the hop: window 0 starts here
    events = [("Door OPEN", 100), ("the alarm", 450), ("door closed", 1_200), ("open", 2_900)]
    for seq, (text, ms) in enumerate(events):
        t = start + ms * 1_000_000
        assert pipeline.handle(text_frames(text, t, seq), t)
    windows = {w.start_ns: w for w in pipeline.close_windows(start + 5_000_000_000)}
    first = windows[start].inputs["words"]
    ids = {w: i + 2 for i, w in enumerate(VOCAB)}
    # Words in order, each with its event's time in ms from the window's start; padding after.
    np.testing.assert_array_equal(
        first,
        [[ids["door"], 100], [ids["open"], 100], [UNKNOWN, 450], [ids["alarm"], 450], [PAD, 0], [PAD, 0]],
    )
    second = windows[start + 1_000_000_000].inputs["words"]
    np.testing.assert_array_equal(second[:2], [[ids["door"], 200], [ids["closed"], 200]])
    assert windows[start + 1_000_000_000].present["words"]
    assert windows[start + 2_000_000_000].inputs["words"][0].tolist() == [ids["open"], 900]
    assert sorted(windows) == [start, start + 1_000_000_000, start + 2_000_000_000]  # none without words


def test_the_newest_words_are_kept_when_a_window_has_too_many():
    spec = InputSpec({"words": ModalitySpec("tokens", length=3, vocab=VOCAB)})
    pipeline = Pipeline({("r", "words"): "words"}, spec, WindowConfig(1_000_000_000, 1_000_000_000, 0))
    pipeline.handle(text_frames("door open alarm closed door", T0 + 10), T0 + 10)
    (window,) = pipeline.close_windows(T0 + 2_000_000_000)
    assert window.inputs["words"][:, 0].tolist() == [5, 4, 2]  # alarm, closed, door


def test_long_text_events_cost_about_their_own_bytes_and_the_window_only_its_words():
    """A thousand 64 KiB events in one window (all within the protocol's limits): the daemon
    holds about their bytes, fitting the window reads only the words it keeps, and the
    stream's byte budget counts the text, not the 8-byte pointer to it."""
    import tracemalloc

    spec = InputSpec({"words": ModalitySpec("tokens", length=8, vocab=VOCAB)})
    window = WindowConfig(10_000_000_000, 10_000_000_000, 0, max_bytes=48 * 2**20)
    pipeline = Pipeline({("r", "words"): "words"}, spec, window)
    event = ("door open " * 6553)[: wire.MAX_TEXT_BYTES - 5] + "alarm"
    sent = 0
    tracemalloc.start()
    try:
        for seq in range(1000):
            t = T0 + seq * 1_000_000
            pipeline.handle(text_frames(event, t, seq), t)
            sent += len(event)
        held, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        (closed,) = pipeline.close_windows(T0 + 20_000_000_000)
        _, fit_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    budget = 48 * 2**20
    assert held < 1.2 * budget, (held, sent)  # the byte budget holds for text
    assert pipeline.stats.all_drops()["buffer_full"] > 0 and sent > budget
    assert fit_peak - held < 2**20, fit_peak - held  # the fit reads tails, not 48 MB of words
    assert closed.inputs["words"][-1].tolist() == [VOCAB.index("alarm") + 2, 999]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [(b"\xff\xfe not utf-8", "bad_value"), (b"x" * (wire.MAX_TEXT_BYTES + 1), "bad_size")],
)
def test_bad_text_events_are_counted_and_dropped(payload, reason):
    spec = InputSpec({"words": ModalitySpec("tokens", length=3, vocab=VOCAB)})
    pipeline = Pipeline({("r", "words"): "words"}, spec, WindowConfig(1_000_000_000, 1_000_000_000, 0))
    assert not pipeline.handle(text_frames(payload, time.time_ns()), time.time_ns())
    assert pipeline.stats.all_drops()[reason] == 1


def test_a_text_event_must_be_one_utf8_buffer_of_shape_1():
    two = np.zeros(2, np.uint8)
    frames = wire.encode_sample(
        rig="r",
        stream="words",
        modality="words",
        seq=0,
        t_ns=1,
        t_pub_ns=1,
        rate_hz=0.0,
        data=two,
        encoding="utf-8",
        payload=b"hi",
    )
    with pytest.raises(wire.FrameError, match="one text event"):
        wire.decode_sample(frames)
    spec = InputSpec({"words": ModalitySpec("tokens", length=3, vocab=VOCAB)})
    pipeline = Pipeline({("r", "words"): "words"}, spec, WindowConfig(1_000_000_000, 1_000_000_000, 0))
    raw = wire.encode_sample(
        rig="r",
        stream="words",
        modality="words",
        seq=0,
        t_ns=time.time_ns(),
        t_pub_ns=time.time_ns(),
        rate_hz=0.0,
        data=np.zeros(3, np.uint8),
    )
    assert not pipeline.handle(raw, time.time_ns())  # raw bytes are no text event
    assert pipeline.stats.all_drops()["bad_shape"] == 1


def words_of(samples) -> list[str]:
    return [s.data[0] for s in samples]


def test_text_source_reads_a_followed_file_and_skips_what_is_not_utf8(bus, tmp_path):
    endpoint, sock = bus
    path = tmp_path / "notes.log"
    path.write_text("old line, not replayed\n")
    proc, _ = run_source(endpoint, "text", f"path='{path}'", "max_line_bytes=64", stream="notes")
    collector = Collector(sock)
    try:
        time.sleep(2.5)
        before = time.time_ns()
        with path.open("ab") as f:
            long = b"y" * 150 + b" tail\n"  # over max_line_bytes: dropped whole, its tail too
            cafe = "caf\u00e9 au lait\n".encode()
            for line in (b"door open\n", b"\xff\xfe\n", b"   \n", long, cafe, b"alarm\n"):
                f.write(line)
                f.flush()
                time.sleep(0.05)
        samples = collector.finish()
    finally:
        proc.terminate()
        log, _ = proc.communicate(timeout=5)
    assert words_of(samples) == ["door open", "caf\u00e9 au lait", "alarm"], log
    assert all(s.rate_hz == 0.0 and before <= s.t_ns <= time.time_ns() for s in samples)
    assert "1 line(s) skipped so far (last: not UTF-8)" in log


def test_text_source_listens_on_a_socket_for_many_clients(bus, tmp_path):
    endpoint, sock = bus
    port = _free_port()
    proc, _ = run_source(endpoint, "text", f"listen='127.0.0.1:{port}'", "max_line_bytes=64", stream="chat")
    collector = Collector(sock)
    try:
        address = ("127.0.0.1", port)
        deadline = time.monotonic() + 60
        while True:  # until the source listens
            try:
                a = socket.create_connection(address)
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        time.sleep(0.3)  # the subscription reaches the source's publisher
        with a, socket.create_connection(address) as b, socket.create_connection(address) as c:
            a.sendall(b"from a\nsplit ")
            time.sleep(0.1)
            b.sendall(b"from b\n" + b"y" * 100 + b"\n")
            time.sleep(0.1)
            for piece in (b"z" * 100, b"z" * 100, b"zzzz\n"):  # one line over the limit, in three reads
                c.sendall(piece)
                time.sleep(0.1)
            a.sendall(b"line\n")
            c.sendall(b"after\n")
            time.sleep(0.3)
        samples = collector.finish()
    finally:
        proc.terminate()
        log, _ = proc.communicate(timeout=5)
    assert sorted(words_of(samples)) == ["after", "from a", "from b", "split line"], log


def test_text_source_reads_a_serial_port(bus, tmp_path):
    endpoint, sock = bus
    leader, follower = os.openpty()
    proc, _ = run_source(endpoint, "text", f"port='{os.ttyname(follower)}'", "baud=9600", stream="console")
    collector = Collector(sock)
    try:
        time.sleep(2.5)
        for line in (b"boot ok\r\n", b"temp high\r\n"):
            os.write(leader, line)
            time.sleep(0.1)
        samples = collector.finish()
    finally:
        proc.terminate()
        log, _ = proc.communicate(timeout=5)
        os.close(leader)
        os.close(follower)
    assert words_of(samples) == ["boot ok", "temp high"], log


def test_text_source_plays_a_transcript_on_the_media_timeline(bus, tmp_path):
    endpoint, sock = bus
    path = tmp_path / "said.tsv"
    path.write_text("# seconds<TAB>text\n0.5\tthree\n1.25\tfour five\n")
    proc, anchor = run_source(endpoint, "text", f"path='{path}'", "transcript=true", stream="said")
    samples = collect(sock, proc)
    assert proc.returncode == 0, proc.log
    assert words_of(samples) == ["three", "four five"]
    assert [s.t_ns - anchor for s in samples] == [500_000_000, 1_250_000_000]


def test_text_config_needs_exactly_one_input():
    from fusiond.plugin import load_plugins

    cls = load_plugins().sources.get("text")
    with pytest.raises(ValueError, match="exactly one of path, port and listen"):
        cls.Config.model_validate({"path": "a", "listen": "127.0.0.1:9"})


def test_asr_source_hears_the_words_of_a_known_clip(bus, tmp_path):
    """Three segments of the demo's speech (eight, nine, six, each said twice), through the
    asr source as a process: pocketsphinx's wheel model, nothing downloaded."""
    endpoint, sock = bus
    with wave.open(str(ROOT / "demo/digits.wav")) as w:
        rate = w.getframerate()
        audio = np.frombuffer(w.readframes(w.getnframes()), np.int16)
    clip = np.concatenate([audio[s * rate : (s + 2) * rate] for s in (22, 28, 44)])
    path = tmp_path / "clip.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(clip.tobytes())
    proc, anchor = run_source(endpoint, "asr", f"path='{path}'", stream="speech")
    samples = collect(sock, proc)
    assert proc.returncode == 0, proc.log
    assert words_of(samples) == ["eight", "eight", "nine", "nine", "six", "six"], proc.log
    times = [(s.t_ns - anchor) / 1e9 for s in samples]
    assert times == sorted(times) and 0 <= times[0] < 1.0 and 5.0 < times[-1] < 6.0, times


def test_asr_source_hears_a_44k_stereo_flac_resampled_to_16k(bus, tmp_path):
    """A recording at another rate, in another format and with two channels: resampled to
    the recogniser's 16 kHz and mixed down, it is heard as the 16 kHz original is."""
    import soundfile
    import soxr

    endpoint, sock = bus
    with wave.open(str(ROOT / "demo/digits.wav")) as w:
        rate = w.getframerate()
        audio = np.frombuffer(w.readframes(w.getnframes()), np.int16)
    clip = np.concatenate([audio[s * rate : (s + 2) * rate] for s in (22, 28)]).astype(np.float32) / 32768
    high = soxr.resample(clip, rate, 44100)
    path = tmp_path / "clip.flac"
    soundfile.write(str(path), np.stack([high, high * 0.9], axis=1), 44100, subtype="PCM_24")
    proc, _ = run_source(endpoint, "asr", f"path='{path}'", stream="speech")
    samples = collect(sock, proc)
    assert proc.returncode == 0, proc.log
    assert words_of(samples) == ["eight", "eight", "nine", "nine"], proc.log


def test_asr_source_refuses_words_its_dictionary_lacks(bus):
    endpoint, _ = bus
    proc, _ = run_source(endpoint, "asr", f"path='{ROOT / 'demo/digits.wav'}'", "words=['seven','zorblax']")
    try:
        deadline = time.monotonic() + 30
        lines = []
        while time.monotonic() < deadline:
            lines.append(proc.stdout.readline())
            if "dictionary" in lines[-1]:
                break
    finally:
        proc.terminate()
        proc.communicate(timeout=5)
    assert "words the recogniser's dictionary does not have: ['zorblax']" in lines[-1], lines


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
