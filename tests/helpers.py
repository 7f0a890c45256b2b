"""Helpers for tests that run the real daemon and commands."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fusiond(*args: str, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess[str]:
    """Run the real ``fusiond`` command."""
    return subprocess.run([sys.executable, "-m", "fusiond", *args], capture_output=True,
                          text=True, timeout=timeout, **kwargs)  # fmt: skip




def demo_config(tmp_path: Path, publish: str, subscribe: str, control: str = "", **replace: str) -> Path:
    """The repository's config.toml on fresh ports, with absolute paths and edits."""
    text = (ROOT / "config.toml").read_text()
    text = text.replace("tcp://127.0.0.1:7710", publish).replace("tcp://127.0.0.1:7711", subscribe)
    text = text.replace("tcp://127.0.0.1:7712", control or f"tcp://127.0.0.1:{free_port()}")
    text = text.replace('"demo/', f'"{ROOT}/demo/').replace("summary_s = 5", "summary_s = 1")
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def opencv_data(name: str) -> Path:
    """A file of opencv-doc's sample data (.ci/run fetches it into .cache/)."""
    for folder in (ROOT / ".cache/opencv-doc/usr/share/doc/opencv-doc/examples/data",
                   Path("/usr/share/doc/opencv-doc/examples/data")):  # fmt: skip
        if (folder / name).exists():
            return folder / name
    msg = f"{name} not found: apt-get download opencv-doc && dpkg -x opencv-doc_*.deb .cache/opencv-doc"
    raise FileNotFoundError(msg)
