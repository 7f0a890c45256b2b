"""An output's bridge process: predictions from the bus, handed to the output, counted.

The bridge subscribes to the prediction topics with a bounded queue (``queue`` messages):
when the output falls behind, ZeroMQ drops the newest, and the gap in each rig's
prediction numbers counts them (``lost``). An output that shows the sensors too (the live
Foxglove view) also gets the sample topics, from a small queue of their own
(:data:`SAMPLE_QUEUE`), so frames are dropped before predictions are. What the output itself could not take
(``dropped``: its own queue full while the far end is away) and what failed
(``failed``) are counted apart. Once a second the counts go out on ``o/<name>``, which
the daemon shows in ``fusiond status`` and on ``/metrics``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from typing import Any

import zmq

from fusiond.bus.security import Keys
from fusiond.bus.sockets import Sockets, drain
from fusiond.bus.wire import (
    DUPLICATE,
    PREDICTION_PREFIX,
    SAMPLE_PREFIX,
    SequenceGaps,
    decode_prediction,
    decode_sample_header,
    encode_output_report,
    prediction_topic,
)
from fusiond.errors import WireError
from fusiond.outputs.base import Output, OutputConfig, OutputContext, OutputError
from fusiond.sources.runner import Backoff, connect_publisher

__all__ = ["REPORT_EVERY_NS", "run_output", "SAMPLE_QUEUE"]

log = logging.getLogger(__name__)
REPORT_EVERY_NS = 1_000_000_000
LOG_EVERY_NS = 60_000_000_000
SAMPLE_QUEUE = 64
"""Sensor messages held for an output that takes them (``samples = True``), past which
ZeroMQ drops the newest: about 2 s of a 30 fps camera."""


def run_output(
    cls: type[Output[Any]],
    config: OutputConfig,
    context: OutputContext,
    subscribe: str,
    publish: str,
    *,
    queue: int = 1000,
    keys: Keys | None = None,
    backoff: Backoff | None = None,
) -> int:
    """Bridge predictions from ``subscribe`` to the output until ``context.stop`` is set."""
    backoff = backoff or Backoff()
    counts: Counter[str] = Counter()
    with Sockets(hwm=queue, keys=keys) as sockets:
        topics = [prediction_topic(rig) for rig in config.rigs] or [PREDICTION_PREFIX]
        inbox = sockets.subscriber(subscribe, topics, hwm=queue)
        samples = None
        if cls.samples:  # a queue of their own: a slow output drops frames, never predictions first
            prefixes = [f"{SAMPLE_PREFIX}{rig}/" for rig in config.rigs] or [SAMPLE_PREFIX]
            samples = sockets.subscriber(subscribe, prefixes, hwm=SAMPLE_QUEUE)
        reports, _ = connect_publisher(sockets, publish, 200, 5.0, context.stop)
        attempt = 0
        while not context.stop.is_set():
            output = cls(config, context)
            try:
                log.info("output %s (%s): %s", context.name, cls.kind, output.open())
            except OutputError as exc:
                delay = backoff.delay(attempt)
                attempt += 1
                log.error("output %s (%s): %s; retrying in %.1f s", context.name, cls.kind, exc, delay)
                context.stop.wait(delay)
                continue
            try:
                _Bridge(output, context, counts, set(config.rigs)).run(inbox, reports, samples)
            finally:
                output.close()
            return 0
    return 0


class _Bridge:
    def __init__(
        self, output: Output[Any], context: OutputContext, counts: Counter[str], rigs: set[str]
    ) -> None:
        self.output, self.context, self.counts, self.rigs = output, context, counts, rigs
        self.gaps = SequenceGaps()
        self.logged: dict[str, int] = {}

    def run(
        self, inbox: zmq.Socket[bytes], reports: zmq.Socket[bytes], samples: zmq.Socket[bytes] | None
    ) -> None:
        poller = zmq.Poller()
        poller.register(inbox, zmq.POLLIN)
        if samples is not None:
            poller.register(samples, zmq.POLLIN)
        next_report = 0
        while not self.context.stop.is_set():
            ready = dict(poller.poll(200))
            if inbox in ready:
                for frames in drain(inbox, 256):
                    self.take(frames)
            if samples is not None and samples in ready:
                for frames in drain(samples, 64):
                    self.take_sample(frames)
            now = time.monotonic_ns()
            if now >= next_report:
                next_report = now + REPORT_EVERY_NS
                self.report(reports)
        self.report(reports)

    def take(self, frames: list[zmq.Frame]) -> None:
        try:
            p = decode_prediction(frames)
        except WireError as exc:
            self.count("malformed", f"a malformed prediction on the bus: {exc}")
            return
        if self.rigs and p.rig not in self.rigs:
            return  # p/lab also matches p/lab2
        missed = self.gaps.missed(p.rig, p.seq, p.t_pub_ns)
        if missed == DUPLICATE:  # a number already sent: the same prediction again, or a replay
            self.count("malformed", f"rig {p.rig}'s prediction {p.seq} came again; not sent twice")
            return
        if missed is not None and missed > 0:
            self.count("lost", f"{missed} prediction(s) of rig {p.rig} never reached this output", missed)
        self.gaps.accept(p.rig, p.seq, p.t_pub_ns)
        try:
            if self.output.send(p):
                self.counts["sent"] += 1
            else:
                self.count("dropped", "the output's queue is full (its far end away?)")
        except OutputError as exc:
            self.count("failed", str(exc))
        except (ValueError, OverflowError) as exc:  # valid on the wire, not for this output
            self.count("malformed", f"a prediction the output cannot take: {exc}")

    def take_sample(self, frames: list[zmq.Frame]) -> None:
        try:
            header = decode_sample_header(frames)
            if self.rigs and header.rig not in self.rigs:
                return  # the topic said one rig and the header another: a forgery
            self.output.sample(header, frames)
            self.counts["samples"] += 1
        except (WireError, ValueError, OverflowError) as exc:  # valid on the wire, not for this output
            self.count("malformed", f"a sample the output cannot take: {exc}")
        except OutputError as exc:
            self.count("failed", str(exc))

    def count(self, what: str, message: str, n: int = 1) -> None:
        """Count, and log at most one line a minute per kind of trouble."""
        self.counts[what] += n
        now = time.monotonic_ns()
        if now - self.logged.get(what, -LOG_EVERY_NS) >= LOG_EVERY_NS:
            self.logged[what] = now
            log.warning(
                "output %s: %s (counted as %s: %d so far)",
                self.context.name,
                message,
                what,
                self.counts[what],
            )

    def report(self, reports: zmq.Socket[bytes]) -> None:
        frames = encode_output_report(
            name=self.context.name,
            kind=self.output.kind,
            counts=dict(self.counts),
            health=self.output.health(),
            t_ns=time.time_ns(),
        )
        with contextlib.suppress(zmq.Again):  # never worth waiting for: the next says the same, and more
            reports.send_multipart(frames, zmq.NOBLOCK)
