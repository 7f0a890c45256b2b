"""Reading a model's card without torch against loading the checkpoint with it.
Prints figures, asserts nothing.

    python bench/bench_card.py [--model demo/model.pt] [--runs 5]

Each run is a fresh interpreter (imports included, as a daemon or ``check-config`` pays
them): ``card`` reads :func:`fusiond.models.card.read_card`, ``checkpoint``
:func:`fusiond.models.load` (torch). Prints the median and the fastest run of each, and
whether torch was imported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import json, sys, time
from pathlib import Path
t = time.perf_counter()
from {module} import {name}
{name}(Path({path!r}))
print(json.dumps({{"s": time.perf_counter() - t, "torch": "torch" in sys.modules}}))
"""


def one(module: str, name: str, path: Path) -> dict[str, float]:
    code = PROBE.format(module=module, name=name, path=str(path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "demo/model.pt")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(f"{args.model}, {args.runs} fresh interpreters each")
    for label, module, name in (
        ("card", "fusiond.models.card", "read_card"),
        ("checkpoint", "fusiond.models", "load"),
    ):
        rows = [one(module, name, args.model) for _ in range(args.runs)]
        times = [r["s"] for r in rows]
        torch = "imports torch" if any(r["torch"] for r in rows) else "no torch"
        print(f"  {label:<11}median {statistics.median(times):.2f} s, fastest {min(times):.2f} s ({torch})")


if __name__ == "__main__":
    main()
