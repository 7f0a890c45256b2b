"""``mqtt`` output: every prediction to an MQTT broker, one topic per rig (paho-mqtt).

``<prefix>/<rig>/prediction`` carries one JSON object per window (:func:`fusiond.outputs.payload`),
retained by default, so a consumer that connects late gets each rig's last state at once.
``<prefix>/status`` is ``online`` (retained) while the bridge is connected and ``offline``
when it stops, or, through the broker's last will, when it dies or loses its link.
paho keeps its own bounded queue while the broker is away (``max_queued``); past it, new
predictions are dropped and counted. ``pip install 'fusiond[mqtt]'``.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from fusiond.bus.wire import Prediction
from fusiond.outputs import Output, OutputConfig, OutputError, payload
from fusiond.plugin import OutputRegistry, hookimpl

__all__ = ["MqttConfig", "MqttOutput", "fusiond_add_outputs"]


class MqttConfig(OutputConfig):
    """Options of the ``mqtt`` output."""

    host: str = "localhost"
    port: int = Field(1883, ge=1, le=65535)
    prefix: str = "fusiond"
    """Topics are ``<prefix>/<rig>/prediction`` and ``<prefix>/status``."""
    qos: Literal[0, 1, 2] = 1
    retain: bool = True
    """Keep each rig's last prediction on the broker for consumers that connect later."""
    client_id: str = ""
    """Default: ``fusiond-<host name>-<output name>``."""
    keepalive_s: int = Field(30, ge=5, le=3600)
    max_queued: int = Field(1000, ge=1, le=1_000_000)
    """Predictions held while the broker is away (QoS 1 and 2); past that, new ones are
    dropped and counted."""
    username: str = ""
    password_file: Path | None = None
    """A file holding the password (or set FUSIOND_MQTT_PASSWORD): never in the config."""
    tls: bool = False
    ca_file: Path | None = None
    """The CA that signed the broker's certificate (default: the system's)."""
    cert_file: Path | None = None
    key_file: Path | None = None
    """This client's certificate and key, for a broker that asks for one."""

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value or any(c in value for c in "+#\0") or value.startswith("/") or value.endswith("/"):
            msg = "must be a topic without wildcards (+ #) or a leading or trailing /"
            raise ValueError(msg)
        return value


class MqttOutput(Output[MqttConfig]):
    """Predictions as JSON on ``<prefix>/<rig>/prediction``."""

    kind = "mqtt"
    Config = MqttConfig

    @classmethod
    def check(cls, config: MqttConfig) -> list[str]:
        """paho-mqtt is installed; the TLS and password files exist."""
        problems = []
        try:
            import paho.mqtt.client  # noqa: F401
        except ImportError:
            problems.append("kind: the mqtt output needs paho-mqtt: pip install 'fusiond[mqtt]'")
        for key in ("password_file", "ca_file", "cert_file", "key_file"):
            path = getattr(config, key)
            if path is not None and not path.is_file():
                problems.append(f"{key}: no such file: {path}")
        if (config.cert_file is None) != (config.key_file is None):
            problems.append("cert_file: a client certificate needs its key_file, and a key its cert_file")
        return problems

    def open(self) -> str:
        cfg = self.config
        try:
            import paho.mqtt.client as mqtt
            from paho.mqtt.enums import CallbackAPIVersion
        except ImportError:
            msg = "the mqtt output needs paho-mqtt: pip install 'fusiond[mqtt]'"
            raise OutputError(msg) from None
        self.mqtt = mqtt
        client_id = cfg.client_id or f"fusiond-{socket.gethostname()}-{self.context.name}"
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        self.status_topic = f"{cfg.prefix}/status"
        self.client.will_set(self.status_topic, "offline", qos=1, retain=True)
        if cfg.username:
            self.client.username_pw_set(cfg.username, self._password())
        if cfg.tls:
            self.client.tls_set(
                ca_certs=str(cfg.ca_file) if cfg.ca_file else None,
                certfile=str(cfg.cert_file) if cfg.cert_file else None,
                keyfile=str(cfg.key_file) if cfg.key_file else None,
            )
        self.client.max_queued_messages_set(cfg.max_queued)
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        self.connected = False
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        try:
            self.client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive_s)
        except (OSError, ValueError) as exc:
            msg = f"cannot reach the broker {cfg.host}:{cfg.port}: {exc}"
            raise OutputError(msg) from None
        self.client.loop_start()  # paho's own thread: connects, reconnects, sends
        tls = ", TLS" if cfg.tls else ""
        return f"mqtt://{cfg.host}:{cfg.port}{tls}, topics {cfg.prefix}/<rig>/prediction, QoS {cfg.qos}"

    def _password(self) -> str | None:
        if self.config.password_file is not None:
            return self.config.password_file.read_text().strip()
        return os.environ.get("FUSIOND_MQTT_PASSWORD")

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            self.context.log.error(
                "mqtt %s: the broker refused the connection: %s", self.context.name, reason
            )
            return
        self.connected = True
        client.publish(self.status_topic, "online", qos=1, retain=True)
        self.context.log.info(
            "mqtt %s: connected to %s:%d", self.context.name, self.config.host, self.config.port
        )

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if self.connected:
            self.context.log.warning("mqtt %s: lost the broker (%s); reconnecting", self.context.name, reason)
        self.connected = False

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
        if self.connected:  # a clean stop says so itself; the last will is for a death
            client.publish(self.status_topic, "offline", qos=1, retain=True).wait_for_publish(1.0)
        client.disconnect()
        client.loop_stop()


@hookimpl
def fusiond_add_outputs(registry: OutputRegistry) -> None:
    """Register the mqtt output."""
    registry.add(MqttOutput)
