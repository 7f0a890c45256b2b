"""Label-preserving variations of training inputs, by kind (``[inputs.X] augment = [...]``).

Each function takes one window's input and a random generator and returns a changed copy
of the same shape and dtype; a kind applies each augmentation the recipe names to each
window with probability one half (:meth:`fusiond.align.kinds.ModalityKind.augment`).
Series augmentations also get the input's sample rate (its ``length`` over the window's
length), so band limits are in hertz.

==============  ======================================================================
series
``speed``       play 0.85-1.15x as fast (tempo and pitch together, as tape does)
``telephone``   band-limit to 300-3400 Hz, as a phone line (8 kHz) carries speech
``reverb``      a room: convolve with decaying noise, RT60 0.2-0.7 s, mixed in
``noise``       white noise at a random SNR of 0-20 dB
``mask``        SpecAugment-style: silence a span of time and remove a band of frequencies
``warp``        time warp: a smooth random speed change across the window (IMU)
``scale``       magnitude scaling: a smooth random gain of 0.8-1.2 across the window (IMU)
frames
``thickness``   thinner or thicker strokes (grey erosion or dilation, 3x3)
``elastic``     elastic distortion: a smooth random displacement field of a few pixels
``affine``      scale 0.85-1.15 and rotate up to 15 degrees about the centre
``blur``        blur from low resolution: down to 1/2-1/3 size and back
tokens
``dropout``     one word in ten becomes unknown, as a recogniser mishears
==============  ======================================================================
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = [
    "affine",
    "blur",
    "elastic",
    "FRAMES",
    "Frames",
    "mask",
    "noise",
    "reverb",
    "scale",
    "SERIES",
    "Series",
    "speed",
    "telephone",
    "thickness",
    "warp",
]

Series = Callable[[np.ndarray, np.random.Generator, float], np.ndarray]
Frames = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _like(values: np.ndarray, x: np.ndarray) -> np.ndarray:
    out: np.ndarray = values.astype(x.dtype)
    return out


def _resample(x: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """``x`` [T, C] read at fractional sample ``positions`` (clamped), linearly."""
    base = np.arange(len(x))
    clipped = np.clip(positions, 0, len(x) - 1)
    out: np.ndarray = np.stack([np.interp(clipped, base, x[:, c]) for c in range(x.shape[1])], axis=1)
    return out


def speed(x: np.ndarray, rng: np.random.Generator, rate_hz: float) -> np.ndarray:
    factor = rng.uniform(0.85, 1.15)
    centre = (len(x) - 1) / 2
    return _like(_resample(x, centre + (np.arange(len(x)) - centre) * factor), x)


def _band(x: np.ndarray, rate_hz: float, low: float, high: float) -> np.ndarray:
    spectrum = np.fft.rfft(x, axis=0)
    freqs = np.fft.rfftfreq(len(x), 1.0 / rate_hz)
    spectrum[(freqs < low) | (freqs > high)] = 0
    out: np.ndarray = np.fft.irfft(spectrum, n=len(x), axis=0)
    return out


def telephone(x: np.ndarray, rng: np.random.Generator, rate_hz: float) -> np.ndarray:
    return _like(_band(x, rate_hz, 300.0, min(3400.0, rate_hz / 2)), x)


def reverb(x: np.ndarray, rng: np.random.Generator, rate_hz: float) -> np.ndarray:
    rt60 = rng.uniform(0.2, 0.7)
    n = max(2, min(len(x), int(rt60 * rate_hz)))
    t = np.arange(n) / rate_hz
    impulse = rng.standard_normal(n) * np.exp(-6.9 * t / rt60)  # -60 dB at rt60
    impulse[0] = 1.0
    impulse /= np.sqrt((impulse**2).sum())
    wet = np.stack([np.convolve(x[:, c], impulse)[: len(x)] for c in range(x.shape[1])], axis=1)
    mix = rng.uniform(0.3, 0.8)
    return _like((1 - mix) * x + mix * wet, x)


def noise(x: np.ndarray, rng: np.random.Generator, rate_hz: float) -> np.ndarray:
    power = float((x.astype(np.float64) ** 2).mean()) or 1e-8
    snr_db = rng.uniform(0.0, 20.0)
    return _like(x + rng.standard_normal(x.shape) * np.sqrt(power / 10 ** (snr_db / 10)), x)


def mask(x: np.ndarray, rng: np.random.Generator, rate_hz: float) -> np.ndarray:
    out = x.copy()
    width = int(rng.integers(1, max(2, len(x) // 10)))
    start = int(rng.integers(0, max(1, len(x) - width)))
    out[start : start + width] = 0
    nyquist = rate_hz / 2
    low = rng.uniform(0.0, 0.8) * nyquist
    band = _band(out.astype(np.float64), rate_hz, low, low + rng.uniform(0.05, 0.15) * nyquist)
    return _like(out - band, x)  # the band removed


def _smooth_curve(n: int, rng: np.random.Generator, knots: int, spread: float) -> np.ndarray:
    points = 1.0 + rng.uniform(-spread, spread, knots)
    out: np.ndarray = np.interp(np.linspace(0, knots - 1, n), np.arange(knots), points)
    return out


def warp(x: np.ndarray, rng: np.random.Generator, rate_hz: float) -> np.ndarray:
    rate = _smooth_curve(len(x), rng, 4, 0.2)
    positions = np.cumsum(rate) - rate[0]
    positions *= (len(x) - 1) / max(positions[-1], 1e-9)
    return _like(_resample(x, positions), x)


def scale(x: np.ndarray, rng: np.random.Generator, rate_hz: float) -> np.ndarray:
    return _like(x * _smooth_curve(len(x), rng, 4, 0.2)[:, None], x)


def thickness(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    import cv2

    op = cv2.erode if rng.random() < 0.5 else cv2.dilate
    kernel = np.ones((3, 3), np.uint8)
    return np.stack([op(f, kernel).reshape(f.shape) for f in frames])


def elastic(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    import cv2

    h, w = frames.shape[1:3]
    most, sigma = 0.06 * max(h, w), 0.12 * max(h, w)  # pixels of displacement at most; smoothness

    def field() -> np.ndarray:
        smooth = cv2.GaussianBlur(rng.uniform(-1, 1, (h, w)).astype(np.float32), (0, 0), sigma)
        scaled: np.ndarray = smooth * (most / max(float(np.abs(smooth).max()), 1e-6))
        return scaled

    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    mx, my = gx + field(), gy + field()
    return _each(frames, lambda f: cv2.remap(f, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE))


def affine(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    import cv2

    h, w = frames.shape[1:3]
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-15, 15), rng.uniform(0.85, 1.15))
    return _each(frames, lambda f: cv2.warpAffine(f, matrix, (w, h), borderMode=cv2.BORDER_REPLICATE))


def blur(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    import cv2

    h, w = frames.shape[1:3]
    factor = rng.uniform(2.0, 3.0)
    small = (max(1, round(w / factor)), max(1, round(h / factor)))
    return _each(
        frames,
        lambda f: cv2.resize(
            cv2.resize(f, small, interpolation=cv2.INTER_AREA), (w, h), interpolation=cv2.INTER_LINEAR
        ),
    )


def _each(frames: np.ndarray, step: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    return np.stack([step(f).reshape(f.shape) for f in frames])


SERIES: dict[str, Series] = {
    "speed": speed,
    "telephone": telephone,
    "reverb": reverb,
    "noise": noise,
    "mask": mask,
    "warp": warp,
    "scale": scale,
}
FRAMES: dict[str, Frames] = {"thickness": thickness, "elastic": elastic, "affine": affine, "blur": blur}
