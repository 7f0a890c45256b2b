"""Timing you can trust: stamp errors and masked windows for sensors that misbehave,
before and after the per-stream clock model. Prints figures, asserts nothing.

    python bench/bench_clock.py

Each case is run twice in the same process: "before" with what fusiond did until now
(the sliding minimum of ``recv - t_pub`` in ingest; a sensor's time column mapped by its
smallest ``read - sensor`` and reset when a second off; lines stamped when read; frames
stamped ``index / mean fps``; a live camera published at the rate OpenCV claims), "after"
with the clock model. Errors are the corrected capture stamp minus the true capture time,
after 5 s of warm-up; masked counts windows with the stream's modality masked.

1. A three-stream rig (video 10 Hz, audio 16 kHz in 100 ms blocks, IMU 100 Hz in blocks
   of 10) through the daemon's pipeline at recorded arrival times: clean; the IMU host
   clock stepped 2 s back or forward at 8 s; one IMU block stamped 3 s ahead.
2. A ``time_column`` sensor clock 2 % slow or fast, read 100 lines a second with a
   jittered read delay, then through the same pipeline as the IMU.
3. 200 lines a second handed over ten at a time every 50 ms, no time column.
4. A variable-frame-rate file (30 fps 4 s, 5 fps 4 s, 30 fps 4 s), read by the camera source.
5. A 10 fps MJPEG-over-HTTP camera that OpenCV takes for 25 fps, read live for 6 s.

Then the clock model's cost per message, against the sliding minimum's, and with a refit
of its line at every message (one message a 250 ms bucket).
"""

from __future__ import annotations

import logging
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fusiond.align import ModalitySpec, WindowConfig  # noqa: E402
from fusiond.align.spec import InputSpec  # noqa: E402
from fusiond.clock import ClockModel  # noqa: E402
from fusiond.pipeline import Pipeline  # noqa: E402
from fusiond.sources.lines import LineClock  # noqa: E402
from tests.timing import (  # noqa: E402
    MS,
    SPEC,
    STREAMS,
    T0,
    WINDOW,
    MjpegCamera,
    S,
    rig_messages,
    run_pipeline,
    stepped,
    write_vfr_video,
)

WARMUP_S = 5.0


class SlidingMinimum:
    """The offset estimate before the clock model: the minimum of ``recv - t_pub`` over
    two 10 s buckets, under 2 ms taken as 0, else rounded to whole ms (for comparison)."""

    def __init__(self, span_ns: int = 10 * S) -> None:
        self.span_ns, self.start, self.current, self.previous, self.offset = span_ns, None, None, None, 0
        self.resolved, self.pairs, self.steps, self.outliers, self.jitter_ns, self.suspects = (
            None,
            0,
            0,
            0,
            0.0,
            0,
        )

    def update(self, x: int, y: int) -> int:
        delay = y - x
        self.pairs += 1
        if self.start is None or y - self.start >= self.span_ns:
            self.start, self.previous, self.current = y, self.current, delay
        elif self.current is None or delay < self.current:
            self.current = delay
        values = [v for v in (self.current, self.previous) if v is not None]
        self.offset = 0 if abs(min(values)) < 2 * MS else round(min(values), -6)
        self.last_offset = self.offset
        return self.offset

    def predict(self, x: int) -> int:
        return self.offset

    offset_ns = property(lambda self: self.offset)
    drift_ppm = property(lambda self: 0.0)


class OldSensorClock:
    """The time column's mapping before: the smallest ``host - sensor``, reset when a second off."""

    def __init__(self) -> None:
        self.offset: int | None = None

    def stamp(self, sensor_ns: int, host_ns: int) -> int:
        delay = host_ns - sensor_ns
        if self.offset is None or delay < self.offset or abs(sensor_ns + self.offset - host_ns) > S:
            self.offset = delay
        return sensor_ns + self.offset


def figures(errors: list[int] | np.ndarray) -> str:
    e = np.abs(np.asarray(errors, dtype=np.float64)) / 1e6
    if not len(e):
        return f"{'-':>9}{'-':>9}{'-':>9}"
    return f"{np.percentile(e, 50):9.3f}{np.percentile(e, 99):9.3f}{e.max():9.3f}"


def row(case: str, when: str, errors: Any, masked: int | str, note: str = "") -> None:
    print(f"{case:<34}{when:<8}{figures(errors)}{masked!s:>8}  {note}")


def rig_case(case: str, messages: Callable[[], list[Any]]) -> None:
    for when in ("before", "after"):
        pipeline = Pipeline(STREAMS, SPEC, WINDOW)
        if when == "before":
            pipeline.ingest.clocks = {key: SlidingMinimum() for key in STREAMS}  # type: ignore[misc]
        outcome = run_pipeline(messages(), warmup_s=WARMUP_S, pipeline=pipeline)
        drops = {k: v for k, v in outcome.drops.items() if v and k != "window_empty"}
        row(case, when, outcome.errors_ns["imu"], outcome.masked["imu"], f"drops {drops or 'none'}")


def sensor_clock_case(drift: float) -> None:
    """Lines with a time column; the mapped stamps then go through the rig's pipeline."""
    rng = np.random.default_rng(7)
    for when in ("before", "after"):
        clock = OldSensorClock() if when == "before" else LineClock(100.0, sensor_clock=True)
        stamps: dict[int, int] = {}
        for k in range(1600):  # 16 s of 100 lines a second, blocks of 10
            true = T0 + k * 10 * MS
            sensor = round(k * 10 * MS * (1 + drift))
            stamp = clock.stamp(sensor, true + 200_000 + int(rng.exponential(300_000)))
            if k % 10 == 0:
                stamps[true] = stamp
        outcome = run_pipeline(rig_messages(16, imu_stamps=stamps.__getitem__), warmup_s=WARMUP_S)
        row(f"time column, clock {drift:+.0%}", when, outcome.errors_ns["imu"], outcome.masked["imu"])


def burst_case() -> None:
    rng = np.random.default_rng(3)
    for when in ("before", "after"):
        clock = LineClock(200.0, sensor_clock=False)
        errors, stamps = [], []
        for n in range(3200):  # 16 s
            arrival = T0 + (n // 10) * 50 * MS + 45 * MS + int(rng.exponential(200_000))
            stamp = arrival if when == "before" else clock.stamp(None, arrival)
            stamps.append(stamp)
            if n >= WARMUP_S * 200:
                errors.append(stamp - (T0 + n * 5 * MS))
        gap = np.median(np.diff(stamps[1000:])) / 1e6
        row("bursts of 10 lines every 50 ms", when, errors, "-", f"median gap {gap:.2f} ms (grid: 5 ms)")


def vfr_case() -> None:
    from fusiond.plugin import load_plugins
    from fusiond.sources.base import SourceContext
    from fusiond.training.files import OfflineContext

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vfr.mkv"
        pts = write_vfr_video(path, [(30, 4.0), (5, 4.0), (30, 4.0)])
        cls = load_plugins().sources.get("camera")
        anchor = time.time_ns() + 3600 * S
        context: SourceContext = OfflineContext(
            "r", "cam", "video", anchor, threading.Event(), logging.getLogger()
        )
        source = cls(cls.Config(uri=str(path)), context)
        source.open()
        after = [block.t_ns - anchor for block in source.read()]
        mean_period = 12 * S / len(pts)
        before = [round(k * mean_period) for k in range(len(pts))]
        source.close()
    for when, stamps in (("before", before), ("after", after)):
        errors = [s - p for s, p in zip(stamps, pts, strict=False)]
        note = f"{len(stamps)} of {len(pts)} frames; one frame lasts 33-200 ms"
        row("VFR 30/5/30 fps file", when, errors, "-", note)


def network_camera_case(seconds: float = 6.0) -> None:
    from fusiond.plugin import load_plugins
    from fusiond.sources.base import SourceContext

    cls = load_plugins().sources.get("camera")
    with MjpegCamera(fps=10) as url:
        context = SourceContext("r", "cam", "video", time.time_ns(), threading.Event(), logging.getLogger())
        source = cls(cls.Config(uri=url), context)
        claimed = source.open().rate_hz
        blocks, start = [], time.monotonic()
        for block in source.read():
            blocks.append((block.t_ns, block.rate_hz or claimed))
            if time.monotonic() - start > seconds:
                break
        source.close()
    spec = InputSpec({"video": ModalitySpec("frames", 10, 3, 48, 64)})
    for when in ("before", "after"):
        pipeline = Pipeline({("r", "cam"): "video"}, spec, WindowConfig(S, S // 2, 300 * MS))
        windows = []
        from fusiond.bus.wire import encode_sample

        for seq, (t_ns, rate) in enumerate(blocks):
            frames = encode_sample(
                rig="r",
                stream="cam",
                modality="video",
                seq=seq,
                t_ns=t_ns,
                t_pub_ns=t_ns,
                rate_hz=claimed if when == "before" else rate,
                data=np.zeros((1, 48, 64, 3), np.uint8),
            )
            pipeline.handle([bytes(f) for f in frames], t_ns + MS)
            windows += pipeline.close_windows(t_ns + MS)
        windows += pipeline.close_windows(blocks[-1][0] + 3 * S)
        first, last = blocks[0][0] + S, blocks[-1][0]
        inside = [w for w in windows if first <= w.start_ns and w.end_ns <= last and w.present["video"]]
        due = sum(
            1
            for i in range(first // (S // 2), last // (S // 2))
            if i * (S // 2) >= first and i * (S // 2) + S <= last
        )
        rate = claimed if when == "before" else blocks[-1][1]
        row(
            "camera claims 25 fps, sends 10",
            when,
            [],
            f"{due - len(inside)}/{due}",
            f"published at {rate:.1f} fps; windows with video: {len(inside)} of {due}",
        )


def cost() -> None:
    xs = [T0 + k * MS for k in range(200_000)]
    for name, model in (
        ("sliding minimum (before)", SlidingMinimum()),
        ("clock model", ClockModel(deadband_ns=2 * MS)),
    ):
        update = model.update
        start = time.perf_counter()
        for x in xs:
            update(x, x + 60_000)
        print(f"{name:<28} {(time.perf_counter() - start) / len(xs) * 1e6:6.2f} us per message")
    # One message a bucket (250 ms apart): each closes a bucket and refits the line through
    # the last 40 buckets' minima, as at a many-rig daemon's 4-10 messages a second a stream.
    slow = [
        (x, x + 60_000 + (k * 7919) % 500_000) for k, x in enumerate(T0 + k * 250 * MS for k in range(10_000))
    ]
    best = float("inf")
    for _ in range(5):  # the best of 5: a short run on a shared machine
        update = ClockModel(deadband_ns=2 * MS).update
        start = time.perf_counter()
        for x, y in slow:
            update(x, y)
        best = min(best, time.perf_counter() - start)
    print(f"{'clock model, a refit each':<28} {best / len(slow) * 1e6:6.2f} us per message (best of 5)")


def main() -> None:
    logging.disable(logging.WARNING)
    print(f"{'case':<34}{'':<8}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'masked':>8}")
    rig_case("clean", lambda: rig_messages(16))
    for by in (-2.0, 2.0):
        rig_case(f"IMU clock step {by:+.0f} s at 8 s", lambda by=by: rig_messages(16, stepped(8.0, by)))
    rig_case("one IMU block stamped 3 s ahead", lambda: rig_messages(16, outlier_at_s=8.0))
    for drift in (-0.02, 0.02):
        sensor_clock_case(drift)
    burst_case()
    vfr_case()
    network_camera_case()
    print()
    cost()


if __name__ == "__main__":
    main()
