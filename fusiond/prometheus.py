"""Prometheus metrics and health probes over HTTP (``[metrics] listen``), read from the
counters at scrape time.

Nothing is updated per message for Prometheus: a collector walks the daemon's counters
when scraped. Metric names are listed in docs/operations.md.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.registry import Collector

from fusiond.metrics import DROP_REASONS
from fusiond.outputs.watch import COUNTS, SAMPLES

if TYPE_CHECKING:
    from fusiond.config import Config
    from fusiond.status import Observed

__all__ = ["DaemonCollector", "serve", "stop"]


class DaemonCollector(Collector):
    """Exposes one daemon's counters."""

    def __init__(self, daemon: Observed) -> None:
        self.daemon = daemon

    def collect(
        self,
    ) -> Iterator[CounterMetricFamily | GaugeMetricFamily | InfoMetricFamily | HistogramMetricFamily]:
        d, now = self.daemon, time.time_ns()
        model = d.model_info()
        yield InfoMetricFamily(
            "fusiond_model", "The model being served", {"name": model["name"], "hash": model["hash"]}
        )
        yield GaugeMetricFamily("fusiond_uptime_seconds", "Seconds since start", (now - d.started_ns) / 1e9)
        by = ["rig", "stream"]
        messages = CounterMetricFamily("fusiond_messages", "Sample messages accepted", labels=by)
        samples = CounterMetricFamily("fusiond_samples", "Samples in those messages", labels=by)
        errors = CounterMetricFamily("fusiond_source_errors", "Error reports taken for the stream", labels=by)
        rate = GaugeMetricFamily("fusiond_stream_messages_per_second", "Messages per second", labels=by)
        sample_rate = GaugeMetricFamily("fusiond_stream_sample_rate_hz", "Declared sample rate", labels=by)
        age = GaugeMetricFamily(
            "fusiond_stream_last_sample_age_seconds", "Since the last message", labels=["rig", "stream"]
        )
        measured = GaugeMetricFamily(
            "fusiond_stream_measured_rate_hz", "Samples per second arriving", labels=by
        )
        for (rig, stream), s in d.stats.streams.items():
            messages.add_metric([rig, stream], s.messages)
            samples.add_metric([rig, stream], s.samples)
            errors.add_metric([rig, stream], s.errors)
            rate.add_metric([rig, stream], s.messages_per_s(now))
            sample_rate.add_metric([rig, stream], s.sample_rate_hz)
            measured.add_metric([rig, stream], s.samples_per_s(now))
            if s.last_recv_ns is not None:
                age.add_metric([rig, stream], (now - s.last_recv_ns) / 1e9)
        yield from (messages, samples, errors, rate, sample_rate, measured, age)
        yield from self._clocks()
        up = GaugeMetricFamily("fusiond_source_up", "1 while the source process runs", labels=["source"])
        restarts = CounterMetricFamily(
            "fusiond_source_restarts", "Source process restarts", labels=["source"]
        )
        for child in d.supervisor.children:
            if child.role == "source":
                up.add_metric([child.name], 1.0 if child.state == "running" else 0.0)
                restarts.add_metric([child.name], child.restarts)
        yield from (up, restarts)
        outputs = CounterMetricFamily(
            "fusiond_output_predictions",
            "Predictions an output delivered or not",
            labels=["output", "outcome"],
        )
        samples = CounterMetricFamily(
            "fusiond_output_samples", "Sensor messages an output that shows them took", labels=["output"]
        )
        output_up = GaugeMetricFamily(
            "fusiond_output_up", "1 while the output's bridge runs", labels=["output"]
        )
        health = GaugeMetricFamily(
            "fusiond_output_health",
            "What an output reports of itself (connected: 1 or 0)",
            labels=["output", "key"],
        )
        for row in d.outputs.rows(d.supervisor.children, now):
            output_up.add_metric([row["name"]], 1.0 if row["state"] == "running" else 0.0)
            for outcome in COUNTS:
                outputs.add_metric([row["name"], outcome], row[outcome])
            samples.add_metric([row["name"]], row[SAMPLES])
            for key, value in row["health"].items():
                if isinstance(value, bool | int | float):
                    health.add_metric([row["name"], key], float(value))
        yield from (outputs, samples, output_up, health)
        drops = CounterMetricFamily(
            "fusiond_drops", "Samples, messages or windows discarded", labels=["reason"]
        )
        counted = d.stats.all_drops()
        for reason in sorted(set(DROP_REASONS) | set(counted)):  # every known reason, 0 from the start
            drops.add_metric([reason], counted.get(reason, 0))
        yield drops
        yield from self._rigs(now)

    def _clocks(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        by = ["rig", "stream"]
        offset = GaugeMetricFamily("fusiond_clock_offset_seconds", "Added to the stream's stamps", labels=by)
        drift = GaugeMetricFamily(
            "fusiond_clock_drift_ppm", "The stream's clock, slower than the daemon's", labels=by
        )
        jitter = GaugeMetricFamily(
            "fusiond_clock_jitter_seconds", "Arrival delay above the clock model", labels=by
        )
        outliers = CounterMetricFamily("fusiond_clock_outliers", "Stamps dropped as outliers", labels=by)
        steps = CounterMetricFamily("fusiond_clock_steps", "Clock steps followed", labels=by)
        for (rig, stream), s in self.daemon.stats.streams.items():
            if (c := s.clock) is None:
                continue
            offset.add_metric([rig, stream], c.offset_ns / 1e9)
            drift.add_metric([rig, stream], c.drift_ppm)
            jitter.add_metric([rig, stream], c.jitter_ns / 1e9)
            outliers.add_metric([rig, stream], c.outliers)
            steps.add_metric([rig, stream], c.steps)
        yield from (offset, drift, jitter, outliers, steps)

    def _rigs(self, now: int) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        d = self.daemon
        predictions = CounterMetricFamily("fusiond_predictions", "Predictions published", labels=["rig"])
        masked = CounterMetricFamily(
            "fusiond_masked_windows", "Windows with a modality masked", labels=["rig", "modality"]
        )
        latency = GaugeMetricFamily(
            "fusiond_latency_seconds", "Window close to published, recent windows", labels=["rig", "quantile"]
        )
        histogram = HistogramMetricFamily(
            "fusiond_close_to_publish_seconds",
            "Window close to prediction published, every window (aggregates across daemons)",
            labels=["rig"],
        )
        for rig in d.config.rigs:
            modalities = {m for (r, _), m in d.streams.items() if r == rig}
            r = d.stats.rig(rig)
            predictions.add_metric([rig], r.predictions)
            counted = d.stats.masked.get(rig, {})
            for modality in sorted(set(modalities) | set(counted)):  # 0 from the start
                masked.add_metric([rig, modality], counted.get(modality, 0))
            buckets, total = r.histogram.buckets()
            histogram.add_metric([rig], buckets, total)
            for q, value in zip(("0.5", "0.99"), r.latency.percentiles(50, 99), strict=True):
                if value == value:  # not NaN
                    latency.add_metric([rig, q], value / 1e3)
        yield from (predictions, masked, latency, histogram)


MAX_CONNECTIONS = 32
"""Requests served at once; more are closed unread (a scraper and a few probes need few)."""
REQUEST_TIMEOUT_S = 5.0
"""A client that has not sent its whole request (or read the answer) by then is dropped."""


class _Handler(BaseHTTPRequestHandler):
    """``/metrics`` (Prometheus text), ``/healthz`` and ``/readyz`` (JSON, 200 or 503)."""

    registry: CollectorRegistry
    daemon: Observed
    server_version = "fusiond"
    timeout = REQUEST_TIMEOUT_S  # socket timeout: a half-sent request cannot hold a thread

    def do_HEAD(self) -> None:  # noqa: N802 - the name http.server calls
        self.do_GET(head=True)

    def do_GET(self, head: bool = False) -> None:  # noqa: N802 - the name http.server calls
        self.head = head
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, generate_latest(self.registry), CONTENT_TYPE_LATEST)
            return
        if path not in ("/healthz", "/readyz"):
            self._send(404, b'{"error": "try /metrics, /healthz or /readyz"}\n', "application/json")
            return
        now = time.time_ns()
        ok, why = self.daemon.health(now)
        if path == "/readyz" and ok and not self.daemon.ready:
            ok, why = False, "not ready yet: the model is warming up or no source has delivered"
        body = json.dumps({"ok": ok, "why": why, "ready": self.daemon.ready}).encode() + b"\n"
        self._send(200 if ok else 503, body, "application/json")

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not getattr(self, "head", False):
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's name
        """Probes come every few seconds: not a line each in the journal."""


class _Server(ThreadingHTTPServer):
    """At most :data:`MAX_CONNECTIONS` requests at once, each with a time-out; a client that
    goes away mid-request is counted, not a traceback in the journal."""

    daemon_threads = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], handler: type[_Handler]) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.refused = self.broken = 0
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.refused += 1
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        self.broken += 1  # a reset, a time-out: the client's business


def serve(config: Config, daemon: Observed) -> ThreadingHTTPServer | None:
    """Serve ``[metrics] listen`` in a thread, if set: ``/metrics``, and the probes
    ``/healthz`` (the daemon's loop runs and the pipeline is alive, the watchdog's rule)
    and ``/readyz`` (that, and READY announced). ``.shutdown()`` stops it; a port it cannot
    have is a ConfigError naming the key."""
    listen = config.metrics.listen
    if not listen:
        return None
    host, _, port = listen.rpartition(":")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonCollector(daemon))
    handler = type("Handler", (_Handler,), {"registry": registry, "daemon": daemon})
    try:
        server = _Server((host.strip("[]") or "0.0.0.0", int(port)), handler)
    except OSError as exc:
        msg = f"cannot serve metrics on {listen}: {exc.strerror}"
        raise config.error(msg, "metrics.listen") from None
    threading.Thread(target=server.serve_forever, name="fusiond-http", daemon=True).start()
    return server


def stop(server: ThreadingHTTPServer | None) -> None:
    """Stop a server :func:`serve` started, and close its socket (None: nothing to do)."""
    if server is not None:
        server.shutdown()
        server.server_close()
