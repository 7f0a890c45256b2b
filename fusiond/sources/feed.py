"""Lines as they arrive, from a file, a FIFO, standard input, a serial port or TCP clients.

A reader thread does the blocking reads and hands each line, with the realtime instant it
was read, to the source's thread through a bounded queue; lines beyond the queue, and
lines longer than the limit, are counted and dropped, never buffered without bound.
"""

from __future__ import annotations

import logging
import os
import queue
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from fusiond.errors import SourceError

__all__ = ["LineFeed", "MAX_CLIENTS", "missing_input"]

MAX_CLIENTS = 32


class LineFeed:
    """One of ``path`` (a file followed like ``tail -f``, a FIFO, or ``-`` for standard
    input, which ends the feed when it ends), ``port`` (a serial port or pyserial URL) or
    ``listen`` (``host:port``: a TCP server, every line of every client)."""

    def __init__(
        self,
        stop: threading.Event,
        log: logging.Logger,
        *,
        path: str = "",
        port: str = "",
        baud: int = 115200,
        listen: str = "",
        max_line: int = 4096,
        queue_size: int = 10_000,
    ) -> None:
        self.stop, self.log = stop, log
        self.path, self.port, self.baud, self.listen = path, port, baud, listen
        self.max_line = max_line
        self.lines: queue.Queue[tuple[bytes, int]] = queue.Queue(maxsize=queue_size)
        self.dropped = 0
        """Lines lost: the queue was full, or a line ran past ``max_line`` bytes."""
        self.ended = threading.Event()
        self.address = ""
        self._in_long_line = False

    def start(self) -> str:
        """Open the input (a SourceError says why it cannot) and start reading; returns a
        description for the log."""
        if self.listen:
            target = self._bind()
        elif self.port:
            target = self._open_serial()
        else:
            if self.path != "-" and not os.path.exists(self.path):
                msg = f"cannot open {self.path}: no such file or FIFO"
                raise SourceError(msg)
            target = self._read_path
        threading.Thread(target=target, name="fusiond-feed", daemon=True).start()
        return self.address or self.port or self.path

    def get(self, timeout: float = 0.2) -> tuple[bytes, int] | None:
        """The next ``(line, read_ns)``, or None when none came within ``timeout``."""
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            return None

    @property
    def finished(self) -> bool:
        """The input ended (standard input closed) and every line was taken."""
        return self.ended.is_set() and self.lines.empty()

    def _put(self, line: bytes) -> None:
        # A read stops after max_line + 1 bytes: a longer line comes in pieces. The first
        # piece is counted and dropped, and so is the rest, up to and including its newline.
        if self._in_long_line:
            self._in_long_line = not line.endswith(b"\n")
            return
        if len(line) > self.max_line:
            self.dropped += 1
            self._in_long_line = not line.endswith(b"\n")
            return
        try:
            self.lines.put_nowait((line, time.time_ns()))
        except queue.Full:
            self.dropped += 1

    def _read_path(self) -> None:
        try:
            stream = sys.stdin.buffer if self.path == "-" else open(self.path, "rb")  # noqa: SIM115
        except OSError as exc:
            self.log.error("%s: %s", self.path, exc)
            return
        with stream:
            if stream.seekable():
                stream.seek(0, os.SEEK_END)  # like tail -f: what is written from now on
            while not self.stop.is_set():
                line = stream.readline(self.max_line + 1)
                if not line and self.path == "-":
                    self.ended.set()  # the program writing into the pipe is gone for good
                    return
                if not line:  # the end of a file (wait for more), or a FIFO's writer left
                    self.stop.wait(0.05)
                    continue
                self._put(line)

    def _open_serial(self) -> Callable[[], None]:
        import serial

        try:
            self._serial = serial.serial_for_url(self.port, baudrate=self.baud, timeout=0.2)
        except (serial.SerialException, OSError) as exc:
            msg = f"cannot open {self.port}: {exc}"
            raise SourceError(msg) from None
        return self._read_serial

    def _read_serial(self) -> None:
        import serial

        with self._serial as port:
            while not self.stop.is_set():
                try:
                    line = port.readline(self.max_line + 1)
                except (serial.SerialException, OSError) as exc:
                    self.log.error("%s lost: %s", self.port, exc)
                    self.ended.set()
                    return
                if line.endswith(b"\n") or len(line) > self.max_line:  # else a timeout's partial line
                    self._put(line)

    def _bind(self) -> Callable[[], None]:
        host, _, port = self.listen.rpartition(":")
        try:
            server = socket.create_server((host or "127.0.0.1", int(port)), reuse_port=False)
        except (OSError, ValueError) as exc:
            msg = f"cannot listen on {self.listen}: {exc}"
            raise SourceError(msg) from None
        server.setblocking(False)
        self.address = "tcp://{}:{}".format(*server.getsockname()[:2])
        self._server = server
        return self._serve

    def _serve(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self._server, selectors.EVENT_READ)
        pending: dict[socket.socket, bytearray] = {}
        discarding: set[socket.socket] = set()  # clients in the middle of a line over the limit
        try:
            while not self.stop.is_set():
                for key, _ in selector.select(0.2):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if sock is self._server:
                        client, _ = self._server.accept()
                        if len(pending) >= MAX_CLIENTS:
                            client.close()
                            continue
                        client.setblocking(False)
                        selector.register(client, selectors.EVENT_READ)
                        pending[client] = bytearray()
                        continue
                    data = sock.recv(65536)
                    if not data:
                        selector.unregister(sock)
                        sock.close()
                        del pending[sock]
                        discarding.discard(sock)
                        continue
                    if sock in discarding:  # the rest of a line already dropped, up to its end
                        end = data.find(b"\n")
                        if end < 0:
                            continue
                        discarding.discard(sock)
                        data = data[end + 1 :]
                    buffer = pending[sock]
                    buffer += data
                    *lines, rest = buffer.split(b"\n")
                    for line in lines:
                        self._put(bytes(line) + b"\n")
                    if len(rest) > self.max_line:  # over the limit before its end: dropped whole
                        self.dropped += 1
                        rest.clear()
                        discarding.add(sock)
                    pending[sock] = rest
        finally:
            for sock in pending:
                sock.close()
            self._server.close()
            selector.close()


def missing_input(base_dir: Path, *, path: str = "", port: str = "") -> list[str]:
    """``check`` lines for a file/FIFO ``path`` (``-``: standard input) or a serial ``port``
    (a pyserial URL needs opening to tell) that is not there."""
    if path and path != "-" and not (base_dir / path).exists():
        return [f"path: no such file or FIFO: {base_dir / path}"]
    if port and "://" not in port and not (base_dir / port).exists():
        return [f"port: no such serial port: {port}"]
    return []
