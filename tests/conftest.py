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
