"""``camera``: OpenCV capture from a video file, a device index or path, or a URL."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path

import cv2

from fusiond.errors import SourceError
from fusiond.plugin import SourceRegistry, hookimpl
from fusiond.sources import Block, Source, SourceConfig, StreamInfo
from fusiond.sources.timeline import play_time, start_position


class CameraConfig(SourceConfig):
    """Options of the ``camera`` kind."""

    uri: str
    """A video file, a device index (``"0"``), ``/dev/videoN``, or an RTSP/HTTP URL."""
    fps: float | None = None
    """Frame rate to request from a device; files play at their own rate."""
    width: int | None = None
    height: int | None = None
    loop: bool = False
    """Files only: start again at the end instead of stopping."""
    latency_ms: float = 0.0
    """Live devices: how long before the grab the frame was exposed."""


class CameraSource(Source):
    """Frames as uint8 arrays [1, H, W, 3] (BGR), one per message."""

    kind = "camera"
    modality = "video"
    Config = CameraConfig

    def open(self) -> StreamInfo:
        cfg: CameraConfig = self.config  # type: ignore[assignment]
        target: str | int = int(cfg.uri) if cfg.uri.isdigit() else cfg.uri
        self.is_file = isinstance(target, str) and "://" not in target
        self.is_file = self.is_file and not cfg.uri.startswith("/dev/")
        if self.is_file and not Path(cfg.uri).is_file():
            msg = f"no such video file: {Path(cfg.uri).resolve()}"
            raise SourceError(msg)
        self.capture = cv2.VideoCapture(target)
        if not self.capture.isOpened():
            msg = f"cannot open {cfg.uri!r} with OpenCV"
            raise SourceError(msg)
        if not self.is_file:
            self._request(cfg)
        self.fps = self.capture.get(cv2.CAP_PROP_FPS) or cfg.fps or 30.0
        self.frames = int(self.capture.get(cv2.CAP_PROP_FRAME_COUNT)) if self.is_file else 0
        w = int(self.capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        h = int(self.capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        what = f"{self.frames} frames" if self.is_file else "live"
        return StreamInfo(self.fps, f"{cfg.uri}: {w}x{h} at {self.fps:g} fps, {what}")

    def _request(self, cfg: CameraConfig) -> None:
        wanted = {cv2.CAP_PROP_FRAME_WIDTH: cfg.width, cv2.CAP_PROP_FRAME_HEIGHT: cfg.height,
                  cv2.CAP_PROP_FPS: cfg.fps}  # fmt: skip
        for prop, value in wanted.items():
            if value:
                self.capture.set(prop, value)

    def read(self) -> Iterator[Block]:
        return self._read_file() if self.is_file else self._read_live()

    def _read_file(self) -> Iterator[Block]:
        cfg: CameraConfig = self.config  # type: ignore[assignment]
        ctx = self.context
        period_ns = 1e9 / self.fps
        duration_ns = round(self.frames * period_ns)
        start = start_position(ctx.anchor_ns, time.time_ns(), duration_ns, cfg.loop)
        if start is None or self.frames <= 0:
            return
        loop_index, offset_ns = start
        index = math.ceil(offset_ns / period_ns)
        if index:
            self.capture.set(cv2.CAP_PROP_POS_FRAMES, index)
        while True:
            if index >= self.frames:
                if not cfg.loop:
                    return
                loop_index, index = loop_index + 1, 0
                self.capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            t_ns = play_time(ctx.anchor_ns, loop_index, duration_ns, round(index * period_ns))
            if not ctx.sleep_until(t_ns):
                return
            ok, frame = self.capture.read()
            if not ok:
                msg = f"{cfg.uri}: decoding failed at frame {index}"
                raise SourceError(msg)
            yield Block(frame[None], t_ns)
            index += 1

    def _read_live(self) -> Iterator[Block]:
        cfg: CameraConfig = self.config  # type: ignore[assignment]
        while not self.context.stop.is_set():
            t_ns = time.time_ns() - round(cfg.latency_ms * 1e6)
            if not self.capture.grab():
                msg = f"{cfg.uri}: device stopped delivering frames"
                raise SourceError(msg)
            ok, frame = self.capture.retrieve()
            if ok:
                yield Block(frame[None], t_ns)

    def close(self) -> None:
        capture = getattr(self, "capture", None)
        if capture is not None:
            capture.release()


@hookimpl
def fusiond_add_sources(registry: SourceRegistry) -> None:
    """Register the camera kind."""
    registry.add(CameraSource)
