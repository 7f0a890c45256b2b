"""MQTT in and out (paho-mqtt): the ``mqtt`` output and the ``mqtt`` source kind.

Output: every prediction to an MQTT broker, one topic per rig.

``<prefix>/<rig>/prediction`` carries one JSON object per window (:func:`fusiond.outputs.payload`),
retained by default, so a consumer that connects late gets each rig's last state at once.
``<prefix>/status`` is ``online`` (retained) while the bridge is connected and ``offline``
when it stops, or, through the broker's last will, when it dies or loses its link.
paho keeps its own bounded queue while the broker is away (``max_queued``); past it, new
predictions are dropped and counted.

Source: numbers from JSON messages on a topic (a path into the message per channel),
stamped by the sensor's own time field or, without one, on the declared rate's grid
fitted under the arrival times (dejittered, as the ``lines`` kind does).
``pip install 'fusiond[mqtt]'``.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from fusiond.bus.wire import Prediction
from fusiond.errors import SourceConfigError, SourceError
from fusiond.outputs import Output, OutputConfig, OutputError, payload
from fusiond.plugin import OutputRegistry, SourceRegistry, hookimpl
from fusiond.sources import Block, Source, StreamInfo
from fusiond.sources.lines import LineOptions, LineReader, line_problems
from fusiond.strict import Strict

__all__ = [
    "MqttConfig",
    "MqttLink",
    "MqttOutput",
    "MqttSource",
    "MqttSourceConfig",
    "fusiond_add_outputs",
    "fusiond_add_sources",
    "link_problems",
    "make_client",
]


class MqttLink(Strict):
    """How to reach the broker: shared by the output and the source."""

    host: str = Field("localhost", min_length=1, max_length=253, pattern=r"^[^\s/]+$")
    port: int = Field(1883, ge=1, le=65535)
    client_id: str = Field("", max_length=128)
    """Default: ``fusiond-<host name>-<name>-<pid>``, unique on a host."""
    keepalive_s: int = Field(30, ge=5, le=3600)
    username: str = ""
    password_file: Path | None = None
    """A file holding the password (or set FUSIOND_MQTT_PASSWORD): never in the config."""
    tls: bool = False
    ca_file: Path | None = None
    """The CA that signed the broker's certificate (default: the system's)."""
    cert_file: Path | None = None
    key_file: Path | None = None
    """This client's certificate and key, for a broker that asks for one."""


class MqttConfig(OutputConfig, MqttLink):
    """Options of the ``mqtt`` output."""

    prefix: str = "fusiond"
    """Topics are ``<prefix>/<rig>/prediction`` and ``<prefix>/status``."""
    qos: Literal[0, 1, 2] = 1
    retain: bool = True
    """Keep each rig's last prediction on the broker for consumers that connect later."""
    max_queued: int = Field(1000, ge=1, le=1_000_000)
    """Predictions held while the broker is away (QoS 1 and 2); past that, new ones are
    dropped and counted."""

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value or any(c in value for c in "+#\0") or value.startswith("/") or value.endswith("/"):
            msg = "must be a topic without wildcards (+ #) or a leading or trailing /"
            raise ValueError(msg)
        return value


def link_problems(config: MqttLink) -> list[str]:
    """paho-mqtt is installed; the TLS and password files exist (for ``check``)."""
    problems = []
    try:
        import paho.mqtt.client  # noqa: F401
    except ImportError:
        problems.append("kind: mqtt needs paho-mqtt: pip install 'fusiond[mqtt]'")
    for key in ("password_file", "ca_file", "cert_file", "key_file"):
        path = getattr(config, key)
        if path is not None and not path.is_file():
            problems.append(f"{key}: no such file: {path}")
    if (config.cert_file is None) != (config.key_file is None):
        problems.append("cert_file: a client certificate needs its key_file, and a key its cert_file")
    if problems:
        return problems
    if config.password_file is not None:
        try:
            config.password_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"password_file: cannot read {config.password_file} as UTF-8 text: {exc}")
    if config.tls:
        import ssl

        try:
            context = ssl.create_default_context(cafile=str(config.ca_file) if config.ca_file else None)
            if config.cert_file is not None and config.key_file is not None:
                context.load_cert_chain(str(config.cert_file), str(config.key_file))
        except (ssl.SSLError, OSError) as exc:
            problems.append(f"ca_file: the TLS files do not load: {exc}")
    return problems


def make_client(config: MqttLink, name: str) -> Any:
    """A paho client for ``config``, not yet connected; OutputError without paho."""
    try:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion
    except ImportError:
        msg = "mqtt needs paho-mqtt: pip install 'fusiond[mqtt]'"
        raise OutputError(msg) from None
    client_id = config.client_id or f"fusiond-{socket.gethostname()}-{name}-{os.getpid()}"
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
    if config.username:
        if config.password_file is not None:
            password: str | None = config.password_file.read_text().strip()
        else:
            password = os.environ.get("FUSIOND_MQTT_PASSWORD")
        client.username_pw_set(config.username, password)
    if config.tls:
        client.tls_set(
            ca_certs=str(config.ca_file) if config.ca_file else None,
            certfile=str(config.cert_file) if config.cert_file else None,
            keyfile=str(config.key_file) if config.key_file else None,
        )
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    return client


class MqttOutput(Output[MqttConfig]):
    """Predictions as JSON on ``<prefix>/<rig>/prediction``."""

    kind = "mqtt"
    Config = MqttConfig

    @classmethod
    def check(cls, config: MqttConfig) -> list[str]:
        """paho-mqtt is installed; the TLS and password files exist."""
        return link_problems(config)

    def open(self) -> str:
        cfg = self.config
        self.client = make_client(cfg, self.context.name)  # OutputError without paho
        import paho.mqtt.client as mqtt

        self.mqtt = mqtt
        self.status_topic = f"{cfg.prefix}/status"
        self.client.will_set(self.status_topic, "offline", qos=1, retain=True)
        self.client.max_queued_messages_set(cfg.max_queued)
        self.connected = self.closing = False
        self.complained = 0.0
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_connect_fail = self._on_connect_fail
        try:
            self.client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive_s)
        except (OSError, ValueError) as exc:
            msg = f"cannot reach the broker {cfg.host}:{cfg.port}: {exc}"
            raise OutputError(msg) from None
        self.client.loop_start()  # paho's own thread: connects, reconnects, sends
        tls = ", TLS" if cfg.tls else ""
        return f"mqtt://{cfg.host}:{cfg.port}{tls}, topics {cfg.prefix}/<rig>/prediction, QoS {cfg.qos}"

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            self.context.log.error(
                "mqtt %s: the broker refused the connection: %s", self.context.name, reason
            )
            return
        self.connected = True
        # QoS 0: sent now, ahead of what waited in paho's queue (which may be full).
        client.publish(self.status_topic, "online", qos=0, retain=True)
        self.context.log.info(
            "mqtt %s: connected to %s:%d", self.context.name, self.config.host, self.config.port
        )

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if self.connected and not self.closing:
            self.context.log.warning("mqtt %s: lost the broker (%s); reconnecting", self.context.name, reason)
        self.connected = False

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        now = time.monotonic()
        if now - self.complained >= 60.0 or not self.complained:  # one line a minute while it lasts
            self.complained = now
            cfg = self.config
            self.context.log.warning(
                "mqtt %s: cannot reach the broker %s:%d (retrying; predictions wait in a queue of %d)",
                self.context.name,
                cfg.host,
                cfg.port,
                cfg.max_queued,
            )

    def send(self, prediction: Prediction) -> bool:
        cfg = self.config
        body = json.dumps(payload(prediction), separators=(",", ":"))
        info = self.client.publish(
            f"{cfg.prefix}/{prediction.rig}/prediction", body, qos=cfg.qos, retain=cfg.retain
        )
        if info.rc == self.mqtt.MQTT_ERR_SUCCESS:
            return True
        if info.rc == self.mqtt.MQTT_ERR_NO_CONN:
            return cfg.qos > 0  # QoS 1 and 2 wait in paho's queue for the broker; QoS 0 is gone
        if info.rc == self.mqtt.MQTT_ERR_QUEUE_SIZE:
            return False  # the broker has been away for ``max_queued`` predictions
        msg = f"publish failed: {self.mqtt.error_string(info.rc)}"
        raise OutputError(msg)

    def health(self) -> dict[str, Any]:
        return {"connected": self.connected}

    def close(self) -> None:
        client = getattr(self, "client", None)
        if client is None:
            return
        self.closing = True
        if self.connected:  # a clean stop says so itself; the last will is for a death
            client.publish(self.status_topic, "offline", qos=1, retain=True).wait_for_publish(1.0)
        client.disconnect()
        client.loop_stop()


class MqttSourceConfig(LineOptions, MqttLink):
    """Options of the ``mqtt`` source kind: the broker, the topic, and what to read of each
    message (``values``: JSON paths, one channel each; ``time_column``: the sensor's own
    time field; ``rate_hz``, ``block``, ``scale`` as for the ``lines`` kind)."""

    format: Literal["csv", "keyvalue", "json"] = "json"
    topic: str
    """The topic to subscribe to; ``+`` and ``#`` wildcards are allowed."""
    qos: Literal[0, 1] = 0
    queue: int = Field(10_000, ge=1, le=1_000_000)
    """Messages held between paho's thread and the publisher; past that, dropped (counted)."""

    @field_validator("topic")
    @classmethod
    def _topic(cls, value: str) -> str:
        levels = value.split("/")
        bad_wildcard = any(("+" in lv and lv != "+") or ("#" in lv and lv != "#") for lv in levels)
        if not value or "\0" in value or bad_wildcard or "#" in levels[:-1]:
            msg = "must be an MQTT topic filter (+ a whole level, # the last level)"
            raise ValueError(msg)
        return value


class MqttSource(Source[MqttSourceConfig]):
    """Numbers from JSON (or CSV, key=value) messages on an MQTT topic.

    paho's thread hands each message over with its arrival time through a bounded queue;
    messages beyond it, and messages that do not parse, are counted and logged.
    """

    kind = "mqtt"
    modality = "imu"
    Config = MqttSourceConfig

    @classmethod
    def check(cls, config: MqttSourceConfig, base_dir: Path) -> list[str]:
        return line_problems(config) + link_problems(config)

    def open(self) -> StreamInfo:
        cfg = self.config
        try:
            self.reader = LineReader(cfg, f"mqtt {cfg.topic}", self.context.log)
        except ValueError as exc:
            raise SourceConfigError(str(exc)) from None
        try:
            self.client = make_client(cfg, f"{self.context.rig}-{self.context.stream}")
        except OutputError as exc:
            raise SourceConfigError(str(exc)) from None
        self.messages: queue.Queue[tuple[bytes, int]] = queue.Queue(maxsize=cfg.queue)
        self.dropped = 0

        def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
            if reason.is_failure:
                self.context.log.error("mqtt %s: the broker refused the connection: %s", cfg.topic, reason)
            else:
                client.subscribe(cfg.topic, qos=cfg.qos)  # again after every reconnect
                self.context.log.info(
                    "mqtt %s: connected to %s:%d, subscribed", cfg.topic, cfg.host, cfg.port
                )

        def on_message(client: Any, userdata: Any, message: Any) -> None:
            try:
                self.messages.put_nowait((message.payload, time.time_ns()))
            except queue.Full:
                self.dropped += 1

        self.client.on_connect = on_connect
        self.client.on_message = on_message
        try:
            self.client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive_s)
        except (OSError, ValueError) as exc:
            msg = f"cannot reach the broker {cfg.host}:{cfg.port}: {exc}"
            raise SourceError(msg) from None
        self.client.loop_start()
        about = f"mqtt://{cfg.host}:{cfg.port} {cfg.topic}: {cfg.format} {cfg.values}"
        return StreamInfo(cfg.rate_hz, about, **cfg.labels())

    def read(self) -> Iterator[Block]:
        reported = 0
        while not self.context.stop.is_set():
            try:
                payload, arrived_ns = self.messages.get(timeout=0.2)
            except queue.Empty:
                continue
            if self.dropped > reported:
                reported = self.dropped
                self.context.log.warning(
                    "mqtt %s: %d message(s) dropped so far (queue full)", self.config.topic, self.dropped
                )
            block = self.reader.feed(payload, arrived_ns)
            if block is not None:
                yield block

    def close(self) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            client.disconnect()
            client.loop_stop()


@hookimpl
def fusiond_add_sources(registry: SourceRegistry) -> None:
    """Register the mqtt source kind."""
    registry.add(MqttSource)


@hookimpl
def fusiond_add_outputs(registry: OutputRegistry) -> None:
    """Register the mqtt output."""
    registry.add(MqttOutput)
