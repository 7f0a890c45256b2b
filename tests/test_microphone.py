"""The microphone source on a real PortAudio device: a PulseAudio pipe source fed in real time."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np
import pytest
import zmq

from fusiond.bus.wire import decode_sample

from .helpers import ROOT

pytestmark = pytest.mark.slow
RATE = 16000


@pytest.fixture
def pulse(tmp_path):
    """A private PulseAudio server whose default source 'vmic' reads a FIFO."""
    if shutil.which("pulseaudio") is None:
        pytest.fail("pulseaudio is not installed (scripts/setup.sh installs it)")
    runtime = tmp_path / "xdg"
    runtime.mkdir(mode=0o700)
    fifo = tmp_path / "vmic.fifo"  # module-pipe-source makes it
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "HOME": str(tmp_path)}
    server = subprocess.Popen(
        [
            "pulseaudio",
            "-n",
            "--daemonize=no",
            "--exit-idle-time=-1",
            "--system=false",
            "--log-target=stderr",
            "--load=module-native-protocol-unix",
            "--load=module-null-sink sink_name=vsink",
            f"--load=module-pipe-source source_name=vmic file={fifo} format=s16le rate={RATE} channels=1",
        ],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not (runtime / "pulse" / "native").exists() or not fifo.exists():
            assert server.poll() is None and time.monotonic() < deadline, "pulseaudio did not start"
            time.sleep(0.1)
        subprocess.run(["pactl", "set-default-source", "vmic"], env=env, check=True)
        yield env, fifo
    finally:
        subprocess.run(["pactl", "exit"], env=env, capture_output=True)
        try:
            server.wait(5)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.mark.parametrize("device_rate", [None, 48000])
def test_a_clip_played_into_the_microphone_arrives_intact_and_on_time(
    pulse, tmp_path, endpoints, device_rate
):
    """Also with the device opened at 48 kHz and resampled to 16 kHz in the source: the
    clip is as intact, and its stamp as close, as when the device runs at 16 kHz."""
    env, fifo = pulse
    with wave.open(str(ROOT / "demo/digits.wav")) as w:
        speech = np.frombuffer(w.readframes(w.getnframes()), np.int16)
    clip = speech[int(0.05 * RATE) : int(0.85 * RATE)]  # a spoken digit from the demo
    np.save(tmp_path / "clip.npy", clip)
    # The writer must run before the capture stream opens (PortAudio spins without data).
    script = str(Path(__file__).parent / "scripts/vmic_writer.py")
    feed = [sys.executable, script, str(fifo), str(tmp_path / "clip.npy"), "4.0", "9.0"]
    writer = subprocess.Popen(feed, stdout=subprocess.PIPE, text=True)
    ctx = zmq.Context()
    bus = ctx.socket(zmq.SUB)
    bus.bind(endpoints[0])
    bus.subscribe(b"s/")
    args = [
        "source",
        "microphone",
        "--connect",
        endpoints[0],
        "--rig",
        "lab",
        "--stream",
        "mic",
        "--set",
        "device='pulse'",
        "--set",
        f"rate_hz={RATE}",
        "--set",
        "block=320",
        *(["--set", f"device_rate_hz={device_rate}"] if device_rate else []),
    ]
    cmd = [sys.executable, "-m", "fusiond", *args]
    source = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    samples = []
    try:
        end = time.monotonic() + 7.0  # the clip plays at 4.0-4.8 s; the writer feeds until 9 s
        while time.monotonic() < end:
            if bus.poll(50):
                samples.append(decode_sample(bus.recv_multipart()))
    finally:
        source.terminate()
        _, log = source.communicate(timeout=10)
        writer.kill()  # with nobody recording, PulseAudio stops draining the pipe
        out, _ = writer.communicate(timeout=10)
        bus.close(linger=0)
        ctx.term()
    played_ns = int(out.split("clip ")[1])
    assert samples and {s.rate_hz for s in samples} == {RATE}, log
    if device_rate:
        assert "(the device at 48000 Hz, resampled)" in log, log
    audio = np.concatenate([s.data[:, 0] for s in samples]).astype(np.float64)
    starts = np.cumsum([0] + [len(s.data) for s in samples[:-1]])
    # Where is the clip in what came out of the bus?
    corr = np.correlate(audio, clip.astype(np.float64), mode="valid")
    at = int(np.argmax(corr))
    got = audio[at : at + len(clip)]
    similarity = float(np.corrcoef(got, clip)[0, 1])
    assert similarity > 0.95, similarity
    block = int(np.searchsorted(starts, at, side="right") - 1)
    stamped_ns = samples[block].t_ns + round((at - starts[block]) * 1e9 / RATE)
    error_ms = (stamped_ns - played_ns) / 1e6
    assert abs(error_ms) < 50, f"clip stamped {error_ms:+.1f} ms from when it was played\n{log}"
    print(f"clip correlation {similarity:.4f}, timestamp error {error_ms:+.1f} ms")
