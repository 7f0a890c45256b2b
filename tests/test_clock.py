"""The clock model, one behaviour at a time, on synthetic streams with a fixed seed."""

from __future__ import annotations

import numpy as np
import pytest

from fusiond.clock import OUTLIER, STEP, ClockModel

T0 = 1_700_000_000_000_000_000
MS = 1_000_000


def feed(model, pairs):
    """Offsets per pair (None where the model refused the pair) and what was resolved."""
    offsets, resolved = [], []
    for x, y in pairs:
        offsets.append(model.update(x, y))
        if model.resolved is not None:
            resolved.append(model.resolved)
    return offsets, resolved


def delays(n, seed=1):
    """Transport delays: at least 50 us, mostly a few hundred, now and then 20 ms."""
    rng = np.random.default_rng(seed)
    d = 50_000 + rng.exponential(300_000, n)
    d[rng.random(n) < 0.02] += 20 * MS
    return d.astype(np.int64).tolist()


def test_a_clean_stream_on_one_host_gets_no_correction():
    d = delays(2000)
    offsets, resolved = feed(
        ClockModel(deadband_ns=2 * MS), [(T0 + k * 10 * MS, T0 + k * 10 * MS + d[k]) for k in range(2000)]
    )
    assert set(offsets) == {0} and resolved == []


def test_another_hosts_offset_is_the_smallest_delay():
    d = delays(2000)
    model = ClockModel(deadband_ns=2 * MS)
    offsets, _ = feed(model, [(T0 + k * 10 * MS - 37 * MS, T0 + k * 10 * MS + d[k]) for k in range(2000)])
    assert abs(offsets[-1] - (37 * MS + 50_000)) < 0.2 * MS, offsets[-1]


def test_one_stamp_seconds_ahead_is_an_outlier_that_moves_nothing():
    d = delays(300)
    shift = [3000 * MS if k == 150 else 0 for k in range(300)]
    model = ClockModel(deadband_ns=2 * MS)
    offsets, resolved = feed(
        model, [(T0 + k * 100 * MS + shift[k], T0 + k * 100 * MS + d[k]) for k in range(300)]
    )
    assert offsets[150] is None and resolved == [(OUTLIER, 1)]
    assert set(offsets[:150] + offsets[151:]) == {0}
    assert model.outliers == 1 and model.steps == 0


def test_one_stamp_seconds_behind_is_an_outlier_too():
    d = delays(300)
    model = ClockModel(deadband_ns=2 * MS)
    back = [3000 * MS if k == 150 else 0 for k in range(300)]
    offsets, resolved = feed(
        model, [(T0 + k * 100 * MS - back[k], T0 + k * 100 * MS + d[k]) for k in range(300)]
    )
    assert offsets[150] is None and resolved == [(OUTLIER, 1)] and set(offsets[151:]) == {0}


@pytest.mark.parametrize("step_s", [-2.0, 2.0])
def test_a_real_step_is_followed_after_three_messages(step_s):
    """The clock is stepped at message 800 (10 ms apart): from the third message on, the
    corrected stamps are right again, and the model says by how much it moved."""
    d = delays(2000)
    step = round(step_s * 1e9)
    model = ClockModel(deadband_ns=2 * MS)
    stamps = [T0 + k * 10 * MS + (step if k >= 800 else 0) for k in range(2000)]
    offsets, resolved = feed(model, [(x, T0 + k * 10 * MS + d[k]) for k, x in enumerate(stamps)])
    assert offsets[800:802] == [None, None] and resolved == [(STEP, 2)]
    errors = [
        x + o - (T0 + k * 10 * MS) for k, (x, o) in enumerate(zip(stamps, offsets, strict=True)) if k >= 802
    ]
    assert max(map(abs, errors)) < 2 * MS
    assert model.steps == 1 and abs(model.last_step_ns + step) < MS


def _stalled(model: ClockModel, stall_s: float) -> tuple[int, float]:
    """A 30 Hz stream whose receiver stops for ``stall_s`` at 30 s, then reads the backlog
    at once: (messages held back, worst drift after it, in ppm)."""
    rng = np.random.default_rng(3)
    t0, resume = 10**18, 10**18 + round((30 + stall_s) * 1e9)
    held, worst = 0, 0.0
    for i in range(3600):
        x = t0 + round(i * 1e9 / 30)
        y = x + int(rng.uniform(2e5, 3e6))
        if t0 + 30 * 10**9 <= x < resume:
            y = resume + (x - t0 - 30 * 10**9) // 1000  # all of it at once, in order
        held += model.update(x, y) is None
        if x > resume + 10**10:
            worst = max(worst, abs(model.drift_ppm))
    return held, worst


@pytest.mark.parametrize("stall_s", [2.5, 9.0, 30.0])
def test_a_receiver_that_stalled_and_read_its_backlog_moves_nothing(stall_s):
    """The daemon stopped (SIGSTOP, a swap storm) and then read everything queued meanwhile:
    the backlog's delays fall from seconds to nothing, which is no clock's doing. No step,
    nothing held back, and the drift stays what it was (it once read +60,000 ppm here)."""
    model = ClockModel(deadband_ns=2_000_000)
    held, worst = _stalled(model, stall_s)
    assert (model.steps, model.outliers, held) == (0, 0, 0)
    assert worst < 200, worst


@pytest.mark.parametrize("drift", [-0.02, 0.02, 200e-6])
def test_drift_is_followed_to_within_a_millisecond(drift):
    """A sensor clock running 2 % slow or fast (or a crystal 200 ppm off), its stamps
    mapped onto the host's read times."""
    d = delays(6000)
    model = ClockModel()
    pairs = [(round(k * 5 * MS * (1 + drift)), T0 + k * 5 * MS + d[k]) for k in range(6000)]
    offsets, resolved = feed(model, pairs)
    errors = np.array(
        [x + o - (T0 + k * 5 * MS) for k, ((x, _), o) in enumerate(zip(pairs, offsets, strict=True))]
    )
    assert np.abs(errors[1000:]).max() < MS, np.abs(errors[1000:]).max()  # after 5 s
    assert resolved == [] and model.steps == 0
    assert model.drift_ppm == pytest.approx((1 / (1 + drift) - 1) * 1e6, abs=20)


def test_bursts_of_arrivals_are_spread_on_the_rate_grid():
    """200 lines a second, handed over ten at a time every 50 ms: stamped on the 5 ms grid
    from their index, anchored to the arrivals, not at the moment each was read."""
    rng = np.random.default_rng(3)
    model = ClockModel(follow_rises=True)
    stamps = []
    for n in range(4000):
        arrival = T0 + (n // 10) * 50 * MS + 45 * MS + int(rng.exponential(200_000))
        stamps.append(n * 5 * MS + model.update(n * 5 * MS, arrival))
    errors = np.array(stamps[1000:]) - (T0 + np.arange(1000, 4000) * 5 * MS)
    assert np.abs(errors).max() < MS
    assert np.median(np.diff(stamps[1000:])) == pytest.approx(5 * MS, abs=10_000)


def test_a_sensor_pause_re_anchors_arrival_stamps_at_once():
    model = ClockModel(follow_rises=True)
    stamps = [
        n * 10 * MS + model.update(n * 10 * MS, T0 + n * 10 * MS + (MS if n < 500 else 3001 * MS))
        for n in range(600)
    ]
    assert stamps[499] == T0 + 4990 * MS + MS
    assert stamps[500] == T0 + 5000 * MS + 3001 * MS and model.steps == 1
