"""The daemon in this process: READY, the control protocol, reload, and an engine of a
test's own (one class, one table entry), over real sockets and real source processes."""

from __future__ import annotations

import functools
import itertools
import json
import logging
import threading
import time
from contextlib import contextmanager
from typing import Any

import pytest
import zmq

from fusiond import config as config_mod
from fusiond import status
from fusiond.client import Subscriber
from fusiond.daemon import Daemon
from fusiond.plugin import load_plugins
from fusiond.runtime.engines import ENGINES
from fusiond.runtime.server import run_server
from fusiond.runtime.worker import run_worker

from .helpers import ROOT, demo_config, free_port

pytestmark = pytest.mark.slow


class ToyEngine:
    """The worker and the server each in a thread of this process, never restarted: all an
    engine needs is where its sockets go, how to make one, and the five Engine methods."""

    @classmethod
    def endpoint(cls, config: Any, purpose: str, owner: str) -> str:
        return f"inproc://toy-{purpose}-{owner}"

    @classmethod
    def bus(cls, config: Any, broker: Any) -> tuple[str, str]:
        return broker.inproc_subscribe, broker.inproc_publish

    @classmethod
    def create(cls, plan: Any, config: Any, ctx: zmq.Context, keys: Any, plugins: Any) -> ToyEngine:
        return cls(plan, ctx, plugins)

    def __init__(self, plan: Any, ctx: zmq.Context, plugins: Any) -> None:
        self.plan, self.server_inbox = plan, plan.server.inbox
        self.stop_event = threading.Event()
        self.threads = {
            spec.name: threading.Thread(target=run_worker, args=(spec, self.stop_event, ctx))
            for spec in plan.workers
        }
        server = functools.partial(run_server, plan.server_spec(), self.stop_event, plugins, ctx)
        self.threads = {plan.server.name: threading.Thread(target=server), **self.threads}
        self.started: list[str] = []

    def start(self) -> None:
        for name, thread in self.threads.items():  # the server first: its inbox is bound
            thread.start()
            self.started.append(name)

    def poll(self) -> list[str]:
        started, self.started = self.started, []
        return started

    def rows(self) -> list[dict[str, Any]]:
        return [
            {
                "name": n,
                "state": "running" if t.is_alive() else "ended",
                "pid": None,
                "restarts": 0,
                "rigs": self.plan.rigs_of(n),
            }
            for n, t in self.threads.items()
        ]

    def stop(self, deadline: float) -> None:
        self.stop_event.set()
        for thread in self.threads.values():
            thread.join(max(0.0, deadline - time.monotonic()))

    def kill(self, name: str) -> bool:
        return False


@contextmanager
def running(config_path, **kwargs):
    """The daemon of ``config_path`` serving in a thread of this process until the block ends."""
    config = config_mod.load(config_path)
    stop, reload = threading.Event(), threading.Event()
    with Daemon(config, load_plugins(), config_path=config_path, **kwargs) as daemon:
        thread = threading.Thread(target=daemon.run, args=(stop, reload))
        thread.start()
        try:
            yield daemon, reload
        finally:
            stop.set()
            thread.join(10)


def wait_for(check, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


def ask(endpoint: str, *frames: bytes) -> dict:
    ctx = zmq.Context.instance()
    with ctx.socket(zmq.REQ) as req:
        req.setsockopt(zmq.LINGER, 0)
        req.connect(endpoint)
        req.send_multipart(list(frames))
        assert req.poll(10_000), "no answer"
        return json.loads(req.recv())


def test_a_toy_engine_is_one_class_and_one_table_entry(tmp_path, endpoints):
    """``[runtime] engine = "toy"`` with the toy in the table: the daemon runs its
    components through it, becomes READY once every source delivered, and publishes right
    predictions; an engine the table lacks is a config error naming the key."""
    control = f"tcp://127.0.0.1:{free_port()}"
    path = demo_config(tmp_path, *endpoints, control, **{"[runtime]\n": '[runtime]\nengine = "toy"\n'})
    with pytest.raises(Exception, match=r"runtime.engine.*no engine 'toy'"):
        Daemon(config_mod.load(path), load_plugins())
    with (
        Subscriber(endpoints[1], rigs=["demo"], timeout_s=60) as predictions,
        running(path, engines={**ENGINES, "toy": ToyEngine}) as (daemon, _),
    ):
        assert predictions.next() is not None
        wait_for(lambda: daemon.ready)
        reply = ask(control, b"status")
    assert reply["ready"] and reply["runtime"]["engine"] == "toy"
    assert {c["name"] for c in reply["runtime"]["components"]} == {"server", "worker-0"}
    assert all(c["state"] == "running" and c["failed_starts"] == 0 for c in reply["runtime"]["components"])
    assert reply["rigs"][0]["predictions"] >= 1 and not reply["never_delivered"]


def test_the_control_endpoint_answers_status_clock_probes_and_anything_else(tmp_path, endpoints):
    control = f"tcp://127.0.0.1:{free_port()}"
    path = demo_config(tmp_path, *endpoints, control)
    with running(path) as (daemon, _):
        wait_for(lambda: daemon.ready)
        before = time.time_ns()
        probe = ask(control, b"time", str(before).encode())
        assert probe["t1"] == before and before <= probe["t2"] <= probe["t3"] <= time.time_ns()
        assert probe["t_str"] == [str(probe[k]) for k in ("t1", "t2", "t3")]  # for JSON.parse
        refused = ask(control, b"reboot", b"now")
        assert "unknown request" in refused["error"] and refused["known"] == ["status", "time"]
        assert "unknown request" in ask(control, b"time", b"-1")["error"]
        shown = ask(control, b"status")
        assert shown["model"]["name"] == "demo-digits" and shown["runtime"]["engine"] == "threads"
        text = status.as_text(shown)
        assert text.startswith("fusiond up") and "ready" in text and "demo/cam" in text
        # onnxruntime's execution providers, as the server chose them ([model] providers = auto)
        served = wait_for(
            lambda: ask(control, b"status")["model"].get("providers") and ask(control, b"status")
        )
        assert served["model"]["providers"] == "CPUExecutionProvider"
        assert "on cpu with CPUExecutionProvider" in status.as_text(served)


def test_reload_swaps_the_model_and_a_bad_one_keeps_the_running_model(tmp_path, endpoints, caplog):
    """SIGHUP's path in-process: a new checkpoint is served without a restart, and a config
    whose model cannot load is logged while the running model keeps serving."""
    model = tmp_path / "model.pt"
    model.write_bytes((ROOT / "demo/model.pt").read_bytes())
    path = demo_config(tmp_path, *endpoints)
    text = path.read_text().replace(f'"{ROOT}/demo/model.pt"', f'"{model}"')
    assert str(model) in text
    path.write_text(text)
    caplog.set_level(logging.INFO, logger="fusiond")
    with running(path) as (daemon, reload):
        wait_for(lambda: daemon.ready)
        served = daemon.model_info()["hash"]
        path.write_text(text.replace(f'"{model}"', f'"{tmp_path / "missing.pt"}"'))
        reload.set()
        wait_for(lambda: "reload failed, still serving demo-digits" in caplog.text)
        other = tmp_path / "other.pt"
        other.write_bytes(model.read_bytes())
        path.write_text(text.replace(f'"{model}"', f'"{other}"').replace('level = "info"', 'level = "debug"'))
        reload.set()
        wait_for(lambda: f"reloading the model: {other}" in caplog.text)
        wait_for(lambda: "reloaded: now serving" in caplog.text)
        assert daemon.config.model.path == other and daemon.model_info()["hash"] == served
        assert daemon.config.log.level == "debug"


def test_health_probes_say_ready_alive_and_a_loop_that_stopped(tmp_path, endpoints):
    """``/readyz`` is 503 until READY, then 200; ``/healthz`` is 200 while the loop turns and
    503 once it stops; ``/metrics`` is still Prometheus text."""
    import urllib.error
    import urllib.request

    port = free_port()
    path = demo_config(tmp_path, *endpoints, **{'listen = ""': f'listen = "127.0.0.1:{port}"'})

    def probe(name: str) -> tuple[int, dict | str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/{name}", timeout=5) as reply:
                body = reply.read().decode()
                return reply.status, (json.loads(body) if name != "metrics" else body)
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read().decode())
        except (urllib.error.URLError, ConnectionError):  # closed unread: every slot was taken
            return 0, {}

    stop = threading.Event()
    with Daemon(config_mod.load(path), load_plugins(), config_path=path) as daemon:
        code, body = probe("readyz")
        assert code == 503 and not body["ready"] and "not ready yet" in body["why"], body
        thread = threading.Thread(target=daemon.run, args=(stop,))
        thread.start()
        try:
            wait_for(lambda: daemon.ready)
            assert probe("readyz")[0] == 200
            code, body = probe("healthz")
            assert code == 200 and body["ok"], body
            code, text = probe("metrics")
            assert code == 200 and 'fusiond_source_up{source="demo/cam"} 1.0' in text
            assert probe("nothing")[0] == 404
            # Hostile clients: half-sent requests that never finish, and resets mid-request.
            import socket as socketlib

            threads = threading.active_count()
            held = [socketlib.create_connection(("127.0.0.1", port)) for _ in range(100)]
            for conn in held:
                conn.sendall(b"GET /healthz HTTP/1.1\r\n")
            for _ in range(50):
                with socketlib.create_connection(("127.0.0.1", port)) as conn:
                    conn.setsockopt(
                        socketlib.SOL_SOCKET, socketlib.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                    )
            assert threading.active_count() <= threads + 40  # at most 32 requests at once
            for conn in held:
                conn.close()
            wait_for(lambda: probe("healthz")[0] == 200, timeout_s=30)  # served again once they time out
            assert daemon.ready and daemon.stats.all_drops().get("internal_error", 0) == 0
        finally:
            stop.set()
            thread.join(10)
        code, body = wait_for(lambda: (r := probe("healthz"))[0] == 503 and r, timeout_s=30)
        assert "loop has not turned" in body["why"] and probe("readyz")[0] == 503


def test_events_are_label_changes_that_held_on_the_bus_and_echo_shows_them(tmp_path, endpoints):
    """``[events]``: the demo's digit changes every 2 s; each change that held for 500 ms
    (two 1 s windows in a row) is one event on ``ev/demo``, chained state to state, and ``fusiond echo ev/``
    prints them. Predictions forged on the bus meanwhile (a class the model lacks, sure,
    with huge numbers) move no state: events come from the model's own predictions."""
    import msgpack

    from .helpers import fusiond

    on = "enabled = true\nenter = 0.5\nexit = 0.3\n"
    path = demo_config(tmp_path, *endpoints, **{"enabled = false\n": on})
    assert "hold_ms = 500 " in path.read_text()
    stop = threading.Event()

    def forge() -> None:
        with zmq.Context.instance().socket(zmq.PUB) as pub:
            pub.connect(endpoints[0])
            seq = 2**62
            while not stop.wait(0.05):
                seq += 1
                forged = {"v": [1, 2], "type": "prediction", "rig": "demo", "seq": seq, "window_start_ns": 0}
                forged |= {"window_end_ns": seq, "label": "zzz", "classes": ["zzz"], "scores": [1.0]}
                forged |= {"present": [], "missing": [], "model": {}, "latency_ns": {}, "t_pub_ns": 0}
                pub.send_multipart([b"p/demo", msgpack.packb(forged)])

    forger = threading.Thread(target=forge)
    with running(path) as (daemon, _):
        forger.start()
        try:
            shown = fusiond(
                "echo",
                "ev/",
                "--count",
                "4",
                "--json",
                "--timeout",
                "60",
                "--connect",
                endpoints[1],
                timeout=150,
            )
            pretty = fusiond(
                "echo", "ev/demo", "--count", "1", "--timeout", "60", "--connect", endpoints[1], timeout=90
            )
        finally:
            stop.set()
            forger.join()
    assert shown.returncode == 0, shown.stderr
    got = [json.loads(line) for line in shown.stdout.splitlines()]
    assert len(got) == 4 and all(e["type"] == "event" and e["rig"] == "demo" for e in got)
    classes = set(daemon.card.classes) | {"unknown"}
    for before, after in itertools.pairwise(got):
        assert after["previous"] == before["state"] != after["state"]
        assert after["seq"] == before["seq"] + 1 and after["start_ns"] >= before["t_ns"] - 10**9
    for e in got:
        assert e["state"] in classes and e["t_ns"] - e["start_ns"] >= 1_500_000_000
        assert 1 <= len(e["windows"]) == e["supported_by"] and e["windows"] == sorted(e["windows"])
    assert pretty.returncode == 0 and " -> " in pretty.stdout and "held" in pretty.stdout, pretty.stderr


def test_reject_publishes_unknown_with_the_scores_and_a_model_without_thresholds_is_refused(
    tmp_path, endpoints
):
    """``[model] reject``: the demo model predates reject thresholds, so it needs the
    config's (check-config says so, naming the key); with a bar no window reaches every
    label is withheld (short of a score of 1.0), the best one and the scores kept."""
    from .helpers import fusiond

    plain = demo_config(tmp_path, *endpoints)
    refused = plain.read_text().replace("[model]\n", "[model]\nreject = true\n", 1)
    plain.write_text(refused)
    result = fusiond("check-config", "--config", str(plain), "--no-ports")
    assert result.returncode == 2 and "model.reject" in result.stderr and "reject_confidence" in result.stderr
    plain.write_text(refused.replace("reject = true\n", "reject = true\nreject_confidence = 1.0\n"))
    with Subscriber(endpoints[1], rigs=["demo"], timeout_s=60) as predictions, running(plain):
        got = [predictions.next() for _ in range(3)]
    for p in got:
        if max(p.scores) >= 1.0:  # sure to 5 decimals: even this bar passes it
            assert p.label in p.classes and "rejected" not in p.extra
            continue
        assert p.label == "unknown" and p.extra["rejected"] == "confidence"
        assert p.extra["best"] == p.classes[max(range(len(p.scores)), key=p.scores.__getitem__)]
    assert any(p.label == "unknown" for p in got)  # trained with label smoothing: rarely that sure
