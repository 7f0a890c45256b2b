"""The built-in modality kinds: fitting the samples of one stream inside a window to a
modality's input spec (see :mod:`fusiond.align.kinds`)."""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from fusiond.align import augment
from fusiond.align.kinds import KindRegistry, ModalityKind

if TYPE_CHECKING:
    from fusiond.align.spec import ModalitySpec

__all__ = [
    "anti_alias",
    "Span",
    "BUILTIN_KINDS",
    "builtin_kinds",
    "coverage",
    "Deferred",
    "fit_window",
    "FramesKind",
    "JPEG_OVERSIZE",
    "last_words",
    "SeriesKind",
    "TokensKind",
    "Undecodable",
    "VectorKind",
    "WORD",
    "words",
]


class Span(NamedTuple):
    """Samples ``data[i]`` captured at ``t_ns + i * period_ns`` (daemon clock)."""

    t_ns: int
    end_ns: int
    period_ns: float
    data: np.ndarray
    t_recv_ns: int


class Deferred:
    """A frame kept as it came (a JPEG) until a window picks it, then decoded once.

    Sample and hold picks a few frames of many (4-frame windows every 500 ms pick 8 of a
    30 fps camera's 30 a second), so the frames no window picks are never decoded.
    ``decode`` (the constructor's argument, called by :meth:`image`) gives the frame's
    pixels ``[H, W, C]``, or None when they cannot be had (it counts that itself);
    ``nbytes`` is what the frame holds, encoded and decoded, for the aligner's buffer
    bound (``sys.getsizeof`` reports it)."""

    __slots__ = ("_decode", "_image", "nbytes")

    def __init__(self, decode: Callable[[], np.ndarray | None], nbytes: int) -> None:
        self._decode: Callable[[], np.ndarray | None] | None = decode
        self._image: np.ndarray | None = None
        self.nbytes = nbytes

    def image(self) -> np.ndarray | None:
        """The frame's pixels (decoded on the first call, by no later one), or None. A
        ``decode`` that raises is tried again by the next call: an error that is no bad
        frame's (a bug) then reaches the close, which counts it as ``internal_error``."""
        if self._decode is not None:
            self._image = self._decode()
            self._decode = None
        return self._image

    def __sizeof__(self) -> int:
        return object.__sizeof__(self) + self.nbytes


class Undecodable(ValueError):
    """No frame a window picked could be decoded: the modality is masked for it."""


def coverage(blocks: Sequence[Span], start_ns: int, end_ns: int) -> float:
    """Fraction of ``[start_ns, end_ns)`` the blocks cover (1.0 for any irregular sample)."""
    covered = 0
    for block in blocks:
        t, end = block.t_ns, block.end_ns
        if block.period_ns <= 0:
            if start_ns <= t < end_ns:
                return 1.0
            continue
        # max(0, min(end, end_ns) - max(t, start_ns)), without three builtin calls a block
        low = t if t > start_ns else start_ns
        high = end if end < end_ns else end_ns
        if high > low:
            covered += high - low
    return min(1.0, covered / (end_ns - start_ns))


def fit_window(spec: ModalitySpec, blocks: Sequence[Span], start_ns: int, end_ns: int) -> np.ndarray:
    """One window's array of ``spec.shape`` from the blocks overlapping the window."""
    return spec.kind_of.fit(spec, blocks, start_ns, end_ns)


def _sample_times(blocks: Sequence[Span], origin_ns: int, contiguous: bool | None = None) -> np.ndarray:
    """Capture time of every sample of the blocks, relative to ``origin_ns`` (float64 ns);
    ``contiguous``: :func:`_contiguous` of the blocks, when the caller knows it."""
    if contiguous if contiguous is not None else _contiguous(blocks):  # one clock, no gaps, in order
        total = sum(len(b.data) for b in blocks)
        first: np.ndarray = np.arange(total, dtype=np.float64) * blocks[0].period_ns
        return first + (blocks[0].t_ns - origin_ns)
    lengths = np.fromiter((len(b.data) for b in blocks), np.int64, len(blocks))
    starts = np.fromiter((b.t_ns - origin_ns for b in blocks), np.float64, len(blocks))
    periods = np.fromiter((b.period_ns for b in blocks), np.float64, len(blocks))
    first = np.cumsum(lengths) - lengths
    index = np.arange(lengths.sum()) - np.repeat(first, lengths)
    times: np.ndarray = np.repeat(starts, lengths) + index * np.repeat(periods, lengths)
    return times


def _contiguous(blocks: Sequence[Span]) -> bool:
    """Whether the blocks share one period and each starts where the one before ends
    (within a tenth of a sample), so their sample times are one evenly spaced, sorted run."""
    period = blocks[0].period_ns
    if period <= 0:
        return False
    tolerance = period / 10
    t, n = blocks[0].t_ns, 0  # the first block follows itself, with no gap
    for block in blocks:
        # The gap: an exact int difference first, then the float (stamps near 2**61 ns).
        if block.period_ns != period or abs(block.t_ns - t - n * period) > tolerance:
            return False
        t, n = block.t_ns, len(block.data)
    return True


def _fit_series(spec: ModalitySpec, blocks: Sequence[Span], start_ns: int, end_ns: int) -> np.ndarray:
    values = (
        _rows(blocks[0].data)
        if len(blocks) == 1
        else np.concatenate([b.data if b.data.ndim == 2 else _rows(b.data) for b in blocks])
    )
    scale = _scale(values.dtype)
    contiguous = _contiguous(blocks)
    fast = _on_grid(spec, blocks, values, start_ns, end_ns) if contiguous else None
    if fast is not None:
        return fast * np.float32(scale) if scale != 1.0 else fast
    times = _sample_times(blocks, start_ns, contiguous)
    if len(times) > 1 and not (times[1:] >= times[:-1]).all():  # out of order: sort (stable)
        order = np.argsort(times, kind="stable")
        times, values = times[order], values[order]
    step = (end_ns - start_ns) / spec.length
    targets = np.arange(spec.length) * step
    periods = [b.period_ns for b in blocks if b.period_ns > 0]
    # Rounded, so streams whose periods differ in the last digits share one cached filter.
    taps = anti_alias(round(step / min(periods), 2)) if periods else None
    out = np.zeros(spec.shape, np.float32)
    for c in range(min(spec.channels, values.shape[1])):
        column = values[:, c] if taps is None else _low_pass(values[:, c], taps)
        out[:, c] = np.interp(targets, times, column) * scale
    return out


@lru_cache(maxsize=32)
def _scale(dtype: np.dtype) -> float:
    """Integer samples are read as a fraction of their type's largest value (others: 1)."""
    return 1.0 / np.iinfo(dtype).max if dtype.kind in "iu" else 1.0


def _rows(data: np.ndarray) -> np.ndarray:
    """A block as ``[samples, channels]``."""
    return data.reshape(len(data), -1)


def _on_grid(
    spec: ModalitySpec, blocks: Sequence[Span], values: np.ndarray, start_ns: int, end_ns: int
) -> np.ndarray | None:
    """The fit of one evenly spaced run of samples read at its rate or a whole fraction of
    it (an IMU at 100 Hz into 100 samples a second; 16 kHz or 48 kHz into 8 kHz), or None
    for any other case.

    The same numbers as low-passing every sample and then interpolating (below, up to
    rounding), with less work: the window's targets sit at the same fraction ``w`` between
    two samples, so the filter and the interpolation are one kernel (the taps at ``1 - w``
    plus the taps one sample on at ``w``), computed only at the targets, one polyphase
    branch per sample of the ratio (``ratio`` times fewer products, no interpolation pass).
    At the stream's own rate there is no filter: each target is its two neighbours
    weighted, every channel at once.
    """
    period = float(blocks[0].period_ns)
    step = (end_ns - start_ns) / spec.length
    ratio = round(step / period)
    if ratio < 1 or abs(step / period - ratio) > 1e-9 * ratio:
        return None
    taps = anti_alias(round(step / period, 2))
    if (taps is None) != (ratio == 1):
        return None
    half, count, n = (len(taps) // 2 if taps is not None else 0), spec.length, len(values)
    offset = (start_ns - blocks[0].t_ns) / period  # the first target, in samples from the first
    first = int(np.floor(offset))
    if first < 0 or first + (count - 1) * ratio + 2 > n or n <= half:
        return None  # a target outside the samples (held at the end value): the general fit
    w = offset - first
    channels = min(spec.channels, values.shape[1])
    out = np.zeros(spec.shape, np.float32)
    if taps is None:
        run = values[first : first + count + 1, :channels].astype(np.float64)
        out[:, :channels] = run[:-1] * (1.0 - w) + run[1:] * w
        return out
    kernel = np.zeros(len(taps) + 1)
    kernel[:-1] += (1.0 - w) * taps
    kernel[1:] += w * taps
    for c in range(channels):
        run = _odd_pad(values[:, c].astype(np.float64), half)[
            first : first + (count - 1) * ratio + len(kernel)
        ]
        column = np.zeros(count)
        for q in range(ratio):
            column += np.correlate(run[q::ratio], kernel[q::ratio], "valid")[:count]
        out[:, c] = column
    return out


@lru_cache(maxsize=64)
def anti_alias(ratio: float) -> np.ndarray | None:
    """Low-pass taps for taking every ``ratio``-th sample, or None when not decimating.

    A Blackman-windowed sinc with its cutoff at the new Nyquist frequency, 16 new sample
    periods long, normalised to unit gain at DC. Without it, a 16 kHz microphone read by an
    8 kHz model folds everything between 4 and 8 kHz onto the band the model hears.
    """
    if ratio < 1.05:
        return None
    half = int(np.ceil(8 * ratio))
    n = np.arange(-half, half + 1)
    taps = np.sinc(n / ratio) * np.blackman(2 * half + 1)
    taps /= taps.sum()
    taps.flags.writeable = False
    return taps


def _low_pass(column: np.ndarray, taps: np.ndarray) -> np.ndarray:
    half = len(taps) // 2
    if len(column) <= half:
        return column.astype(np.float64)
    filtered: np.ndarray = np.convolve(_odd_pad(column.astype(np.float64), half), taps, mode="valid")
    return filtered


def _odd_pad(x: np.ndarray, half: int) -> np.ndarray:
    """``x`` with ``half`` samples more at each end by odd reflection (``np.pad``'s
    ``reflect_type="odd"``, without its per-call cost): it continues the signal's slope
    past both ends, so the edges of a window are neither pulled towards zero nor bent (a
    straight line comes through unchanged). ``len(x)`` must exceed ``half``."""
    return np.concatenate((2 * x[0] - x[half:0:-1], x, 2 * x[-1] - x[-2 : -half - 2 : -1]))


def _fit_frames(spec: ModalitySpec, blocks: Sequence[Span], start_ns: int, end_ns: int) -> np.ndarray:
    step = (end_ns - start_ns) / spec.length
    # Sample-and-hold: the newest frame captured at or before each target time.
    if all(len(b.data) == 1 for b in blocks):  # a frame a message, as cameras send them
        # A few frames for a few targets: found in plain Python, the same times as
        # _sample_times gives (and the numpy path below takes), at a third of the cost.
        if _contiguous(blocks):
            period, base = blocks[0].period_ns, blocks[0].t_ns - start_ns
            times = [i * period + base for i in range(len(blocks))]
        else:
            times = [float(b.t_ns - start_ns) for b in blocks]
        if all(a <= b for a, b in zip(times, times[1:], strict=False)):
            last = len(times) - 1
            picks = [
                min(max(bisect.bisect_right(times, (j + 0.5) * step) - 1, 0), last)
                for j in range(spec.length)
            ]
            return _held(spec, picks, lambda k: blocks[k].data[0])
    starts = _sample_times(blocks, start_ns)
    order = None
    if len(starts) > 1 and not (starts[1:] >= starts[:-1]).all():  # out of order: sort (stable)
        order = np.argsort(starts, kind="stable")
        starts = starts[order]
    owners = [(b, i) for b in blocks for i in range(len(b.data))]
    targets = (np.arange(spec.length) + 0.5) * step
    picks = np.clip(np.searchsorted(starts, targets, side="right") - 1, 0, len(starts) - 1).tolist()
    if order is not None:
        picks = [int(order[k]) for k in picks]
    return _held(spec, picks, lambda k: owners[k][0].data[owners[k][1]])


def _held(
    spec: ModalitySpec, picks: Sequence[int], frame: Callable[[int], np.ndarray | Deferred]
) -> np.ndarray:
    """The frames ``picks`` names, one per target, each decoded (if :class:`Deferred`) and
    converted to the spec once however many targets hold it. A target whose frame will not
    decode holds the target's before it (the first, the first that decoded); with none
    decoded, :class:`Undecodable`."""
    out = np.empty(spec.shape, np.uint8)
    done: dict[int, int] = {}
    ok = [False] * len(picks)
    for j, k in enumerate(picks):
        first = done.get(k)
        if first is not None:
            if ok[first]:
                out[j] = out[first]
                ok[j] = True
            continue
        done[k] = j
        held = frame(k)
        image = held.image() if isinstance(held, Deferred) else held
        if image is not None:
            out[j] = _to_spec(image, spec)
            ok[j] = True
    if all(ok):
        return out
    good = [j for j, decoded in enumerate(ok) if decoded]
    if not good:
        msg = "no frame picked for the window could be decoded"
        raise Undecodable(msg)
    for j, decoded in enumerate(ok):
        if not decoded:
            out[j] = out[j - 1] if j else out[good[0]]
    return out


def _to_spec(frame: np.ndarray, spec: ModalitySpec) -> np.ndarray:
    import cv2

    image = frame if frame.ndim == 3 else frame[:, :, None]
    if image.shape[2] == 3 and spec.channels == 1:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)[:, :, None]
    elif image.shape[2] == 1 and spec.channels == 3:
        image = np.repeat(image, 3, axis=2)
    if image.shape[:2] != (spec.height, spec.width):
        image = cv2.resize(image, (spec.width, spec.height), interpolation=cv2.INTER_AREA)
    return image.reshape(spec.height, spec.width, spec.channels)


def _scaled(values: np.ndarray) -> tuple[np.ndarray, float]:
    return values, _scale(values.dtype)


def _per_window(
    batch: np.ndarray,
    names: Sequence[str],
    rng: np.random.Generator,
    step: Callable[[str, np.ndarray], np.ndarray],
) -> np.ndarray:
    if not names:
        return batch
    out = batch.copy()
    for i in range(len(out)):
        for name in names:
            if rng.random() < 0.5:
                out[i] = step(name, out[i])
    return out


JPEG_OVERSIZE = 64
"""A JPEG may decode to at most this many times the input's pixels (8 times each side)."""


class FramesKind(ModalityKind):
    """``length`` images of ``height`` x ``width`` x ``channels`` (uint8), spread evenly over
    the window: the newest frame at or before each of ``length`` instants (sample and hold)."""

    name = "frames"
    dtype = np.dtype(np.uint8)
    default_encoder = "frames_cnn"
    encodings = ("raw", "jpeg")
    deferred = True  # sample and hold picks a few frames of many: decode only those
    augmentations = tuple(augment.FRAMES)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # A plugin's kind with a fit of its own gets its frames decoded, as every kind
        # did before frames were kept encoded, unless it says it takes them so.
        if "fit" in vars(cls) and "deferred" not in vars(cls):
            cls.deferred = False

    def validate(self, spec: ModalitySpec) -> None:
        super().validate(spec)
        if spec.height < 1 or spec.width < 1:
            msg = "frames need a positive height and width"
            raise ValueError(msg)

    def shape(self, spec: ModalitySpec) -> tuple[int, ...]:
        return (spec.length, spec.height, spec.width, spec.channels)

    def check_block(
        self, spec: ModalitySpec, shape: tuple[int, ...], dtype: str, encoding: str, max_frame_pixels: int
    ) -> str | None:
        why = super().check_block(spec, shape, dtype, encoding, max_frame_pixels)
        if why is not None:
            return why
        if dtype != "|u1":
            return f"frames must be |u1, got {dtype}"
        if len(shape) not in (3, 4) or (len(shape) == 4 and shape[3] not in (1, 3)):
            return f"frames must be [n, H, W] or [n, H, W, 1|3], got {list(shape)}"
        if shape[1] * shape[2] > max_frame_pixels:
            return f"a {shape[1]}x{shape[2]} frame is over ingest.max_frame_pixels ({max_frame_pixels})"
        if encoding == "jpeg":
            scale = self.decode_scale(spec, shape, encoding)
            if -(-shape[1] // scale) * -(-shape[2] // scale) > JPEG_OVERSIZE * spec.height * spec.width:
                return (
                    f"a {shape[1]}x{shape[2]} JPEG for a {spec.height}x{spec.width} input is over "
                    f"{JPEG_OVERSIZE} times its pixels even decoded at 1/{scale}: too costly to decode"
                )
        return None

    def decode_scale(self, spec: ModalitySpec, shape: tuple[int, ...], encoding: str) -> int:
        """A JPEG is decoded at 1/2, 1/4 or 1/8 of its size (libjpeg scales while it decodes,
        at a fraction of the cost) as long as it still has the input's height and width."""
        if encoding != "jpeg" or len(shape) < 3:
            return 1
        for scale in (8, 4, 2):
            if shape[1] // scale >= spec.height and shape[2] // scale >= spec.width:
                return scale
        return 1

    def fit(self, spec: ModalitySpec, blocks: Sequence[Span], start_ns: int, end_ns: int) -> np.ndarray:
        return _fit_frames(spec, blocks, start_ns, end_ns)

    def augment(
        self,
        spec: ModalitySpec,
        batch: np.ndarray,
        rng: np.random.Generator,
        names: Sequence[str] = (),
        rate_hz: float = 0.0,
    ) -> np.ndarray:
        return _per_window(batch, names, rng, lambda name, x: augment.FRAMES[name](x, rng))

    def example(self) -> dict[str, Any]:
        return {"length": 2, "channels": 1, "height": 16, "width": 16}


class SeriesKind(ModalityKind):
    """``length`` evenly spaced samples of ``channels`` values (float32) covering the
    window, low-passed before decimation; integer samples are scaled to [-1, 1]."""

    name = "series"
    dtype = np.dtype(np.float32)
    default_encoder = "series_cnn"
    augmentations = tuple(augment.SERIES)

    def shape(self, spec: ModalitySpec) -> tuple[int, ...]:
        return (spec.length, spec.channels)

    def fit(self, spec: ModalitySpec, blocks: Sequence[Span], start_ns: int, end_ns: int) -> np.ndarray:
        return _fit_series(spec, blocks, start_ns, end_ns)

    def augment(
        self,
        spec: ModalitySpec,
        batch: np.ndarray,
        rng: np.random.Generator,
        names: Sequence[str] = (),
        rate_hz: float = 0.0,
    ) -> np.ndarray:
        rate = rate_hz or float(spec.length)  # without a window length: samples per window
        return _per_window(batch, names, rng, lambda name, x: augment.SERIES[name](x, rng, rate))


class VectorKind(ModalityKind):
    """The newest sample of ``channels`` values at or before the window's end (float32): a
    state that changes now and then, such as a setting, a position or a temperature."""

    name = "vector"
    dtype = np.dtype(np.float32)
    default_encoder = "vector_mlp"

    def shape(self, spec: ModalitySpec) -> tuple[int, ...]:
        return (spec.channels,)

    def fit(self, spec: ModalitySpec, blocks: Sequence[Span], start_ns: int, end_ns: int) -> np.ndarray:
        times = _sample_times(blocks, start_ns)
        values, scale = _scaled(np.concatenate([b.data.reshape(len(b.data), -1) for b in blocks]))
        inside = np.flatnonzero(times < end_ns - start_ns)
        newest = inside[np.argmax(times[inside])] if len(inside) else int(np.argmin(times))
        out = np.zeros(spec.channels, np.float32)
        n = min(spec.channels, values.shape[1])
        out[:n] = values[newest, :n] * scale
        return out


WORD = re.compile(r"[0-9a-z']+")
PAD, UNKNOWN = 0, 1
"""Token ids 0 and 1; word ``i`` of a vocabulary is id ``i + 2``."""


def words(text: str) -> list[str]:
    """The tokenizer of ``tokens`` inputs: lower-cased runs of letters, digits and '."""
    return WORD.findall(text.lower())


def last_words(text: str, count: int) -> list[str]:
    """The last ``count`` words of ``text`` (as :func:`words` finds them), reading only the
    end of the text: a slice that doubles until it holds one word more than needed (the
    first may be cut) or is the whole text."""
    if count <= 0:
        return []
    size = 16 * count
    while True:
        found = words(text[-size:])
        if size >= len(text):
            return found[-count:]
        if len(found) > count:
            return found[-count:]
        size *= 2


@lru_cache(maxsize=16)
def _ids(vocab: tuple[str, ...]) -> dict[str, int]:
    return {word: i + 2 for i, word in enumerate(vocab)}


class TokensKind(ModalityKind):
    """Text events in the window, in order: up to ``length`` words as ``[id, ms]`` rows
    (int32), the word's id in the spec's ``vocab`` (the tokenizer travels in the
    checkpoint) and its event's time in ms from the window's start; unused rows are 0.
    The newest words are kept when there are more. Each event on the wire is one block
    of one UTF-8 string (docs/protocol.md)."""

    name = "tokens"
    dtype = np.dtype(np.int32)
    default_encoder = "text_gru"
    encodings = ("utf-8",)
    vocabulary = True
    augmentations = ("dropout",)
    default_augment = ("dropout",)

    def validate(self, spec: ModalitySpec) -> None:
        super().validate(spec)
        if not spec.vocab:
            msg = "a tokens input needs its vocab (fusiond train builds it from the data)"
            raise ValueError(msg)

    def shape(self, spec: ModalitySpec) -> tuple[int, ...]:
        return (spec.length, 2)

    def fit(self, spec: ModalitySpec, blocks: Sequence[Span], start_ns: int, end_ns: int) -> np.ndarray:
        """Newest event first, and only as much of each as the window can still hold: a
        window of many long events costs its ``length`` words, not every word sent."""
        ids = _ids(spec.vocab)
        rows: list[tuple[int, int]] = []
        for block in sorted(blocks, key=lambda b: b.t_ns, reverse=True):
            if len(rows) >= spec.length:
                break
            if start_ns <= block.t_ns < end_ns:
                ms = (block.t_ns - start_ns) // 1_000_000
                tail = last_words(str(block.data[0]), spec.length - len(rows))
                rows[:0] = [(ids.get(w, UNKNOWN), ms) for w in tail]
        out = np.zeros(self.shape(spec), np.int32)
        if rows:
            out[: len(rows)] = rows
        return out

    def corrupt(self, spec: ModalitySpec, batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Every word replaced by a random word of the vocabulary (times kept)."""
        out = batch.copy()
        words_at = out[..., 0] != PAD
        out[..., 0][words_at] = rng.integers(2, len(spec.vocab) + 2, int(words_at.sum()))
        return out

    def augment(
        self,
        spec: ModalitySpec,
        batch: np.ndarray,
        rng: np.random.Generator,
        names: Sequence[str] = (),
        rate_hz: float = 0.0,
    ) -> np.ndarray:
        """``dropout``: one word in ten becomes unknown, as a recogniser mishears."""
        if "dropout" not in names:
            return batch
        out = batch.copy()
        hit = (out[..., 0] != PAD) & (rng.random(out.shape[:-1]) < 0.1)
        out[..., 0][hit] = UNKNOWN
        return out

    def example(self) -> dict[str, Any]:
        return {"length": 6, "vocab": ("one", "two", "three")}

    def random(self, spec: ModalitySpec, count: int, rng: np.random.Generator) -> np.ndarray:
        out = np.zeros((count, *self.shape(spec)), np.int32)
        for row in out:
            n = int(rng.integers(1, spec.length + 1))
            row[:n, 0] = rng.integers(2, len(spec.vocab) + 2, n)
            row[:n, 1] = np.sort(rng.integers(0, 1000, n))
        return out


BUILTIN_KINDS: tuple[type[ModalityKind], ...] = (FramesKind, SeriesKind, VectorKind, TokensKind)


def builtin_kinds() -> KindRegistry:
    """A registry of the built-in kinds only (a fresh one: nothing shared between callers).
    What reads a spec without a plugin set: an entry point passes ``plugins.kinds``,
    where :mod:`fusiond.plugin.builtin` registered these through the plugin hook."""
    registry = KindRegistry()
    for kind in BUILTIN_KINDS:
        registry.add(kind)
    return registry
