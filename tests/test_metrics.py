"""Paired and no-reference metrics: hand-computed values on tiny images."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from hbl_edge import losses as L
from hbl_edge import metrics as M


def const(r: float, g: float, b: float, h: int = 10, w: int = 10) -> np.ndarray:
    return np.broadcast_to(np.array([r, g, b], dtype=np.float32) / 255.0, (h, w, 3)).copy()


def ramp(h: int = 10, w: int = 10) -> np.ndarray:
    """Columns 10, 20, …, 10·w (0–255 scale), same in every channel."""
    row = 10.0 * (np.arange(w) + 1) / 255.0
    return np.repeat(np.broadcast_to(row, (h, w))[..., None], 3, axis=2).astype(np.float32)


# --------------------------------------------------------------------------------------------
# torch
# --------------------------------------------------------------------------------------------


class TestTorch:
    def test_psnr_hand(self):
        p = torch.zeros(2, 3, 4, 4)
        t = torch.full((2, 3, 4, 4), 0.1)
        t[1] = 0.01
        out = M.psnr(p, t)
        assert out.shape == (2,)
        torch.testing.assert_close(out, torch.tensor([20.0, 40.0]))
        assert M.psnr(p, t, data_range=255.0)[0].item() == pytest.approx(20 + 20 * math.log10(255))

    def test_psnr_identical_is_inf(self):
        x = torch.rand(1, 3, 4, 4)
        assert math.isinf(M.psnr(x, x).item())

    def test_ssim_matches_skimage(self):
        torch.manual_seed(0)
        p, t = torch.rand(2, 3, 24, 20), torch.rand(2, 3, 24, 20)
        t[1] = 0.7 * p[1] + 0.3 * t[1]
        out = M.ssim(p, t)
        assert out.shape == (2,)
        for n in range(2):
            ref = structural_similarity(
                t[n].permute(1, 2, 0).numpy(), p[n].permute(1, 2, 0).numpy(), channel_axis=2,
                data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
            )
            assert out[n].item() == pytest.approx(ref, abs=1e-5)

    def test_ssim_too_small(self):
        with pytest.raises(ValueError, match=r"ssim needs H and W ≥ 11 \(window 11\), got \(8, 8\)"):
            M.ssim(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))

    def test_shape_mismatch(self):
        with pytest.raises(ValueError, match="pred and target must have the same shape"):
            M.psnr(torch.rand(1, 3, 4, 4), torch.rand(2, 3, 4, 4))


# --------------------------------------------------------------------------------------------
# PEERS procedure
# --------------------------------------------------------------------------------------------


class TestScorePair:
    def test_hand_constants(self):
        p, t = const(100, 100, 100, 16, 16), const(110, 110, 110, 16, 16)
        s = M.score_pair(p, t)
        assert s["psnr"] == pytest.approx(20 * math.log10(25.5))
        a, b = 100 / 255, 110 / 255
        c1 = 0.01**2
        assert s["ssim"] == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), abs=1e-6)

    def test_rounds_and_clamps_to_8bit(self):
        t = const(128, 64, 32, 16, 16)
        p = t + 0.4 / 255  # rounds back onto t
        assert math.isinf(M.score_pair(p, t)["psnr"])
        over = np.full((16, 16, 3), 1.7, np.float32)
        assert math.isinf(M.score_pair(over, np.ones((16, 16, 3), np.float32))["psnr"])

    def test_bad_input(self):
        with pytest.raises(ValueError, match=r"pred must have shape H×W×3 \(RGB\), got \(4, 4\)"):
            M.score_pair(np.zeros((4, 4), np.float32), np.zeros((4, 4), np.float32))
        with pytest.raises(TypeError, match="float RGB in \\[0, 1\\], got dtype uint8"):
            M.score_pair(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8))
        with pytest.raises(ValueError, match="same shape"):
            M.score_pair(np.zeros((8, 8, 3), np.float32), np.zeros((8, 9, 3), np.float32))


# --------------------------------------------------------------------------------------------
# UIQM
# --------------------------------------------------------------------------------------------


class TestUIQM:
    def test_uicm_constant_colour(self):
        assert M.uicm(const(200, 100, 50)) == pytest.approx(-0.0268 * 100 * math.sqrt(2), rel=1e-5)

    def test_uicm_gray_is_zero(self):
        assert M.uicm(ramp()) == pytest.approx(0.0, abs=1e-9)

    def test_uicm_trimmed_mean(self):
        # nine grey pixels and one red one: trimming (1 low, 1 high) drops the red from both means
        img = const(80, 80, 80, 1, 10)
        img[0, 3] = (1.0, 0.0, 0.0)
        expected = 0.1586 * math.sqrt((255.0**2 + 127.5**2) / 10)
        assert M.uicm(img) == pytest.approx(expected, rel=1e-5)

    def test_uism_ramp(self):
        # Sobel (reflect) of a 10-step ramp: 4·10 at the border columns, 8·10 inside;
        # edge × channel: max 80·90 (col 8), min 40·10 (col 0) → EME = 2 ln 18 in every channel.
        assert M.uism(ramp()) == pytest.approx(2 * math.log(18), rel=1e-6)

    def test_uism_uiconm_constant_are_zero(self):
        img = const(30, 120, 200)
        assert M.uism(img) == 0.0
        assert M.uiconm(img) == 0.0
        assert M.uiqm(img) == pytest.approx(0.0282 * M.uicm(img))

    def test_uiconm_two_levels(self):
        img = const(50, 50, 50)
        img[:, 5:] = 150 / 255
        assert M.uiconm(img) == pytest.approx(-0.5 * math.log(0.5), rel=1e-5)

    def test_uiconm_block_average_and_crop(self):
        # 25×10: two full 10×10 tiles (rows 20–24 cropped); top tile two-level, bottom flat.
        img = const(50, 50, 50, 25, 10)
        img[:10, 5:] = 150 / 255
        img[20:] = 1.0  # cropped away: must not count
        assert M.uiconm(img) == pytest.approx(-0.5 * math.log(0.5) / 2, rel=1e-5)

    def test_uiqm_ramp(self):
        r = 90 / 110
        expected = 0.2953 * 2 * math.log(18) + 3.5753 * (-r * math.log(r))
        assert M.uiqm(ramp()) == pytest.approx(expected, rel=1e-5)

    def test_black_image_is_finite(self):
        img = np.zeros((12, 12, 3), np.float32)
        assert M.uiqm(img) == 0.0
        assert np.isfinite(M.uiqm(np.random.default_rng(0).random((7, 5, 3), dtype=np.float32)))


# --------------------------------------------------------------------------------------------
# UCIQE
# --------------------------------------------------------------------------------------------


class TestUCIQE:
    def test_constant_red(self):
        # sRGB red in CIELab: L 53.2406, a 80.0923, b 67.2027 (D65)
        lum, c = 0.532406, math.hypot(0.800923, 0.672027)
        comp = M.uciqe_components(const(255, 0, 0))
        assert comp["sigma_c"] == pytest.approx(0.0, abs=1e-6)
        assert comp["con_l"] == pytest.approx(0.0, abs=1e-6)
        assert comp["mu_s"] == pytest.approx(c / math.hypot(c, lum), rel=1e-4)
        assert M.uciqe(const(255, 0, 0)) == pytest.approx(0.2576 * c / math.hypot(c, lum), rel=1e-4)

    def test_black_white_halves(self):
        img = np.zeros((10, 10, 3), np.float32)
        img[:, 5:] = 1.0
        comp = M.uciqe_components(img)
        assert comp["con_l"] == pytest.approx(1.0, abs=1e-4)
        assert comp["sigma_c"] == pytest.approx(0.0, abs=1e-3)
        assert comp["mu_s"] == pytest.approx(0.0, abs=1e-3)
        assert M.uciqe(img) == pytest.approx(0.2745, abs=1e-3)

    def test_two_colour_sigma_c(self):
        # half red, half grey: chroma C_red and ~0, so σ_c = C_red / 2
        img = const(128, 128, 128)
        img[:, 5:] = (1.0, 0.0, 0.0)
        c = math.hypot(0.800923, 0.672027)
        assert M.uciqe_components(img)["sigma_c"] == pytest.approx(c / 2, abs=1e-4)

    def test_cast_scores_lower_than_vivid(self):
        rng = np.random.default_rng(0)
        vivid = rng.random((32, 32, 3)).astype(np.float32)
        cast = (0.3 * vivid + 0.7 * np.array([0.1, 0.5, 0.6], np.float32)).astype(np.float32)
        assert M.uciqe_components(cast)["sigma_c"] < M.uciqe_components(vivid)["sigma_c"]
        assert M.uciqe(cast) < M.uciqe(vivid)


# --------------------------------------------------------------------------------------------
# LPIPS and the registry
# --------------------------------------------------------------------------------------------


def test_lpips_metric_and_registry(tmp_path):
    net = L.LPIPS()  # random init is enough for plumbing
    x, y = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    d = M.lpips_metric(x, y, net)
    assert d.shape == (2,)
    fn, kind, hib = M.METRICS["lpips"]
    assert kind == "paired" and hib is False
    img = np.random.default_rng(0).random((16, 16, 3)).astype(np.float32)
    assert fn(img, img, net=net) == 0.0
    with pytest.raises(TypeError, match="hbl_edge.losses.LPIPS"):
        M.lpips_metric(x, y, object())


def test_registry():
    assert set(M.METRICS) == {"psnr", "ssim", "lpips", "uiqm", "uciqe"}
    assert M.METRICS["uiqm"].kind == "noref" and M.METRICS["uiqm"].higher_is_better
    rng = np.random.default_rng(1)
    a = rng.random((16, 16, 3)).astype(np.float32)
    b = np.clip(a + 0.05 * rng.standard_normal(a.shape), 0, 1).astype(np.float32)
    assert M.METRICS["psnr"].fn(a, b) == M.score_pair(a, b)["psnr"]
    assert M.METRICS["ssim"].fn(a, b) == M.score_pair(a, b)["ssim"]
    assert M.METRICS["uciqe"].fn(a) == pytest.approx(M.uciqe(M.quantize8(a)))
    assert M.METRICS["uiqm"].fn(a) == pytest.approx(M.uiqm(M.quantize8(a)))
