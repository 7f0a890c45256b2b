"""Serial IMU over a real pty, and the generic ``lines`` source over a real FIFO and a pipe."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from fusiond.bus.wire import decode_sample

RATE = 150.0
PER_SESSION = 300


class Collector:
    """Keeps reading the SUB socket in a thread.

    A bound SUB only sends its subscription to a new publisher when its own thread next
    calls into the socket; a test thread busy writing would leave the publisher deaf.
    """

    def __init__(self, sock):
        self.sock, self.samples, self.stop = sock, [], threading.Event()
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self):
        while not self.stop.is_set():
            if self.sock.poll(50):
                self.samples.append(decode_sample(self.sock.recv_multipart()))

    def finish(self, quiet_s=0.5):
        count = -1
        while count != len(self.samples):
            count = len(self.samples)
            time.sleep(quiet_s)
        self.stop.set()
        self.thread.join()
        return self.samples


def collect_until(sock, done, timeout_s):
    samples = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not done():
        if sock.poll(100):
            samples.append(decode_sample(sock.recv_multipart()))
    while sock.poll(300):
        samples.append(decode_sample(sock.recv_multipart()))
    return samples


def test_serial_imu_over_a_pty_with_garbage_and_a_disconnect(bus, tmp_path):
    endpoint, sock = bus
    link = str(tmp_path / "ttyIMU")
    script = str(Path(__file__).parent / "scripts/pty_sensor.py")
    writer = subprocess.Popen(
        [sys.executable, script, link, str(PER_SESSION), "2", str(RATE)], stdout=subprocess.PIPE, text=True
    )
    assert writer.stdout.readline().startswith("session 0")
    sets = [
        f"port='{link}'",
        "columns=['t','ax','ay','az']",
        "values=['ax','ay','az']",
        "time_column='t'",
        "time_unit='ms'",
        "scale={ax=2.0}",
        f"rate_hz={RATE}",
    ]
    args = ["source", "serial", "--connect", endpoint, "--rig", "bench", "--stream", "imu"]
    for s in sets:
        args += ["--set", s]
    source = subprocess.Popen([sys.executable, "-m", "fusiond", *args], stderr=subprocess.PIPE, text=True)
    try:
        samples = collect_until(sock, lambda: writer.poll() is not None, 30)
    finally:
        source.terminate()
        _, log = source.communicate(timeout=5)
        writer.communicate(timeout=5)
    assert samples, log
    data = np.concatenate([s.data for s in samples])
    index = data[:, 1].astype(int) * -1  # ay = -i: the writer's line number
    assert np.all(np.diff(index) > 0), "samples arrive in order, none twice"
    np.testing.assert_array_equal(data[:, 0], 2.0 * index)  # scaled
    first, second = index[index < PER_SESSION], index[index >= PER_SESSION]
    assert len(first) >= PER_SESSION - 5 and len(second) >= PER_SESSION - 5, (len(first), len(second))
    # Times come from the sensor's own clock: exactly 1/RATE apart within a session.
    times = np.array([s.t_ns for s in samples])
    steps = np.diff(times)[np.diff(index) == 1] / 1e9
    assert abs(np.median(steps) - 1 / RATE) < 1e-4
    assert "garbage line(s) so far" in log
    assert "lost" in log and "retrying in" in log, log
    assert log.count("source bench/imu (serial):") >= 2  # opened, lost, reopened
    assert "Traceback" not in log


def test_lines_source_follows_a_growing_file_stamped_on_arrival(bus, tmp_path):
    endpoint, sock = bus
    path = tmp_path / "numbers.log"
    path.write_text("rh=1 temp=1\n" * 10)  # already there: not replayed, like tail -f
    args = [
        "source",
        "lines",
        "--connect",
        endpoint,
        "--set",
        f"path='{path}'",
        "--set",
        "format='keyvalue'",
        "--set",
        "values=['temp','rh']",
        "--set",
        "rate_hz=50.0",
        "--set",
        "block=5",
    ]
    collector = Collector(sock)
    source = subprocess.Popen([sys.executable, "-m", "fusiond", *args], stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2.5)
        started = time.time_ns()
        with path.open("a") as f:
            for i in range(100):
                f.write(f"rh={50 + i} temp={20 + i / 10}\n" if i != 40 else "temp=oops\n")
                f.flush()
                time.sleep(0.02)
        samples = collector.finish()
    finally:
        source.terminate()
        _, log = source.communicate(timeout=5)
    assert samples, log
    data = np.concatenate([s.data for s in samples])
    assert data.shape == (95, 2)  # 99 good lines, in blocks of 5
    np.testing.assert_allclose(data[:3], [[20.0, 50], [20.1, 51], [20.2, 52]], rtol=1e-6)
    assert all(started <= s.t_ns <= time.time_ns() for s in samples)
    assert "1 garbage line(s) so far" in log


def test_lines_source_reads_a_fifo(bus, tmp_path):
    endpoint, sock = bus
    fifo = tmp_path / "numbers"
    os.mkfifo(fifo)
    args = [
        "source",
        "lines",
        "--connect",
        endpoint,
        "--set",
        f"path='{fifo}'",
        "--set",
        "format='csv'",
        "--set",
        "columns=['a','b']",
        "--set",
        "values=['b']",
        "--set",
        "rate_hz=100.0",
    ]
    collector = Collector(sock)
    source = subprocess.Popen([sys.executable, "-m", "fusiond", *args], stderr=subprocess.PIPE, text=True)
    try:
        with open(fifo, "w") as f:  # blocks until the source opens its end
            for i in range(50):
                f.write(f"{i},{i * 2}\n")
                f.flush()
                time.sleep(0.01)
        samples = collector.finish()
    finally:
        source.terminate()
        _, log = source.communicate(timeout=5)
    values = np.concatenate([s.data for s in samples])[:, 0]
    np.testing.assert_array_equal(values, np.arange(50) * 2.0)
    assert "Traceback" not in log


def test_lines_source_reads_a_pipe_on_stdin_and_ends_with_it(bus):
    endpoint, sock = bus
    args = [
        "source",
        "lines",
        "--connect",
        endpoint,
        "--set",
        "path='-'",
        "--set",
        "format='csv'",
        "--set",
        "columns=['a','b']",
        "--set",
        "values=['a','b']",
        "--set",
        "rate_hz=100.0",
    ]
    collector = Collector(sock)
    with subprocess.Popen(
        [sys.executable, "-m", "fusiond", *args], stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as source:
        time.sleep(2.0)  # let the PUB connect: what is sent before the subscription is lost
        for i in range(60):
            source.stdin.write(f"{i},{-i}\n" if i != 30 else "thirty,-30\n")
            source.stdin.flush()
            time.sleep(0.01)
        source.stdin.close()
        try:
            rc = source.wait(timeout=10)  # stdin ended: the source ends by itself
        finally:
            source.kill()
            log = source.stderr.read()
            samples = collector.finish()
    assert rc == 0, log
    data = np.concatenate([s.data for s in samples])
    expected = np.array([[i, -i] for i in range(60) if i != 30], np.float32)
    np.testing.assert_array_equal(data, expected)
    assert "1 garbage line(s) so far" in log and "end of data after 59 messages" in log
