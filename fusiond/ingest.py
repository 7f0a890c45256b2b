"""Ingest: check bus messages, put them on the daemon clock, hand them to the aligners.

Every message is treated as hostile until checked. The cheap checks come first, so a
flood costs as little as possible: the topic (a dict lookup), the stream's rate budget,
the header's types and ranges, the block's shape against the model's spec for its
modality, the clock, and only then are buffers read and their values checked (a JPEG's
frame header is read against its declared size, and its pixels are decoded only when a
window picks the frame). Whatever fails is counted under its reason in
``stats.drops`` and logged (per reason and stream, at most a line a minute); nothing a
publisher sends raises out of :meth:`handle`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np

from fusiond.align.fit import Deferred
from fusiond.align.windows import RigAligner
from fusiond.bus.template import HeaderTemplate
from fusiond.bus.wire import (
    DTYPES,
    DUPLICATE,
    ERROR_PREFIX,
    BufferSpec,
    Frame,
    SampleHeader,
    SequenceGaps,
    block_end_ns,
    check_jpeg,
    decode_arrays,
    decode_header,
    decode_jpeg,
    decode_sample_header,
    frame_view,
    sample_topic,
)
from fusiond.clock import OUTLIER, ClockModel
from fusiond.errors import WireError
from fusiond.metrics import Stats

__all__ = [
    "DEADBAND_NS",
    "Ingest",
    "Limits",
    "LOG_EVERY_NS",
    "MAX_DROPPED_SEQS",
    "MAX_ERROR_CHARS",
    "MAX_LOGGED",
    "MAX_TEMPLATE_MISSES",
    "RateLimit",
    "STEP_LOG_EVERY_NS",
]

log = logging.getLogger(__name__)
LOG_EVERY_NS = 60_000_000_000
MAX_LOGGED = 4096
"""(reason, stream) pairs whose log lines are rate-limited; past that, every first one is logged."""
MAX_ERROR_CHARS = 500
"""A source error's text is kept and shown up to this length."""
MAX_DROPPED_SEQS = 4096
"""Dropped messages remembered per stream between two accepted ones (a flood forgets the rest)."""
STEP_LOG_EVERY_NS = 60_000_000_000
"""At most one line a minute per stream about its clock's steps (the counters say the rest)."""
DEADBAND_NS = 2_000_000
"""A clock offset smaller than this is transport delay on one host, taken as zero."""
MAX_TEMPLATE_MISSES = 8
"""Header templates a stream's headers may miss in a row before it stops having them made."""


@dataclass(frozen=True, slots=True)
class Limits:
    """What ingest accepts from any one publisher (``[ingest]`` in the config)."""

    max_clock_skew_ns: int = 5_000_000_000
    max_block_ns: int = 60_000_000_000
    max_frame_pixels: int = 3840 * 2160
    max_message_rate: float = 1000.0


class RateLimit:
    """A token bucket: ``rate`` messages a second on average, bursts of one second's worth."""

    __slots__ = ("rate", "_tokens", "_last_ns", "_cap")

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._cap = max(1.0, rate)
        self._tokens = self._cap
        self._last_ns: int | None = None

    def allow(self, now_ns: int) -> bool:
        """Take one token at ``now_ns``; False when the bucket is empty."""
        last = self._last_ns
        if last is not None and now_ns > last:  # a clock that went back adds nothing
            tokens = self._tokens + (now_ns - last) * self.rate / 1e9
            self._tokens = tokens if tokens < self._cap else self._cap
        self._last_ns = now_ns
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


class Ingest:
    """Routes each sample to its rig's aligner; anything it can't use is counted, not fatal."""

    def __init__(
        self,
        aligners: Mapping[str, RigAligner],
        modalities: Mapping[tuple[str, str], str],
        stats: Stats,
        limits: Limits | None = None,
        rates: Mapping[tuple[str, str], float] | None = None,
        *,
        templates: bool = True,
    ) -> None:
        """``modalities`` maps ``(rig, stream)`` to the modality the config expects;
        ``rates`` overrides ``limits.max_message_rate`` for some streams; ``templates``
        False runs the full checks on every header (the same verdicts: to compare)."""
        self.aligners = aligners
        self.modalities = modalities
        self.stats = stats
        self.limits = limits or Limits()
        self.clocks = {key: ClockModel(deadband_ns=DEADBAND_NS) for key in modalities}
        self.gaps = SequenceGaps(max_rate_hz=max([self.limits.max_message_rate, *(rates or {}).values()]))
        self._topics = {sample_topic(*key).encode(): key for key in modalities}
        self._error_topics = {f"{ERROR_PREFIX}{'/'.join(key)}".encode(): key for key in modalities}
        self._budgets = {
            key: RateLimit((rates or {}).get(key, self.limits.max_message_rate)) for key in modalities
        }
        self._logged: dict[tuple[str, tuple[str, str] | None], tuple[int, int]] = {}
        """(reason, stream) -> (when it was last logged, drops since): one line a minute each."""
        self._now_ns = 0
        self._key: tuple[str, str] | None = None
        self._step_logged: dict[tuple[str, str], int] = {}
        self._dropped: dict[tuple[str, str], set[int | None]] = {}
        """Per stream, the seqs of the messages dropped since its last accepted one (None: one
        whose header was not read): they came, so the gap they leave is not a loss."""
        self._seq: int | None = None
        self._clock_kinds: dict[tuple[str, str], str] = {}
        self._fits: dict[tuple[str, str], dict[BufferSpec, int]] = {k: {} for k in modalities}
        """Per stream, the block layouts already checked, and the scale to decode each at."""
        self._layouts: dict[tuple[str, str], _Layout] = {}
        """Per stream, the last header that passed the checks of the header alone."""
        self._misses: dict[tuple[str, str], int] = {}
        """Per stream, layouts made in a row whose template never matched."""
        self.templates = templates
        self.template_hits = 0
        """Headers that matched their stream's template (and skipped the header checks)."""

    def handle(self, frames: Sequence[Frame], now_ns: int, topic: bytes | None = None) -> bool:
        """Take one message (``topic``: its first frame's bytes, if the caller has them);
        False when it was dropped (and counted, under exactly one reason). A JPEG frame
        taken here may still be counted as ``decode_error`` later, when a window picks it
        and its data will not decode (:meth:`_deferred`): the frame is lost then, not the
        message, and one that no window picks is never decoded nor counted."""
        if topic is None and frames:
            topic = _topic(frames[0])
        key = self._topics.get(topic) if topic is not None else None
        self._now_ns, self._key = now_ns, key
        if key is None:
            return self._drop("unknown_stream", "message on an unconfigured topic (no such rig/stream)")
        self._seq = None
        taken = self._take(key, frames, now_ns)
        if taken is None:
            # It reached the daemon: the gap it leaves in the stream's seq is not a loss.
            dropped = self._dropped.setdefault(key, set())
            if len(dropped) < MAX_DROPPED_SEQS:
                dropped.add(self._seq)  # None: dropped before its header was read
            return False
        header, data, t_ns = taken
        self.stats.sampled(key[0], key[1], now_ns, data.shape[0], header.rate_hz)
        if header.channels or header.units:
            self.stats.labelled(key[0], key[1], header.channels, header.units)
        reason = self.aligners[key[0]].add(key[1], t_ns, header.rate_hz, data, now_ns)
        if reason is not None:
            self._log_once(reason, f"{key[0]}/{key[1]}: sample dropped ({reason})")
        return reason is None

    def _take(
        self, key: tuple[str, str], frames: Sequence[Frame], now_ns: int
    ) -> tuple[SampleHeader, np.ndarray, int] | None:
        """Every check, cheapest first: the header, its clock offset and the decoded block;
        None when the message is dropped (and counted).

        A header whose bytes match the stream's last good one but for its stamps
        (:class:`~fusiond.bus.template.HeaderTemplate`) skips the checks of what did not
        change: its layout passed them already."""
        if not self._budgets[key].allow(now_ns):
            self._reason("over_rate", f"{key[0]}/{key[1]} sends faster than its message rate limit")
            return None
        layout = self._layouts.get(key)
        template = layout.template if layout is not None else None
        stamps = None
        if template is not None and len(frames) == template.frames and (raw := _bytes(frames[1])) is not None:
            stamps = template.match(raw)
        try:
            if stamps is not None and layout is not None:
                seq, t_ns, t_pub = stamps
                self._seq = seq
                layout.hits += 1
                self.template_hits += 1
            else:
                header = decode_sample_header(frames)
                self._seq = header.seq
                layout = self._layout(key, header, frames)
                if layout is None:
                    return None
                seq, t_ns, t_pub = header.seq, header.t_ns, header.t_pub_ns
            checked = self._check(key, layout, seq, t_ns, t_pub, now_ns)
            if checked is None:
                return None
            data = layout.view(frames[2]) if len(frames) == 3 else None
            if data is None:
                if layout.deferred and len(frames) == 3:
                    data = self._deferred(key, layout, frames[2])
                else:
                    data = decode_arrays(layout.header, frames, layout.scale)[0]
        except WireError as exc:
            self._reason(exc.reason, f"malformed message on the bus: {exc}")
            return None
        if data.dtype.kind == "f" and not _finite(data):
            self._reason("bad_value", f"{key[0]}/{key[1]} sent NaN or infinite values")
            return None
        missed, clock = checked
        offset = clock.update(t_pub, now_ns)
        if clock.resolved is not None:
            self._clock_resolved(key, clock, now_ns)
        if offset is None:  # held back: counted once the model knows an outlier from a step
            return None
        self.gaps.accept(key, seq, t_pub)
        dropped = self._dropped.pop(key, ())
        lost = missed - _arrived(dropped, seq - missed, seq) if missed else 0
        if lost:
            self.stats.drop("lost_in_transport", lost)
            self._log_once("lost_in_transport", f"{key[0]}/{key[1]}: {lost} message(s) lost on the way in")
        return layout.header, data, t_ns + offset

    def _layout(self, key: tuple[str, str], header: SampleHeader, frames: Sequence[Frame]) -> _Layout | None:
        """Everything a decoded header alone can tell, apart from its stamps: the stream's
        layout (kept, with its template, for the messages that follow), or None when the
        message is dropped (and counted)."""
        rig, stream = key
        if header.rig != rig or header.stream != stream:
            self._reason(
                "bad_header", f"topic s/{rig}/{stream} carries a header for {header.rig}/{header.stream}"
            )
            return None
        expected = self.modalities[key]
        if header.modality != expected:
            self._reason(
                "wrong_modality",
                f"{rig}/{stream} sent modality {header.modality!r}, config says {expected!r}",
            )
            return None
        first = header.buffers[0]
        limits = self.limits
        scale = self._fits[key].get(first)
        if scale is None:
            spec = self.aligners[rig].specs[expected]
            why = spec.check_block(first.shape, first.dtype, limits.max_frame_pixels, first.encoding)
            if why is not None:
                self._reason("bad_shape", f"{rig}/{stream}: {why}")
                return None
            scale = spec.decode_scale(first.shape, first.encoding)
            if len(self._fits[key]) < 64:
                self._fits[key][first] = scale
        rate = header.rate_hz
        if rate > 0 and first.shape[0] * 1e9 / rate > limits.max_block_ns:
            self._reason("bad_value", f"{rig}/{stream}: a block spans over ingest.max_block_s")
            return None
        if header.clock != self._clock_kinds.get(key, "realtime"):
            # Another clock altogether (a publisher restarted on its boot clock, or a forged
            # message): what was learnt of the old one says nothing of it.
            self._clock_kinds[key] = header.clock
            self.clocks[key] = ClockModel(deadband_ns=DEADBAND_NS)
        # A publisher whose headers never match their template (a field that changes on
        # every message) soon stops having one made, but for one try in 256: its messages
        # then cost what the full checks cost, and no more.
        old = self._layouts.get(key)
        misses = 0 if old is None or old.hits else self._misses.get(key, 0) + 1
        self._misses[key] = misses
        template = None
        raw = _bytes(frames[1])
        if raw is not None and self.templates and (misses < MAX_TEMPLATE_MISSES or misses % 256 == 0):
            template = HeaderTemplate.of(raw, len(frames))
        kind = self.aligners[rig].specs[expected].kind_of
        layout = self._layouts[key] = _Layout(header, scale, template, deferred=kind.deferred)
        return layout

    def _check(
        self, key: tuple[str, str], layout: _Layout, seq: int, t_ns: int, t_pub: int, now_ns: int
    ) -> tuple[int, ClockModel] | None:
        """What the stamps tell, changing nothing: the messages missing just before this
        one and the stream's clock, or None when it is dropped (and counted)."""
        header = layout.header
        clock = self.clocks[key]
        max_skew = self.limits.max_clock_skew_ns
        if not _plausible(clock, t_pub, now_ns, header.clock, max_skew):
            why = f"{key[0]}/{key[1]}: publish time {t_pub} is off the daemon's clock by over "
            self._reason("clock_skew", why + "ingest.max_clock_skew_ms")
            return None
        # The block's end on the daemon's clock, with the offset the model gives now:
        # a stamp far off is clock_skew whatever else is wrong with the message.
        end = block_end_ns(t_ns, header.buffers[0].shape[0], header.rate_hz)
        offset = clock.predict(t_pub) if clock.pairs else now_ns - t_pub
        if abs(end + offset - now_ns) > max_skew:
            why = f"{key[0]}/{key[1]}: a block ending at {end} is off the daemon's clock ({now_ns}) by over "
            self._reason("clock_skew", why + "ingest.max_clock_skew_ms")
            return None
        # Against publish times: a burst lost in a flood spans the time it took to send it.
        missed = self.gaps.missed(key, seq, t_pub)
        if missed is None:
            # Dropped: the next message continues from here if the source really jumped.
            self._reason("seq_reset", f"{key[0]}/{key[1]}: seq jumped to {seq}, more than it could have sent")
            return None
        if missed == DUPLICATE:
            self._reason(
                "duplicate", f"{key[0]}/{key[1]}: seq {seq} again (a duplicate or a replayed message)"
            )
            return None
        return missed, clock

    def _clock_resolved(self, key: tuple[str, str], clock: ClockModel, now_ns: int) -> None:
        """Count the messages held back as suspects, now that the model knows what they were."""
        assert clock.resolved is not None
        what, count = clock.resolved
        name = f"{key[0]}/{key[1]}"
        if what == OUTLIER:
            self._drop(
                "clock_outlier",
                f"{name}: a publish time far off the stream's clock; the message "
                "was dropped and the clock model did not move",
            )
            self.stats.drop("clock_outlier", count - 1)
            return
        self.stats.drop("clock_step", count)
        if now_ns - self._step_logged.get(key, -STEP_LOG_EVERY_NS) >= STEP_LOG_EVERY_NS:
            self._step_logged[key] = now_ns
            log.warning(
                "%s: the stream's clock stepped by %+.3f s and is followed from now on; %d "
                "message(s) dropped while the step was confirmed (drops.clock_step); %d step(s) so "
                "far",
                name,
                -clock.last_step_ns / 1e9,
                count,
                clock.steps,
            )

    def clock_rows(self) -> dict[str, list[float | int]]:
        """Every stream's clock model, for status: ``rig/stream`` -> ``[offset ns, drift ppm,
        jitter ns, outliers, steps, suspects]``."""
        return {
            f"{rig}/{stream}": [
                c.offset_ns,
                round(c.drift_ppm, 3),
                round(c.jitter_ns),
                c.outliers,
                c.steps,
                c.suspects,
            ]
            for (rig, stream), c in self.clocks.items()
            if c.pairs
        }

    def source_error(self, frames: Sequence[Frame], now_ns: int, topic: bytes) -> bool:
        """Take a source's error report (an ``e/<rig>/<stream>`` message); False when refused.

        Every report is counted on its stream (``errors`` in status) and logged at most once
        a minute per stream with the count since: on an unsecured bus any process can send
        one, so a flood of forged reports shows in the counter, never floods the journal.
        A report for no configured stream, or with a malformed header, is a drop like any
        other message's (``unknown_stream``, ``bad_header``).
        """
        key = self._error_topics.get(topic)
        self._now_ns, self._key = now_ns, key
        if key is None:
            return self._drop("unknown_stream", "source error on an unconfigured topic (no such rig/stream)")
        try:
            header = decode_header(frames)
        except WireError as exc:
            return self._drop(exc.reason, f"{key[0]}/{key[1]}: malformed source error: {exc}")
        error = header.get("error")
        if header.get("type") != "source_error" or not isinstance(error, str):
            return self._drop(
                "bad_header", f"{key[0]}/{key[1]}: a source error needs type 'source_error' and a str 'error'"
            )
        s = self.stats.stream(*key)
        s.errors += 1
        s.error, s.error_ns = error[:MAX_ERROR_CHARS], now_ns
        self._log_once("source_error", f"{key[0]}/{key[1]}: source reports: {error[:200]!r}")
        return True

    def _deferred(self, key: tuple[str, str], layout: _Layout, frame: Frame) -> np.ndarray:
        """A one-image JPEG block, kept encoded until a window picks the frame (a
        :class:`~fusiond.align.fit.Deferred` in a block of one): its frame header is read
        now, so a size other than the declared one (a hidden bomb) is a ``decode_error``
        here, and the pixels are decoded only if a window picks the frame, at the scale the
        input needs. A frame whose data then fails to decode is counted as ``decode_error``
        once, and the window holds the frame before it."""
        view = frame_view(frame)
        shape, scale = layout.header.buffers[0].shape, layout.scale
        decoded = math.prod(check_jpeg(view, shape, scale))

        def decode() -> np.ndarray | None:
            try:
                image: np.ndarray = decode_jpeg(view, shape, scale)[0]
            except WireError as exc:
                self._late_drop(key, exc.reason, f"{key[0]}/{key[1]}: a frame picked for a window: {exc}")
                return None
            return image

        block = np.empty(1, object)
        block[0] = Deferred(decode, view.nbytes + decoded)
        block.flags.writeable = False
        return block

    def _late_drop(self, key: tuple[str, str], reason: str, message: str) -> None:
        """Count and log a drop found after the message was taken (while a window is cut)."""
        current = self._key
        self._key = key
        try:
            self._drop(reason, message)
        finally:
            self._key = current

    def _reason(self, reason: str, message: str) -> None:
        """Count and log a drop, for :meth:`_check` and :meth:`_take`."""
        self._drop(reason, message)
        return None

    def _drop(self, reason: str, message: str) -> bool:
        self.stats.drop(reason)
        self._log_once(reason, message)
        return False

    def _log_once(self, reason: str, message: str) -> None:
        """Log a drop the first time its reason meets a stream, then at most once a minute
        (with how many there were since): a flood of one kind cannot hide another, nor
        another stream's, and cannot fill the journal."""
        slot = (reason, self._key)
        last = self._logged.get(slot)
        counted = "errors" if reason == "source_error" else f"drops.{reason}"
        if last is None:
            if len(self._logged) < MAX_LOGGED:
                self._logged[slot] = (self._now_ns, 0)
            log.warning("%s (counted as %s; at most one line a minute about it)", message, counted)
        elif self._now_ns - last[0] >= LOG_EVERY_NS:
            self._logged[slot] = (self._now_ns, 0)
            log.warning("%s (%s: %d since the last line)", message, counted, last[1] + 1)
        else:
            self._logged[slot] = (last[0], last[1] + 1)


@dataclass(slots=True)
class _Layout:
    """A stream's last header that passed every check of the header alone."""

    header: SampleHeader
    """That header (its stamps are that message's: only the rest holds for the next)."""
    scale: int
    """What its block is decoded at (:meth:`fusiond.align.kinds.ModalityKind.decode_scale`)."""
    template: HeaderTemplate | None
    """Its bytes around the stamps: a header that matches needs none of those checks again."""
    hits: int = 0
    """Headers that matched the template."""
    dtype: np.dtype | None = None
    """Its one raw buffer's dtype (None for a JPEG, text, or more than one buffer)."""
    shape: tuple[int, ...] = ()
    nbytes: int = 0
    deferred: bool = False
    """Given: whether its kind takes frames encoded
    (:attr:`~fusiond.align.kinds.ModalityKind.deferred`); kept only when its block is one
    JPEG image ``[1, H, W, C]``, which is then decoded only if a window picks it."""

    def __post_init__(self) -> None:
        first = self.header.buffers[0]
        one = len(self.header.buffers) == 1
        if one and first.encoding == "raw":
            self.dtype, self.shape, self.nbytes = DTYPES[first.dtype], first.shape, first.nbytes
        one_image = one and first.encoding == "jpeg" and len(first.shape) == 4 and first.shape[0] == 1
        self.deferred = self.deferred and one_image

    def view(self, frame: Frame) -> np.ndarray | None:
        """The one raw buffer of a message with this layout, as a read-only view of its
        frame; None when that takes :func:`~fusiond.bus.wire.decode_arrays` (another
        encoding, or a frame of the wrong size: it says what is wrong)."""
        if self.dtype is None:
            return None
        buffer = cast("bytes", frame)  # bytes, a memoryview or a zmq.Frame: all are buffers
        size = frame.nbytes if isinstance(frame, memoryview) else len(buffer)
        if size != self.nbytes:
            return None
        array = np.ndarray(self.shape, self.dtype, buffer)  # one call: frombuffer and reshape
        array.flags.writeable = False  # a view of the received frame: never write through it
        return array


def _finite(data: np.ndarray) -> bool:
    """Whether every value of a float block is finite. A sum is finite when every value is,
    so the exact check runs only when it is not; a small block (an IMU sample) is summed as
    Python floats, cheaper than a numpy call on a few values."""
    total = sum(data.ravel().tolist()) if data.size <= 64 else np.add.reduce(data, None)
    return math.isfinite(total) or bool(np.isfinite(data).all())


def _bytes(frame: Frame) -> bytes | None:
    """A frame's bytes (a copy unless it is bytes already: headers are small), or None for
    what :func:`~fusiond.bus.wire.frame_view` cannot read (the full checks then count it,
    as they count it with no template)."""
    if type(frame) is bytes:
        return frame
    try:
        return bytes(frame_view(frame))
    except AttributeError:
        return None


def _arrived(dropped: Collection[int | None], first: int, end: int) -> int:
    """How many of a gap's messages (seqs ``first`` to ``end - 1``) came and were dropped:
    those whose seq is known to lie in it, and any whose seq is not known (at most the gap)."""
    return min(end - first, sum(1 for seq in dropped if seq is None or first <= seq < end))


def _plausible(clock: ClockModel, t_pub_ns: int, now_ns: int, kind: str, max_skew_ns: int) -> bool:
    """Whether a message published at ``t_pub_ns`` is plausible for this stream at all.

    A ``realtime`` sender shares the daemon's epoch: its publish time must lie within
    ``max_skew_ns`` of the receive time. A ``monotonic`` sender counts from its own boot,
    so only its first message sets the scale; later ones must agree with the stream's clock
    model within ``max_skew_ns``. Within those bounds the model itself tells an outlier
    from a step (:class:`fusiond.clock.ClockModel`).
    """
    delay = now_ns - t_pub_ns
    if kind == "realtime":
        return -max_skew_ns <= delay <= max_skew_ns
    return not clock.pairs or abs(delay - clock.predict(t_pub_ns)) <= max_skew_ns


def _topic(frame: Frame) -> bytes:
    return frame if isinstance(frame, bytes) else bytes(frame_view(frame))
