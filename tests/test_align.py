"""The aligner on synthetic streams: shuffled, jittered and gappy, with fixed seeds."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fusiond.align import ModalitySpec, RigAligner, WindowConfig
from fusiond.align.fit import Deferred, FramesKind
from fusiond.training.streams import RecordedStream, cut_windows

MS = 1_000_000
SPECS = {
    "video": ModalitySpec("frames", length=4, channels=1, height=4, width=4),
    "audio": ModalitySpec("series", length=50, channels=1),
    "imu": ModalitySpec("series", length=20, channels=2),
}
STREAMS = {"cam": "video", "mic": "audio", "imu": "imu"}
RATES = {"cam": 10.0, "mic": 1000.0, "imu": 100.0}
BLOCKS = {"cam": 1, "mic": 50, "imu": 10}
T0 = 10_000 * MS
CONFIG = WindowConfig(length_ns=1000 * MS, hop_ns=500 * MS, lateness_ns=300 * MS)


@dataclass
class Msg:
    stream: str
    t_ns: int
    data: np.ndarray
    arrive_ns: int


def stream_blocks(stream: str, seconds: float, gaps=()) -> list[Msg]:
    """Blocks whose values encode their capture time: series = seconds since T0, frames = 10ths."""
    rate, block = RATES[stream], BLOCKS[stream]
    out = []
    for first in range(0, int(seconds * rate), block):
        t = T0 + round(first * 1e9 / rate)
        if any(a <= (t - T0) / 1e9 < b for a, b in gaps):
            continue
        times = (first + np.arange(block)) / rate
        if stream == "cam":
            data = np.full((1, 8, 8, 3), int(times[0] * 10) % 256, np.uint8)
        else:
            data = np.repeat(times[:, None], 2 if stream == "imu" else 1, 1).astype(np.float32)
        end = t + round(block * 1e9 / rate)
        out.append(Msg(stream, t, data, end))
    return out


def feed(aligner, messages, rng=None, jitter_ns=0, rates=RATES):
    """Deliver with random delays: streams interleave out of order, but each stream keeps
    its own order, as one ZeroMQ connection does (``rates``: each stream's declared rate)."""
    if rng is not None:
        last: dict[str, int] = {}
        for m in sorted(messages, key=lambda m: m.t_ns):
            m.arrive_ns = max(last.get(m.stream, 0), m.arrive_ns + int(rng.integers(0, jitter_ns + 1)))
            last[m.stream] = m.arrive_ns
    windows = []
    for m in sorted(messages, key=lambda m: m.arrive_ns):
        aligner.add(m.stream, m.t_ns, rates[m.stream], m.data, m.arrive_ns)
        windows += aligner.poll(m.arrive_ns)
    last = max(m.arrive_ns for m in messages)
    windows += aligner.poll(last + 10 * CONFIG.length_ns)
    return windows


def all_streams(seconds=6.0, gaps=None):
    gaps = gaps or {}
    return [m for s in STREAMS for m in stream_blocks(s, seconds, gaps.get(s, ()))]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_jittered_shuffled_streams_give_every_window_once_with_the_right_samples(seed):
    aligner = RigAligner("r", STREAMS, SPECS, CONFIG)
    windows = feed(aligner, all_streams(), np.random.default_rng(seed), jitter_ns=250 * MS)
    indexes = [w.index for w in windows]
    assert indexes == list(range(indexes[0], indexes[0] + len(indexes)))
    assert aligner.drops["late"] == 0 and aligner.drops["buffer_full"] == 0
    for w in windows:
        start_s = (w.start_ns - T0) / 1e9
        if start_s < 0 or w.end_ns > T0 + 6 * 10**9:
            continue  # the edges of the recording are partly covered
        assert all(w.present.values()), w
        # Series values are their capture times: the fit must sample the window's own span.
        expected = start_s + np.arange(50) / 50
        np.testing.assert_allclose(w.inputs["audio"][:, 0], expected, atol=1e-3)
        np.testing.assert_allclose(w.inputs["imu"][:, 1], start_s + np.arange(20) / 20, atol=1e-3)
        # Frames are held: each pick is the newest frame at or before its target time.
        targets = start_s + (np.arange(4) + 0.5) / 4
        assert list(w.inputs["video"][:, 0, 0, 0]) == [int(t * 10) for t in targets]
        assert w.inputs["video"].shape == (4, 4, 4, 1)


def test_a_gap_masks_the_modality_for_the_windows_it_covers_and_nothing_stalls():
    aligner = RigAligner("r", STREAMS, SPECS, CONFIG)
    windows = feed(aligner, all_streams(8.0, {"imu": [(2.0, 4.5)]}))
    by_start = {(w.start_ns - T0) / 1e9: w for w in windows}
    assert not by_start[2.5].present["imu"] and not by_start[3.0].present["imu"]
    assert by_start[2.5].present["video"] and by_start[2.5].present["audio"]
    assert by_start[5.0].present["imu"] and by_start[0.5].present["imu"]
    assert aligner.stats["masked:imu"] >= 4


def test_a_stream_that_stops_is_masked_after_the_lateness_not_waited_for():
    aligner = RigAligner("r", STREAMS, SPECS, CONFIG)
    messages = [m for m in all_streams(6.0) if not (m.stream == "cam" and m.t_ns >= T0 + 2 * 10**9)]
    closed_at = {}
    for m in sorted(messages, key=lambda m: m.arrive_ns):
        aligner.add(m.stream, m.t_ns, RATES[m.stream], m.data, m.arrive_ns)
        for w in aligner.poll(m.arrive_ns):
            closed_at[w.index] = (w, m.arrive_ns)
    late = [(w, at) for w, at in closed_at.values() if w.start_ns >= T0 + 2 * 10**9]
    assert late, "windows after the camera stopped must still close"
    for w, at in late:
        assert not w.present["video"] and w.present["audio"]
        assert w.closed_by == "lateness"
        assert at - w.end_ns <= CONFIG.lateness_ns + 50 * MS


def test_a_rig_gone_quiet_closes_its_windows_on_the_processing_clock():
    aligner = RigAligner("r", STREAMS, SPECS, CONFIG)
    for m in all_streams(2.0):
        aligner.add(m.stream, m.t_ns, RATES[m.stream], m.data, m.arrive_ns)
    last_end = T0 + 2 * 10**9
    assert all(w.end_ns <= last_end for w in aligner.poll(last_end))
    pending = aligner.next_start_ns
    assert pending is not None and pending + CONFIG.length_ns > last_end
    closed = aligner.poll(pending + CONFIG.length_ns + CONFIG.lateness_ns)
    assert closed and closed[0].closed_by == "timeout"
    # Windows with nothing at all in them are counted, not published.
    aligner.poll(last_end + 20 * 10**9)
    assert aligner.drops["window_empty"] > 0


def test_samples_older_than_the_open_window_are_counted_as_late():
    aligner = RigAligner("r", STREAMS, SPECS, CONFIG)
    feed(aligner, all_streams(4.0))
    old = stream_blocks("imu", 1.0)[0]
    assert aligner.add("imu", old.t_ns, 100.0, old.data, old.arrive_ns) == "late"
    assert aligner.add("nope", old.t_ns, 100.0, old.data, old.arrive_ns) == "unknown_stream"
    assert aligner.drops["late"] == 1 and aligner.drops["unknown_stream"] == 1


def test_a_block_reordered_within_its_stream_is_late_and_counted_not_lost():
    aligner = RigAligner("r", {"imu": "imu"}, {"imu": SPECS["imu"]}, CONFIG)
    blocks = stream_blocks("imu", 3.0)
    held = blocks.pop(9)  # [0.9, 1.0) arrives after everything else
    for m in blocks:
        aligner.add("imu", m.t_ns, 100.0, m.data, m.arrive_ns)
        aligner.poll(m.arrive_ns)
    assert aligner.add("imu", held.t_ns, 100.0, held.data, 10**20) == "late"
    assert aligner.drops["late"] == 1


def test_bounded_buffer_drops_the_oldest_and_counts_it():
    config = WindowConfig(length_ns=1000 * MS, hop_ns=500 * MS, lateness_ns=10**12, max_blocks=8)
    aligner = RigAligner("r", {"imu": "imu", "cam": "video"}, SPECS, config)
    for m in stream_blocks("imu", 2.0):  # the camera never comes: nothing can close
        aligner.add("imu", m.t_ns, 100.0, m.data, m.arrive_ns)
    assert aligner.drops["buffer_full"] == 20 - 8


def test_offline_cutting_matches_the_live_aligner():
    streams = {
        name: RecordedStream(
            STREAMS[name],
            T0,
            RATES[name],
            np.concatenate([m.data for m in stream_blocks(name, 5.0)]),
            BLOCKS[name],
        )
        for name in STREAMS
    }
    offline = list(cut_windows("r", streams, SPECS, CONFIG))
    live = feed(RigAligner("r", STREAMS, SPECS, CONFIG), all_streams(5.0))
    assert [w.index for w in offline] == [w.index for w in live]
    for a, b in zip(offline, live, strict=True):
        for m in SPECS:
            np.testing.assert_array_equal(a.inputs[m], b.inputs[m])


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    jitter_ms=st.integers(0, 280),
    hop_ms=st.sampled_from([100, 250, 500, 1000]),
    gap=st.tuples(st.floats(0.5, 4.0), st.floats(0.1, 2.0)),
)
def test_windows_are_contiguous_and_accounted_for(seed, jitter_ms, hop_ms, gap):
    """Any jitter within the lateness: every window index closes exactly once, in order,
    either published or counted as empty, and no sample is dropped."""
    config = WindowConfig(length_ns=1000 * MS, hop_ns=hop_ms * MS, lateness_ns=300 * MS)
    aligner = RigAligner("r", STREAMS, SPECS, config)
    gaps = {"mic": [(gap[0], gap[0] + gap[1])]}
    windows = feed(aligner, all_streams(6.0, gaps), np.random.default_rng(seed), jitter_ms * MS)
    indexes = [w.index for w in windows]
    assert indexes == sorted(set(indexes))
    span = indexes[-1] - indexes[0] + 1
    assert len(indexes) + aligner.drops["window_empty"] >= span
    assert aligner.drops["late"] == 0 and aligner.drops["buffer_full"] == 0
    for w in windows:
        assert any(w.present.values())
        for m, spec in SPECS.items():
            assert w.inputs[m].shape == spec.shape and w.inputs[m].dtype == spec.dtype
            assert not np.isnan(w.inputs[m]).any() if spec.kind == "series" else True


@pytest.mark.parametrize(("tone_hz", "kept"), [(1000, (0.98, 1.02)), (6000, (0.0, 0.01))])
def test_decimating_a_series_filters_out_what_would_fold_below_the_new_nyquist(tone_hz, kept):
    from fusiond.align.fit import Span, fit_window

    rate, n = 16_000, 16_000  # one second of a 16 kHz microphone, read by an 8 kHz model
    t = np.arange(n) / rate
    tone = (0.5 * np.sin(2 * np.pi * tone_hz * t) * 32767).astype(np.int16)[:, None]
    period = 10**9 / rate
    blocks = [
        Span(T0 + round(i * period), T0 + round((i + 1024) * period), period, tone[i : i + 1024], 0)
        for i in range(0, n, 1024)
    ]
    out = fit_window(ModalitySpec("series", length=8000, channels=1), blocks, T0, T0 + 10**9)[:, 0]
    gain = np.sqrt(np.mean(out[100:-100] ** 2)) / (0.5 / np.sqrt(2))
    assert kept[0] <= gain <= kept[1]  # 6 kHz would come out as a full-size 2 kHz alias


def _reference_fit(
    values: np.ndarray, times: np.ndarray, length: int, window_ns: int, ratio: float
) -> np.ndarray:
    """A series fit spelled out: low-pass every sample (odd-reflected ends), then read the
    filtered samples at ``length`` evenly spaced times by linear interpolation."""
    from fusiond.align.fit import anti_alias

    taps = anti_alias(ratio)
    out = np.zeros((length, values.shape[1]), np.float32)
    for c in range(values.shape[1]):
        filtered = values[:, c].astype(np.float64)
        if taps is not None:
            padded = np.pad(filtered, len(taps) // 2, mode="reflect", reflect_type="odd")
            filtered = np.convolve(padded, taps, mode="valid")
        out[:, c] = np.interp(np.arange(length) * window_ns / length, times, filtered)
    return out


@pytest.mark.parametrize(
    ("rate", "length", "lost"),
    [(16_000, 8000, None), (48_000, 8000, None), (16_000, 800, 7), (16_000, 16_000, None), (16_000, 1600, 7)],
)
@pytest.mark.parametrize("phase", [0, 1, 2, 333])
def test_a_series_read_at_a_whole_fraction_of_its_rate_is_the_filtered_samples_interpolated(
    rate, length, lost, phase
):
    """The fit's one-kernel path (a gapless run, a whole ratio, or the stream's own rate)
    and its general one (a lost block) both give what filtering every sample (when
    decimating) and interpolating gives."""
    from fusiond.align.fit import Span, fit_window

    period = 10**9 / rate
    window = 10**9 if length in (8000, 16_000) else 10**8
    per = 320 * rate // 16_000
    rng = np.random.default_rng(phase)
    first = -phase - 2 * per  # the first block starts before the window, off the output grid
    blocks, rows, stamps = [], [], []
    for k in range(int(window / period) // per + 5):
        i = first + k * per
        data = rng.normal(0, 0.3, (per, 2)).astype(np.float32)
        if k != lost:
            blocks.append(Span(round(i * period), round((i + per) * period), period, data, 0))
            rows.append(data)
            stamps.append(round(i * period) + np.arange(per) * period)
    got = fit_window(ModalitySpec("series", length=length, channels=2), blocks, 0, window)
    # Within a gapless run, samples are timed from its first block (as the fit does).
    times = (
        np.concatenate(stamps) if lost is not None else blocks[0].t_ns + np.arange(len(stamps) * per) * period
    )
    want = _reference_fit(np.concatenate(rows), times, length, window, round(window / length / period, 2))
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)


@pytest.mark.parametrize("jitter", [0, 0.3])
@pytest.mark.parametrize("length", [1, 4, 10])
def test_each_frame_target_holds_the_newest_frame_at_or_before_it(jitter, length):
    """Frames a message, on time or jittered (a third of a period: no longer one run), in
    order or with two swapped: every target holds the newest frame captured at or before
    it, timed on the run's grid when the frames make one run and by their stamps if not."""
    from fusiond.align.fit import Span, fit_window

    rng = np.random.default_rng(length)
    period, window = 10**9 / 30, 10**9
    spec = ModalitySpec("frames", length=length, channels=1, height=8, width=8)
    for trial in range(20):
        first = -int(rng.integers(0, 2 * period))
        stamps = [round(first + i * period + rng.uniform(-jitter, jitter) * period) for i in range(34)]
        blocks = [
            Span(t, round(t + period), period, np.full((1, 8, 8, 1), i, np.uint8), 0)
            for i, t in enumerate(stamps)
        ]
        if trial % 5 == 4:  # out of order: the fit sorts by time
            blocks[10], blocks[11] = blocks[11], blocks[10]
        gapless = jitter == 0 and trial % 5 != 4
        times = [blocks[0].t_ns + i * period for i in range(len(blocks))] if gapless else stamps
        want = []
        for j in range(length):
            target = (j + 0.5) * window / length
            at_or_before = [i for i, t in enumerate(times) if t <= target]
            want.append(max(at_or_before, key=lambda i: times[i]) if at_or_before else 0)
        got = fit_window(spec, blocks, 0, window)[:, 0, 0, 0].tolist()
        assert got == want, (trial, got, want)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_window_fitted_ahead_stream_by_stream_is_the_window_fitted_at_its_close(seed):
    """Each stream's part of a window is fitted once the stream has passed the window's end
    (the close then fits only what waited for it): the same windows as fitting everything
    at the close, also with gaps, jitter, stragglers out of order and a buffer that fills."""
    rng = np.random.default_rng(seed)
    messages = all_streams(8.0, {"imu": [(2.0, 2.4)], "cam": [(5.0, 5.7)]})
    for m in rng.choice(len(messages), 12, replace=False):  # stragglers: well behind their stream
        messages[m].arrive_ns += int(rng.integers(100, 400)) * MS
    config = WindowConfig(CONFIG.length_ns, CONFIG.hop_ns, CONFIG.lateness_ns, max_blocks=18)
    ahead = RigAligner("r", STREAMS, SPECS, config)
    at_close = RigAligner("r", STREAMS, SPECS, config, fit_ahead=False)
    got = feed(ahead, [Msg(m.stream, m.t_ns, m.data, m.arrive_ns) for m in messages])
    want = feed(at_close, messages)
    assert [(w.index, w.present, w.closed_by) for w in got] == [
        (w.index, w.present, w.closed_by) for w in want
    ]
    for g, w in zip(got, want, strict=True):
        for modality in SPECS:
            np.testing.assert_array_equal(g.inputs[modality], w.inputs[modality])
    assert ahead.drops == at_close.drops and ahead.drops["late"] + ahead.drops["buffer_full"] > 0
    # Only the stream that completes a window (and one a straggler reopened) waits for the close.
    fits = {way: ahead.stats[f"fitted:{way}"] for way in ("ahead", "close")}
    assert fits["ahead"] >= len(got) and fits["close"] <= 1.3 * len(got), fits
    assert at_close.stats["fitted:ahead"] == 0


def test_a_staggered_grid_cuts_the_same_windows_shifted_by_the_rigs_phase():
    """With ``stagger``, a rig's windows are those of the plain grid on its samples moved
    back by its phase: the same arrays and masks, each window later by the phase."""
    config = WindowConfig(CONFIG.length_ns, CONFIG.hop_ns, CONFIG.lateness_ns, stagger=True)
    offset = config.offset_ns("lab")
    assert 0 < offset < config.hop_ns and offset % (config.hop_ns // 1000) == 0
    messages = all_streams(8.0, {"imu": [(2.0, 3.1)]})
    shifted = [Msg(m.stream, m.t_ns + offset, m.data, m.arrive_ns + offset) for m in messages]
    staggered = RigAligner("lab", STREAMS, SPECS, config)
    got = feed(staggered, shifted, np.random.default_rng(4), jitter_ns=150 * MS)
    aligned = RigAligner("lab", STREAMS, SPECS, CONFIG)
    want = feed(aligned, messages, np.random.default_rng(4), jitter_ns=150 * MS)
    assert staggered.offset_ns == offset and len(got) == len(want) > 10
    for g, w in zip(got, want, strict=True):
        assert (g.index, g.present, g.closed_by) == (w.index, w.present, w.closed_by)
        assert (
            g.start_ns
            == w.start_ns + offset
            == g.index * CONFIG.hop_ns + offset
            == g.end_ns - CONFIG.length_ns
        )
        assert g.offset_ns == offset and w.offset_ns == 0
        for modality in SPECS:
            np.testing.assert_array_equal(g.inputs[modality], w.inputs[modality])
    assert staggered.drops == aligned.drops and staggered.stats == aligned.stats


def test_stagger_phases_are_fixed_by_name_and_spread_over_the_hop():
    config = WindowConfig(CONFIG.length_ns, CONFIG.hop_ns, CONFIG.lateness_ns, stagger=True)
    phases = [config.offset_ns(f"r{i:03d}") for i in range(160)]
    # Every process (each worker, a replay next week) puts a rig at the same phase.
    code = (
        "from fusiond.align import WindowConfig; "
        f"c = WindowConfig({config.length_ns}, {config.hop_ns}, 0, stagger=True); "
        "print([c.offset_ns(f'r{i:03d}') for i in range(160)])"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert other.stdout.strip() == str(phases)
    assert all(0 <= p < config.hop_ns for p in phases) and len(set(phases)) >= 140
    # Each tenth of the hop holds a tenth of the rigs, give or take what chance spreads.
    tenths = Counter(p * 10 // config.hop_ns for p in phases)
    assert len(tenths) == 10 and max(tenths.values()) <= 24, tenths
    assert CONFIG.offset_ns("r000") == 0 and not CONFIG.stagger  # off by default: one grid


def _camera(fps: float, seconds: float) -> list[Msg]:
    """A camera's frames, one a message, each frame's pixels its number (mod 256)."""
    period = round(1e9 / fps)
    return [
        Msg("cam", T0 + i * period, np.full((1, 8, 8, 3), i % 256, np.uint8), T0 + (i + 1) * period)
        for i in range(round(fps * seconds))
    ]


def _deferred(messages: list[Msg], decoded: list[int], corrupt=frozenset()) -> list[Msg]:
    """The same frames kept encoded: each decodes (noting its number) only when asked,
    and the corrupt ones decode to nothing, as a cut-short JPEG does."""

    def holder(i: int, frame: np.ndarray) -> np.ndarray:
        def decode():
            decoded.append(i)
            return None if i in corrupt else frame

        block = np.empty(1, object)
        block[0] = Deferred(decode, frame.nbytes)
        return block

    return [Msg(m.stream, m.t_ns, holder(i, m.data[0]), m.arrive_ns) for i, m in enumerate(messages)]


def test_frames_kept_encoded_are_decoded_only_when_a_window_picks_them_and_give_the_same_windows():
    streams, specs = {"cam": "video"}, {"video": SPECS["video"]}
    camera, rates = _camera(30.0, 6.0), {"cam": 30.0}
    want = feed(RigAligner("r", streams, specs, CONFIG), camera, rates=rates)
    decoded: list[int] = []
    got = feed(RigAligner("r", streams, specs, CONFIG), _deferred(camera, decoded), rates=rates)
    assert [(w.index, w.present) for w in got] == [(w.index, w.present) for w in want] and len(got) >= 10
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g.inputs["video"], w.inputs["video"])
    picked = {int(v) for w in want for v in w.inputs["video"][:, 0, 0, 0]}
    # Each frame decoded once at most, and only those some window shows: 4-frame windows
    # every 500 ms show 8 of the 30 frames a second.
    assert len(decoded) == len(set(decoded)) and set(decoded) == picked
    assert len(decoded) <= 0.3 * len(camera), (len(decoded), len(camera))


def test_a_frame_that_will_not_decode_is_held_over_by_the_one_before_and_none_masks_the_window():
    streams, specs = {"cam": "video", "imu": "imu"}, {"video": SPECS["video"], "imu": SPECS["imu"]}
    camera = _camera(10.0, 6.0)
    corrupt = {12, 13, 14} | set(range(40, 60))  # a few in a row; then every frame
    aligner = RigAligner("r", streams, specs, CONFIG)
    decoded: list[int] = []
    windows = feed(aligner, _deferred(camera, decoded, corrupt) + stream_blocks("imu", 6.0))
    assert aligner.drops["internal_error"] == 0 and windows
    held_over = 0
    for w in windows:
        start = (w.start_ns - T0) // MS
        # The newest frame at or before each target, held over by the target before it
        # (the first, by the first that decoded) when it will not decode.
        picks = [min(59, (start + 125 + 250 * j) // 100) for j in range(4)]
        good = [p for p in picks if p not in corrupt]
        if not good:
            assert not w.present["video"] and w.present["imu"], w
            continue
        want, held = [], good[0]
        for p in picks:
            held = held if p in corrupt else p
            want.append(held)
        assert w.present["video"] and list(w.inputs["video"][:, 0, 0, 0]) == want, (start, picks)
        held_over += any(12 <= p <= 14 for p in picks)
    assert held_over >= 2 and any(not w.present["video"] for w in windows)
    assert len(decoded) == len(set(decoded))  # a corrupt frame is tried (and counted) once


def test_a_decode_that_fails_for_no_bad_frame_is_an_internal_error_not_a_silent_mask():
    """A decode that raises (a bug, not a bad frame: those return None) is tried again by
    the close, which counts it, whether or not the window was fitted ahead."""

    def broken():
        raise RuntimeError("a bug in a decoder")

    one_frame = ModalitySpec("frames", length=1, channels=1, height=4, width=4)  # a pick tried once ahead
    streams, specs = {"cam": "video", "imu": "imu"}, {"video": one_frame, "imu": SPECS["imu"]}
    for ahead in (True, False):
        aligner = RigAligner("r", streams, specs, CONFIG, fit_ahead=ahead)
        camera = _camera(10.0, 3.0)
        for m in camera:
            m.data = np.empty(1, object)
            m.data[0] = Deferred(broken, 64)
        windows = feed(aligner, camera + stream_blocks("imu", 3.0))  # the camera first at each instant
        assert len(windows) >= 4 and not any(w.present["video"] for w in windows)
        assert aligner.drops["internal_error"] >= len(windows), aligner.drops


def test_a_frames_kind_with_a_fit_of_its_own_gets_its_frames_decoded_unless_it_says_otherwise():
    class Thermal(FramesKind):
        name = "thermal"

        def fit(self, spec, blocks, start_ns, end_ns):
            return np.stack([b.data[0] for b in blocks])[: spec.length]

    class Tinted(FramesKind):  # the built-in fit: takes its frames encoded
        name = "tinted"

    class Eager(FramesKind):
        name = "eager"
        deferred = True

        def fit(self, spec, blocks, start_ns, end_ns):
            return super().fit(spec, blocks, start_ns, end_ns)

    assert FramesKind.deferred and Tinted.deferred and Eager.deferred and not Thermal.deferred


def test_a_staggered_grid_never_starts_a_window_before_the_epoch():
    config = WindowConfig(CONFIG.length_ns, CONFIG.hop_ns, CONFIG.lateness_ns, stagger=True)
    aligner = RigAligner("lab", {"imu": "imu"}, {"imu": SPECS["imu"]}, config)
    assert aligner.offset_ns > 0
    aligner.add("imu", 0, 100.0, np.zeros((10, 2), np.float32), 0)
    assert aligner.next_index == 0 and aligner.next_start_ns == aligner.offset_ns
