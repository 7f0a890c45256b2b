"""Training augmentations, by kind: what each does to a window, measured."""

from __future__ import annotations

import numpy as np
import pytest

from fusiond.align import ModalitySpec
from fusiond.align import augment as aug
from fusiond.errors import ConfigError
from fusiond.plugin import load_plugins
from fusiond.testing import example_spec
from fusiond.training.recipe import load_recipe

RATE = 16000.0
KINDS = load_plugins().kinds


def tone(hz: float, n: int = 16000) -> np.ndarray:
    return np.sin(2 * np.pi * hz * np.arange(n) / RATE)[:, None].astype(np.float32)


def level(x: np.ndarray) -> float:
    return float(np.sqrt((x.astype(np.float64) ** 2).mean()))


@pytest.mark.parametrize("name", sorted(set().union(*(KINDS.get(k).augmentations for k in KINDS))))
def test_every_augmentation_keeps_shape_and_dtype_changes_the_input_and_repeats_with_its_seed(name):
    kind = next(k for k in KINDS if name in KINDS.get(k).augmentations)
    spec = example_spec(KINDS.get(kind)) if kind != "frames" else ModalitySpec("frames", 2, 1, 32, 32)
    batch = KINDS.get(kind).random(spec, 6, np.random.default_rng(0))
    if kind == "frames":  # strokes on paper: a pattern with edges, not noise
        batch[:] = 235
        batch[:, :, 8:24, 14:18] = 20
    out = KINDS.get(kind).augment(spec, batch, np.random.default_rng(1), [name], rate_hz=RATE)
    again = KINDS.get(kind).augment(spec, batch, np.random.default_rng(1), [name], rate_hz=RATE)
    assert out.shape == batch.shape and out.dtype == batch.dtype
    assert not np.array_equal(out, batch)  # about half the windows changed
    np.testing.assert_array_equal(out, again)
    assert np.array_equal(KINDS.get(kind).augment(spec, batch, np.random.default_rng(1), [], RATE), batch)


def test_telephone_passes_speech_band_and_removes_the_rest():
    rng = np.random.default_rng(0)
    assert level(aug.telephone(tone(1000), rng, RATE)) > 0.95 * level(tone(1000))
    assert level(aug.telephone(tone(100), rng, RATE)) < 0.05 * level(tone(100))
    assert level(aug.telephone(tone(6000), rng, RATE)) < 0.05 * level(tone(6000))


def test_speed_moves_the_pitch_by_its_factor_within_bounds():
    rng = np.random.default_rng(3)
    for _ in range(5):
        out = aug.speed(tone(1000), rng, RATE)[:, 0]
        peak = np.argmax(np.abs(np.fft.rfft(out * np.hanning(len(out))))) * RATE / len(out)
        assert 840 <= peak <= 1160 and abs(peak - 1000) > 1


def test_noise_lands_between_0_and_20_db_snr():
    rng = np.random.default_rng(0)
    x = tone(440)
    for _ in range(10):
        added = aug.noise(x, rng, RATE) - x
        snr = 10 * np.log10(level(x) ** 2 / level(added) ** 2)
        assert -0.5 < snr < 20.5


def test_reverb_leaves_a_tail_after_the_sound_stops():
    x = tone(500)
    x[8000:] = 0
    wet = aug.reverb(x, np.random.default_rng(0), RATE)
    assert level(wet[8400:9000]) > 0.01 and level(x[8400:9000]) == 0


def test_scale_and_warp_stay_near_the_input():
    x = tone(5, 100) + 1.0
    rng = np.random.default_rng(0)
    scaled = aug.scale(x, rng, 100.0)
    assert np.all(np.abs(scaled / x - 1) <= 0.2 + 1e-6)
    warped = aug.warp(x, rng, 100.0)
    assert warped[0, 0] == x[0, 0] and abs(warped[-1, 0] - x[-1, 0]) < 1e-5  # the ends stay


def test_a_recipe_naming_an_augmentation_its_kind_lacks_is_refused(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('name = "x"\n[inputs.imu]\nkind = "series"\nlength = 10\naugment = ["elastic"]\n')
    with pytest.raises(ConfigError, match=r"inputs.imu: a series input cannot be augmented with .'elastic'."):
        load_recipe(path)
