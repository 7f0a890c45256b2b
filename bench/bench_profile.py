"""Where a message's and a window's time goes: prints a table, asserts nothing.

    python bench/bench_profile.py [--seconds 60] [--runtime onnx|torch] [--batch 1]

The demo rig's media (``config.toml``'s file sources, framed as the sources frame them
for the bus; ``--seconds`` of them, read once: at most their 60 s) go through the
daemon's own :class:`~fusiond.pipeline.Pipeline`, hand-off codec, runner and prediction
builder, in this one process, on the recorded receive times. Each stage is timed by wrapping the
function that does it (``time.perf_counter_ns``):

per message
  ``receive``  the same messages over TCP loopback, received as a worker receives them
               (:func:`fusiond.bus.sockets.drain`; a publisher thread sending as fast as
               it can)
  ``header``   the stream's header template (:mod:`fusiond.bus.template`), and
               :func:`fusiond.bus.wire.decode_sample_header` where it does not match
  ``checks``   ingest's checks around it (rate budget, seq, skew, shape, finite values)
  ``decode``   a raw block's view, or :func:`fusiond.bus.wire.decode_arrays` (JPEG frames
               decoded here)
  ``clock``    the stream's clock model update
  ``insert``   :meth:`fusiond.align.windows.RigAligner.add`

per window
  ``fit``      each modality's kind ``fit`` (resampling, anti-alias filter, resize)
  ``close``    the rest of :meth:`RigAligner.poll` (due, coverage, evict)
  ``hand-off`` :func:`~fusiond.runtime.handoff.encode_window` and ``decode_window``
               (what a worker process sends the server)
  ``batch``    the batcher's add and take
  ``model``    the runner's forward pass, at ``--batch`` windows per call
  ``publish``  building the prediction and encoding it for the bus

and, for the model and publish, the same at batch 32 (32 of the run's windows in one call,
as a server serving many rigs runs them).

Figures are microseconds per message or per window (median of ``--repeat`` runs) and
each stage's share of the whole.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MESSAGE = ("receive", "header", "checks", "decode", "clock", "insert")
WINDOW = ("fit", "close", "hand-off", "batch", "model", "publish")


class Timer:
    """Nanoseconds spent in wrapped functions, by stage."""

    def __init__(self) -> None:
        self.ns: dict[str, int] = defaultdict(int)

    def wrap(self, owner: Any, name: str, stage: str) -> None:
        inner = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter_ns()
            try:
                return inner(*args, **kwargs)
            finally:
                self.ns[stage] += time.perf_counter_ns() - t0

        setattr(owner, name, timed)

    def timed(self, stage: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter_ns()
        out = fn()
        self.ns[stage] += time.perf_counter_ns() - t0
        return out


def messages(seconds: float) -> tuple[Any, Any, list[tuple[int, list[bytes]]]]:
    """The demo's messages over ``seconds`` of its looping media, as the sources frame them."""
    from fusiond import config as config_mod
    from fusiond.plugin import load_plugins
    from fusiond.training.files import file_messages

    config = config_mod.load(ROOT / "config.toml")
    plugins = load_plugins()
    anchor, merged = file_messages(config, plugins)
    out: list[tuple[int, list[bytes]]] = []
    for t_ns, frames in merged:
        if t_ns >= anchor + seconds * 1e9:
            break
        out.append((t_ns, [bytes(f) for f in frames]))
    return config, plugins, out


def receive_ns(msgs: list[tuple[int, list[bytes]]]) -> float:
    """Nanoseconds per message received by ``drain`` over TCP loopback, a publisher thread
    sending them as fast as it can."""
    import zmq

    from fusiond.bus.sockets import drain

    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(f"tcp://127.0.0.1:{port}")
    time.sleep(0.5)  # the subscription reaches the publisher

    def send() -> None:
        for _, frames in msgs:
            pub.send_multipart(frames)

    sender = threading.Thread(target=send)
    t0 = time.perf_counter_ns()
    sender.start()
    got = 0
    while got < len(msgs) and sub.poll(5000):
        got += sum(1 for _ in drain(sub, 512))
    took = time.perf_counter_ns() - t0
    if got < len(msgs):
        print(f"receive: only {got} of {len(msgs)} messages arrived", file=sys.stderr)
    sender.join()
    pub.close(0)
    sub.close(0)
    ctx.term()
    return took / max(got, 1)


def queued_receive_ns(msgs: list[tuple[int, list[bytes]]]) -> dict[str, float]:
    """Nanoseconds per message to receive these messages already queued on an inproc
    socket (nothing else running): with ``drain`` (a frame at a time, reading its ``more``
    flag) and with ``recv_multipart``, as the worker received before."""
    import zmq

    from fusiond.bus.sockets import drain

    ctx = zmq.Context()
    push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    push.setsockopt(zmq.SNDHWM, 0)
    pull.setsockopt(zmq.RCVHWM, 0)
    push.bind("inproc://receive")
    pull.connect("inproc://receive")
    out: dict[str, float] = {}
    for how in ("drain", "recv_multipart"):
        for _, frames in msgs:
            push.send_multipart(frames)
        t0 = time.perf_counter_ns()
        if how == "drain":
            got = sum(1 for _ in drain(pull, len(msgs)))
        else:
            for _ in msgs:
                pull.recv_multipart(zmq.NOBLOCK, copy=False)
            got = len(msgs)
        out[how] = (time.perf_counter_ns() - t0) / max(got, 1)
    push.close(0)
    pull.close(0)
    ctx.term()
    return out


def one_run(args: argparse.Namespace, config: Any, plugins: Any, msgs: list[tuple[int, list[bytes]]]) -> dict:
    import fusiond.align.windows as windows_mod
    import fusiond.ingest as ingest_mod
    from fusiond.align.windows import RigAligner
    from fusiond.batch import Batcher
    from fusiond.bus.template import HeaderTemplate
    from fusiond.bus.wire import encode_prediction
    from fusiond.clock import ClockModel
    from fusiond.ingest import Ingest
    from fusiond.models.card import read_card
    from fusiond.models.serving import make_runner
    from fusiond.pipeline import Pipeline
    from fusiond.publish import PredictionBuilder
    from fusiond.runtime.handoff import decode_window, encode_window

    card = read_card(ROOT / config.model.path, plugins.kinds)
    runner = make_runner(card, lambda: plugins.parts, "cpu", args.runtime)
    runner.warm_up(args.batch)
    runner.warm_up(32)
    builder = PredictionBuilder(list(card.classes), {"name": card.name, "hash": card.content_hash}, card.task)
    timer = Timer()
    saved = [
        (ingest_mod, "decode_sample_header"),
        (HeaderTemplate, "match"),
        (ingest_mod, "decode_arrays"),
        (ingest_mod._Layout, "view"),
        (ClockModel, "update"),
        (RigAligner, "add"),
        (Ingest, "handle"),
        (windows_mod, "fit_window"),
        (RigAligner, "poll"),
        (Batcher, "add"),
        (Batcher, "take"),
    ]
    originals = [(owner, name, getattr(owner, name)) for owner, name in saved]
    stages = [
        "header",
        "header",
        "decode",
        "decode",
        "clock",
        "insert",
        "ingest",
        "fit",
        "poll",
        "batch",
        "batch",
    ]
    for (owner, name), stage in zip(saved, stages, strict=True):
        timer.wrap(owner, name, stage)
    try:
        pipeline = Pipeline.from_config(config, plugins.sources, card)
        windows = 0
        pending: list[Any] = []
        kept: list[Any] = []

        def serve(batch: list[Any]) -> None:
            nonlocal windows
            moved = timer.timed("hand-off", lambda: [decode_window(encode_window(w)) for w in batch])
            kept.extend(moved[: 32 - len(kept)])
            for i in range(0, len(moved), args.batch):
                part = moved[i : i + args.batch]
                result = timer.timed("model", lambda part=part: runner.run(part))
                built = timer.timed("publish", lambda result=result: builder.build(result, time.time_ns()))
                timer.timed("publish", lambda built=built: [encode_prediction(p) for p in built])
            windows += len(batch)

        for t_ns, frames in msgs:
            pipeline.handle(frames, t_ns)
            for batch in pipeline.due(t_ns):
                pending.extend(batch)
                serve(pending)
                pending = []
        for batch in pipeline.flush(msgs[-1][0]):
            serve(batch)
    finally:
        for owner, name, fn in originals:
            setattr(owner, name, fn)
    ns = timer.ns
    n = len(msgs)
    per_msg = {
        "header": ns["header"] / n,
        "decode": ns["decode"] / n,
        "clock": ns["clock"] / n,
        "insert": ns["insert"] / n,
        "checks": (ns["ingest"] - ns["header"] - ns["decode"] - ns["clock"] - ns["insert"]) / n,
    }
    per_win = {
        "fit": ns["fit"] / windows,
        "close": (ns["poll"] - ns["fit"]) / windows,
        "hand-off": ns["hand-off"] / windows,
        "batch": ns["batch"] / windows,
        "model": ns["model"] / windows,
        "publish": ns["publish"] / windows,
    }
    # The demo rig closes one window at a time: a batch of 32 of its windows, as a server
    # serving many rigs runs them, for the model's and publish's cost a window there.
    t0 = time.perf_counter_ns()
    result = runner.run(kept)
    t1 = time.perf_counter_ns()
    for p in builder.build(result, time.time_ns()):
        encode_prediction(p)
    t2 = time.perf_counter_ns()
    at32 = {"model@32": (t1 - t0) / len(kept), "publish@32": (t2 - t1) / len(kept)}
    return {"messages": n, "windows": windows, **per_msg, **per_win, **at32}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="of the demo's media")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--runtime", default="onnx", choices=["onnx", "torch"])
    parser.add_argument("--batch", type=int, default=1, help="windows per forward pass")
    args = parser.parse_args()

    config, plugins, msgs = messages(args.seconds)
    rows = [one_run(args, config, plugins, msgs) for _ in range(args.repeat)]
    receive = statistics.median(receive_ns(msgs) for _ in range(args.repeat))
    queued = [queued_receive_ns(msgs) for _ in range(args.repeat)]
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    med["receive"] = receive
    what = f"{args.runtime}, batch {args.batch}"
    print(f"{med['messages']:.0f} messages, {med['windows']:.0f} windows of the demo rig ({what})")
    per_window_msgs = med["messages"] / med["windows"]
    total_msg = sum(med[k] for k in MESSAGE)
    total_win = sum(med[k] for k in WINDOW)
    whole = total_msg * per_window_msgs + total_win
    print(f"{'stage':<10}{'us':>10}  {'share':>6}")
    print("per message")
    for k in MESSAGE:
        print(f"  {k:<8}{med[k] / 1e3:>10.1f}  {med[k] * per_window_msgs / whole:>6.1%}")
    print(f"  {'all':<8}{total_msg / 1e3:>10.1f}  ({per_window_msgs:.0f} messages a window)")
    print("per window")
    for k in WINDOW:
        print(f"  {k:<8}{med[k] / 1e3:>10.1f}  {med[k] / whole:>6.1%}")
    print(f"  {'all':<8}{total_win / 1e3:>10.1f}")
    print(f"one window in all: {whole / 1e3:.0f} us ({per_window_msgs:.0f} messages and its own work)")
    print(
        "receive alone (queued on inproc): "
        + ", ".join(f"{k} {statistics.median(q[k] for q in queued) / 1e3:.1f} us" for k in queued[0])
        + " a message"
    )
    print(
        f"at batch 32 (32 of these windows in one call): model {med['model@32'] / 1e3:.1f} us and "
        f"publish {med['publish@32'] / 1e3:.1f} us a window"
    )


if __name__ == "__main__":
    main()
