"""What the live Foxglove view costs: the demo daemon with a ``foxglove`` output, first
with nobody watching, then with one WebSocket client subscribed to every channel.

    python bench/bench_view.py [--seconds 20]

Prints the bridge process's CPU share and memory in each phase, the messages the client
received per channel, and the channel list with schemas (what Foxglove would show).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    from tests.helpers import demo_config, free_port
    from tests.test_view import ViewClient

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-view-"))
    pub, sub, control = (f"tcp://127.0.0.1:{free_port()}" for _ in range(3))
    path = demo_config(tmp, pub, sub, control)
    path.write_text(path.read_text() + '\n[outputs.view]\nkind = "foxglove"\nlisten = "127.0.0.1:0"\n')
    cmd = [sys.executable, "-m", "fusiond", "run", "--config", str(path)]
    with (tmp / "daemon.log").open("w") as log:
        daemon = subprocess.Popen(cmd, stderr=log, start_new_session=True)
    try:
        row = _view_row(control)
        pid = row["pid"]
        time.sleep(3)  # the sources start
        cpu0 = _cpu_s(pid)
        time.sleep(args.seconds)
        idle = 100 * (_cpu_s(pid) - cpu0) / args.seconds
        print(f"nobody watching:             {idle:5.1f} % of a core, RSS {_rss_mb(pid):.0f} MB")
        client = ViewClient(row["health"]["port"])
        client.pump(2)
        client.subscribe(sorted(client.channels))
        cpu0, started = _cpu_s(pid), time.monotonic()
        while time.monotonic() - started < args.seconds:
            client.pump(1)
        busy = 100 * (_cpu_s(pid) - cpu0) / (time.monotonic() - started)
        print(f"a client on every channel:   {busy:5.1f} % of a core, RSS {_rss_mb(pid):.0f} MB")
        for topic, channel in sorted(client.channels.items()):
            n = len(client.got.get(topic, []))
            print(f"  {topic:<14} {channel['schemaName']:<28} {channel['encoding']:<9} {n} messages")
        client.close()
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        daemon.wait(10)


def _view_row(control: str) -> dict:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        cmd = [sys.executable, "-m", "fusiond", "status", "--json", "--connect", control]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode == 0:
            rows = [o for o in json.loads(result.stdout)["outputs"] if o["name"] == "view"]
            if rows and rows[0]["pid"] and rows[0]["health"].get("port"):
                return rows[0]
        time.sleep(0.5)
    raise SystemExit("the view never started")


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    match = re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())
    return int(match[1]) / 1024 if match else float("nan")


if __name__ == "__main__":
    main()
