from __future__ import annotations

import gc
import os
import warnings

import pytest

from . import processes
from .helpers import free_port

SUBREAPER = processes.become_subreaper()


@pytest.fixture(autouse=True)
def _no_process_outlives_its_test():
    """Owns every process the test starts, however it starts it: after the test, what is
    still running (after a few seconds' grace for what is exiting) is killed, whole
    process groups, and the test fails, so a leak never meets a later test."""
    before = set(processes.descendants())
    yield
    left = processes.settle(before, wait_s=5.0)
    if not left:
        return
    names = [processes.describe(pid) for pid in left]
    processes.kill(left)
    with warnings.catch_warnings():
        # The killed processes' Popen objects, if the test dropped them, would warn
        # "still running" when collected, in whichever later test that happens.
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
    pytest.fail("processes outlived the test (killed now):\n" + "\n".join(names), pytrace=False)


def pytest_sessionfinish(session, exitstatus):
    """The session-wide check: nothing the suite started is left when it ends."""
    left = processes.settle(set(), wait_s=5.0)
    processes.reap_orphans()  # at the end only: a zombie may still belong to a fixture's Popen
    if left:
        print("\nprocesses outlived the test session (killed now):")
        for pid in left:
            print("  " + processes.describe(pid))
        processes.kill(left)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def endpoints() -> tuple[str, str]:
    return f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch):
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")


class TestSockets:
    """ZeroMQ sockets for one test: linger 0, bound on ports the system picks (no race
    with another process for a port chosen ahead), all closed and the context ended after."""

    def __init__(self) -> None:
        import zmq

        self.ctx = zmq.Context()
        self.made: list[zmq.Socket] = []

    def make(self, kind: int, *, subscribe: tuple[bytes, ...] = ()):
        import zmq

        sock = self.ctx.socket(kind)
        self.made.append(sock)
        sock.setsockopt(zmq.LINGER, 0)
        for topic in subscribe:
            sock.subscribe(topic)
        return sock

    def bound(self, kind: int, *, subscribe: tuple[bytes, ...] = ()):
        """A socket bound on a free local TCP port, and the endpoint to connect to it."""
        sock = self.make(kind, subscribe=subscribe)
        port = sock.bind_to_random_port("tcp://127.0.0.1")
        return sock, f"tcp://127.0.0.1:{port}"

    def close(self) -> None:
        for sock in self.made:
            sock.close(linger=0)
        self.ctx.term()


@pytest.fixture
def sockets():
    """:class:`TestSockets` of this test."""
    made = TestSockets()
    yield made
    made.close()


@pytest.fixture
def bus(sockets):
    """A SUB socket bound where sources connect, subscribed to samples: a stand-in daemon."""
    import zmq

    sock, endpoint = sockets.bound(zmq.SUB, subscribe=(b"s/",))
    return endpoint, sock
