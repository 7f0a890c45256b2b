"""``camera``: OpenCV capture from a video file, a device index or path, a URL or a
GStreamer pipeline.

Timestamps, by mode:

- A file: each frame at its presentation time from the container (``CAP_PROP_POS_MSEC``),
  on the rig's media timeline: ``anchor + pts / speed``. Exact, no jitter, and right for
  variable-frame-rate recordings (phones, screen captures), whose frames are not
  ``1 / fps`` apart. Each frame carries its own rate: one over its time since the last.
- A live device, URL or pipeline: the moment ``grab()`` returned, minus ``latency_ms``
  (expect the camera's exposure-to-USB delay, typically 30-100 ms for UVC webcams, plus a
  few ms of scheduling jitter). The rate published is the one measured over the last
  frames, not the one the device or OpenCV claims (OpenCV guesses 25 fps for an MJPEG
  stream whatever it delivers); ``fps`` overrides it. Dropped frames are counted only
  from gaps in the measured rhythm.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import deque
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
    fps: float | None = Field(None, gt=0, le=10_000)
    """Live: the frame rate to request from the device, and to publish instead of the one
    measured. Files play at their own (presentation) times."""
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


class CameraSource(Source[CameraConfig]):
    """Frames as uint8 arrays [1, H, W, 3] (BGR), one per message."""

    kind = "camera"
    modality = "video"
    Config = CameraConfig

    @classmethod
    def check(cls, config: CameraConfig, base_dir: Path) -> list[str]:
        """A file or device node that is not there (a URL or pipeline needs opening to tell)."""
        cfg = config
        if "!" in cfg.uri or "://" in cfg.uri:
            return []
        node = Path(f"/dev/video{cfg.uri}") if cfg.uri.isdigit() else None
        if node is not None or cfg.uri.startswith("/dev/"):
            node = node or Path(cfg.uri)
            return [] if node.exists() or not Path("/dev").is_dir() else [f"uri: no such device: {node}"]
        path = base_dir / cfg.uri
        return [] if path.is_file() else [f"uri: no such video file: {path}"]

    def open(self) -> StreamInfo:
        cfg = self.config
        target: str | int = int(cfg.uri) if cfg.uri.isdigit() else cfg.uri
        pipeline = "!" in cfg.uri
        self.is_file = isinstance(target, str) and "://" not in target and not pipeline
        self.is_file = self.is_file and not cfg.uri.startswith("/dev/")
        if self.is_file and not Path(cfg.uri).is_file():
            msg = f"no such video file: {Path(cfg.uri).resolve()}"
            raise SourceError(msg)
        self.dropped = 0
        self._rate_said = False
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
        wanted = {
            cv2.CAP_PROP_FRAME_WIDTH: cfg.width,
            cv2.CAP_PROP_FRAME_HEIGHT: cfg.height,
            cv2.CAP_PROP_FPS: cfg.fps,
        }
        for prop, value in wanted.items():
            if value:
                self.capture.set(prop, value)

    def read(self) -> Iterator[Block]:
        frames = self._read_file() if self.is_file else self._read_live()
        cfg = self.config
        if cfg.jpeg_quality is None:
            return frames
        return self._jpeg(frames, cfg.jpeg_quality)

    def _jpeg(self, frames: Iterator[Block], quality: int) -> Iterator[Block]:
        params = [cv2.IMWRITE_JPEG_QUALITY, quality]
        for block in frames:
            ok, jpeg = cv2.imencode(".jpg", block.data[0], params)
            if ok:
                yield Block(block.data, block.t_ns, payload=jpeg.tobytes(), rate_hz=block.rate_hz)

    def _count_drops(self, missed: int, what: str) -> None:
        if missed <= 0:
            return
        before = self.dropped
        self.dropped += missed
        if before == 0 or self.dropped >= 2 * before:
            self.context.log.warning(
                "camera %s: %d frame(s) dropped so far (%s)", self.config.uri, self.dropped, what
            )

    def _read_file(self) -> Iterator[Block]:
        cfg = self.config
        ctx = self.context
        period_ns = 1e9 / self.fps / cfg.speed  # the mean frame period, as played
        duration_ns = round(self.frames * period_ns)  # the container's duration: one loop
        start = start_position(ctx.anchor_ns, time.time_ns(), duration_ns, cfg.loop)
        if start is None or self.frames <= 0:
            return
        loop_index, offset_ns = start
        if offset_ns:  # a late start: near where the timeline is now (exact only for a constant rate)
            self.capture.set(cv2.CAP_PROP_POS_FRAMES, math.ceil(offset_ns / period_ns))
        last_pts: float | None = None
        played = False
        while True:
            if not self.capture.grab():
                if not cfg.loop:
                    return
                loop_index, last_pts = loop_index + 1, None
                self.capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
                if not self.capture.grab():
                    msg = f"{cfg.uri}: no frame at the start of the file"
                    raise SourceError(msg)
            pts = self.capture.get(cv2.CAP_PROP_POS_MSEC) * 1e6 / cfg.speed
            rate = _own_rate(pts - last_pts, period_ns) if last_pts is not None else None
            last_pts = pts
            t_ns = play_time(ctx.anchor_ns, loop_index, duration_ns, round(pts))
            if time.time_ns() - t_ns > period_ns:  # decoding fell behind (or a late start): skip ahead
                if played:
                    self._count_drops(1, "decoding slower than the video plays")
                continue
            if not ctx.sleep_until(t_ns):
                return
            ok, frame = self.capture.retrieve()
            if not ok:
                msg = f"{cfg.uri}: decoding failed at {pts / 1e6:.0f} ms"
                raise SourceError(msg)
            played = True
            yield Block(frame[None], t_ns, rate_hz=rate)

    def _read_live(self) -> Iterator[Block]:
        cfg = self.config
        meter = FrameRate(cfg.fps or self.fps)
        while not self.context.stop.is_set():
            if not self.capture.grab():
                msg = f"{cfg.uri}: device stopped delivering frames"
                raise SourceError(msg)
            t_ns = time.time_ns() - round(cfg.latency_ms * 1e6)
            self._count_drops(meter.add(time.monotonic_ns()), "gaps in the device's frames")
            if meter.settled and not self._rate_said:
                self._rate_said = True
                self._say_rate(meter.rate_hz, cfg.fps)
            ok, frame = self.capture.retrieve()
            if ok:
                yield Block(frame[None], t_ns, rate_hz=cfg.fps or meter.rate_hz)

    def _say_rate(self, measured: float, override: float | None) -> None:
        claimed = self.fps
        if override is not None:
            if abs(measured - override) > 0.2 * override:
                self.context.log.warning(
                    "camera %s: delivers %.1f fps, fps = %g is published as set",
                    self.config.uri,
                    measured,
                    override,
                )
        elif abs(measured - claimed) > 0.05 * claimed:
            self.context.log.info(
                "camera %s: delivers %.1f fps (it claims %g); the measured rate is used",
                self.config.uri,
                measured,
                claimed,
            )

    def from_file(self) -> bool:
        return self.is_file

    def close(self) -> None:
        capture = getattr(self, "capture", None)
        if capture is not None:
            capture.release()


def _own_rate(gap_ns: float, mean_ns: float) -> float | None:
    """A frame's own rate, from its gap to the one before, when it is not the file's mean
    rate (beyond the milliseconds a container rounds presentation times to)."""
    if gap_ns <= 0 or abs(gap_ns - mean_ns) <= max(1.5e6, 0.1 * mean_ns):
        return None
    return 1e9 / gap_ns


class FrameRate:
    """A live camera's delivered rate, from the median gap between its last frames.

    Until :data:`SETTLE` gaps are in, the rate is the lower of the claim and the median
    so far; frames are counted as missed only after that: a gap of ``n`` measured periods
    means ``n - 1`` frames that never arrived.
    """

    SETTLE = 8
    KEEP = 31

    def __init__(self, claimed_hz: float) -> None:
        self.rate_hz = self.claimed_hz = claimed_hz
        self._fast = 0
        self._gaps: deque[int] = deque(maxlen=self.KEEP)
        self._last: int | None = None

    @property
    def settled(self) -> bool:
        """Whether the rate is measured yet."""
        return len(self._gaps) >= self.SETTLE

    def add(self, t_ns: int) -> int:
        """One frame at ``t_ns`` (a monotonic clock: a step of the wall clock is no gap);
        the frames missed just before it."""
        last, self._last = self._last, t_ns
        if last is None or t_ns <= last:
            return 0
        gap = t_ns - last
        missed = 0
        period = 1e9 / self.rate_hz
        # A long gap among normal ones is frames that never came; long gaps in a row are a
        # rate not measured right yet (the median is still catching up), not losses.
        if self.settled and gap > 1.5 * period and self._gaps and self._gaps[-1] <= 1.5 * period:
            missed = round(gap / period) - 1
        # Every gap counts, a long one too: the median rides out a few, and leaving them out
        # would let a rate once overestimated call every later gap a loss. Frames buffered
        # while the stream opened come at once (gaps far under the claimed period): they are
        # left out, unless they go on, when they are the device's real rhythm.
        fast = gap < 0.25e9 / self.claimed_hz
        self._fast = self._fast + 1 if fast else 0
        if not fast or self._fast >= self.SETTLE:
            self._gaps.append(gap)
        if len(self._gaps) >= 2:  # the claim is often far off: leave it as soon as possible
            measured = 1e9 / statistics.median(self._gaps)
            # Until settled, a burst (frames buffered while the stream opened) cannot make
            # the rate higher than the device claims.
            self.rate_hz = measured if self.settled else min(measured, self.claimed_hz)
        return missed


@hookimpl
def fusiond_add_sources(registry: SourceRegistry) -> None:
    """Register the camera kind."""
    registry.add(CameraSource)
