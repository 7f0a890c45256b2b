"""The ``fusiond`` command: one module per group of subcommands, each adding its own."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from fusiond import __version__
from fusiond.cli import bus, daemon, model, outputs, recording
from fusiond.errors import FusiondError

__all__ = ["build_parser", "main"]


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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="fusiond", description="Streaming sensor-fusion daemon.")
    parser.add_argument("--version", action="version", version=f"fusiond {__version__}")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (daemon, recording, bus, outputs, model):
        group.register(sub)
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
