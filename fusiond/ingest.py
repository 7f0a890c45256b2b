"""Ingest: decode bus messages, put them on the daemon clock, hand them to the aligners."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from fusiond.align.windows import RigAligner
from fusiond.bus.wire import Frame, SequenceGaps, decode_sample
from fusiond.clock import OffsetEstimator
from fusiond.errors import WireError
from fusiond.metrics import Stats

log = logging.getLogger(__name__)


class Ingest:
    """Routes each sample to its rig's aligner; anything it can't use is counted, not fatal."""

    def __init__(self, aligners: Mapping[str, RigAligner], modalities: Mapping[tuple[str, str], str],
                 stats: Stats) -> None:  # fmt: skip
        """``modalities`` maps ``(rig, stream)`` to the modality the config expects."""
        self.aligners = aligners
        self.modalities = modalities
        self.stats = stats
        self.clocks = {key: OffsetEstimator() for key in modalities}
        self.gaps = SequenceGaps()
        self._logged: set[str] = set()

    def handle(self, frames: Sequence[Frame], now_ns: int) -> bool:
        """Take one message; False when it was dropped (and counted)."""
        try:
            sample = decode_sample(frames)
        except WireError as exc:
            return self._drop(exc.reason, f"malformed message on the bus: {exc}")
        key = (sample.rig, sample.stream)
        expected = self.modalities.get(key)
        if expected is None:
            return self._drop("unknown_stream", f"message from unconfigured stream {key[0]}/{key[1]}")
        if sample.modality != expected:
            return self._drop(
                "wrong_modality",
                f"{key[0]}/{key[1]} sent modality {sample.modality!r}, config says {expected!r}",
            )
        missed = self.gaps.missed(key, sample.seq)
        if missed:
            self.stats.drop("lost_in_transport", missed)
            self._log_once("lost_in_transport", f"{key[0]}/{key[1]}: {missed} message(s) lost on the way in")
        offset = self.clocks[key].update(sample.t_pub_ns, now_ns)
        self.stats.sampled(sample.rig, sample.stream, now_ns)
        aligner = self.aligners[sample.rig]
        reason = aligner.add(sample.stream, sample.t_ns + offset, sample.rate_hz, sample.data, now_ns)
        if reason is not None:
            self._log_once(reason, f"{key[0]}/{key[1]}: sample dropped ({reason})")
        return reason is None

    def _drop(self, reason: str, message: str) -> bool:
        self.stats.drop(reason)
        self._log_once(reason, message)
        return False

    def _log_once(self, reason: str, message: str) -> None:
        # One line per reason; the counters in the summary say how often it happened since.
        if reason not in self._logged:
            self._logged.add(reason)
            log.warning("%s (counted as drops.%s; further ones only counted)", message, reason)
