"""What ``fusiond status`` shows, built from the daemon's counters (pure, clock passed in)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from fusiond.metrics import ClockHealth, Stats
from fusiond.sources.supervisor import Child


def _age_s(now_ns: int, then_ns: int | None) -> float | None:
    return None if then_ns is None else round((now_ns - then_ns) / 1e9, 2)


def _ms(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 2)


def clock_row(health: ClockHealth | None) -> dict[str, Any] | None:
    """A stream's clock model for status: offset, drift, jitter, outliers, steps."""
    if health is None:
        return None
    return {"offset_ms": round(health.offset_ns / 1e6, 3), "drift_ppm": round(health.drift_ppm, 1),
            "jitter_ms": round(health.jitter_ns / 1e6, 3), "outliers": health.outliers,
            "steps": health.steps, "held": health.suspects}  # fmt: skip


def sources(now_ns: int, stats: Stats, children: Sequence[Child],
            streams: Mapping[tuple[str, str], str]) -> list[dict[str, Any]]:  # fmt: skip
    """One entry per configured source."""
    by_name = {c.name: c for c in children}
    out = []
    for (rig, stream), modality in streams.items():
        s = stats.stream(rig, stream)
        child = by_name.get(f"{rig}/{stream}")
        error = s.error if s.error_ns and (s.last_recv_ns or 0) < s.error_ns else ""
        out.append({
            "rig": rig, "stream": stream, "modality": modality,
            "state": child.state if child else "external",
            "pid": child.proc.pid if child and child.proc else None,
            "restarts": child.restarts if child else 0,
            "messages": s.messages, "messages_per_s": round(s.messages_per_s(now_ns), 2),
            "samples": s.samples, "sample_rate_hz": s.sample_rate_hz,
            "measured_rate_hz": round(s.samples_per_s(now_ns), 2),
            "last_sample_age_s": _age_s(now_ns, s.last_recv_ns), "error": error, "errors": s.errors,
            "clock": clock_row(s.clock),
        })  # fmt: skip
    return out


def rigs(now_ns: int, stats: Stats, names: Sequence[str], window_ns: int,
         source_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:  # fmt: skip
    """One entry per rig; ``quiet`` says why a rig publishes nothing."""
    out = []
    drops = stats.all_drops()
    for name in names:
        r = stats.rig(name)
        p50, p99 = r.latency.percentiles(50, 99)
        masked = dict(stats.masked.get(name, {}))
        age = _age_s(now_ns, r.last_prediction_ns)
        quiet = "" if age is not None and age * 1e9 < window_ns else _why_quiet(name, source_rows, drops)
        out.append({
            "rig": name, "windows_per_s": r.rate.rate(now_ns), "predictions": r.predictions,
            "masked": masked, "latency_ms": {"p50": _ms(p50), "p99": _ms(p99)},
            "last_label": r.last_label, "last_prediction_age_s": age, "quiet": quiet,
        })  # fmt: skip
    return out


def _why_quiet(rig: str, source_rows: list[dict[str, Any]], drops: Mapping[str, int]) -> str:
    mine = [s for s in source_rows if s["rig"] == rig]
    reasons = []
    for s in mine:
        if s["error"]:
            reasons.append(f"{s['stream']}: {s['error']}")
        elif s["state"] in ("waiting", "failed", "finished"):
            reasons.append(f"{s['stream']}: source {s['state']} (restarts {s['restarts']})")
        elif s["messages"] == 0:
            reasons.append(f"{s['stream']}: no samples received yet")
        elif s["last_sample_age_s"] is not None and s["last_sample_age_s"] > 2:
            reasons.append(f"{s['stream']}: no samples for {s['last_sample_age_s']:.0f} s")
    if not reasons and drops.get("inference_busy"):
        reasons.append("the model cannot keep up: windows dropped as inference_busy")
    if not reasons and drops.get("window_empty"):
        reasons.append("windows close with no modality covered (window_empty)")
    return "; ".join(reasons) or "waiting for the first window"
