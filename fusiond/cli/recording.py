"""``fusiond record``, ``replay``, ``info``: MCAP recordings of the bus."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from fusiond.cli.common import (
    bus_options,
    endpoint_of,
    keys_of,
)

__all__ = ["cmd_info", "cmd_record", "cmd_replay", "register"]

log = logging.getLogger("fusiond")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add this group's subcommands."""
    record = sub.add_parser("record", help="record the bus to an MCAP file")
    record.add_argument("-o", "--output", type=Path, required=True)
    record.add_argument("--topics", nargs="*", default=[], help="topic prefixes (default: all)")
    record.add_argument("--duration", type=float, help="stop after this many seconds")
    bus_options(record, "subscriber endpoint of the daemon")
    record.add_argument(
        "--foxglove", action="store_true", help="add Foxglove channels: camera JPEGs, predictions"
    )
    record.set_defaults(func=cmd_record)

    replay = sub.add_parser("replay", help="publish a recording's sensor messages again")
    replay.add_argument("recording", type=Path)
    pace = replay.add_mutually_exclusive_group()
    pace.add_argument("--speed", type=float, default=1.0, help="1 = recorded timing")
    pace.add_argument("--fast", action="store_true", help="no pacing")
    replay.add_argument("--loop", action="store_true")
    replay.add_argument("--topics", nargs="*", default=[], help="topic prefixes (default: s/)")
    bus_options(replay, "publisher endpoint of the daemon")
    replay.set_defaults(func=cmd_replay)

    info = sub.add_parser("info", help="channels, counts, duration and rates of a recording")
    info.add_argument("recording", type=Path)
    info.add_argument("--json", action="store_true")
    info.set_defaults(func=cmd_info)


def cmd_record(args: argparse.Namespace) -> int:
    """Record the bus to an MCAP file."""
    from fusiond.recording.recorder import Recorder
    from fusiond.sources.runner import stop_event_from_signals

    stop = stop_event_from_signals()
    endpoint = endpoint_of(args.connect, args.config, "subscribe")
    with Recorder(args.output, endpoint, args.topics, foxglove=args.foxglove, keys=keys_of(args)) as recorder:
        log.info("recording %s to %s", endpoint, args.output)
        recorder.run(stop, args.duration)
    total = sum(recorder.messages.values())
    lost = sum(recorder.gaps.values())
    log.info(
        "recorded %d messages (%.1f MB of messages, %.1f MB on disk after compression) on %d "
        "topics to %s; lost before the recorder (sequence gaps): %d; malformed: %d",
        total,
        recorder.bytes / 1e6,
        args.output.stat().st_size / 1e6,
        len(recorder.messages),
        args.output,
        lost,
        recorder.malformed,
    )
    if args.foxglove:
        views = ", ".join(f"{t} {n}" for t, n in sorted(recorder.views.items())) or "none"
        failed = recorder.view_failures
        log.info("foxglove views: %s%s", views, f"; {failed} message(s) without a view" if failed else "")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    """Publish a recording's sensor messages again, as if live."""
    from fusiond.recording.replay import replay
    from fusiond.sources.runner import stop_event_from_signals

    stop = stop_event_from_signals()
    endpoint = endpoint_of(args.connect, args.config, "publish")
    speed = None if args.fast else args.speed
    if (warning := _replay_warning(args.recording, speed)) is not None:
        log.warning("%s", warning)
    sent = replay(
        args.recording,
        endpoint,
        stop,
        speed=speed,
        loop=args.loop,
        topics=args.topics or ["s/"],
        keys=keys_of(args),
    )
    log.info("replayed %d messages on %d topics", sum(sent.values()), len(sent))
    return 0


def _replay_warning(path: Path, speed: float | None) -> str | None:
    """What a live daemon will drop of a replay faster than recorded, said before it starts."""
    if speed is not None and speed <= 1.0:
        return None
    pace = "as fast as they go" if speed is None else f"{speed:g} times faster than recorded"
    ahead = "by nearly all the time elapsed" if speed is None else f"by {1 - 1 / speed:.0%} of the time spent"
    lost = (
        "nearly everything after the first seconds"
        if speed is None
        else f"everything after the first {5 / (1 - 1 / speed):.0f} s of the recording"
    )
    return (
        f"{path}: messages go out {pace} with their recorded spacing of capture times, which then run "
        f"ahead of the clock {ahead}: a live daemon drops as clock_skew what is more than its [ingest] "
        f"max_clock_skew_ms (5 s by default) ahead, {lost}. For a lossless pass at any speed: fusiond "
        f"run --config CONFIG --replay {path}"
    )


def cmd_info(args: argparse.Namespace) -> int:
    """Channels, message counts, duration and rates of a recording."""
    from fusiond.recording import info

    summary = info(args.recording)
    rows = []
    for topic in sorted(summary.messages):
        span = (summary.last_ns[topic] - summary.first_ns[topic]) / 1e9
        count = summary.messages[topic]
        rate = (count - 1) / span if span > 0 else 0.0
        rows.append({"topic": topic, "messages": count, "rate_hz": round(rate, 2)})
    if args.json:
        print(
            json.dumps(
                {
                    "path": str(summary.path),
                    "complete": summary.complete,
                    "duration_s": round(summary.duration_s, 3),
                    "channels": rows,
                    "metadata": _metadata(summary.metadata),
                    "views": [
                        {"topic": t, "schema": schema, "messages": n}
                        for t, (schema, n) in sorted(summary.views.items())
                    ],
                }
            )
        )
        return 0
    state = "complete" if summary.complete else "cut off (no summary: writer was killed)"
    print(f"{summary.path}: {summary.duration_s:.1f} s, {sum(summary.messages.values())} messages, {state}")
    for row in rows:
        print(f"  {row['topic']:<28} {row['messages']:>8} msgs {row['rate_hz']:>9.2f} Hz")
    if summary.views:
        print("  views for other tools (not replayed):")
        for topic, (schema, n) in sorted(summary.views.items()):
            print(f"  {topic:<28} {n:>8} msgs  {schema}")
    return 0


def _metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """A recording's metadata for JSON: the recorded topic prefixes as a list ("" = every topic)."""
    out = {name: dict(values) for name, values in metadata.items()}
    for values in out.values():
        if isinstance(values.get("topics"), str):
            values["topics"] = [t for t in values["topics"].split(",") if t] or ["(every topic)"]
    return out
