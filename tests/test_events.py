"""Debounced events: a label that flickers makes no event; one that holds makes one."""

from __future__ import annotations

import dataclasses
import tomllib

import pytest

from fusiond.bus.wire import Prediction
from fusiond.config import parse
from fusiond.errors import ConfigError
from fusiond.events import UNKNOWN, Debouncer

MS = 1_000_000
CLASSES = ["idle", "walk", "run"]


def prediction(seq: int, label: str, score: float, hop_ms: int = 100, rig: str = "r") -> Prediction:
    rest = (1.0 - score) / 2
    scores = [score if c == label else rest for c in CLASSES]
    start = seq * hop_ms * MS
    return Prediction(rig, seq, start, start + 500 * MS, label, CLASSES, scores, [], [], {}, {}, 0)


def run(debouncer: Debouncer, labels: list[tuple[str, float]], rig: str = "r") -> list[dict]:
    events = [debouncer.take(prediction(i, label, score, rig=rig)) for i, (label, score) in enumerate(labels)]
    return [e for e in events if e is not None]


def test_a_label_that_holds_is_one_event_with_its_start_and_its_supporting_windows():
    d = Debouncer(hold_ms=1000, enter=0.6, exit=0.4)
    events = run(d, [("idle", 0.9)] * 15 + [("walk", 0.8)] * 15)
    assert [(e["previous"], e["state"]) for e in events] == [(None, "idle"), ("idle", "walk")]
    first, second = events
    # Windows are 500 ms long every 100 ms: 1 s of hold is from the end of #0 (500 ms) to
    # the end of #10 (1500 ms), eleven windows.
    assert first["windows"] == list(range(11)) and first["start_ns"] == 0 and first["t_ns"] == 1500 * MS
    assert second["start_ns"] == 1500 * MS and second["windows"] == list(range(15, 26))
    assert second["supported_by"] == 11 and second["score"] == pytest.approx(0.8)
    assert [e["seq"] for e in events] == [0, 1] and all(e["rig"] == "r" for e in events)


def test_a_flickering_label_makes_no_event_and_a_weak_window_does_not_end_the_state():
    d = Debouncer(hold_ms=1000, enter=0.6, exit=0.4)
    assert run(d, [("idle", 0.9)] * 15)[0]["state"] == "idle"
    flicker = [("walk", 0.8), ("idle", 0.9)] * 20  # a boundary: the label flips every window
    weak = [("walk", 0.5)] * 20  # walk on top, but under enter
    assert run(d, flicker) == []
    # idle's own score in a "walk 0.5" window is 0.25: under exit, and walk is under enter:
    # nothing is sure, and after the hold the state is unknown.
    events = run(d, weak)
    assert [(e["previous"], e["state"]) for e in events] == [("idle", UNKNOWN)]


def test_hysteresis_keeps_a_state_whose_score_sags_between_exit_and_enter():
    d = Debouncer(hold_ms=500, enter=0.7, exit=0.3)
    assert run(d, [("run", 0.9)] * 10)[0]["state"] == "run"
    sagging = [("run", 0.5)] * 30  # under enter (it would not start), over exit (it holds)
    assert run(d, sagging) == []
    assert run(d, [("idle", 0.95)] * 6)[0]["state"] == "idle"  # 500 ms from the first one's end


def test_a_withheld_label_supports_unknown_scored_by_how_unsure_the_window_was():
    """A window the daemon said "unknown" for (``[model] reject``: its modalities disagreed)
    supports no class, even one over ``enter``; its score is 1 - its best score."""
    d = Debouncer(hold_ms=0, enter=0.5, exit=0.3)
    assert run(d, [("idle", 0.9)])[0]["state"] == "idle"
    torn = prediction(1, "walk", 0.6)  # idle at 0.2: under exit, the state does not hold
    torn = dataclasses.replace(torn, label="unknown", extra={"rejected": "disagreement", "best": "walk"})
    event = d.take(torn)
    assert event is not None and event["state"] == UNKNOWN and event["score"] == pytest.approx(0.4)


def test_rigs_are_debounced_apart_and_regression_makes_no_events():
    d = Debouncer(hold_ms=0, enter=0.5, exit=0.5)
    assert run(d, [("idle", 0.9)], rig="a")[0]["state"] == "idle"
    assert run(d, [("walk", 0.9)], rig="b")[0]["previous"] is None
    regression = Prediction("a", 1, 0, 1, "", ["speed"], [3.2], [], [], {}, {}, 0)
    assert d.take(regression) is None


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("[events]\nenabled = true\nenter = 0.3\nexit = 0.6\n", "events"),
        ("[events]\nhold_ms = -1\n", "events.hold_ms"),
        ("[events]\nenter = 1.5\n", "events.enter"),
        ("[events]\nholdms = 5\n", "events.holdms"),
        ("[events]\nenabled = 'yes'\n", "events.enabled"),
        ("[model]\nreject_confidence = 1.5\n", "model.reject_confidence"),
        ("[model]\nreject_disagreement = -0.1\n", "model.reject_disagreement"),
        ("[model]\nreject = 2\n", "model.reject"),
        ("[model]\nanomaly_threshold = 0\n", "model.anomaly_threshold"),
        ("[model]\nanomaly_threshold = -1.0\n", "model.anomaly_threshold"),
        ("[model]\nanomaly_threshold = nan\n", "model.anomaly_threshold"),
        ("[model]\nanomaly_threshold = inf\n", "model.anomaly_threshold"),
        ("[model]\nanomaly_threshold = 1e300\n", "model.anomaly_threshold"),
        ("[model]\nanomaly_threshold = '2'\n", "model.anomaly_threshold"),
        ("[model]\nproviders = ['x' ]\n", "model.providers"),
        ("[model]\nproviders = []\n", "model.providers"),
        ("[model]\nproviders = 'cuda'\n", "model.providers"),
        (f"[model]\nproviders = {['CPUExecutionProvider'] * 9}\n", "model.providers"),
    ],
)
def test_bad_event_settings_name_their_path(tmp_path, text, where):
    model = 'path = "m.pt"\n'
    if text.startswith("[model]\n"):  # keys of the model table itself
        model, text = model + text.removeprefix("[model]\n"), ""
    base = f'[model]\n{model}[rigs.r.sources.s]\nkind = "csvfile"\npath = "x.csv"\n'
    with pytest.raises(ConfigError) as err:
        parse(tomllib.loads(base + text), tmp_path)
    assert where in str(err.value)
