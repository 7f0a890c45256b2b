"""Outputs: the daemon's predictions bridged to a real MQTT broker (Debian's mosquitto)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

from fusiond.client import Subscriber

from .helpers import DaemonProcess, demo_config, free_port, fusiond

pytestmark = pytest.mark.slow


@pytest.fixture
def broker(tmp_path):
    """A mosquitto broker of this test's own on a free port; its port."""
    if shutil.which("mosquitto") is None and not os.path.exists("/usr/sbin/mosquitto"):
        pytest.fail("mosquitto is not installed (scripts/setup.sh installs it)")
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen([binary, "-c", str(conf)], stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "mosquitto did not start"
            time.sleep(0.05)
    yield port
    proc.terminate()
    proc.wait(10)


class Listener:
    """A real MQTT client subscribed to ``topic``; every message kept, in order."""

    def __init__(self, port: int, topic: str) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.messages: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2)
        self.client.on_message = lambda c, u, m: self._keep(m.topic, m.payload, m.retain)
        self.client.on_connect = lambda c, u, f, r, p: c.subscribe(topic, qos=1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _keep(self, topic: str, payload: bytes, retained: bool) -> None:
        with self.lock:
            self.messages.append((topic, payload, retained))

    def wait(self, check, timeout_s: float = 60.0):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                found = check(list(self.messages))
            if found:
                return found
            time.sleep(0.05)
        raise AssertionError(f"not seen in {timeout_s} s; got {self.messages[-5:]}")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _status(control: str) -> dict:
    result = fusiond("status", "--json", "--connect", control)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _config(tmp_path, endpoints, control, port, extra=""):
    path = demo_config(tmp_path, *endpoints, control)
    path.write_text(
        path.read_text() + f'\n[outputs.plant]\nkind = "mqtt"\nport = {port}\nprefix = "plant"\n{extra}'
    )
    return path


def test_predictions_reach_mqtt_as_json_with_a_retained_last_value_and_a_last_will(
    tmp_path, endpoints, broker
):
    control = f"tcp://127.0.0.1:{free_port()}"
    listener = Listener(broker, "plant/#")
    d = DaemonProcess(_config(tmp_path, endpoints, control, broker), tmp_path / "daemon.log")
    d.control = control
    try:
        predictions = listener.wait(lambda ms: [m for m in ms if m[0] == "plant/demo/prediction"][3:] or None)
        assert ("plant/status", b"online", False) in listener.messages
        first = json.loads(predictions[0][1])
        assert first["rig"] == "demo" and first["label"] in first["scores"] and len(first["scores"]) == 10
        assert set(first["present"]) | set(first["missing"]) == {"video", "audio", "imu"}
        assert first["model"]["name"] == "demo-digits" and first["latency_ms"] >= 0
        assert {"modality_labels", "disagreement"} <= set(first)
        seqs = [json.loads(p)["seq"] for _, p, _ in predictions]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # none lost on the way
        # A consumer that connects later gets each rig's last prediction at once.
        late = Listener(broker, "plant/demo/prediction")
        retained = late.wait(lambda ms: [m for m in ms if m[2]] or None)
        late.close()
        assert json.loads(retained[0][1])["rig"] == "demo"
        row = d_row = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the bridge reports once a second
            row = next(o for o in _status(control)["outputs"] if o["name"] == "plant")
            if row["sent"] >= 3 and row["health"].get("connected"):
                break
            time.sleep(0.2)
        assert row["state"] == "running" and row["sent"] >= 3 and row["failed"] == 0, row
        assert row["dropped"] == 0 and row["lost"] == 0, row
        # The bridge dies: the broker says so with its last will; the daemon starts it again.
        os.kill(row["pid"], signal.SIGKILL)
        listener.wait(lambda ms: ms[-1][:2] == ("plant/status", b"offline") or None, timeout_s=30)
        listener.wait(lambda ms: ms[-1][0] == "plant/demo/prediction" or None, timeout_s=60)
        d_row = next(o for o in _status(control)["outputs"] if o["name"] == "plant")
        assert d_row["restarts"] >= 1 and d_row["pid"] != row["pid"]
        # A clean stop says "offline" itself.
        d.stop()
        listener.wait(lambda ms: ms[-1][:2] == ("plant/status", b"offline") or None, timeout_s=30)
    finally:
        listener.close()
        d.close()


def test_a_broker_that_is_away_never_stalls_inference_and_queued_predictions_arrive_later(
    tmp_path, endpoints
):
    """No broker at all: the daemon predicts at its full rate, the bridge queues what it
    may (``max_queued`` = 5 here) and counts the rest as dropped; when the broker comes, the
    queued predictions arrive and new ones follow."""
    control = f"tcp://127.0.0.1:{free_port()}"
    port = free_port()
    d = DaemonProcess(
        _config(tmp_path, endpoints, control, port, "max_queued = 5\n"), tmp_path / "daemon.log"
    )
    d.control = control
    try:
        with Subscriber(endpoints[1], rigs=["demo"], timeout_s=60) as predictions:
            got = [predictions.next() for _ in range(12)]
        assert None not in got  # 2 windows a second, as with no output at all
        deadline = time.monotonic() + 30
        while True:
            row = next(o for o in _status(control)["outputs"] if o["name"] == "plant")
            if row["dropped"] >= 1 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert row["state"] == "running" and row["health"] == {"connected": False}, row
        assert row["sent"] == 5 and row["dropped"] >= 1, row
        conf = tmp_path / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        broker = subprocess.Popen(
            [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(conf)], stderr=subprocess.DEVNULL
        )
        try:
            listener = Listener(_wait_port(port), "plant/#")
            try:
                # The queued and new ones; and "online", though paho's queue was full when it connected.
                listener.wait(
                    lambda ms: len([m for m in ms if m[0] == "plant/demo/prediction"]) >= 8 or None,
                    timeout_s=60,
                )
                listener.wait(lambda ms: ("plant/status", b"online") in [m[:2] for m in ms] or None)
            finally:
                listener.close()
        finally:
            broker.terminate()
            broker.wait(10)
    finally:
        d.close()


def _wait_port(port: int) -> int:
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return port
        except OSError:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_check_config_names_a_bad_output_option_and_an_unknown_kind(tmp_path, endpoints):
    control = f"tcp://127.0.0.1:{free_port()}"
    path = _config(tmp_path, endpoints, control, 1883, "qos = 3\n")
    result = fusiond("check-config", "--config", str(path), "--no-ports")
    assert result.returncode == 2 and "outputs.plant.qos" in result.stderr, result.stderr
    path = _config(tmp_path, endpoints, control, 1883, 'ca_file = "/nonexistent/ca.pem"\ntls = true\n')
    result = fusiond("check-config", "--config", str(path), "--no-ports")
    assert "outputs.plant.ca_file: no such file: /nonexistent/ca.pem" in result.stdout + result.stderr
    text = demo_config(tmp_path, *endpoints, control).read_text() + '\n[outputs.x]\nkind = "carrier-pigeon"\n'
    path.write_text(text)
    result = fusiond("check-config", "--config", str(path), "--no-ports")
    assert result.returncode == 2 and "outputs.x.kind: unknown output kind 'carrier-pigeon'" in result.stderr
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("not a certificate")
    path = _config(tmp_path, endpoints, control, 1883, f'ca_file = "{not_pem}"\ntls = true\n')
    result = fusiond("check-config", "--config", str(path), "--no-ports")
    assert "outputs.plant.ca_file: the TLS files do not load" in result.stdout + result.stderr
    text = demo_config(tmp_path, *endpoints, control).read_text() + '\n[outputs."a b"]\nkind = "mqtt"\n'
    path.write_text(text)
    result = fusiond("check-config", "--config", str(path), "--no-ports")
    assert result.returncode == 2 and "output name must be letters, digits, _ or -" in result.stderr


def test_an_mqtt_topic_of_json_messages_becomes_a_stream_stamped_by_the_sensors_clock(bus, broker):
    """A sensor publishing JSON at 50 Hz with its own millisecond clock (1 % fast, and
    starting at zero): each message's fields by path, in order, stamped on the host's
    clock; garbage (not JSON, a field missing, a bool, a huge message) counted, not fatal."""
    import numpy as np
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from .test_serial import Collector
    from .test_sources import run_source

    endpoint, sock = bus
    collector = Collector(sock)  # a bound SUB tells a new publisher its topics only when read
    proc, _ = run_source(
        endpoint,
        "mqtt",
        f"port={broker}",
        "topic='plant/+/imu'",
        "values=['accel.x', 'accel.z', 'gyro[1]']",
        "time_column='t'",
        "time_unit='ms'",
        "rate_hz=50.0",
        "block=5",
    )
    sensor = mqtt.Client(CallbackAPIVersion.VERSION2)
    sensor.connect("127.0.0.1", broker)
    sensor.loop_start()
    try:
        deadline = time.monotonic() + 60
        while "subscribed" not in _log_so_far(proc) and time.monotonic() < deadline:
            sensor.publish("plant/a/imu", json.dumps({"t": 0, "accel": {"x": 0, "z": 0}, "gyro": [0, 0]}))
            time.sleep(0.2)
        for i in range(100):
            t_ms = i * 20 * 1.01  # the sensor's clock runs 1 % fast
            sensor.publish(
                "plant/a/imu", json.dumps({"t": t_ms, "accel": {"x": i, "z": -9.8}, "gyro": [0, i / 10]})
            )
            if i % 25 == 0:
                for garbage in (
                    "nope",
                    '{"t": 1}',
                    '{"t": 2, "accel": {"x": true, "z": 1}, "gyro": [0, 0]}',
                    "{" + " " * 70_000 + "}",
                ):
                    sensor.publish("plant/a/imu", garbage)
            time.sleep(0.02)
        samples = collector.finish()
    finally:
        collector.stop.set()
        proc.terminate()
        proc.log, _ = proc.communicate(timeout=10)
        sensor.loop_stop()
        sensor.disconnect()
    assert samples, proc.log
    values = np.concatenate([s.data for s in samples])
    tail = values[values[:, 0] > 0]  # the warm-up messages carry zeros
    # In order, none lost; the last block waits for its fifth sample.
    assert tail[:, 0].tolist() == list(range(1, len(tail) + 1)) and len(tail) >= 95, tail[:, 0]
    assert np.allclose(tail[:, 1], -9.8) and np.allclose(tail[:, 2], tail[:, 0] / 10)
    assert {s.rate_hz for s in samples} == {50.0} and all(len(s.data) == 5 for s in samples)
    stamps = [s.t_ns for s in samples]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    assert "garbage line(s) so far" in proc.log, proc.log


def _log_so_far(proc) -> str:
    """What the source process wrote so far (its stdout is a pipe; read what is there)."""
    import select

    out = ""
    while select.select([proc.stdout], [], [], 0)[0]:
        line = proc.stdout.readline()
        if not line:
            break
        out += line
        proc.seen = getattr(proc, "seen", "") + line
    return getattr(proc, "seen", "")
