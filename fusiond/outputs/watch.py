"""The daemon's view of its outputs: the reports their bridges send on ``o/<name>``."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from typing import Any

from fusiond.bus.wire import Frame, decode_header
from fusiond.errors import WireError
from fusiond.sources.supervisor import Child

__all__ = ["COUNTS", "OutputReports", "SAMPLES"]

COUNTS = ("sent", "dropped", "failed", "lost", "malformed")
"""What a bridge counts: delivered, dropped by the output's full queue, failed, never
reached the bridge (gaps in prediction numbers), unreadable."""
SAMPLES = "samples"
"""Sensor messages an output that shows them (the live view) took."""


class OutputReports:
    """The last report of each configured output (others, forged or stale, are refused)."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = set(names)
        self.last: dict[str, tuple[dict[str, int], dict[str, Any], int]] = {}
        self.refused = 0

    def take(self, messages: Iterable[Sequence[Frame]]) -> None:
        """Reports from the bus; one that is not a configured output's, well formed, is
        refused (on an open bus anyone may send one: it must not break status)."""
        for frames in messages:
            try:
                header = decode_header(frames)
                name, counts, health = header.get("name"), header.get("counts"), header.get("health")
                if not (isinstance(name, str) and name in self.names):
                    raise ValueError
                self.last[name] = (_counts(counts), _health(health), time.time_ns())
            except (WireError, TypeError, ValueError):
                self.refused += 1

    def rows(self, children: Sequence[Child], now_ns: int) -> list[dict[str, Any]]:
        """One row per output for ``fusiond status``."""
        by_name = {c.name: c for c in children if c.role == "output"}
        out = []
        for name in sorted(self.names):
            counts, health, when = self.last.get(name, ({}, {}, None))
            child = by_name.get(name)
            age = None if when is None else round((now_ns - when) / 1e9, 1)
            out.append(
                {
                    "name": name,
                    "state": child.state if child else "external",
                    "pid": child.proc.pid if child and child.proc else None,
                    "restarts": child.restarts if child else 0,
                    **{k: counts.get(k, 0) for k in (*COUNTS, SAMPLES)},
                    "health": health,
                    "last_report_age_s": age if age is None or math.isfinite(age) else None,
                }
            )
        return out


def _counts(counts: Any) -> dict[str, int]:
    if not isinstance(counts, dict):
        raise TypeError
    out = {k: v for k, v in counts.items() if k in COUNTS or k == SAMPLES}
    if not all(type(v) is int and 0 <= v < 2**53 for v in out.values()):
        raise ValueError
    return out


def _health(health: Any) -> dict[str, Any]:
    """A small map of JSON-safe values: what status and ``/metrics`` may show as sent."""
    if not isinstance(health, dict) or len(health) > 16:
        raise TypeError
    for key, value in health.items():
        if not isinstance(key, str) or len(key) > 32:
            raise TypeError
        ok = (
            isinstance(value, bool)
            or (type(value) is int and abs(value) < 2**53)
            or (type(value) is float and math.isfinite(value))
            or (isinstance(value, str) and len(value) <= 200)
        )
        if not ok:
            raise TypeError
    return dict(health)
