"""The ``fusiond`` command."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
import tomllib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from fusiond import __version__
from fusiond.errors import ConfigError, FusiondError

log = logging.getLogger("fusiond")


def _logging(level: str = "info") -> None:
    if os.environ.get("JOURNAL_STREAM"):
        # journald stamps each line itself and reads the level from a "<N>" prefix.
        from fusiond.service import JournalFormatter

        handler = logging.StreamHandler()
        handler.setFormatter(JournalFormatter("%(name)s[%(process)d]: %(message)s"))
        logging.basicConfig(level=level.upper(), handlers=[handler])
        return
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"
    )


def cmd_run(args: argparse.Namespace) -> int:
    """Start the daemon on a config file (or run it offline over a recording)."""
    from fusiond import config as config_mod
    from fusiond.daemon import Daemon
    from fusiond.plugin import load_plugins
    from fusiond.sources.runner import stop_event_from_signals

    config = config_mod.load(args.config)
    logging.getLogger().setLevel(config.log.level.upper())
    if args.replay is not None:
        return _run_offline(config, args.replay, args.output)
    import signal
    import threading

    stop = stop_event_from_signals()
    reload = threading.Event()
    signal.signal(signal.SIGHUP, lambda *_: reload.set())
    plugins = load_plugins()
    with _in_config(config.source), Daemon(config, plugins, start_sources=not args.no_sources,
                                           config_path=args.config) as daemon:  # fmt: skip
        daemon.run(stop, reload)
    return 1 if daemon.fatal else 0


def _run_offline(config: Any, recording: Path, output: Path | None) -> int:
    from fusiond.bus.wire import Prediction
    from fusiond.daemon import run_offline
    from fusiond.plugin import load_plugins

    out = output.open("w") if output else sys.stdout
    try:

        def emit(prediction: Prediction) -> None:
            out.write(json.dumps(prediction.to_dict()) + "\n")

        stats = run_offline(config, load_plugins(), recording, emit)
    finally:
        if output:
            out.close()
    drops = ", ".join(f"{k}={v}" for k, v in sorted(stats.all_drops().items())) or "none"
    log.info("offline run over %s: %d predictions, drops: %s", recording, stats.predictions, drops)
    return 0


def cmd_record(args: argparse.Namespace) -> int:
    """Record the bus to an MCAP file."""
    from fusiond.recording.recorder import Recorder
    from fusiond.sources.runner import stop_event_from_signals

    stop = stop_event_from_signals()
    endpoint = _endpoint(args.connect, args.config, "subscribe")
    with Recorder(args.output, endpoint, args.topics, foxglove=args.foxglove, keys=_keys(args)) as recorder:
        log.info("recording %s to %s", endpoint, args.output)
        recorder.run(stop, args.duration)
    total = sum(recorder.messages.values())
    lost = sum(recorder.gaps.values())
    log.info("recorded %d messages (%.1f MB of messages, %.1f MB on disk after compression) on %d "
             "topics to %s; lost before the recorder (sequence gaps): %d; malformed: %d", total,
             recorder.bytes / 1e6, args.output.stat().st_size / 1e6, len(recorder.messages), args.output,
             lost, recorder.malformed)  # fmt: skip
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
    endpoint = _endpoint(args.connect, args.config, "publish")
    speed = None if args.fast else args.speed
    if (warning := _replay_warning(args.recording, speed)) is not None:
        log.warning("%s", warning)
    sent = replay(args.recording, endpoint, stop, speed=speed, loop=args.loop,
                  topics=args.topics or ["s/"], keys=_keys(args))  # fmt: skip
    log.info("replayed %d messages on %d topics", sum(sent.values()), len(sent))
    return 0


def _replay_warning(path: Path, speed: float | None) -> str | None:
    """What a live daemon will drop of a replay faster than recorded, said before it starts."""
    if speed is not None and speed <= 1.0:
        return None
    pace = "as fast as they go" if speed is None else f"{speed:g} times faster than recorded"
    ahead = "by nearly all the time elapsed" if speed is None else f"by {1 - 1 / speed:.0%} of the time spent"
    lost = ("nearly everything after the first seconds" if speed is None
            else f"everything after the first {5 / (1 - 1 / speed):.0f} s of the recording")  # fmt: skip
    return (f"{path}: messages go out {pace} with their recorded spacing of capture times, which then run "
            f"ahead of the clock {ahead}: a live daemon drops as clock_skew what is more than its [ingest] "
            f"max_clock_skew_ms (5 s by default) ahead, {lost}. For a lossless pass at any speed: fusiond "
            f"run --config CONFIG --replay {path}")


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
        print(json.dumps({"path": str(summary.path), "complete": summary.complete,
                          "duration_s": round(summary.duration_s, 3), "channels": rows,
                          "metadata": _metadata(summary.metadata),
                          "views": [{"topic": t, "schema": schema, "messages": n}
                                    for t, (schema, n) in sorted(summary.views.items())]}))  # fmt: skip
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


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate a config file, its source options, what each source needs (files, devices:
    looked for, not opened), its model and device."""
    from fusiond import config as config_mod
    from fusiond.daemon import daemon_keys, port_problems, prepare
    from fusiond.pipeline import Pipeline
    from fusiond.plugin import load_plugins

    config = config_mod.load(args.config)
    plugins = load_plugins()
    with _in_config(config.source):
        prepared = prepare(config, plugins, serve=True)
        ck = prepared.checkpoint
        pipeline = Pipeline.from_config(config, plugins.sources, ck)
        daemon_keys(config)  # what run loads before it binds: unreadable or mismatched keys
    problems = prepared.problems + ([] if args.no_ports else port_problems(config))
    for problem in problems:
        print(f"fusiond: error: {config.source}: {problem}", file=sys.stderr)
    if problems:
        return 2
    for warning in [*prepared.warnings, *config.warnings()]:
        print(f"fusiond: warning: {config.source}: {warning}", file=sys.stderr)
    print(f"{args.config}: OK ({len(config.rigs)} rig(s), {len(pipeline.streams)} source(s), "
          f"model {ck.name} {ck.content_hash})")  # fmt: skip
    return 0


@contextlib.contextmanager
def _in_config(source: str) -> Iterator[None]:
    """Config errors raised inside name ``source`` as their file, like the parser's own."""
    try:
        yield
    except ConfigError as exc:
        raise exc.in_file(source) from None


@contextlib.contextmanager
def _subscriber(endpoint: str, topics: Sequence[str], args: argparse.Namespace) -> Iterator[Any]:
    """A SUB socket connected to ``endpoint`` and subscribed to ``topics``, closed after."""
    from fusiond.bus.sockets import Sockets

    with Sockets(keys=_keys(args)) as sockets:
        yield sockets.subscriber(endpoint, topics)


def cmd_echo(args: argparse.Namespace) -> int:
    """Print messages of any topic (predictions by default)."""
    from fusiond.bus.wire import describe
    from fusiond.errors import WireError

    endpoint = _endpoint(args.connect, args.config, "subscribe")
    seen = 0
    timeout_ms = None if args.timeout is None else int(args.timeout * 1000)
    with contextlib.suppress(KeyboardInterrupt), _subscriber(endpoint, args.topics or ["p/"], args) as sock:
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
            print(json.dumps(message) if args.json else _pretty(message), flush=True)
            seen += 1
    return 0


def _pretty(message: dict[str, Any]) -> str:
    if message.get("type") == "prediction":
        best = max(message["scores"]) if message["scores"] else 0.0
        lat = message["latency_ns"]["close_to_publish"] / 1e6
        missing = f" missing={','.join(message['missing'])}" if message["missing"] else ""
        said = message.get("modality_labels")
        heard = ""
        if isinstance(said, dict) and said:
            labels = " ".join(f"{m}:{label}" for m, label in said.items())
            heard = f" says[{labels}] disagreement={message.get('disagreement', 0):.2f}"
        return (f"{message['topic']} #{message['seq']} {message['label']} ({best:.2f}) "
                f"window={message['window_start_ns']}..{message['window_end_ns']} "
                f"latency={lat:.1f}ms{missing}{heard}")  # fmt: skip
    shapes = [b.get("shape") for b in message.get("buffers", [])]
    return f"{message['topic']} #{message.get('seq')} t={message.get('t_ns')} {shapes}"


def _endpoint(connect: str | None, config_path: Path | None, which: str) -> str:
    """``--connect`` if given, else ``[bus] which`` of ``--config``, else the default."""
    from fusiond.bus import sockets

    if connect:
        return connect
    if config_path is None:  # the defaults, without loading the config machinery (pydantic)
        return {"publish": sockets.DEFAULT_PUBLISH, "subscribe": sockets.DEFAULT_SUBSCRIBE,
                "control": sockets.DEFAULT_CONTROL}[which]  # fmt: skip
    from fusiond import config as config_mod

    return sockets.local_endpoint(getattr(config_mod.load(config_path).bus, which))


def _keys(args: argparse.Namespace) -> Any:
    """CURVE keys from --key/--server-key, else FUSIOND_KEY/FUSIOND_SERVER_KEY (none: plain)."""
    from fusiond.bus.security import client_keys

    return client_keys(args.key, args.server_key)


def _key_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--key", type=Path, help="this client's NAME.key_secret on a secured bus "
                        "(default $FUSIOND_KEY)")  # fmt: skip
    parser.add_argument("--server-key", type=Path, help="the daemon's public key file "
                        "(default $FUSIOND_SERVER_KEY)")  # fmt: skip


def _parse_set(pairs: Sequence[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            msg = f"--set takes key=value, got {pair!r}"
            raise ConfigError(msg)
        try:
            options[key] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            options[key] = raw
    return options


def cmd_source(args: argparse.Namespace) -> int:
    """Run one source standalone, publishing to a bus endpoint."""
    import signal

    from fusiond.config import SourceSection, validate_source
    from fusiond.plugin import load_plugins
    from fusiond.sources.base import SourceContext
    from fusiond.sources.runner import run_source, stop_event_from_signals
    from fusiond.sources.supervisor import STOP_GRACE_S, die_with_parent

    stop = stop_event_from_signals(STOP_GRACE_S)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a reload is the daemon's business
    if args.parent_pid:
        die_with_parent(args.parent_pid)
    options = json.loads(args.options_json) if args.options_json else {}
    options.update(_parse_set(args.set))
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
    return run_source(cls, config, context, args.connect, sync_clock=args.sync_clock or "", keys=_keys(args))


def cmd_component(args: argparse.Namespace) -> int:
    """One of the daemon's own components (it starts them; not for people)."""
    import signal

    from fusiond.runtime.engine import component_main
    from fusiond.sources.supervisor import die_with_parent

    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a reload is the daemon's business
    if args.parent_pid:
        die_with_parent(args.parent_pid)
    return component_main(args.role, json.loads(args.spec_json))


def cmd_export(args: argparse.Namespace) -> int:
    """Write a checkpoint's model as ONNX, for ``[model] runtime = "onnx"``."""
    from fusiond.models import load
    from fusiond.models.onnx import export, onnx_path
    from fusiond.plugin import load_plugins

    checkpoint = load(args.model)
    out = args.output or onnx_path(args.model)
    export(checkpoint, load_plugins().parts, out)
    print(f"{out}: ONNX export of {checkpoint.name} ({checkpoint.content_hash})")
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    """Make or list CurveZMQ key pairs (zmq's certificate format)."""
    from fusiond.bus.security import generate, listing

    if args.action == "generate":
        if not args.name:
            print("fusiond keys generate: give a NAME", file=sys.stderr)
            return 2
        public, secret = generate(args.name, args.dir)
        print(f"{public} (public: give it to the daemon's [bus.security] clients folder)")
        print(f"{secret} (secret: keep it on this host only)")
        return 0
    for key_name, public_key, has_secret in listing(args.dir):
        print(f"{key_name:<24} {public_key}  {'public + secret' if has_secret else 'public'}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Ask a running daemon how it is doing."""
    from fusiond.bus.sockets import Sockets

    endpoint = _endpoint(args.connect, args.config, "control")
    with Sockets(keys=_keys(args)) as sockets:
        sock = sockets.request(endpoint)
        sock.send(b"status")
        if not sock.poll(int(args.timeout * 1000)):
            print(f"fusiond status: no daemon answered at {endpoint}", file=sys.stderr)
            return 1
        reply = json.loads(sock.recv())
    print(json.dumps(reply, indent=2) if args.json else _status_text(reply))
    return 0


def _status_text(s: dict[str, Any]) -> str:
    model = s["model"]
    state = "ready" if s.get("ready") else "not ready"
    if s.get("never_delivered"):
        state += f" (never delivered: {', '.join(s['never_delivered'])})"
    lines = [f"fusiond up {s['uptime_s']:.0f} s, {state}, "
             f"model {model['name']} ({model['hash']}) on {model['device']}"]  # fmt: skip
    lines.append("sources:")
    for src in s["sources"]:
        age = src["last_sample_age_s"]
        age_text = "never" if age is None else f"{age:.1f} s ago"
        error = f"  ERROR: {src['error']}" if src["error"] else ""
        lines.append(
            f"  {src['rig']}/{src['stream']:<10} {src['state']:<9} restarts {src['restarts']:<3} "
            f"{src['messages_per_s']:6.1f} msg/s {src['measured_rate_hz']:8.1f} Hz measured "
            f"({src['sample_rate_hz']:g} declared)  last sample {age_text}{error}"
        )
        if clock := src.get("clock"):
            lines.append(
                f"    clock: offset {clock['offset_ms']:+.3f} ms, drift {clock['drift_ppm']:+.1f} ppm, "
                f"jitter {clock['jitter_ms']:.3f} ms, outliers {clock['outliers']}, steps {clock['steps']}"
            )
    lines.append("rigs:")
    for rig in s["rigs"]:
        lat = rig["latency_ms"]
        masked = ", ".join(f"{m}={n}" for m, n in rig["masked"].items()) or "none"
        lines.append(
            f"  {rig['rig']:<12} {rig['windows_per_s']:.1f} windows/s, {rig['predictions']} predictions, "
            f"latency p50 {lat['p50']} ms p99 {lat['p99']} ms, masked {masked}, "
            f"last {rig['last_label'] or '-'}"
        )
        if rig["quiet"]:
            lines.append(f"    quiet: {rig['quiet']}")
    drops = ", ".join(f"{k}={v}" for k, v in sorted(s["drops"].items())) or "none"
    lines.append(f"drops: {drops}")
    return "\n".join(lines)


def cmd_hz(args: argparse.Namespace) -> int:
    """Rate and jitter of a topic, from its capture times (like ``ros2 topic hz``)."""
    from fusiond.bus.wire import decode_header
    from fusiond.errors import WireError
    from fusiond.hz import RateWindow

    endpoint = _endpoint(args.connect, args.config, "subscribe")
    topic = args.topic.encode()
    window = RateWindow(args.window)
    next_print = time.monotonic() + 1.0
    end = None if args.duration is None else time.monotonic() + args.duration
    with contextlib.suppress(KeyboardInterrupt), _subscriber(endpoint, [args.topic], args) as sock:
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

    endpoint = _endpoint(args.connect, args.config, "subscribe")
    table = TopicTable()
    start = time.monotonic()
    end = start + args.duration
    with contextlib.suppress(KeyboardInterrupt), _subscriber(endpoint, [""], args) as sock:
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
        print(json.dumps({"endpoint": endpoint, "seconds": args.duration, "topics": rows,
                          "untracked_messages": table.untracked}))  # fmt: skip
        return 0
    if not rows:
        print(f"no messages on {endpoint} in {args.duration:g} s", file=sys.stderr)
        return 1
    print(f"{'TOPIC':<28} {'TYPE':<12} {'MODALITY':<9} {'MSG/S':>8} {'BANDWIDTH':>11} PUBLISHERS")
    for row in rows:
        publishers = f"{row['publishers']}{' + unnamed' if row['unnamed_messages'] else ''}"
        print(f"{row['topic']:<28} {row['type']:<12} {row['modality'] or '-':<9} "
              f"{row['messages_per_s']:>8.1f} {bandwidth(row['bytes_per_s']):>11} {publishers}")  # fmt: skip
    return 0


def _samples(header: dict[str, Any]) -> int:
    """Samples in a message (the first axis of its first buffer; 1 when it says nothing)."""
    buffers = header.get("buffers")
    first = buffers[0] if isinstance(buffers, list) and buffers else None
    shape = first.get("shape") if isinstance(first, dict) else None
    return shape[0] if isinstance(shape, list) and shape and type(shape[0]) is int and shape[0] > 0 else 1


def cmd_plugins(args: argparse.Namespace) -> int:
    """List the source kinds and encoders found, and where each came from."""
    from fusiond.plugin import load_plugins

    plugins = load_plugins()
    rows = []
    for kind in plugins.sources:
        cls = plugins.sources.get(kind)
        assert cls is not None
        rows.append({"type": "source", "name": kind, "modality": cls.modality,
                     "from": plugins.origin(cls)})  # fmt: skip
    for name, module in plugins.encoders.modules().items():
        rows.append({"type": "encoder", "name": name, "modality": "", "from": plugins.origin(module)})
    for name, module in plugins.fusions.modules().items():
        rows.append({"type": "fusion", "name": name, "modality": "", "from": plugins.origin(module)})
    from fusiond.align.kinds import KINDS

    for name in KINDS:
        origin = plugins.origin(type(KINDS.get(name)))
        rows.append({"type": "kind", "name": name, "modality": "", "from": origin})
    for name, why in sorted(plugins.failures.items()):
        rows.append({"type": "failed", "name": name, "modality": "", "from": why})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"{'TYPE':<8} {'NAME':<14} {'MODALITY':<10} FROM")
        for row in rows:
            print(f"{row['type']:<8} {row['name']:<14} {row['modality'] or '-':<10} {row['from']}")
    return 0


def _progress(line: Any) -> None:
    val = "" if line.val_score is None else f", validation {line.val_score:.3f}"
    print(f"epoch {line.epoch}/{line.epochs}: loss {line.loss:.4f}{val} ({line.seconds:.1f} s)", flush=True)


def cmd_train(args: argparse.Namespace) -> int:
    """Train a model from labelled recordings (or a config of file sources)."""
    from fusiond.plugin import load_plugins
    from fusiond.training.recipe import load_recipe
    from fusiond.training.train import data_items, summary_line, train

    only = args.modalities.split(",") if args.modalities else None
    recipe = load_recipe(args.recipe, name=args.name, fusion=args.fusion, train_epochs=args.epochs,
                         train_seed=args.seed, train_device=args.device)  # fmt: skip
    if only:
        recipe = recipe.only(only)
    plugins = load_plugins()
    data = data_items(args.data, args.labels)
    test = data_items(args.test, args.test_labels) if args.test else []
    val = data_items(args.val, args.val_labels) if args.val else []
    log.info("training %s (%s fusion of %s) on %d data item(s)", recipe.name, recipe.fusion,
             ", ".join(recipe.inputs), len(data))  # fmt: skip
    trained = train(recipe, data, args.output, plugins, test=test, val=val, progress=_progress)
    metrics = trained.metrics
    if metrics["test"]:
        print(f"test: {summary_line(metrics['test'])}")
    print(f"wrote {args.output} ({trained.content_hash}); best epoch {metrics['best_epoch']}, "
          f"{metrics['seconds']:.0f} s on {metrics['device']}")  # fmt: skip
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Score a model on labelled data, or show the scores it was saved with."""
    from fusiond.models import load
    from fusiond.plugin import load_plugins
    from fusiond.training.evaluate import confusion_png
    from fusiond.training.train import data_items, evaluate_checkpoint, summary_line

    checkpoint = load(args.model)
    if args.data:
        data = data_items(args.data, args.labels)
        result = evaluate_checkpoint(checkpoint, data, load_plugins(), args.device)
    else:
        result = dict(checkpoint.metrics.get("test") or {})
        if not result:
            msg = f"{args.model} carries no test scores; give --data"
            raise FusiondError(msg)
        result["model"] = {"name": checkpoint.name, "hash": checkpoint.content_hash,
                           "fusion": checkpoint.fusion["name"]}  # fmt: skip
    if args.report:
        args.report.mkdir(parents=True, exist_ok=True)
        (args.report / "report.json").write_text(json.dumps(result, indent=2) + "\n")
        if "confusion" in result:
            confusion_png(result["confusion"], checkpoint.classes, args.report / "confusion.png")
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{checkpoint.name} ({checkpoint.content_hash}): {summary_line(result)}")
        if args.report:
            print(f"report in {args.report}/")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="fusiond", description="Streaming sensor-fusion daemon.")
    parser.add_argument("--version", action="version", version=f"fusiond {__version__}")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="start the daemon")
    run.add_argument("--config", type=Path, default=Path("config.toml"))
    run.add_argument(
        "--no-sources",
        action="store_true",
        help="start no source processes; serve what publishers (e.g. replay) send",
    )
    run.add_argument(
        "--replay",
        type=Path,
        metavar="FILE.mcap",
        help="offline: run the pipeline over a recording and print predictions",
    )
    run.add_argument("--output", type=Path, help="with --replay: write predictions here (JSON lines)")
    run.set_defaults(func=cmd_run)

    record = sub.add_parser("record", help="record the bus to an MCAP file")
    record.add_argument("-o", "--output", type=Path, required=True)
    record.add_argument("--topics", nargs="*", default=[], help="topic prefixes (default: all)")
    record.add_argument("--duration", type=float, help="stop after this many seconds")
    record.add_argument("--connect", help="subscriber endpoint of the daemon")
    record.add_argument("--config", type=Path, help="read the endpoint from this config")
    record.add_argument("--foxglove", action="store_true",
                        help="add Foxglove channels: camera JPEGs, predictions")  # fmt: skip
    _key_options(record)
    record.set_defaults(func=cmd_record)

    replay = sub.add_parser("replay", help="publish a recording's sensor messages again")
    replay.add_argument("recording", type=Path)
    pace = replay.add_mutually_exclusive_group()
    pace.add_argument("--speed", type=float, default=1.0, help="1 = recorded timing")
    pace.add_argument("--fast", action="store_true", help="no pacing")
    replay.add_argument("--loop", action="store_true")
    replay.add_argument("--topics", nargs="*", default=[], help="topic prefixes (default: s/)")
    replay.add_argument("--connect", help="publisher endpoint of the daemon")
    replay.add_argument("--config", type=Path, help="read the endpoint from this config")
    _key_options(replay)
    replay.set_defaults(func=cmd_replay)

    info = sub.add_parser("info", help="channels, counts, duration and rates of a recording")
    info.add_argument("recording", type=Path)
    info.add_argument("--json", action="store_true")
    info.set_defaults(func=cmd_info)

    check = sub.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("--config", type=Path, default=Path("config.toml"))
    check.add_argument("--no-ports", action="store_true",
                       help="skip the check that its ports are free (the config of a running daemon)")
    check.set_defaults(func=cmd_check_config)

    echo = sub.add_parser("echo", help="print messages from the bus (predictions by default)")
    echo.add_argument("topics", nargs="*", help="topic prefixes, e.g. p/ or s/demo/cam")
    echo.add_argument("--connect", help="subscriber endpoint of the daemon")
    echo.add_argument("--config", type=Path, help="read the endpoint from this config")
    echo.add_argument("--json", action="store_true", help="one JSON object a line")
    echo.add_argument("--count", type=int, help="exit after this many messages")
    echo.add_argument("--timeout", type=float, help="exit 1 if nothing arrives for this long (s)")
    _key_options(echo)
    echo.set_defaults(func=cmd_echo)

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
    source.add_argument("--sync-clock", metavar="CONTROL", help="the daemon's control endpoint: stamp blocks "
                        "on its clock (for a source on another host)")  # fmt: skip
    _key_options(source)
    source.set_defaults(func=cmd_source)

    component = sub.add_parser("component", help=argparse.SUPPRESS)
    component.add_argument("role", choices=["worker", "server"])
    component.add_argument("--spec-json", required=True)
    component.add_argument("--parent-pid", type=int)
    component.set_defaults(func=cmd_component)

    export = sub.add_parser("export", help="write a model as ONNX for onnxruntime")
    export.add_argument("model", type=Path)
    export.add_argument("--onnx", action="store_true", help="the format (the only one for now)")
    export.add_argument("-o", "--output", type=Path, help="default: MODEL.onnx beside the checkpoint")
    export.set_defaults(func=cmd_export)

    keys = sub.add_parser("keys", help="make or list CurveZMQ keys for a secured bus")
    keys.add_argument("action", choices=["generate", "list"])
    keys.add_argument("name", nargs="?", help="generate: the key's name (its file stem)")
    keys.add_argument("--dir", type=Path, default=Path("."), help="the folder of key files")
    keys.set_defaults(func=cmd_keys)

    status = sub.add_parser("status", help="ask a running daemon how it is doing")
    status.add_argument("--json", action="store_true")
    status.add_argument("--connect", help="control endpoint of the daemon")
    status.add_argument("--config", type=Path, help="read the endpoint from this config")
    status.add_argument("--timeout", type=float, default=3.0)
    _key_options(status)
    status.set_defaults(func=cmd_status)

    hz = sub.add_parser("hz", help="rate and jitter of a topic, from its capture times")
    hz.add_argument("topic", help="a topic, e.g. s/demo/cam")
    hz.add_argument("--prefix", action="store_true", help="every topic that starts with TOPIC, together")
    hz.add_argument("--window", type=int, default=100, help="messages to average over")
    hz.add_argument("--duration", type=float, help="stop after this many seconds")
    hz.add_argument("--connect", help="subscriber endpoint of the daemon")
    hz.add_argument("--config", type=Path, help="read the endpoint from this config")
    _key_options(hz)
    hz.set_defaults(func=cmd_hz)

    topics = sub.add_parser("topics", help="every topic on the bus: rate, bandwidth, publishers")
    topics.add_argument("--connect", help="the bus's subscribe endpoint (default: from --config)")
    topics.add_argument("--config", type=Path)
    topics.add_argument("--duration", type=float, default=2.0, help="seconds to listen (default 2)")
    topics.add_argument("--json", action="store_true", help="print one JSON object")
    _key_options(topics)
    topics.set_defaults(func=cmd_topics)

    train = sub.add_parser(
        "train",
        help="train a model from labelled recordings",
        description="Train a model. DATA: .mcap recordings (labelled by X.labels.csv beside X.mcap "
        "unless --labels), folders of them, or a daemon config of file sources (with --labels). "
        "Windows are cut by the daemon's own aligner.",
    )
    train.add_argument("recipe", type=Path, help="the recipe TOML (inputs, encoders, fusion, [train])")
    train.add_argument("--data", type=Path, nargs="+", required=True)
    train.add_argument("--labels", type=Path, help="label CSV for every DATA item")
    train.add_argument("--test", type=Path, nargs="+", help="held-out data (default: split off DATA)")
    train.add_argument("--test-labels", type=Path)
    train.add_argument("--val", type=Path, nargs="+",
                       help="validation data: picks the best epoch and calibrates (default: split off DATA)")
    train.add_argument("--val-labels", type=Path)
    train.add_argument("-o", "--output", type=Path, required=True, help="checkpoint to write")
    train.add_argument("--name", help="model name (default: the recipe's)")
    train.add_argument("--fusion", help="fusion strategy (default: the recipe's)")
    train.add_argument("--modalities", help="train on these inputs only, comma-separated")
    train.add_argument("--epochs", type=int)
    train.add_argument("--seed", type=int)
    train.add_argument("--device", help="auto (CUDA when present), cpu or cuda[:N]")
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser("eval", help="score a model on labelled data")
    evaluate.add_argument("model", type=Path)
    evaluate.add_argument("--data", type=Path, nargs="+", help="as for train (default: saved test scores)")
    evaluate.add_argument("--labels", type=Path)
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.add_argument("--report", type=Path, help="write report.json and confusion.png here")
    evaluate.add_argument("--device", default="auto")
    evaluate.set_defaults(func=cmd_eval)

    plugins = sub.add_parser("plugins", help="list source kinds and encoders, and their origin")
    plugins.add_argument("--json", action="store_true")
    plugins.set_defaults(func=cmd_plugins)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fusiond`` command."""
    args = build_parser().parse_args(argv)
    if args.command == "source" and args.stream is None:
        args.stream = args.kind
    _logging(args.log_level)
    try:
        return int(args.func(args))
    except FusiondError as exc:
        print(f"fusiond: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
