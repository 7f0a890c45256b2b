"""The ``foxglove`` output: the live bus in Foxglove, over its WebSocket protocol.

Camera frames, audio, every numeric stream as plots by channel name, text events as log
lines, and each prediction with what every modality says, their disagreement and the
window's mask (:mod:`fusiond.recording.foxglove` says which view each stream gets)::

    [outputs.view]
    kind = "foxglove"
    listen = "127.0.0.1:8765"

then open ``ws://127.0.0.1:8765`` in Foxglove (the app, or app.foxglove.dev: "Open
connection", "Foxglove WebSocket"). ``fusiond view --connect tcp://host:7711`` serves the
same view of a bus that runs elsewhere.

Only what some client subscribed to is converted (and each topic's first message, which
makes its channel): with nobody looking, a frame costs a header check. Each client gets at
most ``backlog`` messages queued; past that the oldest are dropped for it alone (a slow
browser never holds up the bridge). The view is read only: it offers no publishing,
services or parameters to its clients.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from pydantic import Field

from fusiond.bus.wire import Frame, Prediction, SampleHeader
from fusiond.outputs.base import Output, OutputConfig, OutputContext, OutputError
from fusiond.plugin import OutputRegistry, hookimpl
from fusiond.recording.foxglove import View, Views, needs

__all__ = [
    "FoxgloveConfig",
    "FoxgloveOutput",
    "MAX_TOPICS",
    "NEW_CHANNEL_BURST",
    "NEW_CHANNELS_PER_S",
    "fusiond_add_outputs",
    "split_listen",
]

MAX_TOPICS = 512
"""Most channels one view serves: forged stream names cannot grow it without end. When
it is full, the channel least recently used that no client watches makes room."""
NEW_CHANNELS_PER_S = 16.0
NEW_CHANNEL_BURST = 64
"""New channels are made at most this many at once, then :data:`NEW_CHANNELS_PER_S` a
second: each is announced to every client, and a flood of invented streams would
otherwise fill the clients' queues with announcements until the server drops them."""


class FoxgloveConfig(OutputConfig):
    """``[outputs.<name>]`` of kind ``foxglove``."""

    listen: str = Field(
        "127.0.0.1:8765", max_length=300, pattern=r"^(\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]]+):\d{1,5}$"
    )
    """``host:port`` the WebSocket server binds (``[::1]:8765`` for IPv6; port 0: any free one)."""
    backlog: int = Field(64, ge=16, le=65_536)
    """Messages queued per client before its oldest are dropped: at most about backlog x
    the largest message (a camera frame) of memory per client."""


def split_listen(listen: str) -> tuple[str, int]:
    """``("127.0.0.1", 8765)`` of ``"127.0.0.1:8765"``; ``[::1]:0`` gives ``("::1", 0)``."""
    host, _, port = listen.rpartition(":")
    number = int(port)
    if number > 65_535:
        msg = f"listen = {listen!r}: port {number} is over 65535"
        raise ValueError(msg)
    return host.strip("[]"), number


class FoxgloveOutput(Output[FoxgloveConfig]):
    """Serve the live bus to Foxglove."""

    kind = "foxglove"
    Config = FoxgloveConfig
    samples = True

    def __init__(self, config: FoxgloveConfig, context: OutputContext) -> None:
        super().__init__(config, context)
        self.fox = needs()
        self.views = Views(prefix="/")
        self.channels: dict[str, Any] = {}
        self.used: dict[str, int] = {}
        """When each channel last carried a message (a running count): the least recently
        used one nobody watches makes room when the view is full."""
        self.turn = 0
        self.tokens, self.tokens_at = float(NEW_CHANNEL_BURST), time.monotonic()
        self.burst, self.per_s = NEW_CHANNEL_BURST, NEW_CHANNELS_PER_S
        self.watched: Counter[str] = Counter()
        self.refused = 0
        self.evicted = 0
        self._lock = threading.Lock()
        self.server: Any = None

    @classmethod
    def check(cls, config: FoxgloveConfig) -> list[str]:
        try:
            split_listen(config.listen)
            needs()
        except (ValueError, ImportError) as exc:
            return [str(exc)]
        return []

    def open(self) -> str:
        host, port = split_listen(self.config.listen)
        self.context_ = self.fox.Context()
        try:
            self.server = self.fox.start_server(
                name="fusiond",
                host=host,
                port=port,
                context=self.context_,
                server_listener=_Watch(self),
                message_backlog_size=self.config.backlog,
            )
        except Exception as exc:  # the SDK raises its own error types (a port in use, say)
            msg = f"cannot serve the Foxglove view on {self.config.listen}: {exc}"
            raise OutputError(msg) from exc
        return f"Foxglove live view on ws://{_url_host(host)}:{self.server.port}"

    def send(self, prediction: Prediction) -> bool:
        topic = f"/p/{prediction.rig}"
        if self._admit(topic):
            self._show(self.views.prediction(prediction))
        return True

    def sample(self, header: SampleHeader, frames: Sequence[Frame]) -> None:
        topic = self.views.topic(header)
        if not self._admit(topic):
            return  # nobody looks: not even its buffers are read
        for view in self.views.sample(header, frames):
            self._show(view)

    def _admit(self, topic: str) -> bool:
        """Whether a message of ``topic`` is worth converting: its channel is watched, or
        it has none yet (its first message makes it, so clients can see it to subscribe).
        A full view first closes its least recently used channel that nobody watches;
        with every one watched, the new topic is refused (OutputError, counted)."""
        self.turn += 1
        if topic in self.channels:
            self.used[topic] = self.turn
            return self.watched[topic] > 0
        now = time.monotonic()
        self.tokens = min(float(self.burst), self.tokens + (now - self.tokens_at) * self.per_s)
        self.tokens_at = now
        if self.tokens < 1.0:
            msg = f"new streams come faster than {self.per_s:g} a second; {topic} is not shown yet"
            raise OutputError(msg)
        self.tokens -= 1.0
        if len(self.channels) >= MAX_TOPICS:
            idle = [t for t in self.channels if not self.watched[t]]
            if not idle:
                self.refused += 1
                msg = f"the view serves {MAX_TOPICS} watched channels; {topic} is not shown"
                raise OutputError(msg)
            oldest = min(idle, key=self.used.__getitem__)
            self.channels.pop(oldest).close()
            self.used.pop(oldest)
            self.views.forget(oldest)
            self.evicted += 1
        return True

    def _show(self, view: View) -> None:
        channel = self.channels.get(view.topic)
        if channel is None:
            encoding, data = self.views.schema(view.schema)
            schema = self.fox.Schema(name=view.schema, encoding=encoding, data=data)
            channel = self.fox.Channel(
                view.topic, message_encoding=view.encoding, schema=schema, context=self.context_
            )
            self.channels[view.topic] = channel
            self.used[view.topic] = self.turn
        channel.log(view.body, log_time=view.t_ns)

    def health(self) -> dict[str, Any]:
        with self._lock:
            subscriptions = sum(self.watched.values())
        port = self.server.port if self.server is not None else 0
        return {
            "port": port,
            "channels": len(self.channels),
            "subscriptions": subscriptions,
            "evicted": self.evicted,
        }

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


class _Watch:
    """Which topics some client subscribed to (the SDK calls these from its own thread)."""

    def __init__(self, output: FoxgloveOutput) -> None:
        self.output = output

    def on_subscribe(self, client: Any, channel: Any) -> None:
        with self.output._lock:
            self.output.watched[channel.topic] += 1

    def on_unsubscribe(self, client: Any, channel: Any) -> None:
        with self.output._lock:
            self.output.watched[channel.topic] = max(0, self.output.watched[channel.topic] - 1)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


@hookimpl
def fusiond_add_outputs(registry: OutputRegistry) -> None:
    """Register the foxglove output."""
    registry.add(FoxgloveOutput)
