"""The aligner's speed: fusiond's ``RigAligner`` against ROS's ``message_filters``
``ApproximateTimeSynchronizer`` on the same seeded streams. Prints figures, asserts nothing.

    python bench/bench_align.py [--seconds 120] [--seed 0] [--repeat 3] [--windows-ms 1000,100]
                                [--ros-python /usr/bin/python3 | --no-ros]

The streams (pure-Python ``random``, so any interpreter rebuilds them from the seed; both
print the schedule's digest): camera 30 Hz, one 48x64x3 uint8 frame a message; audio
16 kHz in blocks of 320 float32 samples (50 messages/s); IMU 100 Hz, one 6-channel float32
sample a message. Each stream starts at a random phase; each message is lost with
probability ``--loss`` (2 %); its stamp is the capture time of its first sample, it arrives
at stamp + uniform 0-``--jitter-ms`` (10 ms), and the three streams are merged in arrival
order (no stream overtakes itself: the jitter is under the shortest period). "Message" below
is one ``add`` (fusiond) or one ``signalMessage`` (ROS): a frame, an audio block, an IMU sample.

1. fusiond: one ``RigAligner`` is fed every message with ``add(stream, t_ns, rate_hz, data,
   t_recv_ns)`` at its arrival time, followed by ``poll(arrival)``, then one last
   ``poll(last arrival + length + lateness)`` as ``Pipeline.flush`` does. Per window length
   in ``--windows-ms``: hop = length / 2 and lateness 300 ms, min_coverage 0.5, buffer
   bounds left at WindowConfig's defaults (config.toml and the demo: 1000/500/300 ms; the
   100 ms windows keep the default's hop ratio and lateness). The model's inputs follow the
   demo recipe's, scaled to the window: video 4 grey 32x32 frames per second of window (at
   least 1, so resize and grey conversion run in the fit), audio at 8 kHz, IMU at 100 Hz x 6.

   * ``speed``: messages fed / wall time of the feed+poll loop (flush included), best of
     ``--repeat`` runs, and its inverse in us per message.
   * ``windows``: windows closed, by the rule that closed them (the aligner's ``stats``);
     ``empty``: windows dropped with no modality present (``drops.window_empty``); masked:
     closed windows with the modality masked (coverage under min_coverage).
   * ``counters``: the aligner's ``drops`` and ``stats`` as they are after the run.
   * ``messages``: where each message went: ``in a window`` (its samples fed a closed window
     with its modality present), ``masked only`` (it overlaps closed windows, all with its
     modality masked), ``late`` (``add`` dropped it), ``no window`` (it overlaps no closed
     window: before the first window's start, or in windows dropped as empty). The columns
     add up to ``fed``; ``lost`` is the messages the loss removed before the aligner.
     (``drops.buffer_full`` would drop blocks already buffered; a line says so if any were.)
   * ``cost``: one more run with a timer around each call (the timer's own ~0.1 us per call
     included): ``add`` per call, ``poll`` per call when nothing was due, ``poll`` per window
     closed when something was, and inside that ``fit_window`` per window for each modality;
     each with its share of the instrumented loop.

2. ROS: the same messages, as minimal fake messages (``header.stamp`` a ``rospy.Time``, a
   shared payload of the same size), pushed into three ``SimpleFilter`` inputs of
   ``ApproximateTimeSynchronizer(queue_size=--queue-size (10), slop=--slop-ms (20 ms))``
   with ROS time on the wall clock (``set_rostime_initialized``, no master). It needs the
   ROS 1 (Noetic) Python ``message_filters``: Debian's ``python3-message-filters``, for
   the system Python. When the running interpreter cannot import it, the script runs itself
   with ``--ros-only`` under ``--ros-python`` and reads back its figures (JSON); when that
   fails too, a line says why ROS was skipped.

   * ``speed``: messages fed / wall time of the feed loop, best of ``--repeat``.
   * ``sets``: callbacks (one message per stream each); the spread of a set's stamps.
   * ``messages``: ``in a set``, ``discarded`` (pushed out of a full queue: the only way
     the synchronizer drops one), ``left queued`` at the end; they add up to ``fed``.
   * ``cost``: one more run with a timer around each ``signalMessage``: us per call by stream.

The two do different work: fusiond keeps every sample and fits each window (resampling,
low-pass, resize), the synchronizer picks one message per stream into a set and drops the rest.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MS = 1_000_000
S = 1_000_000_000
T0 = 1_700_000_000 * S  # on every window grid
STREAMS = (  # name, modality, rate_hz (of rows), rows per message, payload bytes
    ("cam", "video", 30.0, 1, 48 * 64 * 3),
    ("mic", "audio", 16_000.0, 320, 320 * 4),
    ("imu", "imu", 100.0, 1, 6 * 4),
)

Plan = list[tuple[int, int, int, int]]
"""Messages in arrival order: ``(arrival_ns, stream index, seq, stamp_ns)``."""


def schedule(seed: int, seconds: float, loss: float, jitter_ns: int) -> tuple[Plan, list[int]]:
    """The merged streams and how many messages each stream generated (before the loss)."""
    rng = random.Random(seed)
    plan: Plan = []
    generated = []
    for i, (_, _, rate, rows, _) in enumerate(STREAMS):
        period = rows * 1e9 / rate
        phase = int(rng.random() * period)
        count = int(seconds * rate / rows)
        generated.append(count)
        for k in range(count):
            lost = rng.random() < loss
            jitter = int(rng.random() * jitter_ns)
            if not lost:
                stamp = T0 + phase + round(k * period)
                plan.append((stamp + jitter, i, k, stamp))
    plan.sort()
    return plan, generated


def digest(plan: Plan) -> str:
    return hashlib.sha256(repr(plan).encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------- fusiond


def fusiond_specs(length_ms: float) -> dict[str, Any]:
    from fusiond.align import ModalitySpec

    seconds = length_ms / 1000
    return {
        "video": ModalitySpec("frames", length=max(1, round(4 * seconds)), channels=1, height=32, width=32),
        "audio": ModalitySpec("series", length=max(1, round(8000 * seconds)), channels=1),
        "imu": ModalitySpec("series", length=max(1, round(100 * seconds)), channels=6),
    }


def fusiond_feed(plan: Plan, seed: int) -> list[tuple[str, int, float, Any, int]]:
    """``add``'s arguments for each message: payloads from a pool of 32 per stream."""
    import numpy as np

    rng = np.random.default_rng(seed)
    pools = [
        [rng.integers(0, 255, (1, 48, 64, 3), dtype=np.uint8) for _ in range(32)],
        [rng.normal(0, 0.1, (320, 1)).astype(np.float32) for _ in range(32)],
        [rng.normal(0, 1, (1, 6)).astype(np.float32) for _ in range(32)],
    ]
    return [(STREAMS[i][0], stamp, STREAMS[i][2], pools[i][k % 32], arrival) for arrival, i, k, stamp in plan]


def fusiond_once(feed: list[tuple[str, int, float, Any, int]], config: Any, specs: dict[str, Any]) -> dict:
    from fusiond.align import RigAligner

    aligner = RigAligner("r", {name: modality for name, modality, *_ in STREAMS}, specs, config)
    add, poll = aligner.add, aligner.poll
    dropped: dict[int, str] = {}
    closed: list[Any] = []
    start = time.perf_counter()
    for n, (stream, t_ns, rate, data, arrival) in enumerate(feed):
        reason = add(stream, t_ns, rate, data, arrival)
        if reason is not None:
            dropped[n] = reason
        closed += poll(arrival)
    closed += poll(feed[-1][4] + config.length_ns + config.lateness_ns)
    wall = time.perf_counter() - start
    return {"wall": wall, "aligner": aligner, "dropped": dropped, "closed": closed}


def fusiond_instrumented(
    feed: list[tuple[str, int, float, Any, int]], config: Any, specs: dict[str, Any]
) -> dict:
    """One run with a timer around every call, and around ``fit_window`` by modality."""
    from fusiond.align import RigAligner
    from fusiond.align import windows as windows_module

    fit_ns: Counter[str] = Counter()
    fit_calls: Counter[str] = Counter()
    original = getattr(windows_module, "fit_window", None)
    pc = time.perf_counter_ns

    def timed_fit(spec: Any, *args: Any, **kwargs: Any) -> Any:
        begin = pc()
        try:
            return original(spec, *args, **kwargs)  # type: ignore[misc]
        finally:
            key = f"{spec.kind}:{spec.length}x{spec.channels}"
            fit_ns[key] += pc() - begin
            fit_calls[key] += 1

    if original is not None:
        windows_module.fit_window = timed_fit  # type: ignore[attr-defined]
    try:
        aligner = RigAligner("r", {name: modality for name, modality, *_ in STREAMS}, specs, config)
        add, poll = aligner.add, aligner.poll
        t_add = t_idle = t_closing = 0
        idle_polls = closing_polls = windows = 0
        begin = pc()
        for stream, t_ns, rate, data, arrival in feed:
            a = pc()
            add(stream, t_ns, rate, data, arrival)
            b = pc()
            out = poll(arrival)
            c = pc()
            t_add += b - a
            if out:
                t_closing += c - b
                closing_polls += 1
                windows += len(out)
            else:
                t_idle += c - b
                idle_polls += 1
        a = pc()
        windows += len(poll(feed[-1][4] + config.length_ns + config.lateness_ns))
        t_closing += pc() - a
        total = pc() - begin
    finally:
        if original is not None:
            windows_module.fit_window = original  # type: ignore[attr-defined]
    return {
        "total": total,
        "add": (t_add, len(feed)),
        "idle": (t_idle, idle_polls),
        "closing": (t_closing, closing_polls, windows),
        "fit": {key: (fit_ns[key], fit_calls[key]) for key in fit_ns},
        "patched": original is not None,
    }


def accounting(feed: list[tuple[str, int, float, Any, int]], run: dict, config: Any) -> dict[str, Counter]:
    """Where each fed message went (see the module docstring)."""
    hop, length = config.hop_ns, config.length_ns
    present = {w.index: w.present for w in run["closed"]}
    modality = {name: m for name, m, *_ in STREAMS}
    out: dict[str, Counter] = {name: Counter() for name, *_ in STREAMS}
    for n, (stream, t_ns, rate, data, _) in enumerate(feed):
        counts = out[stream]
        counts["fed"] += 1
        if n in run["dropped"]:
            counts[run["dropped"][n]] += 1
            continue
        end = t_ns + round(len(data) * 1e9 / rate)
        states = [
            present[k][modality[stream]]
            for k in range((t_ns - length) // hop + 1, (end - 1) // hop + 1)
            if k in present
        ]
        counts["in a window" if any(states) else "masked only" if states else "no window"] += 1
    return out


def fusiond_report(args: argparse.Namespace, plan: Plan, generated: list[int], length_ms: float) -> float:
    import logging

    from fusiond.align import WindowConfig

    logging.disable(logging.WARNING)
    config = WindowConfig(
        length_ns=round(length_ms * MS),
        hop_ns=round(length_ms * MS / 2),
        lateness_ns=round(args.lateness_ms * MS),
        min_coverage=0.5,
    )
    specs = fusiond_specs(length_ms)
    feed = fusiond_feed(plan, args.seed)
    runs = [fusiond_once(feed, config, specs) for _ in range(args.repeat)]
    best = min(runs, key=lambda r: r["wall"])
    rate = len(feed) / best["wall"]
    aligner = best["aligner"]
    label = f"{length_ms / 1000:g} s" if length_ms >= 1000 else f"{length_ms:g} ms"
    print(
        f"fusiond RigAligner, {label} windows (length {config.length_ns / MS:g} ms, hop "
        f"{config.hop_ns / MS:g} ms, lateness {config.lateness_ns / MS:g} ms, min_coverage "
        f"{config.min_coverage:g})"
    )
    inputs = ", ".join(
        f"{m} {spec.kind} {'x'.join(str(d) for d in getattr(spec, 'shape', (spec.length,)))}"
        for m, spec in specs.items()
    )
    print(f"  inputs    {inputs}")
    walls = " ".join(f"{r['wall']:.3f}" for r in runs)
    print(
        f"  speed     {rate:,.0f} msg/s ({1e6 / rate:.1f} us/msg): {len(feed):,} messages in "
        f"{best['wall']:.3f} s, best of {args.repeat} ({walls} s)"
    )
    stats, drops = aligner.stats, aligner.drops
    by_rule = ", ".join(
        f"{k.split(':', 1)[1]} {v}" for k, v in sorted(stats.items()) if k.startswith("closed:")
    )
    masked = ", ".join(f"{m} {stats.get(f'masked:{m}', 0)}" for m in specs)
    print(
        f"  windows   {len(best['closed'])} closed ({by_rule or 'none'}), "
        f"{drops.get('window_empty', 0)} empty; masked: {masked}"
    )
    print(f"  counters  drops {dict(drops) or '{}'}  stats {dict(stats) or '{}'}")
    counts = accounting(feed, best, config)
    columns = ["fed", "in a window", "masked only", "late", "no window"]
    extra = sorted({k for c in counts.values() for k in c} - set(columns))
    columns += extra
    print(f"  messages  {'stream':<7}{'lost':>7}" + "".join(f"{c:>13}" for c in columns))
    total: Counter[str] = Counter()
    lost_total = 0
    for (name, *_), made in zip(STREAMS, generated, strict=True):
        c = counts[name]
        lost = made - c["fed"]
        lost_total += lost
        total.update(c)
        print(f"            {name:<7}{lost:>7}" + "".join(f"{c.get(k, 0):>13,}" for k in columns))
    print(f"            {'total':<7}{lost_total:>7}" + "".join(f"{total.get(k, 0):>13,}" for k in columns))
    if drops.get("buffer_full"):
        print(
            f"            ({drops['buffer_full']} blocks dropped as buffer_full are counted by overlap above)"
        )
    cost = fusiond_instrumented(feed, config, specs)
    whole = cost["total"]
    t_add, n_add = cost["add"]
    t_idle, n_idle = cost["idle"]
    t_closing, n_closing, n_windows = cost["closing"]
    print(
        f"  cost      add {t_add / max(n_add, 1) / 1e3:.2f} us/call ({t_add / whole:.0%}); "
        f"poll, nothing due {t_idle / max(n_idle, 1) / 1e3:.2f} us/call ({t_idle / whole:.0%}, "
        f"{n_idle:,} calls); poll closing {t_closing / max(n_windows, 1) / 1e3:.1f} us/window "
        f"({t_closing / whole:.0%}, {n_closing:,} calls, {n_windows:,} windows); instrumented loop "
        f"{len(feed) / (whole / 1e9):,.0f} msg/s"
    )
    if cost["patched"]:
        fits = "; ".join(
            f"{key} {ns / max(calls, 1) / 1e3:.1f} us/window ({ns / whole:.0%})"
            for key, (ns, calls) in sorted(cost["fit"].items())
        )
        print(f"            of which fit_window: {fits}")
    else:
        print("            (fusiond.align.windows has no fit_window to time: fit cost not split out)")
    print()
    return rate


# ---------------------------------------------------------------------------- ROS


def ros_figures(args: argparse.Namespace) -> dict[str, Any]:
    """The synchronizer's figures, or ``{"skipped": why}`` (stdlib and rospy only: no numpy)."""
    try:
        import message_filters
        import rospy
        import rospy.rostime
    except Exception as e:  # ImportError, or a broken ROS install
        return {"skipped": f"{sys.executable} cannot import message_filters ({type(e).__name__}: {e})"}
    from importlib import metadata

    try:
        version = metadata.version("message_filters")
    except metadata.PackageNotFoundError:
        version = "?"
    rospy.rostime.set_rostime_initialized(True)  # ROS time = wall clock, as a node without /use_sim_time

    class Header:
        __slots__ = ("frame_id", "seq", "stamp")

        def __init__(self, seq: int, stamp: Any, frame_id: str) -> None:
            self.seq, self.stamp, self.frame_id = seq, stamp, frame_id

    class Message:
        __slots__ = ("data", "header")

        def __init__(self, header: Header, data: bytes) -> None:
            self.header, self.data = header, data

    plan, generated = schedule(args.seed, args.seconds, args.loss, round(args.jitter_ms * MS))
    payloads = [bytes(size) for *_, size in STREAMS]
    messages = [
        (i, Message(Header(k, rospy.Time(stamp // S, stamp % S), STREAMS[i][0]), payloads[i]))
        for _, i, k, stamp in plan
    ]

    def once(timed: bool) -> dict[str, Any]:
        filters = [message_filters.SimpleFilter() for _ in STREAMS]
        sync = message_filters.ApproximateTimeSynchronizer(filters, args.queue_size, args.slop_ms / 1000)
        sets: list[tuple[Any, ...]] = []
        sync.registerCallback(lambda *msgs: sets.append(msgs))
        signals = [f.signalMessage for f in filters]
        spent = [0] * len(STREAMS)
        calls = [0] * len(STREAMS)
        pc = time.perf_counter_ns
        start = time.perf_counter()
        if timed:
            for i, msg in messages:
                a = pc()
                signals[i](msg)
                spent[i] += pc() - a
                calls[i] += 1
        else:
            for i, msg in messages:
                signals[i](msg)
        wall = time.perf_counter() - start
        return {
            "wall": wall,
            "sets": sets,
            "queues": [len(q) for q in sync.queues],
            "spent": spent,
            "calls": calls,
        }

    runs = [once(False) for _ in range(args.repeat)]
    best = min(runs, key=lambda r: r["wall"])
    timed = once(True)
    fed = Counter(i for i, _ in messages)
    spreads = sorted(
        (max(m.header.stamp.to_nsec() for m in s) - min(m.header.stamp.to_nsec() for m in s)) / MS
        for s in best["sets"]
    )
    rows = []
    for i, (name, *_) in enumerate(STREAMS):
        in_set = len(best["sets"])
        left = best["queues"][i]
        rows.append(
            {
                "stream": name,
                "lost": generated[i] - fed[i],
                "fed": fed[i],
                "in a set": in_set,
                "discarded": fed[i] - in_set - left,
                "left queued": left,
                "us/call": timed["spent"][i] / max(timed["calls"][i], 1) / 1e3,
                "share": timed["spent"][i] / max(sum(timed["spent"]), 1),
            }
        )
    return {
        "python": f"{sys.executable} {sys.version.split()[0]}",
        "version": version,
        "digest": digest(plan),
        "messages": len(messages),
        "walls": [r["wall"] for r in runs],
        "wall": best["wall"],
        "sets": len(best["sets"]),
        "spread_ms": [spreads[len(spreads) // 2], spreads[int(len(spreads) * 0.99)], spreads[-1]]
        if spreads
        else [],
        "rows": rows,
        "timed_wall": timed["wall"],
    }


def ros_report(args: argparse.Namespace, figures: dict[str, Any]) -> float | None:
    if "skipped" in figures:
        print(f"ROS ApproximateTimeSynchronizer skipped: {figures['skipped']}")
        return None
    rate = figures["messages"] / figures["wall"]
    print(
        f"ROS message_filters.ApproximateTimeSynchronizer {figures['version']} ({figures['python']}), "
        f"queue_size {args.queue_size}, slop {args.slop_ms:g} ms; streams {figures['digest']}"
    )
    walls = " ".join(f"{w:.3f}" for w in figures["walls"])
    print(
        f"  speed     {rate:,.0f} msg/s ({1e6 / rate:.1f} us/msg): {figures['messages']:,} messages in "
        f"{figures['wall']:.3f} s, best of {args.repeat} ({walls} s)"
    )
    spread = figures["spread_ms"]
    spread_text = f"; stamp spread in a set p50 {spread[0]:.1f}, p99 {spread[1]:.1f}, max {spread[2]:.1f} ms"
    print(f"  sets      {figures['sets']:,} callbacks{spread_text if spread else ''}")
    columns = ["fed", "in a set", "discarded", "left queued"]
    print(f"  messages  {'stream':<7}{'lost':>7}" + "".join(f"{c:>13}" for c in columns))
    total: Counter[str] = Counter()
    for row in figures["rows"]:
        total.update({k: row[k] for k in ["lost", *columns]})
        print(f"            {row['stream']:<7}{row['lost']:>7}" + "".join(f"{row[k]:>13,}" for k in columns))
    print(f"            {'total':<7}{total['lost']:>7}" + "".join(f"{total[k]:>13,}" for k in columns))
    cost = "; ".join(f"{r['stream']} {r['us/call']:.1f} us/call ({r['share']:.0%})" for r in figures["rows"])
    timed_rate = figures["messages"] / figures["timed_wall"]
    print(f"  cost      signalMessage: {cost}; instrumented loop {timed_rate:,.0f} msg/s")
    print()
    return rate


def ros_elsewhere(args: argparse.Namespace) -> dict[str, Any]:
    """:func:`ros_figures` under ``--ros-python`` (a subprocess that rebuilds the streams)."""
    python = args.ros_python
    if not python or not os.access(python, os.X_OK):
        return {
            "skipped": f"{sys.executable} cannot import message_filters, and --ros-python "
            f"{python or '(none)'} is not an executable"
        }
    command = [python, str(Path(__file__).resolve()), "--ros-only", *args.forward]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=3600, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"skipped": f"{python} failed to run: {e}"}
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"skipped": f"{python} exited {done.returncode}: {tail[0]}"}


# ---------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="stream time")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--loss", type=float, default=0.02, help="probability a message is lost")
    parser.add_argument("--jitter-ms", type=float, default=10.0, help="arrival = stamp + uniform 0..this")
    parser.add_argument("--windows-ms", default="1000,100", help="fusiond window lengths (hop: half)")
    parser.add_argument("--lateness-ms", type=float, default=300.0)
    parser.add_argument("--queue-size", type=int, default=10, help="ApproximateTimeSynchronizer queue_size")
    parser.add_argument("--slop-ms", type=float, default=20.0, help="ApproximateTimeSynchronizer slop")
    parser.add_argument("--ros-python", default="/usr/bin/python3", help="interpreter with message_filters")
    parser.add_argument("--no-ros", action="store_true", help="fusiond only")
    parser.add_argument("--ros-only", action="store_true", help="ROS only, figures as one JSON line")
    args = parser.parse_args()
    args.forward = [
        f"--seconds={args.seconds}",
        f"--seed={args.seed}",
        f"--repeat={args.repeat}",
        f"--loss={args.loss}",
        f"--jitter-ms={args.jitter_ms}",
        f"--queue-size={args.queue_size}",
        f"--slop-ms={args.slop_ms}",
    ]
    if args.ros_only:
        print(json.dumps(ros_figures(args)))
        return

    plan, generated = schedule(args.seed, args.seconds, args.loss, round(args.jitter_ms * MS))
    print(
        f"streams   {args.seconds:g} s, seed {args.seed}: {len(plan):,} messages "
        f"({', '.join(f'{n} {c}' for (n, *_), c in zip(STREAMS, generated, strict=True))} generated, "
        f"{args.loss:.0%} lost), arrival jitter 0-{args.jitter_ms:g} ms; digest {digest(plan)}"
    )
    print()
    rates = {}
    for length in (float(x) for x in args.windows_ms.split(",") if x.strip()):
        label = f"fusiond {length / 1000:g} s" if length >= 1000 else f"fusiond {length:g} ms"
        rates[label] = fusiond_report(args, plan, generated, length)
    if args.no_ros:
        print("ROS ApproximateTimeSynchronizer skipped: --no-ros")
    else:
        try:
            import message_filters  # noqa: F401

            figures = ros_figures(args)
        except ImportError:
            figures = ros_elsewhere(args)
        rate = ros_report(args, figures)
        if rate is not None:
            rates["ROS ATS"] = rate
            if figures.get("digest") != digest(plan):
                print(f"  (the ROS run saw other streams: digest {figures.get('digest')} != {digest(plan)})")
    print("summary   " + "; ".join(f"{k} {v:,.0f} msg/s" for k, v in rates.items()))


if __name__ == "__main__":
    main()
