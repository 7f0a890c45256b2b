from __future__ import annotations

import numpy as np

from fusiond.align import ModalitySpec, RigAligner, Window, WindowConfig
from fusiond.batch import Batcher
from fusiond.bus.wire import encode_sample
from fusiond.ingest import Ingest
from fusiond.metrics import Stats


def _window(i: int, rig: str = "r") -> Window:
    spec = ModalitySpec("series", 4, 1)
    return Window(rig, i, i, i + 1, {"x": spec.zeros()}, {"x": True}, "complete", 0, 0)


def test_batcher_releases_on_size_or_delay():
    b = Batcher(max_batch=3, max_delay_ns=100)
    b.progress("slow", 0)  # a live rig that has not closed window 0 yet: the others wait for it
    b.add(_window(0), now_ns=0)
    b.add(_window(1), now_ns=10)
    assert b.take(50) == [] and b.deadline_ns() == 100
    assert [w.index for w in b.take(100)] == [0, 1]
    b.progress("slow", 6)
    for i in range(7):
        b.add(_window(i), now_ns=200)
    assert [w.index for w in b.take(200)] == [0, 1, 2]
    assert [w.index for w in b.take(200)] == [3, 4, 5]
    assert b.take(200) == [] and len(b) == 1
    assert [w.index for w in b.take(300)] == [6]
    assert b.deadline_ns() is None


def test_batcher_releases_at_once_when_every_live_rig_has_delivered():
    b = Batcher(max_batch=32, max_delay_ns=10**9)
    for rig in ("a", "b", "c"):
        b.progress(rig, 10)
    b.progress("gone", 3)  # quiet for 7 grid steps: not waited for
    b.add(_window(10, "a"), now_ns=0)
    b.add(_window(10, "b"), now_ns=1)
    assert b.take(2) == []  # c is live and has not closed window 10
    b.add(_window(10, "c"), now_ns=3)
    assert sorted(w.rig for w in b.take(3)) == ["a", "b", "c"]  # long before the 1 s delay
    # An empty window counts as delivered: progress alone completes the index.
    b.add(_window(11, "a"), now_ns=4)
    b.add(_window(11, "b"), now_ns=4)
    b.progress("c", 12)
    assert len(b.take(5)) == 2
    # One rig alone never waits.
    solo = Batcher(max_batch=32, max_delay_ns=10**9)
    solo.add(_window(0), now_ns=0)
    assert len(solo.take(0)) == 1


def test_a_greedy_batcher_for_staggered_rigs_never_waits_but_batches_what_queued_meanwhile():
    b = Batcher(max_batch=3, max_delay_ns=10**9, greedy=True)
    for rig in ("a", "b", "c"):
        b.progress(rig, 10)
    b.add(_window(10, "a"), now_ns=0)
    assert [w.rig for w in b.take(0)] == ["a"]  # b and c close index 10 later in the hop: not waited for
    for i, rig in enumerate("bcdef"):  # what came while the model ran goes together, max_batch at a time
        b.add(_window(10, rig), now_ns=i)
    assert [len(b.take(5)), len(b.take(5)), b.take(5)] == [3, 2, []]


def test_rate_meter_averages_complete_seconds_and_survives_a_stall():
    from fusiond.metrics import RateMeter

    meter = RateMeter()
    s = 1_000_000_000
    for i in range(100):  # 10 per second for 10 s, then nothing during second 10
        meter.tick(100 * s + i * s // 10)
    assert meter.rate(100 * s + s // 2) == 0.0  # nothing complete yet
    assert meter.rate(110 * s + s // 2) == 10.0
    assert meter.rate(111 * s + s // 2) == 7.5  # one silent second of the last four
    assert meter.rate(130 * s) == 0.0


def test_ingest_counts_sequence_gaps_as_lost_and_a_restart_as_no_loss():
    stats = Stats()
    window = WindowConfig(10**9, 5 * 10**8, 3 * 10**8)
    aligner = RigAligner("r", {"imu": "imu"}, {"imu": ModalitySpec("series", 100, 1)}, window, stats.drops)
    ingest = Ingest({"r": aligner}, {("r", "imu"): "imu"}, stats)
    t0 = 10**18
    data = np.zeros((10, 1), np.float32)

    def send(seq: int, i: int) -> bool:
        frames = encode_sample(
            rig="r",
            stream="imu",
            modality="imu",
            seq=seq,
            t_ns=t0 + i * 10**8,
            t_pub_ns=t0 + i * 10**8,
            rate_hz=100.0,
            data=data,
        )
        return ingest.handle([bytes(f) for f in frames], t0 + i * 10**8)

    assert all(send(seq, i) for i, seq in enumerate([0, 1, 2, 5, 6, 10]))
    assert stats.drops["lost_in_transport"] == 2 + 3
    assert send(0, 6) and send(1, 7)  # the source restarted: numbering starts again
    assert stats.drops["lost_in_transport"] == 5
