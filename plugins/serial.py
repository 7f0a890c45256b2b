"""``serial``: an IMU or any sensor that writes lines of numbers to a serial port."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import serial

from fusiond.errors import SourceConfigError, SourceError
from fusiond.plugin import SourceRegistry, hookimpl
from fusiond.sources import Block, Source, StreamInfo
from fusiond.sources.feed import missing_input
from fusiond.sources.lines import LineOptions, LineReader, line_problems


class SerialConfig(LineOptions):
    """Options of the ``serial`` kind (plus the line options: format, values, ...)."""

    port: str
    """``/dev/ttyUSB0``, ``/dev/serial/by-id/...``, or any pyserial URL."""
    baud: int = 115200


class SerialSource(Source[SerialConfig]):
    """Blocks of float32 samples [block, len(values)]; reconnects when the port vanishes."""

    kind = "serial"
    modality = "imu"
    Config = SerialConfig

    @classmethod
    def check(cls, config: SerialConfig, base_dir: Path) -> list[str]:
        """The line options agree, and a port given as a path exists (a URL needs opening)."""
        cfg = config
        return line_problems(cfg) + missing_input(base_dir, port=cfg.port)

    def open(self) -> StreamInfo:
        cfg = self.config
        try:
            self.reader = LineReader(cfg, f"serial {cfg.port}", self.context.log)
        except ValueError as exc:
            raise SourceConfigError(str(exc)) from None
        try:
            self.port = serial.serial_for_url(cfg.port, baudrate=cfg.baud, timeout=0.2)
        except (serial.SerialException, OSError) as exc:
            msg = f"cannot open {cfg.port}: {exc}"
            raise SourceError(msg) from None
        self.port.reset_input_buffer()
        return StreamInfo(
            cfg.rate_hz, f"{cfg.port} at {cfg.baud} baud, {cfg.format} {cfg.values}", **cfg.labels()
        )

    def read(self) -> Iterator[Block]:
        cfg = self.config
        first = True
        while not self.context.stop.is_set():
            try:
                raw = self.port.readline()
            except (serial.SerialException, OSError) as exc:
                msg = f"{cfg.port} lost: {exc}"
                raise SourceError(msg) from None
            if not raw.endswith(b"\n"):
                continue  # a timeout, or a partial line
            if first:  # the first line may have started before the port opened
                first = False
                continue
            block = self.reader.feed(raw, time.time_ns())
            if block is not None:
                yield block

    def close(self) -> None:
        port = getattr(self, "port", None)
        if port is not None:
            port.close()


@hookimpl
def fusiond_add_sources(registry: SourceRegistry) -> None:
    """Register the serial kind."""
    registry.add(SerialSource)
