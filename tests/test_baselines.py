"""Classical baselines: registry, shapes/ranges/determinism, and what each should do."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio

from hbl_edge import baselines as B
from hbl_edge.errors import ConfigError

LUMA = np.array([0.299, 0.587, 0.114])


def textured(h: int = 48, w: int = 40, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((h, w, 3)).astype(np.float32)


def test_registry():
    assert {n: b.task for n, b in B.BASELINES.items()} == {
        "gamma": "lowlight",
        "clahe": "lowlight",
        "dcp": "dehaze",
        "grayworld": "underwater",
    }
    assert B.get_baseline("dcp").fn is B.dehaze_dcp
    assert all(b.doc for b in B.BASELINES.values())


def test_unknown_baseline():
    with pytest.raises(ConfigError) as e:
        B.get_baseline("retinex")
    assert str(e.value) == "unknown baseline 'retinex'; known: gamma, clahe, dcp, grayworld"


@pytest.mark.parametrize("name", ["gamma", "clahe", "dcp", "grayworld"])
@pytest.mark.parametrize("shape", [(48, 40), (17, 9)])
def test_shape_range_determinism(name, shape):
    img = textured(*shape) * 0.5
    fn = B.get_baseline(name)
    a, b = fn(img), fn(img.copy())
    assert a.shape == img.shape and a.dtype == np.float32
    assert a.min() >= 0.0 and a.max() <= 1.0 and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ["gamma", "clahe", "dcp", "grayworld"])
def test_black_image_is_finite(name):
    out = B.get_baseline(name)(np.zeros((20, 20, 3), np.float32))
    assert np.isfinite(out).all()


def test_bad_input():
    with pytest.raises(ValueError, match=r"img must have shape H×W×3 \(RGB\), got \(8, 8\)"):
        B.auto_gamma(np.zeros((8, 8), np.float32))
    with pytest.raises(TypeError, match="got dtype uint8"):
        B.gray_world(np.zeros((8, 8, 3), np.uint8))


class TestGamma:
    def test_constant_maps_exactly(self):
        img = np.full((8, 8, 3), 0.1, np.float32)
        assert (B.auto_gamma(img) @ LUMA).mean() == pytest.approx(0.45, abs=1e-5)

    def test_textured_dark_maps_near_045(self):
        img = (0.05 + 0.1 * textured()).astype(np.float32)
        out = B.auto_gamma(img)
        assert (out @ LUMA).mean() == pytest.approx(0.45, abs=0.02)


class TestCLAHE:
    def test_raises_contrast_keeps_colour_order(self):
        img = (0.4 + 0.1 * textured()).astype(np.float32)
        img[..., 2] *= 0.5  # a yellowish image stays yellowish
        out = B.clahe(img)
        assert (out @ LUMA).std() > (img @ LUMA).std()
        assert out[..., 2].mean() < out[..., 0].mean()


class TestGrayWorld:
    def test_equalises_channel_means(self):
        img = (textured() * np.array([0.2, 0.5, 0.6])).astype(np.float32)  # blue-green cast
        out = B.gray_world(img)
        means = out.reshape(-1, 3).mean(axis=0)
        np.testing.assert_allclose(means, means.mean(), rtol=1e-5)
        assert means.mean() == pytest.approx(img.reshape(-1, 3).mean(axis=0).mean(), rel=1e-5)


class TestDCP:
    def test_improves_psnr_on_synthetic_haze(self):
        j = textured(64, 64, seed=3)
        airlight = np.array([0.9, 0.9, 0.9], np.float32)
        j[:16, :16] = airlight  # a sky patch, where the dark channel is brightest
        t = 0.6
        hazy = (j * t + airlight * (1 - t)).astype(np.float32)
        out = B.dehaze_dcp(hazy)
        before = peak_signal_noise_ratio(j, hazy, data_range=1.0)
        after = peak_signal_noise_ratio(j, out, data_range=1.0)
        assert after > before + 3.0, (before, after)

    def test_guided_filter_constant_and_smoothing(self):
        guide = np.random.default_rng(0).random((20, 20))
        flat = np.full((20, 20), 0.3)
        np.testing.assert_allclose(B.guided_filter(guide, flat, 3), 0.3, atol=1e-12)
        noisy = 0.5 + 0.1 * np.random.default_rng(1).standard_normal((20, 20))
        assert B.guided_filter(np.full((20, 20), 0.5), noisy, 3).std() < noisy.std() / 3

    def test_dark_channel(self):
        img = np.ones((20, 20, 3))
        img[10, 10, 1] = 0.0
        d = B.dark_channel(img, 15)
        assert d[3, 3] == 0.0 and d[17, 17] == 0.0  # 15×15 window reaches ±7 pixels
        assert d[2, 2] == 1.0 and d[18, 18] == 1.0
