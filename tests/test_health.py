"""Continuity: what the daemon believes of the predictions it sees on the bus."""

from __future__ import annotations

import time

from fusiond.bus.wire import Prediction
from fusiond.metrics import Stats, Summary
from fusiond.runtime.health import MAX_SEQ_JUMP, Continuity

HOP = 500_000_000


def prediction(seq: int, index: int, start_ns: int | None = None, offset: int = 0) -> Prediction:
    """A prediction of window ``index`` (starting at ``index * HOP + offset``, unless told)."""
    start = index * HOP + offset if start_ns is None else start_ns
    extra = {"window_index": index, "hop_ns": HOP} | ({"window_offset_ns": offset} if offset else {})
    return Prediction("demo", seq, start, start + 10**9, "a", ["a"], [1.0], [], [], {}, {}, 0, extra)


def test_a_forged_number_far_ahead_never_becomes_the_restarted_servers_and_hides_no_loss():
    stats = Stats()
    c = Continuity(["demo"], stats)
    for seq in range(5):
        c.seen(prediction(seq, 100 + seq))
    c.seen(prediction(2**63 - 1, 2**62))  # a forgery: a restarted server would number from it
    c.seen(prediction(5 + MAX_SEQ_JUMP, 200))  # still too far ahead
    c.seen(prediction(6, 106, start_ns=time.time_ns() + 2 * 3600 * 10**9))  # a window 2 h ahead
    c.seen(prediction(6, 2**40, start_ns=106 * HOP))  # an index far ahead of its own start
    assert c.next_seq() == {"demo": 5} and stats.all_drops()["implausible_prediction"] == 4
    c.restarted(["demo"])
    c.seen(prediction(5, 110))  # the restart lost windows 105..109: still counted
    assert stats.all_drops()["lost_in_restart"] == 5 and c.next_seq() == {"demo": 6}


def test_a_staggered_rigs_windows_are_believed_at_their_phase_and_only_there():
    stats = Stats()
    c = Continuity(["demo"], stats)
    for seq in range(3):
        c.seen(prediction(seq, 100 + seq, offset=123_000_000))
    c.seen(prediction(3, 103, start_ns=103 * HOP + 124_000_000, offset=123_000_000))  # not its own start
    c.seen(prediction(3, 2**40, start_ns=103 * HOP + 123_000_000, offset=123_000_000))
    assert c.next_seq() == {"demo": 3} and stats.all_drops()["implausible_prediction"] == 2


def test_the_summary_line_adds_each_modalitys_masked_windows_over_the_rigs():
    stats = Stats()
    summary = Summary(stats, 0)
    assert "latency p50 - ms p99 - ms" in summary.line(10**9)  # no prediction yet
    stats.masked = {"demo": {"video": 1}, "demo2": {"video": 1, "imu": 1}}
    assert "masked: imu=1, video=2," in summary.line(2 * 10**9)
