"""Built-in sources run as real ``fusiond source`` processes publishing to a real socket."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import wave
from pathlib import Path

import cv2
import numpy as np
import pytest

from fusiond.bus.wire import decode_sample


def run_source(endpoint, kind, *sets, anchor_ns=None, stream="s"):
    """``fusiond source KIND`` as a process, its files' timeline anchored 4 s ahead: room for
    a slow start on a busy machine (a source that opens after the anchor joins its files
    where the timeline is by then, and the test would miss their start)."""
    anchor_ns = anchor_ns or time.time_ns() + 4_000_000_000
    args = [
        sys.executable,
        "-m",
        "fusiond",
        "source",
        kind,
        "--connect",
        endpoint,
        "--rig",
        "t",
        "--stream",
        stream,
        "--anchor-ns",
        str(anchor_ns),
    ]
    for s in sets:
        args += ["--set", s]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True), anchor_ns


def collect(sock, proc, timeout_s=120.0):
    samples = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if sock.poll(100):
            samples.append(decode_sample(sock.recv_multipart()))
        elif proc.poll() is not None:
            break
    proc.log, _ = proc.communicate(timeout=5)
    return samples


@pytest.mark.parametrize("fourcc", ["MJPG", "mp4v", "FFV1"])
def test_camera_plays_a_video_file_in_order_on_the_anchored_timeline(bus, tmp_path, fourcc):
    endpoint, sock = bus
    path = tmp_path / f"clip-{fourcc}.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 20.0, (64, 48))
    for i in range(20):
        writer.write(np.full((48, 64, 3), i * 12, np.uint8))
    writer.release()
    proc, anchor = run_source(endpoint, "camera", f"uri='{path}'")
    samples = collect(sock, proc)
    assert proc.returncode == 0
    assert [s.seq for s in samples] == list(range(20))
    assert all(s.data.shape == (1, 48, 64, 3) and s.data.dtype == np.uint8 for s in samples)
    assert [s.t_ns - anchor for s in samples] == [i * 50_000_000 for i in range(20)]
    assert all(s.rate_hz == 20.0 and s.modality == "video" for s in samples)
    levels = [int(s.data.mean()) for s in samples]
    # Lossy codecs shift grey levels a little; order and rough level must survive.
    assert levels == sorted(levels) and len(set(levels)) == 20, levels
    assert all(abs(level - i * 12) <= 8 for i, level in enumerate(levels)), levels


def test_camera_reads_real_footage_from_the_demo(bus):
    from .helpers import ROOT

    endpoint, sock = bus
    proc, anchor = run_source(
        endpoint, "camera", f"uri='{ROOT}/demo/digits.mp4'", anchor_ns=time.time_ns() - 52_000_000_000
    )
    samples = collect(sock, proc)  # joins 52 s (+ start-up, slow on a busy machine) into the 60 s file
    assert 10 <= len(samples) <= 80
    assert [s.t_ns - anchor for s in samples] == [
        (600 - len(samples) + i) * 100_000_000 for i in range(len(samples))
    ]
    assert samples[-1].t_ns - anchor == 599 * 100_000_000
    assert samples[0].data.shape == (1, 96, 96, 3)


def test_camera_plays_real_footage_faster_in_order(bus):
    from .helpers import opencv_data

    endpoint, sock = bus
    path = opencv_data("vtest.avi")  # 795 frames of pedestrians, 768x576
    proc, anchor = run_source(endpoint, "camera", f"uri='{path}'", "speed=20.0")
    samples = collect(sock, proc)
    assert proc.returncode == 0
    assert samples[0].data.shape == (1, 576, 768, 3)
    period = 1e9 / samples[0].rate_hz / 20
    index = [round((s.t_ns - anchor) / period) for s in samples]
    assert all(s.t_ns - anchor == round(i * period) for i, s in zip(index, samples, strict=True))
    assert index[0] == 0 and index[-1] <= 794 and index == sorted(set(index))
    # At 200 frames/s a loaded machine falls behind: skipped frames must be reported.
    assert len(samples) == 795 or "frame(s) dropped so far" in proc.log
    assert len(samples) >= 100
    capture = cv2.VideoCapture(str(path))
    for i in range(0, 795, 200):  # each frame is the one its timestamp says
        capture.set(cv2.CAP_PROP_POS_FRAMES, i)
        ok, frame = capture.read()
        if i in index:
            np.testing.assert_array_equal(samples[index.index(i)].data[0], frame)
    capture.release()


def test_camera_can_send_jpeg(bus, tmp_path):
    endpoint, sock = bus
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 20.0, (64, 48))
    for i in range(10):
        writer.write(np.full((48, 64, 3), 20 + i * 20, np.uint8))
    writer.release()
    proc, _ = run_source(endpoint, "camera", f"uri='{path}'", "jpeg_quality=90")
    frames = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if sock.poll(100):
            frames.append(sock.recv_multipart())
        elif proc.poll() is not None:
            break
    proc.communicate(timeout=5)
    assert len(frames) == 10
    assert all(f[2][:2] == b"\xff\xd8" and len(f[2]) < 48 * 64 * 3 for f in frames)  # JPEG on the wire
    levels = [int(decode_sample(f).data.mean()) for f in frames]
    assert all(abs(level - (20 + i * 20)) <= 8 for i, level in enumerate(levels)), levels


def test_audio_file_arrives_intact_with_sample_accurate_times(bus, tmp_path):
    endpoint, sock = bus
    audio = (np.sin(np.arange(8000) / 7.0) * 20000).astype(np.int16)
    path = tmp_path / "tone.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(audio.tobytes())
    proc, anchor = run_source(endpoint, "audiofile", f"path='{path}'", "block=512")
    samples = collect(sock, proc)
    assert [s.t_ns - anchor for s in samples] == [i * 32_000_000 for i in range(len(samples))]
    np.testing.assert_array_equal(np.concatenate([s.data[:, 0] for s in samples]), audio)


@pytest.mark.parametrize(
    ("name", "subtype", "exact"),
    [
        ("tone.flac", "PCM_16", True),
        ("tone24.wav", "PCM_24", True),
        ("tonef.wav", "FLOAT", True),
        ("tone.ogg", "VORBIS", False),
        ("tone.aiff", "PCM_16", True),
    ],
)
def test_audiofile_plays_every_format_libsndfile_reads(bus, tmp_path, name, subtype, exact):
    """The same int16 samples from FLAC, 24-bit and float WAV and AIFF; OGG Vorbis is lossy,
    so it is held to the tone it carries."""
    import soundfile

    endpoint, sock = bus
    audio = (np.sin(np.arange(8000) * 2 * np.pi * 440 / 16000) * 20000).astype(np.int16)
    path = tmp_path / name
    # A float file holds what float audio is: full scale is 1.0 (libsndfile would truncate
    # such samples to integers if asked for int16 directly).
    stored = audio / 32768.0 if subtype == "FLOAT" else audio
    soundfile.write(str(path), stored, 16000, subtype=subtype)
    proc, _ = run_source(endpoint, "audiofile", f"path='{path}'", "block=512")
    samples = collect(sock, proc)
    assert proc.returncode == 0 and {s.rate_hz for s in samples} == {16000.0}, proc.log
    got = np.concatenate([s.data[:, 0] for s in samples])
    assert got.dtype == np.int16 and len(got) == len(audio)
    if exact:
        np.testing.assert_array_equal(got, audio)
    else:
        assert np.argmax(np.abs(np.fft.rfft(got))) * 16000 / len(got) == pytest.approx(440, abs=2)


def test_audiofile_resamples_a_44k_stereo_file_for_a_16k_model(bus, tmp_path):
    """``rate_hz`` and ``mono``: a 44.1 kHz stereo recording arrives as 16 kHz mono, the
    tone where it was, the timeline unchanged."""
    import soundfile

    endpoint, sock = bus
    t = np.arange(44100) / 44100
    left, right = np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 1000 * t)
    path = tmp_path / "stereo.wav"
    soundfile.write(str(path), np.stack([left, right], axis=1) * 0.5, 44100, subtype="PCM_16")
    proc, anchor = run_source(endpoint, "audiofile", f"path='{path}'", "rate_hz=16000", "mono=true")
    samples = collect(sock, proc)
    assert proc.returncode == 0 and {s.rate_hz for s in samples} == {16000.0}, proc.log
    got = np.concatenate([s.data for s in samples]).astype(np.float64)
    assert got.shape == (16000, 1)
    spectrum = np.abs(np.fft.rfft(got[:, 0]))
    peaks = sorted(int(f) for f in np.argsort(spectrum)[-2:])  # 1 Hz a bin: one second of audio
    assert peaks == [440, 1000], peaks
    assert samples[1].t_ns - samples[0].t_ns == round(len(samples[0].data) * 1e9 / 16000)


def test_csv_recording_replays_its_columns(bus, tmp_path):
    endpoint, sock = bus
    path = tmp_path / "imu.csv"
    rows = ["t_s,ax,ay"] + [f"{i / 50:.2f},{i},{-i}" for i in range(100)]
    path.write_text("\n".join(rows) + "\n")
    proc, anchor = run_source(endpoint, "csvfile", f"path='{path}'", "columns=['ay']", "block=25")
    samples = collect(sock, proc)
    assert len(samples) == 4 and samples[0].rate_hz == 50.0  # declared as 50, not 49.99999999999999
    values = np.concatenate([s.data for s in samples])
    np.testing.assert_array_equal(values[:, 0], -np.arange(100, dtype=np.float32))
    assert samples[1].t_ns - anchor == 500_000_000


@pytest.mark.parametrize(
    ("kind", "setting", "message"),
    [
        ("camera", "uri='/nonexistent/cam.mp4'", "no such video file: /nonexistent/cam.mp4"),
        ("audiofile", "path='/nonexistent/a.wav'", "no such audio file: /nonexistent/a.wav"),
        ("audiofile", f"path='{Path(__file__)}'", "not an audio file libsndfile reads"),
        ("csvfile", "path='/nonexistent/i.csv'", "no such recording: /nonexistent/i.csv"),
    ],
)
def test_a_source_that_cannot_open_says_why_and_retries_with_backoff(bus, kind, setting, message):
    proc, _ = run_source(bus[0], kind, setting)
    time.sleep(4.0)
    proc.terminate()
    out, _ = proc.communicate(timeout=5)
    lines = [line for line in out.splitlines() if message in line]
    assert len(lines) >= 2, out
    waits = [float(re.search(r"retrying in ([\d.]+) s", line)[1]) for line in lines[:2]]
    assert 0.35 <= waits[0] <= 0.5 and 0.7 <= waits[1] <= 1.0, waits  # doubling, less up to a quarter
    assert "Traceback" not in out
    assert proc.returncode == 0


def test_unknown_kind_and_bad_option_exit_with_one_line(bus):
    from .helpers import fusiond

    result = fusiond("source", "sonar", "--connect", bus[0])
    assert result.returncode == 2 and "unknown source kind 'sonar'" in result.stderr
    result = fusiond("source", "camera", "--connect", bus[0], "--set", "uri=x", "--set", "zoom=2")
    assert result.returncode == 2 and "source camera.zoom: unknown key (value 2)" in result.stderr
