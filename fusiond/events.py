"""State changes, debounced: ``ev/<rig>`` says when a rig's label has changed and held.

Every window's label goes out as a prediction; a label that flickers between two classes
at a boundary would make a downstream action fire at every flip. An event is published
only when a new label has held for ``hold_ms`` of event time (window ends, not the
wall clock), with hysteresis on its score:

* the current state *holds* in a window while its own score there is at least ``exit``
  and no other class is the top one with at least ``enter`` (``exit <= enter``);
* otherwise the window supports its top class if that scores at least ``enter``, and
  ``unknown`` if nothing does (or if the daemon withheld its label, ``[model] reject``);
* a state becomes the rig's once it has held for ``hold_ms``: from the end of the first
  window that supports it to the end of the latest, in a row (with 1 s windows every
  500 ms, ``hold_ms = 1000`` takes three windows); a window that supports anything else
  breaks the run.

Each event carries the new state, the one before, the start of the first supporting
window (when the new state began, as well as the windows can tell) and the prediction
numbers of the supporting windows. A rig's first state is an event too (``previous``:
``null``). Pure code: the inference server feeds it each prediction as it publishes it,
so that only the model's own predictions make events (a prediction forged on the bus
reaches subscribers, but never the debouncer). The state lives in the server: a server
that starts again (or a daemon) begins with no state, and its first event has
``previous`` null again; a model reload keeps it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Final

import msgpack
from pydantic import Field, model_validator

from fusiond.bus.wire import PROTOCOL_VERSION, Prediction
from fusiond.strict import Strict

__all__ = [
    "EVENT_PREFIX",
    "UNKNOWN",
    "Debouncer",
    "EventsSection",
    "MAX_SUPPORT",
    "encode_event",
    "event_topic",
]

EVENT_PREFIX: Final = "ev/"
UNKNOWN: Final = "unknown"
"""The state when no class is sure enough (its top score under ``enter``, and the state
before it under ``exit``)."""
MAX_SUPPORT: Final = 64
"""Most prediction numbers an event lists (the first ones of its supporting run)."""


def event_topic(rig: str) -> str:
    """Topic of one rig's events."""
    return f"{EVENT_PREFIX}{rig}"


class EventsSection(Strict):
    """``[events]``: debounced state changes on ``ev/<rig>``."""

    enabled: bool = False
    hold_ms: float = Field(1000.0, ge=0, le=3_600_000)
    """How long a new state must hold before it is an event (0: at its first window)."""
    enter: float = Field(0.5, ge=0, le=1)
    """Score a window's top class needs to support a new state."""
    exit: float = Field(0.3, ge=0, le=1)
    """Score under which the current state stops holding (at most ``enter``)."""

    @model_validator(mode="after")
    def _hysteresis(self) -> EventsSection:
        if self.exit > self.enter:
            msg = f"exit = {self.exit} is over enter = {self.enter}: a state would end before it began"
            raise ValueError(msg)
        return self


@dataclass
class _Rig:
    state: str | None = None
    candidate: str | None = None
    start_ns: int = 0
    first_end_ns: int = 0
    support: list[int] = field(default_factory=list)
    """The first :data:`MAX_SUPPORT` supporting predictions' numbers."""
    count: int = 0
    total: float = 0.0


class Debouncer:
    """Per-rig label state with hold time and hysteresis; :meth:`take` returns the events
    (header dicts) that a prediction completes."""

    def __init__(self, hold_ms: float, enter: float, exit: float) -> None:
        self.hold_ns = round(hold_ms * 1e6)
        self.enter, self.exit = enter, exit
        self._rigs: dict[str, _Rig] = {}
        self._seq: dict[str, int] = {}

    def take(self, p: Prediction) -> dict[str, Any] | None:
        """The event ``p`` completes, if any (a regression's predictions make none)."""
        if not p.label or not p.scores or len(p.scores) != len(p.classes):
            return None
        rig = self._rigs.setdefault(p.rig, _Rig())
        score = dict(zip(p.classes, p.scores, strict=True))
        best = max(p.scores)
        top = score.get(p.label, 0.0)
        held = rig.state is not None and score.get(rig.state, 0.0) >= self.exit
        if held and (p.label == rig.state or top < self.enter):
            proposed = rig.state
        elif p.label in score and top >= self.enter:
            proposed = p.label
        else:  # nothing is sure enough, or the label was withheld: the state is unknown
            proposed, top = UNKNOWN, 1.0 - best  # how sure it is that nothing is sure
        if proposed == rig.state:
            rig.candidate = None  # the state holds; a run of support for another one is broken
            return None
        if proposed != rig.candidate:
            rig.candidate, rig.support, rig.count, rig.total = proposed, [], 0, 0.0
            rig.start_ns, rig.first_end_ns = p.window_start_ns, p.window_end_ns
        if len(rig.support) < MAX_SUPPORT:
            rig.support.append(p.seq)
        rig.count += 1
        rig.total += top
        if p.window_end_ns - rig.first_end_ns < self.hold_ns:
            return None
        seq = self._seq.get(p.rig, 0)
        self._seq[p.rig] = seq + 1
        event = {
            "v": list(PROTOCOL_VERSION),
            "type": "event",
            "rig": p.rig,
            "seq": seq,
            "state": proposed,
            "previous": rig.state,
            "start_ns": rig.start_ns,
            "t_ns": p.window_end_ns,
            "windows": list(rig.support),
            "supported_by": rig.count,
            "score": round(rig.total / rig.count, 5),
            "t_pub_ns": time.time_ns(),
        }
        rig.state, rig.candidate = proposed, None
        return event


def encode_event(event: dict[str, Any]) -> list[bytes]:
    """Frames of one event: topic and header (docs/protocol.md, "Events")."""
    return [event_topic(event["rig"]).encode(), msgpack.packb(event)]
