"""CurveZMQ on the bus: who may connect, and who may publish what.

    fusiond keys generate server --dir /etc/fusiond/keys     # the daemon's pair
    fusiond keys generate daemon --dir /etc/fusiond/clients  # its own sources' pair
    fusiond keys generate cam1 --dir /etc/fusiond/clients    # one per sensor host or reader

Every TCP socket is encrypted and authenticated: the daemon's (publish, subscribe,
control) are CURVE servers with ``[bus.security] server_key``; a client (source, echo,
record, status, the Python client, the daemon's own workers) presents a key pair whose
public half lies in ``[bus.security] clients``, and knows the server's public key. ZAP
(pyzmq's :class:`zmq.auth.thread.ThreadAuthenticator`) names each connection after its
certificate file, so ``[bus.security.publishers]`` can bind a key to rigs or streams.
Clients find their keys in ``FUSIOND_KEY`` (their secret certificate file) and
``FUSIOND_SERVER_KEY`` (the server's public certificate file), or options of the same
name. ipc and inproc endpoints carry no CURVE: file permissions guard those.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from fusiond.errors import ConfigError

if TYPE_CHECKING:
    from fusiond.config import SecuritySection

__all__ = [
    "client_keys",
    "Gatekeeper",
    "generate",
    "guard",
    "KEY_ENV",
    "Keys",
    "listing",
    "load_pair",
    "PublishRules",
    "SERVER_KEY_ENV",
    "SERVER_PUBLIC_ENV",
]

log = logging.getLogger(__name__)
KEY_ENV = "FUSIOND_KEY"
SERVER_KEY_ENV = "FUSIOND_SERVER_KEY"
SERVER_PUBLIC_ENV = "FUSIOND_SERVER_PUBLIC"


@dataclass(frozen=True)
class Keys:
    """The CURVE keys one process uses (z85 bytes); empty when the bus is not secured."""

    server_public: bytes | None = None
    """The daemon's public key: what a client checks the server against."""
    server_secret: bytes | None = None
    """Only in the daemon: what its bound TCP sockets serve with."""
    client_public: bytes | None = None
    client_secret: bytes | None = None

    @property
    def enabled(self) -> bool:
        """Whether TCP sockets made with these keys use CURVE."""
        return self.server_public is not None

    def serve(self, sock: zmq.Socket[bytes], endpoint: str) -> None:
        """Make a socket about to bind ``endpoint`` a CURVE server (TCP only)."""
        if not self.enabled or not endpoint.startswith("tcp://"):
            return
        if self.server_secret is None:
            msg = f"binding {endpoint} on a secured bus needs the server's secret key"
            raise ConfigError(msg, path="bus.security.server_key")
        sock.curve_server = True
        sock.curve_publickey = self.server_public
        sock.curve_secretkey = self.server_secret

    def connect(self, sock: zmq.Socket[bytes], endpoint: str) -> None:
        """Make a socket about to connect to ``endpoint`` a CURVE client (TCP only)."""
        if not self.enabled or not endpoint.startswith("tcp://"):
            return
        if self.client_public is None or self.client_secret is None:
            msg = f"connecting to {endpoint} on a secured bus needs a key pair (set {KEY_ENV} or --key)"
            raise ConfigError(msg)
        sock.curve_serverkey = self.server_public
        sock.curve_publickey = self.client_public
        sock.curve_secretkey = self.client_secret

    def env(self) -> dict[str, str]:
        """Variables that hand the client half of these keys to a child process."""
        if not self.enabled or self.client_secret is None or self.client_public is None:
            return {}
        assert self.server_public is not None
        return {
            SERVER_PUBLIC_ENV: self.server_public.decode(),
            "FUSIOND_KEY_PUBLIC": self.client_public.decode(),
            "FUSIOND_KEY_SECRET": self.client_secret.decode(),
        }


def load_pair(path: Path, where: str = "") -> tuple[bytes, bytes | None]:
    """``(public, secret)`` from a zmq certificate file (``secret`` is None in a public one)."""
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        msg = f"cannot read key {path}: {exc}"
        raise ConfigError(msg, path=where) from None
    return public, secret


def client_keys(
    key: Path | None = None, server_key: Path | None = None, environ: Mapping[str, str] | None = None
) -> Keys:
    """A client's keys from files, else from the environment; no keys when none are given."""
    env = os.environ if environ is None else environ
    if key is None and env.get("FUSIOND_KEY_SECRET") and env.get(SERVER_PUBLIC_ENV):
        return Keys(
            env[SERVER_PUBLIC_ENV].encode(),
            None,
            env["FUSIOND_KEY_PUBLIC"].encode(),
            env["FUSIOND_KEY_SECRET"].encode(),
        )
    key = key or (Path(env[KEY_ENV]) if env.get(KEY_ENV) else None)
    server_key = server_key or (Path(env[SERVER_KEY_ENV]) if env.get(SERVER_KEY_ENV) else None)
    if key is None and server_key is None:
        return Keys()
    if key is None or server_key is None:
        msg = f"a secured bus needs a key pair ({KEY_ENV}) and the server's public key ({SERVER_KEY_ENV})"
        raise ConfigError(msg)
    public, secret = load_pair(key, KEY_ENV)
    if secret is None:
        msg = f"{key} holds no secret key: give the NAME.key_secret file"
        raise ConfigError(msg)
    server_public, _ = load_pair(server_key, SERVER_KEY_ENV)
    return Keys(server_public, None, public, secret)


def generate(name: str, folder: Path) -> tuple[Path, Path]:
    """Write ``NAME.key`` (public) and ``NAME.key_secret`` in zmq's certificate format."""
    folder.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(folder, name)
    os.chmod(secret, 0o600)
    return Path(public), Path(secret)


def listing(folder: Path) -> list[tuple[str, str, bool]]:
    """``(name, public key, has secret)`` for every certificate in a folder."""
    out = []
    for path in sorted(folder.glob("*.key")):
        public, _ = load_pair(path)
        out.append((path.stem, public.decode(), path.with_suffix(".key_secret").exists()))
    return out


class Gatekeeper(ThreadAuthenticator):
    """ZAP for the daemon: allows the public keys in a folder, names each connection after
    its certificate file, and counts every refusal."""

    def __init__(self, context: zmq.Context[Any], clients: Path, on_refused: Callable[[str], None]) -> None:
        super().__init__(context, log=logging.getLogger("fusiond.auth"))
        self.clients = clients
        self.on_refused = on_refused
        self.names: dict[bytes, str] = {}

    def start(self) -> None:
        super().start()
        self.configure_curve(domain="*", location=str(self.clients))
        self.names = {public.encode(): name for name, public, _ in listing(self.clients)}
        if not self.names:
            log.warning("bus.security.clients %s holds no public key: no client can connect", self.clients)

    def curve_user_id(self, client_public_key: bytes) -> str:
        return self.names.get(z85.encode(client_public_key), "unknown")

    def _send_zap_reply(
        self, request_id: bytes, status_code: bytes, status_text: bytes, user_id: str = "anonymous"
    ) -> None:
        if status_code != b"200":
            self.on_refused(status_text.decode(errors="replace"))
        super()._send_zap_reply(request_id, status_code, status_text, user_id)


class PublishRules:
    """Which topics each key may publish (``[bus.security.publishers]``)."""

    def __init__(self, publishers: Mapping[str, Sequence[str]], trusted: Sequence[str]) -> None:
        """``publishers`` maps a key name to rigs (``demo``) or streams (``demo/cam``);
        ``trusted`` keys (the daemon's own) may publish anything, and so may a connection
        with no key at all: it came over inproc (the daemon's own threads) or ipc, where
        file permissions decide (every TCP connection of a secured bus has a key)."""
        self.trusted = {*trusted, ""}
        self.exact: dict[str, set[bytes]] = {}
        self.prefixes: dict[str, tuple[bytes, ...]] = {}
        for name, targets in publishers.items():
            exact, prefixes = set(), []
            for target in targets:
                # A stream's samples, its error reports and its tallies.
                if "/" in target:
                    exact |= {f"{kind}/{target}".encode() for kind in "set"}
                else:
                    prefixes += [f"{kind}/{target}/".encode() for kind in "set"]
            self.exact[name], self.prefixes[name] = exact, tuple(prefixes)

    def allows(self, name: str, topic: bytes) -> bool:
        """Whether the key called ``name`` may publish on ``topic``."""
        if name in self.trusted:
            return True
        return topic in self.exact.get(name, ()) or topic.startswith(self.prefixes.get(name, ()))


def guard(
    security: SecuritySection, ctx: zmq.Context[Any], count: Callable[[str], None]
) -> tuple[Gatekeeper | None, PublishRules | None]:
    """ZAP started on a secured bus (each refused key counted as ``unauthenticated`` with
    ``count`` and logged once), and the publish rules if any; (None, None) when open."""
    if security.mode != "curve":
        return None, None
    assert security.clients is not None and security.client_key is not None
    said: list[bool] = []

    def refused(why: str) -> None:  # the ZAP thread
        count("unauthenticated")
        if not said:
            said.append(True)
            log.warning(
                "refused a connection: %s (counted as drops.unauthenticated; further ones only counted)", why
            )

    gatekeeper = Gatekeeper(ctx, security.clients, refused)
    gatekeeper.start()
    if not security.publishers:
        return gatekeeper, None
    own = security.client_key.name.removesuffix(".key_secret")
    return gatekeeper, PublishRules(security.publishers, trusted=[own])
