"""``fusiond output``: one output's bridge, from the bus's predictions to where they go;
``fusiond view``: the live Foxglove view of a bus (the ``foxglove`` output on its own)."""

from __future__ import annotations

import argparse
import logging

from fusiond.cli.common import as_child, key_options, keys_of

__all__ = ["cmd_output", "cmd_view", "register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add this group's subcommands."""
    output = sub.add_parser("output", help="bridge the bus's predictions to an output (MQTT, ...)")
    output.add_argument("kind", help="an output kind (fusiond plugins lists them)")
    _bridge_options(output)
    output.set_defaults(func=cmd_output)
    view = sub.add_parser("view", help="serve the live bus to Foxglove (WebSocket)")
    view.add_argument("--listen", default="127.0.0.1:8765", help="host:port of the WebSocket server")
    _bridge_options(view)
    view.set_defaults(func=cmd_view, kind="foxglove")


def _bridge_options(output: argparse.ArgumentParser) -> None:
    output.add_argument("--name", default=None, help="its name in status (default: the kind)")
    output.add_argument("--connect", default="tcp://127.0.0.1:7711", help="the bus's subscriber endpoint")
    output.add_argument(
        "--publish", default="tcp://127.0.0.1:7710", help="the bus's publisher endpoint (reports)"
    )
    output.add_argument(
        "--queue", type=int, default=1000, help="predictions held while the output falls behind"
    )
    output.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    output.add_argument("--options-json", help=argparse.SUPPRESS)
    output.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    key_options(output)


def cmd_view(args: argparse.Namespace) -> int:
    """``fusiond output foxglove --set listen=...``, shorter."""
    args.set = [*args.set, f"listen={args.listen}"]
    return cmd_output(args)


def cmd_output(args: argparse.Namespace) -> int:
    """Run one output's bridge until SIGTERM."""
    from fusiond.config import OutputSection, validate_output
    from fusiond.outputs.base import OutputContext
    from fusiond.outputs.runner import run_output
    from fusiond.plugin import load_plugins

    stop, options = as_child(args)
    plugins = load_plugins()
    name = args.name or args.kind
    config = validate_output(plugins.outputs, OutputSection(kind=args.kind, **options), f"output {name}")
    cls = plugins.outputs.get(args.kind)
    assert cls is not None  # validate_output raised otherwise
    context = OutputContext(name, stop, logging.getLogger(f"fusiond.output.{name}"))
    return run_output(cls, config, context, args.connect, args.publish, queue=args.queue, keys=keys_of(args))
