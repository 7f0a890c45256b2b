"""Flicker with and without debouncing, on the demo media.

The demo's digit changes every 2 s (demo/labels.csv). The demo model's predictions over
the whole media (read from the files, run offline as the daemon runs them) go through
:class:`fusiond.events.Debouncer` with several settings; for each it prints the state
changes a minute, how many state changes each true label change caused, how late the
event came after the true change, and how often the event's state was right.

    python bench/bench_events.py [--config config.toml]
"""

from __future__ import annotations

import argparse
import bisect
import csv
import statistics
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def predictions(config_path: Path) -> tuple[list, int]:
    from fusiond import config as config_mod
    from fusiond.plugin import load_plugins
    from fusiond.recording.recorder import RecordingWriter
    from fusiond.runtime.offline import run_offline
    from fusiond.training.files import file_messages

    config = config_mod.load(config_path)
    plugins = load_plugins()
    anchor, messages = file_messages(config, plugins)
    out: list = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "demo.mcap"
        with RecordingWriter(path) as writer:
            for now, frames in messages:
                writer.write([bytes(f) for f in frames], now)
        run_offline(config, plugins, path, out.append)
    return out, anchor


def main() -> None:
    from fusiond.events import Debouncer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "config.toml")
    args = parser.parse_args()
    with (ROOT / "demo/labels.csv").open() as f:
        segments = [(float(r["start_s"]), float(r["end_s"]), r["label"]) for r in csv.DictReader(f)]
    got, anchor = predictions(args.config)
    got = [p for p in got if p.rig == "demo"]
    starts = [round(s * 1e9) + anchor for s, _, _ in segments]

    def truth(t_ns: int) -> str | None:
        i = bisect.bisect_right(starts, t_ns) - 1
        return segments[i][2] if i >= 0 and t_ns < anchor + round(segments[i][1] * 1e9) else None

    minutes = (got[-1].window_end_ns - got[0].window_start_ns) / 60e9
    true_changes = sum(a[2] != b[2] for a, b in zip(segments, segments[1:], strict=False))
    print(f"{len(got)} predictions over {minutes * 60:.0f} s of demo media; {true_changes} true changes")
    print(f"{'setting':<34} {'changes/min':>11} {'per true change':>15} {'late p50 ms':>11} {'right':>6}")
    raw = sum(a.label != b.label for a, b in zip(got, got[1:], strict=False))
    name = "every window (no events)"
    print(f"{name:<34} {raw / minutes:>11.1f} {raw / true_changes:>15.2f} {'-':>11} {'-':>6}")
    settings = [(0, 0.0, 0.0), (500, 0.5, 0.3), (1000, 0.5, 0.3), (1500, 0.5, 0.3), (500, 0.7, 0.4)]
    for hold, enter, exit_ in settings:
        d = Debouncer(hold, enter, exit_)
        events = [e for p in got if (e := d.take(p)) is not None][1:]  # the first is the initial state
        late, right = [], 0
        for e in events:
            i = bisect.bisect_right(starts, e["t_ns"]) - 1
            late.append((e["t_ns"] - starts[i]) / 1e6)
            right += truth(e["t_ns"]) == e["state"]
        name = f"hold {hold} ms, enter {enter}, exit {exit_}"
        p50 = statistics.median(late) if late else float("nan")
        share = right / len(events) if events else float("nan")
        rate, per = len(events) / minutes, len(events) / true_changes
        print(f"{name:<34} {rate:>11.1f} {per:>15.2f} {p50:>11.0f} {share:>6.2f}")


if __name__ == "__main__":
    main()
