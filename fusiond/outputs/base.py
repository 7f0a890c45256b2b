"""The output base class: ``open``, ``send`` each prediction, ``close``."""

from __future__ import annotations

import abc
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

from fusiond.bus.wire import Frame, Prediction, SampleHeader
from fusiond.errors import FusiondError
from fusiond.strict import Strict

__all__ = ["Output", "OutputConfig", "OutputContext", "OutputError", "payload"]


class OutputConfig(Strict):
    """Base of every output kind's typed options: unknown keys are errors."""

    rigs: list[str] = []
    """Send these rigs' predictions only; empty: every rig's."""


class OutputError(FusiondError):
    """The output cannot deliver now (a broker away): counted, logged, and the bridge goes on."""


@dataclass(frozen=True)
class OutputContext:
    """What the runner gives an output: its name, the stop event, its logger."""

    name: str
    stop: threading.Event
    log: logging.Logger


ConfigT = TypeVar("ConfigT", bound=OutputConfig)


class Output(abc.ABC, Generic[ConfigT]):
    """One output kind. Subclasses set ``kind`` and ``Config`` and name the config class as
    the type parameter (``class Mqtt(Output[MqttConfig])``)."""

    kind: ClassVar[str]
    Config: ClassVar[type[OutputConfig]]
    samples: ClassVar[bool] = False
    """True: the bridge also hands over the sensors' messages (:meth:`sample`), from a
    queue of their own that drops before the predictions' does."""

    def __init__(self, config: ConfigT, context: OutputContext) -> None:
        self.config: ConfigT = config
        self.context = context

    @classmethod
    def check(cls, config: ConfigT) -> list[str]:
        """What is wrong with ``config`` that can be seen without connecting (a missing CA
        file): one line per problem, for ``fusiond check-config``."""
        return []

    @abc.abstractmethod
    def open(self) -> str:
        """Start (connect in the background, say); a one-line description. Raise
        :class:`OutputError` when it cannot even start."""

    @abc.abstractmethod
    def send(self, prediction: Prediction) -> bool:
        """Hand one prediction on without blocking for long; False when it was dropped (a
        full queue while the far end is away). Raise :class:`OutputError` on a failure."""

    def sample(self, header: SampleHeader, frames: Sequence[Frame]) -> None:  # noqa: B027
        """One checked sample message (only with ``samples = True``); its buffers are not
        decoded yet (:func:`~fusiond.bus.wire.decode_arrays`). Raise :class:`OutputError`
        or a :class:`~fusiond.errors.WireError` to have it counted."""

    def health(self) -> dict[str, Any]:
        """What status shows of the output besides the counts (``connected``, say)."""
        return {}

    def close(self) -> None:  # noqa: B027 - optional for subclasses
        """Stop, flushing what can be flushed quickly."""


def payload(p: Prediction) -> dict[str, Any]:
    """A prediction as a flat JSON object for systems outside the bus (MQTT, WebSocket):
    label, scores by class, present and missing modalities, what each modality says,
    their disagreement, the model, the window and the latency in ms."""
    out: dict[str, Any] = {
        "rig": p.rig,
        "seq": p.seq,
        "label": p.label,
        "scores": dict(zip(p.classes, p.scores, strict=False)),
        "present": p.present,
        "missing": p.missing,
        "model": p.model,
        "window_start_ns": p.window_start_ns,
        "window_end_ns": p.window_end_ns,
        "t_pub_ns": p.t_pub_ns,
        "latency_ms": round(p.latency_ns.get("close_to_publish", 0) / 1e6, 3),
    }
    for key in ("modality_labels", "disagreement", "task"):
        if key in p.extra:
            out[key] = p.extra[key]
    return out
