"""Streams whose clocks misbehave, for the timing tests and ``bench/bench_clock.py``.

A rig of three streams, as a camera, a microphone and an IMU send them: video at 10 Hz,
audio at 16 kHz in 100 ms blocks, an IMU at 100 Hz in blocks of 10. Each message is
published when its last sample is captured and arrives after a jittered transport delay.
The IMU's host clock may misbehave (``imu_clock``: true time -> what that clock reads), so
its capture and publish stamps both come from it. Everything is made up front with a fixed
seed and fed to the daemon's own pipeline at the recorded arrival times: no sleeping, the
same windows every run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

from fusiond.align import ModalitySpec, WindowConfig
from fusiond.align.spec import InputSpec
from fusiond.bus.wire import encode_sample
from fusiond.pipeline import Pipeline

T0 = 1_800_000_000_000_000_000
MS = 1_000_000
S = 1_000_000_000
RIG = "r"
SPEC = InputSpec(
    {
        "video": ModalitySpec("frames", 10, 3, 8, 8),
        "audio": ModalitySpec("series", 1600, 1),
        "imu": ModalitySpec("series", 100, 1),
    }
)
STREAMS = {(RIG, "cam"): "video", (RIG, "mic"): "audio", (RIG, "imu"): "imu"}
WINDOW = WindowConfig(S, S // 2, 300 * MS)


@dataclass(frozen=True)
class Message:
    """One message as it reached the daemon, and the truth about it."""

    recv_ns: int
    stream: str
    frames: list[bytes]
    true_ns: int
    """When its first sample was really captured."""
    t_ns: int
    t_pub_ns: int


def steady(t: int) -> int:
    """A clock that tells the truth."""
    return t


def stepped(at_s: float, by_s: float) -> Callable[[int], int]:
    """A clock stepped by ``by_s`` at ``at_s`` (an NTP step: negative goes back)."""
    return lambda t: t + (round(by_s * S) if t >= T0 + at_s * S else 0)


def rig_messages(
    seconds: float,
    imu_clock: Callable[[int], int] = steady,
    *,
    outlier_at_s: float | None = None,
    outlier_by_s: float = 3.0,
    imu_stamps: Callable[[int], int] | None = None,
    seed: int = 0,
) -> list[Message]:
    """The rig's messages in arrival order; ``outlier_at_s``: one IMU block stamped ``outlier_by_s``
    off; ``imu_stamps``: the IMU's capture stamps as its source made them (true time -> stamp)
    on a host clock that tells the truth (a sensor's own clock, mapped by the source)."""
    rng = np.random.default_rng(seed)
    out: list[Message] = []

    def add(
        stream: str, modality: str, seq: int, true: int, data: np.ndarray, rate: float, clock=steady
    ) -> None:
        end = true + round(len(data) * S / rate)
        publish = end if modality != "video" else true + MS
        t_ns, t_pub = clock(true), clock(publish)
        if stream == "imu" and outlier_at_s is not None and true == T0 + round(outlier_at_s * 10) * 100 * MS:
            t_ns, t_pub = t_ns + round(outlier_by_s * S), t_pub + round(outlier_by_s * S)
        if stream == "imu" and imu_stamps is not None:
            t_ns = imu_stamps(true)
        recv = publish + 100_000 + int(rng.exponential(500_000))
        frames = encode_sample(
            rig=RIG,
            stream=stream,
            modality=modality,
            seq=seq,
            t_ns=t_ns,
            t_pub_ns=t_pub,
            rate_hz=rate,
            data=data,
        )
        out.append(Message(recv, stream, [bytes(f) for f in frames], true, t_ns, t_pub))

    frame = np.zeros((1, 8, 8, 3), np.uint8)
    for k in range(round(seconds * 10)):
        true = T0 + k * 100 * MS
        add("cam", "video", k, true, frame, 10.0)
        add("mic", "audio", k, true, np.full((1600, 1), k, np.float32), 16000.0)
        add("imu", "imu", k, true, np.full((10, 1), k, np.float32), 100.0, imu_clock)
    return sorted(out, key=lambda m: m.recv_ns)


@dataclass
class Outcome:
    """What the pipeline made of a scenario."""

    windows: int
    masked: dict[str, int]
    """Windows per modality masked, after ``warmup_s``."""
    errors_ns: dict[str, list[int]]
    """Per stream: corrected capture stamp minus the truth, for each message the clock took
    (whether its windows still took it or not), after ``warmup_s``."""
    drops: dict[str, int]


def run_pipeline(messages: list[Message], warmup_s: float = 2.0, pipeline: Pipeline | None = None) -> Outcome:
    """Feed the daemon's pipeline at the arrival times; collect windows and stamp errors."""
    pipeline = pipeline or Pipeline(STREAMS, SPEC, WINDOW)
    windows = []
    errors: dict[str, list[int]] = {"cam": [], "mic": [], "imu": []}
    drops = pipeline.stats.drops
    for m in messages:
        late = drops["late"]
        # Taken, or put on the clock and then too late for its windows: either way stamped.
        if (pipeline.handle(m.frames, m.recv_ns) or drops["late"] > late) and m.true_ns >= T0 + warmup_s * S:
            offset = pipeline.ingest.clocks[RIG, m.stream].last_offset
            errors[m.stream].append(m.t_ns + offset - m.true_ns)
        windows += pipeline.close_windows(m.recv_ns)
    windows += pipeline.close_windows(messages[-1].recv_ns + 3 * S)
    after = [w for w in windows if w.start_ns >= T0 + warmup_s * S and w.end_ns <= messages[-1].true_ns]
    masked = {m: sum(1 for w in after if not w.present[m]) for m in SPEC.modalities}
    return Outcome(len(after), masked, errors, dict(pipeline.stats.all_drops()))


def write_vfr_video(
    path: Path, segments: list[tuple[float, float]], size: tuple[int, int] = (64, 48)
) -> list[int]:
    """A variable-frame-rate MJPEG file (PyAV, millisecond time base): ``(fps, seconds)``
    per segment, each frame a grey level that counts frames. Its presentation times, ns."""
    import av

    pts_ms, t = [], 0.0
    for fps, seconds in segments:
        for _ in range(round(fps * seconds)):
            pts_ms.append(round(t * 1000))
            t += 1 / fps
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mjpeg", rate=30)
        stream.width, stream.height = size
        stream.pix_fmt = "yuvj420p"
        stream.time_base = Fraction(1, 1000)
        for k, pts in enumerate(pts_ms):
            frame = av.VideoFrame.from_ndarray(
                np.full((size[1], size[0], 3), k % 256, np.uint8), format="rgb24"
            )
            frame.pts, frame.time_base = pts, stream.time_base
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return [p * MS for p in pts_ms]


class MjpegCamera:
    """A network camera without a camera: MJPEG over HTTP on 127.0.0.1 at a rate we know.

    ``with MjpegCamera(fps=10) as url:`` serves ``http://127.0.0.1:PORT/video.mjpg`` from a
    thread until the block ends; every frame is sent on the ``1 / fps`` grid.
    """

    def __init__(self, fps: float, size: tuple[int, int] = (64, 48)) -> None:
        import cv2

        self.fps = fps
        ok, jpeg = cv2.imencode(".jpg", np.full((size[1], size[0], 3), 128, np.uint8))
        assert ok
        self.jpeg = jpeg.tobytes()
        self.stop = threading.Event()

    def __enter__(self) -> str:
        camera = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                start, k = time.monotonic(), 0
                while not camera.stop.is_set():
                    head = (
                        f"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: {len(camera.jpeg)}\r\n\r\n"
                    )
                    try:
                        self.wfile.write(head.encode() + camera.jpeg + b"\r\n")
                        self.wfile.flush()
                    except OSError:
                        return
                    k += 1
                    camera.stop.wait(max(0.0, start + k / camera.fps - time.monotonic()))

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return f"http://127.0.0.1:{self.server.server_address[1]}/video.mjpg"

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
