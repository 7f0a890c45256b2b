"""A source whose read blocks in one long call that never looks at its stop event, run as
``fusiond source`` runs a source: ``stuck_source.py ENDPOINT``."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator

import numpy as np

from fusiond.sources import Block, Source, SourceConfig, StreamInfo
from fusiond.sources.base import SourceContext
from fusiond.sources.runner import run_source, stop_event_from_signals
from fusiond.sources.supervisor import STOP_GRACE_S


class StuckSource(Source):
    kind = "stuck"
    modality = "imu"
    Config = SourceConfig

    def open(self) -> StreamInfo:
        return StreamInfo(10.0, "stuck")

    def read(self) -> Iterator[Block]:
        yield Block(np.zeros((1, 1), np.float32), time.time_ns())
        print("blocking", flush=True)
        time.sleep(3600)  # resumed after a signal handler runs (PEP 475): it never sees stop
        yield Block(np.zeros((1, 1), np.float32), time.time_ns())


if __name__ == "__main__":
    stop = stop_event_from_signals(STOP_GRACE_S)
    context = SourceContext("t", "s", "imu", time.time_ns(), stop, logging.getLogger("stuck"))
    sys.exit(run_source(StuckSource, SourceConfig(), context, sys.argv[1]))
