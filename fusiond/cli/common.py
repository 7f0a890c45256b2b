"""What the subcommands share: endpoints, keys, config errors, ``--set`` values."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import threading
import tomllib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from fusiond.errors import ConfigError

__all__ = [
    "as_child",
    "bus_options",
    "endpoint_of",
    "in_config",
    "key_options",
    "keys_of",
    "parse_set",
    "subscriber",
]

log = logging.getLogger("fusiond")


def bus_options(parser: argparse.ArgumentParser, connect_help: str) -> None:
    """``--connect`` (``connect_help``), ``--config`` to read the endpoint from, and the keys."""
    parser.add_argument("--connect", help=connect_help)
    parser.add_argument("--config", type=Path, help="read the endpoint from this config")
    key_options(parser)


@contextlib.contextmanager
def in_config(source: str) -> Iterator[None]:
    """Config errors raised inside name ``source`` as their file, like the parser's own."""
    try:
        yield
    except ConfigError as exc:
        raise exc.in_file(source) from None


@contextlib.contextmanager
def subscriber(endpoint: str, topics: Sequence[str], args: argparse.Namespace) -> Iterator[Any]:
    """A SUB socket connected to ``endpoint`` and subscribed to ``topics``, closed after."""
    from fusiond.bus.sockets import Sockets

    with Sockets(keys=keys_of(args)) as sockets:
        yield sockets.subscriber(endpoint, topics)


def endpoint_of(connect: str | None, config_path: Path | None, which: str) -> str:
    """``--connect`` if given, else ``[bus] which`` of ``--config``, else the default."""
    from fusiond.bus import sockets

    if connect:
        return connect
    if config_path is None:  # the defaults, without loading the config machinery (pydantic)
        return {
            "publish": sockets.DEFAULT_PUBLISH,
            "subscribe": sockets.DEFAULT_SUBSCRIBE,
            "control": sockets.DEFAULT_CONTROL,
        }[which]
    from fusiond import config as config_mod

    return sockets.local_endpoint(getattr(config_mod.load(config_path).bus, which))


def keys_of(args: argparse.Namespace) -> Any:
    """CURVE keys from --key/--server-key, else FUSIOND_KEY/FUSIOND_SERVER_KEY (none: plain)."""
    from fusiond.bus.security import client_keys

    return client_keys(args.key, args.server_key)


def key_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--key", type=Path, help="this client's NAME.key_secret on a secured bus (default $FUSIOND_KEY)"
    )
    parser.add_argument(
        "--server-key", type=Path, help="the daemon's public key file (default $FUSIOND_SERVER_KEY)"
    )


def parse_set(pairs: Sequence[str]) -> dict[str, Any]:
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


def as_child(args: argparse.Namespace) -> tuple[threading.Event, dict[str, Any]]:
    """What a source or an output process does first: stop on SIGTERM or SIGINT (by force
    if stuck), ignore SIGHUP (a reload is the daemon's business), end with the daemon
    that started it; and its options, ``--options-json`` with ``--set`` on top."""
    import signal

    from fusiond.sources.runner import stop_event_from_signals
    from fusiond.sources.supervisor import STOP_GRACE_S, die_with_parent

    stop = stop_event_from_signals(STOP_GRACE_S)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if args.parent_pid:
        die_with_parent(args.parent_pid)
    options = json.loads(args.options_json) if args.options_json else {}
    options.update(parse_set(args.set))
    return stop, options
