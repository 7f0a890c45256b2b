from __future__ import annotations

import os

import pytest

from .helpers import free_port


@pytest.fixture
def endpoints() -> tuple[str, str]:
    return f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch):
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")


@pytest.fixture
def bus(endpoints):
    """A SUB socket bound where sources connect, subscribed to samples: a stand-in daemon."""
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoints[0])
    sock.subscribe(b"s/")
    yield endpoints[0], sock
    sock.close()
    ctx.term()
