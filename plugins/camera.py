"""``camera``: OpenCV capture from a video file, a device index or path, a URL or a
GStreamer pipeline.

Timestamps: a file's frame ``i`` is stamped ``anchor + i / fps / speed`` on the realtime
clock (the rig's shared media timeline: exact, no jitter). A live frame is stamped when
``grab()`` returns, minus ``latency_ms``: expect the camera's exposure-to-USB delay
(typically 30-100 ms for UVC webcams, measure yours and set ``latency_ms``) plus
a few ms of scheduling jitter.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
from pydantic import Field

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
    speed: float = Field(1.0, gt=0)
    """Files only: play this many times faster than recorded."""
    latency_ms: float = 0.0
    """Live devices: how long before the grab the frame was exposed."""
    jpeg_quality: int | None = Field(None, ge=1, le=100)
    """Send JPEG (this quality) instead of raw frames: for a camera on another host."""


class CameraSource(Source):
    """Frames as uint8 arrays [1, H, W, 3] (BGR), one per message."""

    kind = "camera"
    modality = "video"
    Config = CameraConfig

    @classmethod
    def check(cls, config: SourceConfig, base_dir: Path) -> list[str]:
        """A file or device node that is not there (a URL or pipeline needs opening to tell)."""
        cfg: CameraConfig = config  # type: ignore[assignment]
        if "!" in cfg.uri or "://" in cfg.uri:
            return []
        node = Path(f"/dev/video{cfg.uri}") if cfg.uri.isdigit() else None
        if node is not None or cfg.uri.startswith("/dev/"):
            node = node or Path(cfg.uri)
            return [] if node.exists() or not Path("/dev").is_dir() else [f"uri: no such device: {node}"]
        path = base_dir / cfg.uri
        return [] if path.is_file() else [f"uri: no such video file: {path}"]

    def open(self) -> StreamInfo:
        cfg: CameraConfig = self.config  # type: ignore[assignment]
        target: str | int = int(cfg.uri) if cfg.uri.isdigit() else cfg.uri
        pipeline = "!" in cfg.uri
        self.is_file = isinstance(target, str) and "://" not in target and not pipeline
        self.is_file = self.is_file and not cfg.uri.startswith("/dev/")
        if self.is_file and not Path(cfg.uri).is_file():
            msg = f"no such video file: {Path(cfg.uri).resolve()}"
            raise SourceError(msg)
        self.dropped = 0
        if pipeline and "GStreamer:                   YES" not in cv2.getBuildInformation():
            msg = "a GStreamer pipeline needs an OpenCV built with GStreamer (the PyPI wheels are not)"
            raise SourceError(msg)
        self.capture = cv2.VideoCapture(target, cv2.CAP_GSTREAMER) if pipeline else cv2.VideoCapture(target)
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
        frames = self._read_file() if self.is_file else self._read_live()
        cfg: CameraConfig = self.config  # type: ignore[assignment]
        if cfg.jpeg_quality is None:
            return frames
        return self._jpeg(frames, cfg.jpeg_quality)

    def _jpeg(self, frames: Iterator[Block], quality: int) -> Iterator[Block]:
        params = [cv2.IMWRITE_JPEG_QUALITY, quality]
        for block in frames:
            ok, jpeg = cv2.imencode(".jpg", block.data[0], params)
            if ok:
                yield Block(block.data, block.t_ns, payload=jpeg.tobytes())

    def _count_drops(self, missed: int, what: str) -> None:
        if missed <= 0:
            return
        before = self.dropped
        self.dropped += missed
        if before == 0 or self.dropped >= 2 * before:
            self.context.log.warning("camera %s: %d frame(s) dropped so far (%s)",
                                     self.config.uri, self.dropped, what)  # type: ignore[attr-defined]  # fmt: skip

    def _read_file(self) -> Iterator[Block]:
        cfg: CameraConfig = self.config  # type: ignore[assignment]
        ctx = self.context
        period_ns = 1e9 / self.fps / cfg.speed
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
            behind = int((time.time_ns() - t_ns) // period_ns)
            if behind > 0 and index + behind < self.frames:  # decoding fell behind: skip ahead
                for _ in range(behind):
                    self.capture.grab()
                index += behind
                self._count_drops(behind, "decoding slower than the video plays")
                t_ns = play_time(ctx.anchor_ns, loop_index, duration_ns, round(index * period_ns))
            ok, frame = self.capture.read()
            if not ok:
                msg = f"{cfg.uri}: decoding failed at frame {index}"
                raise SourceError(msg)
            yield Block(frame[None], t_ns)
            index += 1

    def _read_live(self) -> Iterator[Block]:
        cfg: CameraConfig = self.config  # type: ignore[assignment]
        period_ns = 1e9 / self.fps
        last = None
        while not self.context.stop.is_set():
            if not self.capture.grab():
                msg = f"{cfg.uri}: device stopped delivering frames"
                raise SourceError(msg)
            t_ns = time.time_ns() - round(cfg.latency_ms * 1e6)
            if last is not None:  # a gap of n periods means n - 1 frames never arrived
                self._count_drops(round((t_ns - last) / period_ns) - 1, "gaps in the device's frames")
            last = t_ns
            ok, frame = self.capture.retrieve()
            if ok:
                yield Block(frame[None], t_ns)

    def from_file(self) -> bool:
        return self.is_file

    def close(self) -> None:
        capture = getattr(self, "capture", None)
        if capture is not None:
            capture.release()


@hookimpl
def fusiond_add_sources(registry: SourceRegistry) -> None:
    """Register the camera kind."""
    registry.add(CameraSource)
