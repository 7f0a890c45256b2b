"""``fusiond source``, ``echo``, ``hz``, ``topics``: publishing to the bus and reading it."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from typing import Any

from fusiond.cli.common import (
    as_child,
    bus_options,
    endpoint_of,
    key_options,
    keys_of,
    subscriber,
)

__all__ = ["cmd_echo", "cmd_hz", "cmd_source", "cmd_topics", "register"]

log = logging.getLogger("fusiond")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add this group's subcommands."""
    source = sub.add_parser("source", help="run one source, publishing to a bus")
    source.add_argument("kind")
    source.add_argument("--connect", default="tcp://127.0.0.1:7710", help="publisher endpoint")
    source.add_argument("--rig", default="default")
    source.add_argument("--stream", default=None)
    source.add_argument("--modality", default=None)
    source.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    source.add_argument("--options-json", help=argparse.SUPPRESS)
    source.add_argument("--anchor-ns", type=int, help="realtime ns at which file media start")
    source.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    source.add_argument(
        "--sync-clock",
        metavar="CONTROL",
        help="the daemon's control endpoint: stamp blocks on its clock (for a source on another host)",
    )
    key_options(source)
    source.set_defaults(func=cmd_source)

    echo = sub.add_parser("echo", help="print messages from the bus (predictions by default)")
    echo.add_argument("topics", nargs="*", help="topic prefixes, e.g. p/ or s/demo/cam")
    bus_options(echo, "subscriber endpoint of the daemon")
    echo.add_argument("--json", action="store_true", help="one JSON object a line")
    echo.add_argument("--count", type=int, help="exit after this many messages")
    echo.add_argument("--timeout", type=float, help="exit 1 if nothing arrives for this long (s)")
    echo.set_defaults(func=cmd_echo)

    hz = sub.add_parser("hz", help="rate and jitter of a topic, from its capture times")
    hz.add_argument("topic", help="a topic, e.g. s/demo/cam")
    hz.add_argument("--prefix", action="store_true", help="every topic that starts with TOPIC, together")
    hz.add_argument("--window", type=int, default=100, help="messages to average over")
    hz.add_argument("--duration", type=float, help="stop after this many seconds")
    bus_options(hz, "subscriber endpoint of the daemon")
    hz.set_defaults(func=cmd_hz)

    topics = sub.add_parser("topics", help="every topic on the bus: rate, bandwidth, publishers")
    bus_options(topics, "the bus's subscribe endpoint (default: from --config)")
    topics.add_argument("--duration", type=float, default=2.0, help="seconds to listen (default 2)")
    topics.add_argument("--json", action="store_true", help="print one JSON object")
    topics.set_defaults(func=cmd_topics)


def cmd_source(args: argparse.Namespace) -> int:
    """Run one source standalone, publishing to a bus endpoint."""
    from fusiond.config import SourceSection, validate_source
    from fusiond.plugin import load_plugins
    from fusiond.sources.base import SourceContext
    from fusiond.sources.runner import run_source

    stop, options = as_child(args)
    plugins = load_plugins()
    section = SourceSection(kind=args.kind, **options)
    config = validate_source(plugins.sources, section, f"source {args.kind}")
    cls = plugins.sources.get(args.kind)
    assert cls is not None  # validate_source raised otherwise
    name = f"fusiond.source.{args.rig}.{args.stream}"
    anchor = args.anchor_ns if args.anchor_ns is not None else time.time_ns()
    context = SourceContext(
        args.rig, args.stream, args.modality or cls.modality, anchor, stop, logging.getLogger(name)
    )
    return run_source(
        cls, config, context, args.connect, sync_clock=args.sync_clock or "", keys=keys_of(args)
    )


def cmd_echo(args: argparse.Namespace) -> int:
    """Print messages of any topic (predictions by default)."""
    from fusiond.bus.wire import describe
    from fusiond.errors import WireError

    endpoint = endpoint_of(args.connect, args.config, "subscribe")
    seen = 0
    timeout_ms = None if args.timeout is None else int(args.timeout * 1000)
    with contextlib.suppress(KeyboardInterrupt), subscriber(endpoint, args.topics or ["p/"], args) as sock:
        while args.count is None or seen < args.count:
            if not sock.poll(timeout_ms):
                print(f"fusiond echo: nothing on {endpoint} for {args.timeout} s", file=sys.stderr)
                return 1
            frames = sock.recv_multipart()
            try:
                message = describe(frames)
            except WireError as exc:
                print(f"fusiond echo: malformed message: {exc}", file=sys.stderr)
                continue
            print(json.dumps(message, default=repr) if args.json else _pretty(message), flush=True)
            seen += 1
    return 0


def _pretty(message: dict[str, Any]) -> str:
    """One line for a person; a message too odd for it (forged, say) is shown as JSON."""
    try:
        return _line(message)
    except (KeyError, TypeError, ValueError, AttributeError):
        return json.dumps(message, default=repr)


def _line(message: dict[str, Any]) -> str:
    if message.get("type") == "event":
        held = (message.get("t_ns", 0) - message.get("start_ns", 0)) / 1e6
        g = message.get
        return (
            f"{g('topic')} #{g('seq')} {g('previous')} -> {g('state')} since {g('start_ns')} "
            f"(held {held:.0f} ms over {g('supported_by')} window(s), score {g('score')})"
        )
    if message.get("type") == "prediction":
        best = max(message["scores"]) if message["scores"] else 0.0
        lat = message["latency_ns"]["close_to_publish"] / 1e6
        missing = f" missing={','.join(message['missing'])}" if message["missing"] else ""
        said = message.get("modality_labels")
        heard = ""
        if isinstance(said, dict) and said:
            labels = " ".join(f"{m}:{label}" for m, label in said.items())
            heard = f" says[{labels}] disagreement={message.get('disagreement', 0):.2f}"
        why = message.get("rejected")
        withheld = f" [withheld: best {message.get('best')}, {why}]" if why else ""
        shares = message.get("contributions")
        if message.get("task") == "anomaly" and isinstance(shares, dict):
            top = " ".join(f"{m}:{v:.2f}" for m, v in sorted(shares.items(), key=lambda kv: -kv[1]))
            near = f" nearest={message['nearest']}" if "nearest" in message else ""
            heard = f" score={message['anomaly_score']:.2f}/{message['threshold']:.2f} share[{top}]{near}"
        return (
            f"{message['topic']} #{message['seq']} {message['label']} ({best:.2f}){withheld} "
            f"window={message['window_start_ns']}..{message['window_end_ns']} "
            f"latency={lat:.1f}ms{missing}{heard}"
        )
    shapes = [b.get("shape") for b in message.get("buffers", [])]
    names, units = message.get("channels") or [], message.get("units") or []
    labels = ""
    if isinstance(names, list) and isinstance(units, list) and (names or units):
        names = names or [f"#{i}" for i in range(len(units))]
        labels = " " + " ".join(
            f"{n}[{u}]" if u else str(n) for n, u in zip(names, units or [""] * len(names), strict=False)
        )
    return f"{message['topic']} #{message.get('seq')} t={message.get('t_ns')} {shapes}{labels}"


def cmd_hz(args: argparse.Namespace) -> int:
    """Rate and jitter of a topic, from its capture times (like ``ros2 topic hz``)."""
    from fusiond.bus.wire import decode_header
    from fusiond.errors import WireError
    from fusiond.hz import RateWindow

    endpoint = endpoint_of(args.connect, args.config, "subscribe")
    topic = args.topic.encode()
    window = RateWindow(args.window)
    next_print = time.monotonic() + 1.0
    end = None if args.duration is None else time.monotonic() + args.duration
    with contextlib.suppress(KeyboardInterrupt), subscriber(endpoint, [args.topic], args) as sock:
        while end is None or time.monotonic() < end:
            if sock.poll(100):
                frames = sock.recv_multipart()
                # ZeroMQ matches prefixes: s/demo/cam also brings s/demo/cam2. One topic, unless asked.
                if not args.prefix and frames[0] != topic:
                    continue
                try:
                    header = decode_header(frames)
                except WireError:
                    continue
                t_ns = header.get("t_ns", header.get("window_start_ns"))
                if isinstance(t_ns, int):
                    window.add(t_ns, time.time_ns(), _samples(header))
            if time.monotonic() >= next_print:
                print(window.line(), flush=True)
                next_print += 1.0
    return 0


def cmd_topics(args: argparse.Namespace) -> int:
    """Every topic on the bus with its rate, bandwidth and publishers (like ``ros2 topic list -v``)."""
    from fusiond.bus.wire import decode_header, frame_view, publisher_of
    from fusiond.errors import WireError
    from fusiond.topics import TopicTable, bandwidth

    endpoint = endpoint_of(args.connect, args.config, "subscribe")
    table = TopicTable()
    start = time.monotonic()
    end = start + args.duration
    with contextlib.suppress(KeyboardInterrupt), subscriber(endpoint, [""], args) as sock:
        while (left := end - time.monotonic()) > 0:
            if not sock.poll(max(1, int(left * 1000))):
                continue
            frames = sock.recv_multipart(copy=False)
            topic = bytes(frame_view(frames[0])[:256]).decode(errors="replace")
            try:
                header: dict[str, Any] | None = decode_header(frames)
            except WireError:
                header = None
            publisher = publisher_of(header) if header is not None else None
            table.add(topic, sum(len(frame_view(f)) for f in frames), header, publisher)
    rows = table.rows(time.monotonic() - start)
    if args.json:
        print(
            json.dumps(
                {
                    "endpoint": endpoint,
                    "seconds": args.duration,
                    "topics": rows,
                    "untracked_messages": table.untracked,
                }
            )
        )
        return 0
    if not rows:
        print(f"no messages on {endpoint} in {args.duration:g} s", file=sys.stderr)
        return 1
    print(f"{'TOPIC':<28} {'TYPE':<12} {'MODALITY':<9} {'MSG/S':>8} {'BANDWIDTH':>11} PUBLISHERS")
    for row in rows:
        publishers = f"{row['publishers']}{' + unnamed' if row['unnamed_messages'] else ''}"
        print(
            f"{row['topic']:<28} {row['type']:<12} {row['modality'] or '-':<9} "
            f"{row['messages_per_s']:>8.1f} {bandwidth(row['bytes_per_s']):>11} {publishers}"
        )
    return 0


def _samples(header: dict[str, Any]) -> int:
    """Samples in a message (the first axis of its first buffer; 1 when it says nothing)."""
    buffers = header.get("buffers")
    first = buffers[0] if isinstance(buffers, list) and buffers else None
    shape = first.get("shape") if isinstance(first, dict) else None
    return shape[0] if isinstance(shape, list) and shape and type(shape[0]) is int and shape[0] > 0 else 1
