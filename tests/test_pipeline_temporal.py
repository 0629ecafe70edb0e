"""--temporal (hbl_edge.runtime.temporal): still blocks averaged, moving ones passed through exactly."""

from __future__ import annotations

import numpy as np
import pytest

from hbl_edge.runtime.temporal import TemporalFilter, mean_abs_frame_diff, noise_sigma

H, W = 64, 96


def texture(seed=0, width=W):
    """A smooth random picture (sums of oblique sinusoids, periods 9–40 px), 3×H×width in [0.2, 0.8].

    Not white noise: a single-frame noise estimate cannot tell white-noise texture from noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:width].astype(np.float32)
    img = np.zeros((3, H, width), np.float32)
    for c in range(3):
        for _ in range(4):
            period, angle, phase = rng.uniform(9, 40), rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
            img[c] += np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period + phase)
    return (0.5 + 0.075 * img).astype(np.float32)


def noisy(img, rng, sigma=0.02):
    return (img + rng.normal(0, sigma, img.shape)).astype(np.float32)


class TestNoiseEstimate:
    def test_white_noise(self):
        g = np.random.default_rng(0).normal(0.5, 0.05, (256, 256))
        assert noise_sigma(g) == pytest.approx(0.05, rel=0.05)

    def test_linear_structure_is_not_noise(self):
        yy, xx = np.mgrid[0:64, 0:64]
        assert noise_sigma(0.003 * xx + 0.002 * yy + 0.1) == pytest.approx(0.0, abs=1e-6)


class TestFilter:
    def test_first_frame_passes_through(self):
        x = texture()
        y = x * 1.5
        assert TemporalFilter()(x, y) is y

    def test_still_scene_is_averaged(self):
        rng = np.random.default_rng(1)
        scene = texture()
        f = TemporalFilter(a_static=0.2)
        outs, ys = [], []
        for _ in range(60):
            x = noisy(scene, rng)
            y = np.clip(x * 1.2, 0, 1)
            ys.append(y)
            outs.append(f(x, y).copy())
        assert f.last_still_fraction > 0.95
        # A recursive average with rate a leaves a/(2−a) of the noise variance: std × 1/3 at a = 0.2.
        ratio = np.std(np.asarray(outs[20:]) - scene * 1.2) / np.std(np.asarray(ys[20:]) - scene * 1.2)
        assert ratio == pytest.approx(1 / 3, abs=0.06)
        assert mean_abs_frame_diff(outs[20:]) < 0.4 * mean_abs_frame_diff(ys[20:])

    def test_motion_passes_through_exactly(self):
        rng = np.random.default_rng(2)
        big = texture(3, W + 200)
        f = TemporalFilter()
        for t in range(10):
            x = noisy(big[:, :, 3 * t:3 * t + W], rng, 0.01)  # a pan of fine texture, 3 px per frame
            y = np.clip(x * 1.3, 0, 1)
            out = f(x, y)
            if t:
                np.testing.assert_array_equal(out, y)
                assert f.last_still_fraction == 0.0

    def test_only_the_moving_half_follows(self):
        rng = np.random.default_rng(4)
        scene = texture(5)
        f = TemporalFilter()
        for t in range(30):
            x = noisy(scene, rng)
            x[:, :, W // 2:] = noisy(np.roll(scene, 4 * t, axis=2), rng)[:, :, W // 2:]  # right half slides
            y = x.copy()
            out = f(x, y)
        # Right half: the current frame (blocks next to the border count as moving: dilation).
        np.testing.assert_array_equal(out[:, :, W // 2:], y[:, :, W // 2:])
        # Left half, away from the border: close to the clean scene (noise averaged away).
        left = slice(0, W // 2 - 16)
        assert np.abs(out[:, :, left] - scene[:, :, left]).mean() < 0.5 * np.abs(y[:, :, left] - scene[:, :, left]).mean()

    def test_reset_on_size_change(self):
        f = TemporalFilter()
        f(texture(), texture())
        x2 = np.random.default_rng(9).random((3, 32, 40), dtype=np.float32)
        y2 = x2 * 0.5
        assert f(x2, y2) is y2  # a new size starts over

    def test_map_mode_formula(self):
        # With a still, noise-free scene the smoothed map equals the map: out = (x + ε)·G − ε = y.
        f = TemporalFilter(mode="map")
        x = texture(6)
        y = np.clip(x * 1.4, 0, 1)
        f(x, y)
        np.testing.assert_allclose(f(x, y), y, atol=1e-6)

    @pytest.mark.parametrize("kwargs", [{"a_static": 0}, {"lo": 3, "hi": 2}, {"mode": "magic"}])
    def test_bad_settings(self, kwargs):
        with pytest.raises(ValueError):
            TemporalFilter(**kwargs)
