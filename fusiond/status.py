"""What ``fusiond status`` shows and the control endpoint answers, built from a daemon's
counters (:class:`Observed`, the clock passed in); Prometheus reads the same."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import zmq

from fusiond.metrics import ClockHealth, Stats
from fusiond.sources.supervisor import Child, Supervisor

if TYPE_CHECKING:
    from fusiond.config import Config
    from fusiond.outputs.watch import OutputReports

__all__ = [
    "serve_one",
    "answer",
    "as_text",
    "clock_row",
    "never_delivered",
    "never_delivered_why",
    "Observed",
    "rigs",
    "snapshot",
    "sources",
]


def _age_s(now_ns: int, then_ns: int | None) -> float | None:
    return None if then_ns is None else round((now_ns - then_ns) / 1e9, 2)


def _ms(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 2)


def clock_row(health: ClockHealth | None) -> dict[str, Any] | None:
    """A stream's clock model for status: offset, drift, jitter, outliers, steps."""
    if health is None:
        return None
    return {
        "offset_ms": round(health.offset_ns / 1e6, 3),
        "drift_ppm": round(health.drift_ppm, 1),
        "jitter_ms": round(health.jitter_ns / 1e6, 3),
        "outliers": health.outliers,
        "steps": health.steps,
        "held": health.suspects,
    }


def sources(
    now_ns: int, stats: Stats, children: Sequence[Child], streams: Mapping[tuple[str, str], str]
) -> list[dict[str, Any]]:
    """One entry per configured source."""
    by_name = {c.name: c for c in children}
    out = []
    for (rig, stream), modality in streams.items():
        s = stats.stream(rig, stream)
        child = by_name.get(f"{rig}/{stream}")
        error = s.error if s.error_ns and (s.last_recv_ns or 0) < s.error_ns else ""
        out.append(
            {
                "rig": rig,
                "stream": stream,
                "modality": modality,
                "state": child.state if child else "external",
                "pid": child.proc.pid if child and child.proc else None,
                "restarts": child.restarts if child else 0,
                "messages": s.messages,
                "messages_per_s": round(s.messages_per_s(now_ns), 2),
                "samples": s.samples,
                "sample_rate_hz": s.sample_rate_hz,
                "measured_rate_hz": round(s.samples_per_s(now_ns), 2),
                "last_sample_age_s": _age_s(now_ns, s.last_recv_ns),
                "error": error,
                "errors": s.errors,
                "channels": s.channels,
                "clock": clock_row(s.clock),
            }
        )
    return out


def rigs(
    now_ns: int,
    stats: Stats,
    names: Sequence[str],
    window_ns: int,
    source_rows: list[dict[str, Any]],
    offsets: Mapping[str, int] | None = None,
) -> list[dict[str, Any]]:
    """One entry per rig; ``quiet`` says why a rig publishes nothing, ``window_offset_ms``
    where its windows start within the hop (``offsets``, ns: 0 unless ``[window] stagger``)."""
    out = []
    drops = stats.all_drops()
    for name in names:
        r = stats.rig(name)
        p50, p99 = r.latency.percentiles(50, 99)
        masked = dict(stats.masked.get(name, {}))
        age = _age_s(now_ns, r.last_prediction_ns)
        quiet = "" if age is not None and age * 1e9 < window_ns else _why_quiet(name, source_rows, drops)
        out.append(
            {
                "rig": name,
                "windows_per_s": r.rate.rate(now_ns),
                "predictions": r.predictions,
                "masked": masked,
                "latency_ms": {"p50": _ms(p50), "p99": _ms(p99)},
                "last_label": r.last_label,
                "last_prediction_age_s": age,
                "window_offset_ms": (offsets or {}).get(name, 0) / 1e6,
                "quiet": quiet,
            }
        )
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


class Observed(Protocol):
    """What status, the control endpoint and Prometheus read of a running daemon."""

    @property
    def config(self) -> Config: ...
    @property
    def stats(self) -> Stats: ...
    @property
    def streams(self) -> Mapping[tuple[str, str], str]: ...
    @property
    def supervisor(self) -> Supervisor: ...
    @property
    def started_ns(self) -> int: ...
    @property
    def ready(self) -> bool: ...
    @property
    def outputs(self) -> OutputReports: ...

    def model_info(self) -> dict[str, str]:
        """The model being served (name, hash, device, runtime)."""
        ...

    def component_rows(self, now_ns: int) -> list[dict[str, Any]]:
        """One row per component: state, pid, restarts, heartbeat, rigs."""
        ...

    def health(self, now_ns: int) -> tuple[bool, str]:
        """Whether the daemon's loop runs and its pipeline is alive, and why (the watchdog's rule)."""
        ...

    @property
    def engine_name(self) -> str:
        """The engine that runs the components (``threads``, ``processes``, ``ray``, ...)."""
        ...


def never_delivered(d: Observed) -> list[str]:
    """The streams the daemon starts that have not delivered a sample yet."""
    started = {c.name for c in d.supervisor.children}
    return [
        f"{rig}/{stream}"
        for rig, stream in d.streams
        if f"{rig}/{stream}" in started and not d.stats.stream(rig, stream).messages
    ]


def never_delivered_why(d: Observed) -> dict[str, str]:
    """:func:`never_delivered`, each with why (its source's last error, if it sent one)."""
    return {name: d.stats.stream(*name.split("/", 1)).error or "no samples" for name in never_delivered(d)}


def snapshot(d: Observed, now_ns: int) -> dict[str, object]:
    """Everything ``fusiond status`` prints."""
    rows = sources(now_ns, d.stats, d.supervisor.children, d.streams)
    window = d.config.window
    grid = window.to_config()
    quiet_after = round((window.length_ms + window.lateness_ms) * 1e6) + 2_000_000_000
    return {
        "uptime_s": round((now_ns - d.started_ns) / 1e9, 1),
        "ready": d.ready,
        "never_delivered": never_delivered(d),
        "model": d.model_info(),
        "runtime": {"engine": d.engine_name, "components": d.component_rows(now_ns)},
        "sources": rows,
        "rigs": rigs(
            now_ns,
            d.stats,
            list(d.config.rigs),
            quiet_after,
            rows,
            {rig: grid.offset_ns(rig) for rig in d.config.rigs},
        ),
        "outputs": d.outputs.rows(d.supervisor.children, now_ns),
        "drops": dict(d.stats.all_drops()),
    }


def serve_one(control: zmq.Socket[bytes], d: Observed) -> None:
    """Answer one request on the control endpoint's REP socket, which must answer every
    request, whatever it holds, or it stops taking more."""
    request = control.recv_multipart()
    t_recv = time.time_ns()
    try:
        body = answer(d, request, t_recv)
    except Exception:
        control.send(b'{"error": "internal error; see the daemon\'s log"}')
        raise
    control.send(body)


def answer(d: Observed, request: list[bytes], t_recv_ns: int) -> bytes:
    """The control endpoint's reply to one request (docs/protocol.md, "Control endpoint"):
    ``status``, or ``time T1`` (a clock probe from a source on another host,
    :mod:`fusiond.sources.clocksync`); anything else is answered with an error."""
    if len(request) == 2 and request[0] == b"time" and request[1].isdigit() and len(request[1]) < 20:
        t1, t3 = int(request[1]), time.time_ns()
        # The same three as decimal strings: JSON.parse loses the low digits of 19-digit numbers.
        reply: dict[str, object] = {
            "t1": t1,
            "t2": t_recv_ns,
            "t3": t3,
            "t_str": [str(t1), str(t_recv_ns), str(t3)],
        }
    elif request == [b"status"]:
        reply = snapshot(d, time.time_ns())
    else:
        reply = {
            "error": f"unknown request {request[0][:40]!r}; send one frame, 'status', or two, "
            "'time' and your clock in decimal ns",
            "known": ["status", "time"],
        }
    return json.dumps(reply).encode()


def _or_dash(value: object) -> object:
    """A figure, or "-" where there is none yet (no prediction, no sample)."""
    return "-" if value is None else value


def as_text(s: Mapping[str, Any]) -> str:
    """A :func:`snapshot` as ``fusiond status`` prints it for a person."""
    model = s["model"]
    state = "ready" if s.get("ready") else "not ready"
    if s.get("never_delivered"):
        state += f" (never delivered: {', '.join(s['never_delivered'])})"
    lines = [
        f"fusiond up {s['uptime_s']:.0f} s, {state}, "
        f"model {model['name']} ({model['hash']}) on {model['device']}"
        + (f" with {model['providers'].replace(',', ', ')}" if model.get("providers") else "")
    ]
    lines.append("sources:")
    for src in s["sources"]:
        age = src["last_sample_age_s"]
        age_text = "never" if age is None else f"{age:.1f} s ago"
        error = f"  ERROR: {src['error']}" if src["error"] else ""
        lines.append(
            f"  {src['rig']}/{src['stream']:<10} {src['state']:<9} restarts {src['restarts']:<3} "
            f"{src['messages_per_s']:6.1f} msg/s {src['measured_rate_hz']:8.1f} Hz measured "
            f"({src['sample_rate_hz']:g} declared)  last sample {age_text}{error}"
        )
        if src.get("channels"):
            lines.append(f"    channels: {src['channels']}")
        if clock := src.get("clock"):
            lines.append(
                f"    clock: offset {clock['offset_ms']:+.3f} ms, drift {clock['drift_ppm']:+.1f} ppm, "
                f"jitter {clock['jitter_ms']:.3f} ms, outliers {clock['outliers']}, steps {clock['steps']}"
            )
    lines.append("rigs:")
    for rig in s["rigs"]:
        lat = rig["latency_ms"]
        masked = ", ".join(f"{m}={n}" for m, n in rig["masked"].items()) or "none"
        phase = rig.get("window_offset_ms")  # a staggered rig's windows (absent from older daemons)
        lines.append(
            f"  {rig['rig']:<12} {rig['windows_per_s']:.1f} windows/s, {rig['predictions']} predictions, "
            f"latency p50 {_or_dash(lat['p50'])} ms p99 {_or_dash(lat['p99'])} ms, masked {masked}, "
            f"last {rig['last_label'] or '-'}" + (f", windows at +{phase:g} ms in the hop" if phase else "")
        )
        if rig["quiet"]:
            lines.append(f"    quiet: {rig['quiet']}")
    if s.get("outputs"):
        lines.append("outputs:")
    for out in s.get("outputs", []):
        health = ", ".join(f"{k} {v}" for k, v in out["health"].items())
        lines.append(
            f"  {out['name']:<12} {out['state']} (pid {out['pid']}, restarts {out['restarts']}), sent "
            f"{out['sent']}, dropped {out['dropped']}, failed {out['failed']}, lost {out['lost']}, malformed "
            f"{out['malformed']}"
            + (f", samples {out['samples']}" if out.get("samples") else "")
            + (f"; {health}" if health else "")
        )
    drops = ", ".join(f"{k}={v}" for k, v in sorted(s["drops"].items())) or "none"
    lines.append(f"drops: {drops}")
    return "\n".join(lines)
