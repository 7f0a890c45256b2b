"""``fusiond run``, ``check-config``, ``status``, ``keys``: the daemon and its service."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from fusiond.cli.common import (
    bus_options,
    endpoint_of,
    in_config,
    keys_of,
)
from fusiond.status import as_text

__all__ = ["cmd_check_config", "cmd_component", "cmd_keys", "cmd_run", "cmd_status", "register"]

log = logging.getLogger("fusiond")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add this group's subcommands."""
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

    check = sub.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("--config", type=Path, default=Path("config.toml"))
    check.add_argument(
        "--no-ports",
        action="store_true",
        help="skip the check that its ports are free (the config of a running daemon)",
    )
    check.set_defaults(func=cmd_check_config)

    status = sub.add_parser("status", help="ask a running daemon how it is doing")
    status.add_argument("--json", action="store_true")
    bus_options(status, "control endpoint of the daemon")
    status.add_argument("--timeout", type=float, default=3.0)
    status.set_defaults(func=cmd_status)

    keys = sub.add_parser("keys", help="make or list CurveZMQ keys for a secured bus")
    keys.add_argument("action", choices=["generate", "list"])
    keys.add_argument("name", nargs="?", help="generate: the key's name (its file stem)")
    keys.add_argument("--dir", type=Path, default=Path("."), help="the folder of key files")
    keys.set_defaults(func=cmd_keys)

    component = sub.add_parser("component", help=argparse.SUPPRESS)
    component.add_argument("role", choices=["worker", "server"])
    component.add_argument("--spec-json", required=True)
    component.add_argument("--parent-pid", type=int)
    component.set_defaults(func=cmd_component)


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
    with (
        in_config(config.source),
        Daemon(config, plugins, start_sources=not args.no_sources, config_path=args.config) as daemon,
    ):
        daemon.run(stop, reload)
    return 1 if daemon.fatal else 0


def _run_offline(config: Any, recording: Path, output: Path | None) -> int:
    from fusiond.bus.wire import Prediction
    from fusiond.plugin import load_plugins
    from fusiond.runtime.offline import run_offline

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


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate a config file, its source options, what each source needs (files, devices:
    looked for, not opened), its model and device."""
    from fusiond import config as config_mod
    from fusiond.pipeline import Pipeline
    from fusiond.plugin import load_plugins
    from fusiond.prepare import daemon_keys, port_problems, prepare

    config = config_mod.load(args.config)
    plugins = load_plugins()
    with in_config(config.source):
        prepared = prepare(config, plugins, serve=True)
        ck = prepared.card
        pipeline = Pipeline.from_config(config, plugins.sources, ck)
        daemon_keys(config)  # what run loads before it binds: unreadable or mismatched keys
    problems = prepared.problems + ([] if args.no_ports else port_problems(config))
    for problem in problems:
        print(f"fusiond: error: {config.source}: {problem}", file=sys.stderr)
    if problems:
        return 2
    for warning in [*prepared.warnings, *config.warnings()]:
        print(f"fusiond: warning: {config.source}: {warning}", file=sys.stderr)
    print(
        f"{args.config}: OK ({len(config.rigs)} rig(s), {len(pipeline.streams)} source(s), "
        f"model {ck.name} {ck.content_hash})"
    )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Ask a running daemon how it is doing."""
    from fusiond.bus.sockets import Sockets

    endpoint = endpoint_of(args.connect, args.config, "control")
    with Sockets(keys=keys_of(args)) as sockets:
        sock = sockets.request(endpoint)
        sock.send(b"status")
        if not sock.poll(int(args.timeout * 1000)):
            print(f"fusiond status: no daemon answered at {endpoint}", file=sys.stderr)
            return 1
        reply = json.loads(sock.recv())
    if "error" in reply:  # the daemon could not answer (see its log)
        print(f"fusiond status: {reply['error']}", file=sys.stderr)
        return 1
    print(json.dumps(reply, indent=2) if args.json else as_text(reply))
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


def cmd_component(args: argparse.Namespace) -> int:
    """One of the daemon's own components (it starts them; not for people)."""
    import signal

    from fusiond.runtime.engine import component_main
    from fusiond.sources.supervisor import die_with_parent

    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a reload is the daemon's business
    if args.parent_pid:
        die_with_parent(args.parent_pid)
    return component_main(args.role, json.loads(args.spec_json))
