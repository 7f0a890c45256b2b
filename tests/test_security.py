"""A secured bus (CurveZMQ), against the real daemon: keys made by ``fusiond keys``,
sources and readers with allowed keys get through, nobody else does, and a key bound to
one rig cannot publish as another."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from fusiond.bus.security import Keys, client_keys
from fusiond.bus.sockets import Sockets
from fusiond.bus.wire import encode_sample
from fusiond.client import Subscriber
from fusiond.errors import ConfigError

from .helpers import DaemonProcess, demo_config, free_port, fusiond

pytestmark = pytest.mark.slow


@pytest.fixture
def secured_config(tmp_path, endpoints):
    """Keys for a server, the daemon's sources, a reader, a camera host and an intruder
    (whose key is not allowed), and the demo config on a secured bus: (config, control)."""
    for name, folder in [
        ("server", "keys"),
        ("daemon", "clients"),
        ("reader", "clients"),
        ("cam", "clients"),
        ("intruder", "elsewhere"),
    ]:
        result = fusiond("keys", "generate", name, "--dir", str(tmp_path / folder))
        assert result.returncode == 0, result.stderr
    listed = fusiond("keys", "list", "--dir", str(tmp_path / "clients")).stdout
    assert [line.split()[0] for line in listed.splitlines()] == ["cam", "daemon", "reader"]
    control = f"tcp://127.0.0.1:{free_port()}"
    config = demo_config(tmp_path, *endpoints, control)
    config.write_text(
        config.read_text()
        + f"""
[bus.security]
mode = "curve"
server_key = "{tmp_path}/keys/server.key_secret"
clients = "{tmp_path}/clients"
client_key = "{tmp_path}/clients/daemon.key_secret"

[bus.security.publishers]
cam = ["lab"]
"""
    )
    return config, control


@pytest.fixture
def secured(tmp_path, secured_config):
    config, control = secured_config
    d = DaemonProcess(config, tmp_path / "daemon.log")
    server = tmp_path / "keys/server.key"
    keys = {
        name: client_keys(tmp_path / folder / f"{name}.key_secret", server)
        for name, folder in [("reader", "clients"), ("cam", "clients"), ("intruder", "elsewhere")]
    }
    yield d, control, keys, tmp_path
    d.close()


def test_only_allowed_keys_connect_and_a_key_publishes_only_its_rigs(secured, endpoints):
    d, control, keys, tmp_path = secured
    d.wait_for("fusiond ready")  # the daemon's own sources reached it with the daemon's key
    with Subscriber(endpoints[1], rigs=["demo"], timeout_s=30, keys=keys["reader"]) as predictions:
        got = [predictions.next() for _ in range(8)]
    # Every source authenticated: windows with all three modalities (the first ones may
    # close before every stream has covered them, on a loaded machine).
    assert None not in got and sum(p.missing == [] for p in got) >= 3, [p.missing for p in got]
    for who in (Keys(), keys["intruder"]):  # no CURVE at all; CURVE with a key nobody allowed
        with Subscriber(endpoints[1], timeout_s=3, keys=who) as predictions:
            assert predictions.next() is None
    # The cam key may publish rig lab only: samples it sends as demo/imu go nowhere.
    with Sockets(keys=keys["cam"]) as sockets:
        pub = sockets.publisher(endpoints[0])
        time.sleep(1.0)
        now = time.time_ns()
        for i in range(20):
            pub.send_multipart(
                encode_sample(
                    rig="demo",
                    stream="imu",
                    modality="imu",
                    seq=10**6 + i,
                    t_ns=now,
                    t_pub_ns=now,
                    rate_hz=100.0,
                    data=np.zeros((10, 1), np.float32),
                )
            )
        time.sleep(1.0)
    plain = fusiond("status", "--json", "--connect", control, "--timeout", "2")
    assert plain.returncode == 1 and "no daemon answered" in plain.stderr
    status = fusiond(
        "status",
        "--json",
        "--connect",
        control,
        "--key",
        str(tmp_path / "clients/reader.key_secret"),
        "--server-key",
        str(tmp_path / "keys/server.key"),
    )
    assert status.returncode == 0, status.stderr
    drops = json.loads(status.stdout)["drops"]
    assert drops.get("not_allowed", 0) >= 20, drops
    assert drops.get("unauthenticated", 0) >= 1, drops  # the intruder's handshake
    assert "seq_reset" not in drops  # none of the cam key's messages reached ingest
    assert "key 'cam' may not publish" in d.text()
    with Subscriber(endpoints[1], rigs=["demo"], timeout_s=30, keys=keys["reader"]) as predictions:
        after = [predictions.next() for _ in range(2)]
    assert None not in after and all(p.missing == [] for p in after)


def test_an_exposed_endpoint_without_security_is_refused(tmp_path, endpoints):
    config = demo_config(tmp_path, *endpoints)
    config.write_text(config.read_text().replace(endpoints[0], "tcp://*:" + endpoints[0].rsplit(":", 1)[1]))
    result = fusiond("check-config", "--config", str(config))
    assert result.returncode == 2
    assert "bus.publish" in result.stderr or "publish = 'tcp://*:" in result.stderr
    assert "allow_insecure" in result.stderr


def test_a_client_with_half_its_keys_gets_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="FUSIOND_SERVER_KEY"):
        client_keys(environ={"FUSIOND_KEY": str(tmp_path / "x.key_secret")})


def test_a_publish_rule_names_a_rig_or_a_stream(tmp_path, endpoints):
    config = demo_config(tmp_path, *endpoints)
    config.write_text(config.read_text() + '\n[bus.security.publishers]\ncam = ["demo/cam/extra"]\n')
    result = fusiond("check-config", "--config", str(config))
    assert result.returncode == 2
    assert "bus.security.publishers" in result.stderr and "demo/cam/extra" in result.stderr


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (("keys/server.key_secret", "keys/server.key"), "server.key holds no secret key"),
        (("clients/daemon.key_secret", "elsewhere/intruder.key_secret"), "the public half of"),
        (("clients/daemon.key_secret", "clients/absent.key_secret"), "bus.security.client_key"),
    ],
)
def test_check_config_finds_the_key_problems_run_would_meet(secured_config, edit, expected):
    """A server key without its secret half, a client key the daemon's own sources could not
    use (not among the allowed clients), one that is not there: one line each, before any
    daemon starts."""
    config, _ = secured_config
    config.write_text(config.read_text().replace(*edit))
    result = fusiond("check-config", "--config", str(config))
    assert result.returncode == 2 and expected in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
