"""``fusiond run --replay``: the pipeline over a recording, with the recorded times as its clock.

Inline (``workers = 1``): the pipeline and the model run in this thread, message by
message, so a recording always gives the same windows, batches and scores. Sharded
(``workers > 1`` or Ray): the same workers and server as live, fed the recording through
sockets with each message's recorded receive time; the predictions are collected, then
given back in rig and window order.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import zmq

from fusiond.bus.security import Keys
from fusiond.bus.sockets import Sockets
from fusiond.bus.wire import SAMPLE_PREFIX, Prediction, decode_prediction, sample_topic
from fusiond.config import Config
from fusiond.errors import WireError
from fusiond.metrics import Stats
from fusiond.models.card import ModelCard
from fusiond.pipeline import Pipeline, resolve_streams
from fusiond.plugin import Plugins
from fusiond.runtime.engine import EngineClass, endpoints_for, make_plan, remove_ipc
from fusiond.runtime.engines import ENGINES, engine_class, engine_name
from fusiond.runtime.handoff import END, decode_body
from fusiond.runtime.worker import FLUSH

__all__ = ["run_inline", "run_offline", "run_sharded"]

log = logging.getLogger(__name__)


def run_inline(
    config: Config,
    plugins: Plugins,
    card: ModelCard,
    streams: Mapping[tuple[str, str], str],
    recording: Path,
    emit: Callable[[Prediction], None],
) -> Stats:
    """The pipeline and the model in this thread: deterministic."""
    from fusiond.models.serving import make_runner
    from fusiond.publish import PredictionBuilder
    from fusiond.recording import read

    pipeline = Pipeline.from_config(config, plugins.sources, card)
    m = config.model
    runner = make_runner(card, lambda: plugins.parts, m.device, m.runtime, m.threads, m.providers)
    model = {"name": card.name, "hash": card.content_hash}
    builder = PredictionBuilder(
        list(card.classes), model, card.task, threshold=config.model.anomaly_threshold
    )

    def run(batches: list[list[Any]], now: int) -> None:
        for batch in batches:
            # On the recording's clock, like the windows: latencies then mean what they say.
            result = runner.run(batch).started_at(max(now, *(w.t_close_ns for w in batch)))
            for prediction in builder.build(result, result.t_end_ns):
                pipeline.stats.predicted(prediction.rig, prediction.label, 0, now)
                emit(prediction)

    now = 0
    for rec in read(recording, [SAMPLE_PREFIX]):
        now = rec.log_time_ns
        pipeline.handle(rec.frames, now)
        run(pipeline.due(now), now)
    run(pipeline.flush(now), now)
    return pipeline.stats


def run_offline(
    config: Config,
    plugins: Plugins,
    recording: Path,
    emit: Callable[[Prediction], None],
    engines: Mapping[str, Any] = ENGINES,
) -> Stats:
    """Run the pipeline over a recording with no wall clock: the recorded receive time is
    the processing clock, so a recording always gives the same windows and labels."""
    from fusiond.models.card import read_card

    card = read_card(config.model.path, plugins.kinds)
    streams = resolve_streams(config, plugins.sources, card.spec, card.name)
    name = engine_name(config)
    if name == "threads":
        return run_inline(config, plugins, card, streams, recording, emit)
    return run_sharded(config, plugins, card, streams, recording, emit, engine_class(name, engines))


def run_sharded(
    config: Config,
    plugins: Plugins,
    card: ModelCard,
    streams: Mapping[tuple[str, str], str],
    recording: Path,
    emit: Callable[[Prediction], None],
    engine: EngineClass,
) -> Stats:
    """The live components, fed the recording; predictions come back in window order."""
    from fusiond.recording import read

    stats = Stats()
    workers = config.runtime.worker_count(len(config.rigs))
    with Sockets(hwm=100_000) as sockets:
        # Endpoints of this run's own: any number of offline runs may go at once.
        owner = f"{os.getpid()}-{id(sockets):x}"

        def where(purpose: str) -> str:
            return engine.endpoint(config, f"offline-{purpose}", owner)

        feeds = [sockets.push(where(f"feed-{i}"), bind=True, where="runtime") for i in range(workers)]
        collector = sockets.pull(where("out"), bind=True, where="runtime")
        inbox = sockets.pull(where("stats"), bind=True, where="runtime")
        endpoints = endpoints_for(
            engine, config, None, _bound(inbox), owner, tuple(_bound(f) for f in feeds), _bound(collector)
        )
        plan = make_plan(config, streams, card.spec, endpoints, workers, offline=True)
        worker_of = {rig: i for i, spec in enumerate(plan.workers) for rig in spec.rigs}
        topics = {sample_topic(r, s).encode(): worker_of[r] for r, s in streams}
        running = engine.create(plan, config, sockets.ctx, Keys(), plugins)
        running.start()
        try:
            now = 0
            for rec in read(recording, [SAMPLE_PREFIX]):
                now = rec.log_time_ns
                target = topics.get(bytes(rec.frames[0]))
                if target is not None:
                    feeds[target].send_multipart([now.to_bytes(8, "little"), *rec.frames], copy=False)
            for feed in feeds:
                feed.send_multipart([now.to_bytes(8, "little"), FLUSH])
            predictions = _collect(collector, inbox, stats, running, plan.names, streams)
        finally:
            running.stop(time.monotonic() + 2.0)
            remove_ipc(endpoints.windows, *endpoints.feeds, _bound(collector), _bound(inbox))
    for p in sorted(predictions, key=lambda p: (p.rig, p.window_start_ns)):
        stats.predicted(p.rig, p.label, 0, p.t_pub_ns)
        emit(p)
    return stats


def _bound(sock: zmq.Socket[bytes]) -> str:
    return sock.getsockopt_string(zmq.LAST_ENDPOINT)


def _collect(
    collector: zmq.Socket[bytes],
    inbox: zmq.Socket[bytes],
    stats: Stats,
    engine: Any,
    names: list[str],
    streams: Mapping[tuple[str, str], str],
) -> list[Prediction]:
    out: list[Prediction] = []
    done = threading.Event()
    while not done.is_set():
        engine.poll()
        if collector.poll(100):
            frames = collector.recv_multipart()
            if frames[0] == END:
                done.set()
            else:
                try:
                    out.append(decode_prediction(frames))
                except WireError as exc:  # the server's own: a fault to report, not to die of
                    log.error("a prediction the wire check refuses was not written: %s", exc)
        while inbox.poll(0):
            stats.absorb(decode_body(inbox.recv_multipart(copy=False)), names, streams)
    return out
