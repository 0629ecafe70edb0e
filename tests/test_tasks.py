"""Task registry and the physically based synthetic degradations."""

from __future__ import annotations

import time

import numpy as np
import pytest

from hbl_edge.errors import ConfigError
from hbl_edge.tasks import (
    TASKS,
    Task,
    degrade_dehaze,
    degrade_lowlight,
    degrade_underwater,
    get_task,
    smooth_field,
)

NAMES = sorted(TASKS)


def photo(h: int = 64, w: int = 80, seed: int = 0) -> np.ndarray:
    """A smooth, textured stand-in for a clean photo, H×W×3 float32 in [0.05, 0.95]."""
    rng = np.random.default_rng(seed)
    base = np.stack([smooth_field(h, w, rng, cycles=3.0) for _ in range(3)], axis=2)
    return (0.05 + 0.9 * base).astype(np.float32)


def dark_channel(image: np.ndarray) -> float:
    return float(image.min(axis=2).mean())


# ------------------------------------------------------------------------------ registry

def test_registry_contents() -> None:
    assert set(TASKS) == {"lowlight", "dehaze", "underwater"}
    assert TASKS["lowlight"].baselines == ("gamma", "clahe")
    assert TASKS["dehaze"].baselines == ("dcp",)
    assert TASKS["underwater"].baselines == ("grayworld",)
    assert TASKS["underwater"].noref_metrics == ("uiqm", "uciqe")
    assert TASKS["lowlight"].noref_metrics == () == TASKS["dehaze"].noref_metrics
    assert TASKS["lowlight"].default_loss == {"l1": 1.0, "ssim": 1.0}
    assert TASKS["dehaze"].default_loss == {"l1": 1.0, "ssim": 1.0}
    assert TASKS["underwater"].default_loss == {"l1": 1.0, "ssim": 1.0, "color": 1.0}
    assert TASKS["lowlight"].layouts[0] == ("low", "high")
    assert TASKS["dehaze"].layouts[:2] == (("hazy", "clear"), ("hazy", "GT"))
    assert TASKS["underwater"].layouts[:2] == (("raw", "reference"), ("trainA", "trainB"))
    for task in TASKS.values():
        assert ("input", "target") in task.layouts
        assert task.model and task.title
        hash(task)  # usable as a dict key / cache key


def test_get_task() -> None:
    assert get_task("lowlight") is TASKS["lowlight"]
    assert get_task(" Dehaze ") is TASKS["dehaze"]
    assert get_task("haze") is TASKS["dehaze"]
    assert get_task(TASKS["underwater"]) is TASKS["underwater"]
    assert isinstance(get_task("underwater"), Task)


def test_unknown_task_names_the_known_ones() -> None:
    with pytest.raises(ConfigError) as info:
        get_task("deblur")
    message = str(info.value)
    assert "deblur" in message and all(name in message for name in TASKS)
    assert "\n" not in message


# -------------------------------------------------------------------------- degradations

@pytest.mark.parametrize("name", NAMES)
def test_deterministic_shape_and_range(name: str) -> None:
    clean = photo()
    degrade = TASKS[name].degrade
    a = degrade(clean, np.random.default_rng(7))
    b = degrade(clean, np.random.default_rng(7))
    c = degrade(clean, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.shape == clean.shape and a.dtype == np.float32
    assert a.min() >= 0.0 and a.max() <= 1.0


@pytest.mark.parametrize("name", ["dehaze", "underwater"])
def test_draw_count_independent_of_size(name: str) -> None:
    # Map parameters take a fixed number of draws whatever the image size (only lowlight's
    # per-pixel noise scales with H·W), so a resized image gets the same maps.
    states = []
    for shape in [(16, 16), (40, 90)]:
        rng = np.random.default_rng(3)
        TASKS[name].degrade(photo(*shape), rng)
        states.append(rng.bit_generator.state["state"]["state"])
    assert states[0] == states[1]


@pytest.mark.parametrize("name", NAMES)
def test_input_not_modified(name: str) -> None:
    clean = photo()
    copy = clean.copy()
    TASKS[name].degrade(clean, np.random.default_rng(0))
    np.testing.assert_array_equal(clean, copy)


@pytest.mark.slow  # a wall-clock bound: meaningful on a quiet machine only, so not in the default run
@pytest.mark.parametrize("name", NAMES)
def test_fast_enough(name: str) -> None:
    clean = photo(256, 256)
    degrade = TASKS[name].degrade
    degrade(clean, np.random.default_rng(0))
    best = min(_timed(degrade, clean, seed) for seed in range(3))
    assert best < 0.1  # target < 50 ms


def _timed(degrade, clean: np.ndarray, seed: int) -> float:
    start = time.perf_counter()
    degrade(clean, np.random.default_rng(seed))
    return time.perf_counter() - start


def test_wrong_shape_is_rejected() -> None:
    with pytest.raises(ValueError, match="H×W×3"):
        degrade_lowlight(np.zeros((8, 8), np.float32), np.random.default_rng(0))


# ------------------------------------------------------------------------ physical sanity

def test_lowlight_is_dark() -> None:
    clean = photo()
    for seed in range(10):
        dark = degrade_lowlight(clean, np.random.default_rng(seed))
        assert dark.mean() < 0.35 * clean.mean()
        assert 0.01 < dark.mean() < 0.25  # LOL-like exposure range


def test_lowlight_map_inverts_exactly_without_noise() -> None:
    clean = photo()
    for seed in range(5):
        dark, maps = degrade_lowlight(clean, np.random.default_rng(seed), noise=False,
                                      return_map=True)
        illum = maps["L"]
        assert illum.shape == clean.shape
        assert illum.min() > 0.0 and illum.max() <= 1.0
        np.testing.assert_allclose(dark / illum, clean, rtol=1e-4, atol=1e-5)


def test_lowlight_noise_is_signal_dependent() -> None:
    flat = np.full((128, 128, 3), 0.5, np.float32)
    noisy, maps = degrade_lowlight(flat, np.random.default_rng(1), return_map=True)
    clean_dark = flat * maps["L"]
    residual = noisy - clean_dark
    assert 0 < residual.std() < 0.05  # noise present but not destroying the image
    # same rng, same map: noise-free version differs only by the noise
    quiet = degrade_lowlight(flat, np.random.default_rng(1), noise=False)
    np.testing.assert_allclose(quiet, np.clip(clean_dark, 0, 1), atol=1e-6)


def test_dehaze_raises_dark_channel_and_inverts() -> None:
    clean = photo()
    for seed in range(10):
        hazy, maps = degrade_dehaze(clean, np.random.default_rng(seed), return_map=True)
        assert dark_channel(hazy) > dark_channel(clean) + 0.05
        t, airlight = maps["t"], maps["A"]
        assert 0.7 * 0.96 - 1e-6 <= airlight.min() and airlight.max() <= 1.0
        assert 0.05 < t.min() and t.max() <= 1.0
        recovered = (hazy - airlight) / t + airlight  # J = (y − A) ⊘ t + A
        np.testing.assert_allclose(recovered, clean, atol=1e-3)


def test_underwater_attenuates_red_most() -> None:
    gray = np.full((48, 64, 3), 0.6, np.float32)
    for seed in range(20):
        uw, maps = degrade_underwater(gray, np.random.default_rng(seed), return_map=True)
        means = uw.reshape(-1, 3).mean(axis=0)
        assert means[0] < means[2] and means[0] < means[1]
        t = maps["t"]
        assert np.all(t[..., 0] < t[..., 1]) and np.all(t[..., 0] < t[..., 2])
        assert maps["B"][0] < min(maps["B"][1], maps["B"][2])  # blue/green background


def test_underwater_inverts_per_channel() -> None:
    clean = photo()
    uw, maps = degrade_underwater(clean, np.random.default_rng(4), return_map=True)
    t, background = maps["t"], maps["B"]
    keep = (uw > 0) & (uw < 1)  # clipping loses information
    recovered = (uw - background) / t + background
    np.testing.assert_allclose(recovered[keep], clean[keep], atol=2e-3)


# ----------------------------------------------- checks that do not trust the returned maps
#
# The inversion tests above use the maps the code under test returns. These recover the
# degradation from the outputs alone: two clean images with the same luminance (so the same
# depth proxy, hence the same maps for one seed) differ only along a luma-free colour
# direction, and the scattering model y = J ⊙ t + A (1 − t) is affine in J, so
# t = Δy ⊘ ΔJ and then A = (y − J ⊙ t) ⊘ (1 − t), from images only.

LUMA_FREE = np.array([1.0, -(0.299 + 0.114) / 0.587, 1.0])  # · (0.299, 0.587, 0.114) = 0


def _same_luminance_pair(seed: int = 0, eps: float = 0.08) -> tuple[np.ndarray, np.ndarray]:
    base = 0.25 + 0.4 * photo(48, 64, seed=seed).astype(np.float64)  # in [0.27, 0.63]: no clipping
    return base, base + eps * LUMA_FREE


def _recover(degrade, seed: int):
    j1, j2 = _same_luminance_pair(seed)
    y1 = degrade(j1, np.random.default_rng(seed)).astype(np.float64)
    y2 = degrade(j2, np.random.default_rng(seed)).astype(np.float64)
    t = (y1 - y2) / (j1 - j2)
    background = (y1 - j1 * t) / (1.0 - t)
    return j1, y1, t, background


@pytest.mark.parametrize("seed", range(4))
def test_dehaze_from_outputs_only(seed: int) -> None:
    j1, y1, t, airlight = _recover(degrade_dehaze, seed)
    # one transmission for all channels (scattering is grey), t = exp(-beta d) in (0, 1]
    np.testing.assert_allclose(t[..., 0], t[..., 1], atol=2e-3)
    np.testing.assert_allclose(t[..., 0], t[..., 2], atol=2e-3)
    assert 0.05 < t.min() and t.max() <= 1.0 + 1e-3
    far = t[..., 0] < 0.9  # airlight is only observable where the haze is thick enough
    a = airlight[far].reshape(-1, 3)
    assert a.std(axis=0).max() < 5e-3  # one airlight per channel, the same everywhere
    assert np.all((0.7 * 0.96 - 1e-2 <= a.mean(axis=0)) & (a.mean(axis=0) <= 1.0 + 1e-2))
    _, maps = degrade_dehaze(j1, np.random.default_rng(seed), return_map=True)  # the maps are the ones applied
    np.testing.assert_allclose(maps["t"][..., 0], t[..., 0], atol=2e-3)
    np.testing.assert_allclose(maps["A"], a.mean(axis=0), atol=5e-3)


@pytest.mark.parametrize("seed", range(4))
def test_underwater_from_outputs_only(seed: int) -> None:
    j1, y1, t, background = _recover(degrade_underwater, seed)
    assert np.all(t[..., 0] < t[..., 1] + 1e-3) and np.all(t[..., 0] < t[..., 2] + 1e-3)  # red attenuated most
    far = t[..., 0] < 0.8
    b = background[far].reshape(-1, 3)
    assert b.std(axis=0)[1:].max() < 2e-2  # one background light per channel (green, blue well observed)
    assert b.mean(axis=0)[0] < min(b.mean(axis=0)[1], b.mean(axis=0)[2])  # blue/green water
    _, maps = degrade_underwater(j1, np.random.default_rng(seed), return_map=True)
    np.testing.assert_allclose(maps["t"], t, atol=3e-3)


@pytest.mark.parametrize("seed", range(4))
def test_lowlight_exposure_hits_the_target_mean_whatever_the_content(seed: int) -> None:
    """The docstring's e: mean(y) = m for the seed's m, so two different images get the same mean,
    and y ⊘ x is the same illumination up to that one exposure scalar (Retinex, from images only)."""
    a = photo(48, 64, seed=1).astype(np.float64)
    b = np.clip(1.0 - 0.8 * photo(48, 64, seed=2).astype(np.float64), 0.05, 1.0)  # other content and mean
    ya = degrade_lowlight(a, np.random.default_rng(seed), noise=False).astype(np.float64)
    yb = degrade_lowlight(b, np.random.default_rng(seed), noise=False).astype(np.float64)
    assert 0.03 - 1e-4 <= ya.mean() <= 0.2 + 1e-4
    assert abs(ya.mean() - yb.mean()) < 1e-4 * ya.mean() + 1e-6
    ratio = (ya / a) / (yb / b)
    np.testing.assert_allclose(ratio, ratio.mean(), rtol=1e-3)  # the same shading, one scalar apart
    # that scalar is e_a / e_b = mean(b ⊙ s) / mean(a ⊙ s) with the shading s ∝ y_a ⊘ a
    shading = ya / a
    assert ratio.mean() == pytest.approx(float(np.mean(b * shading) / np.mean(a * shading)), rel=1e-4)
