"""Image-quality metrics: paired (PSNR, SSIM, LPIPS) and no-reference underwater (UIQM, UCIQE).

Two flavours:

* torch, on ``N×3×H×W`` float RGB in ``[0, 1]``, one value per image: :func:`psnr`, :func:`ssim`,
  :func:`lpips_metric` — for validation inside training/search loops.
* numpy, on ``H×W×3`` float RGB in ``[0, 1]``: :func:`score_pair` (the PEERS.md procedure: clamp
  and round to 8 bit, PSNR per image, scikit-image SSIM), :func:`uiqm`, :func:`uciqe` and their
  sub-measures — for evaluation and reports.

:data:`METRICS` maps a name to ``Metric(fn, kind, higher_is_better)``; every registry ``fn``
works on numpy ``H×W×3`` images quantised to 8 bit first (the PEERS.md procedure), ``kind`` is
``"paired"`` (``fn(pred, target)``) or ``"noref"`` (``fn(img)``). ``lpips`` also needs
``net=load_lpips(path)``.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, NamedTuple

import kornia
import numpy as np
import torch
from scipy import ndimage
from skimage.color import rgb2lab
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from .losses import LPIPS, _check_pair

log = logging.getLogger(__name__)

__all__ = [
    "psnr",
    "ssim",
    "lpips_metric",
    "quantize8",
    "score_pair",
    "uicm",
    "uism",
    "uiconm",
    "uiqm",
    "uciqe_components",
    "uciqe",
    "Metric",
    "METRICS",
]

# --------------------------------------------------------------------------------------------
# torch, per image
# --------------------------------------------------------------------------------------------


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    r"""Per-image PSNR in dB: :math:`10\log_{10}(R^2 / \mathrm{MSE}_n)`.

    Args:
        pred, target: :math:`(N, C, H, W)`.
        data_range: :math:`R`.

    Returns:
        :math:`(N,)`; ``inf`` for an image equal to its reference (as scikit-image).

    Example:
        >>> psnr(torch.zeros(1, 3, 4, 4), torch.full((1, 3, 4, 4), 0.1))
        tensor([20.0000])
    """
    _check_pair(pred, target)
    mse = (pred - target).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(data_range**2 / mse)


def ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    r"""Per-image SSIM (Gaussian window 11, σ 1.5), mean of the map over C, H, W.

    Uses ``kornia.metrics.ssim`` with ``padding="valid"`` (the 5-pixel border is dropped), which
    is the scikit-image convention: equal to ``structural_similarity(channel_axis=2,
    data_range=1, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)`` up to rounding.

    Args:
        pred, target: :math:`(N, C, H, W)`, H and W ≥ 11.

    Returns:
        :math:`(N,)`.

    Reference:
        Wang et al., IEEE TIP 2004.
    """
    _check_pair(pred, target)
    if min(pred.shape[-2:]) < 11:
        raise ValueError(f"ssim needs H and W ≥ 11 (window 11), got {tuple(pred.shape[-2:])}")
    smap = kornia.metrics.ssim(pred, target, 11, max_val=float(data_range), padding="valid")
    return smap.flatten(1).mean(dim=1)


def lpips_metric(pred: torch.Tensor, target: torch.Tensor, net: LPIPS) -> torch.Tensor:
    """Per-image LPIPS distance :math:`(N,)` (lower is better), via :class:`hbl_edge.losses.LPIPS`.

    ``net`` comes from :func:`hbl_edge.losses.load_lpips` (an explicit local weight file).
    """
    if not isinstance(net, LPIPS):
        raise TypeError(f"net must be an hbl_edge.losses.LPIPS (from load_lpips(path)), got {type(net).__name__}")
    return net(pred, target)


# --------------------------------------------------------------------------------------------
# numpy helpers
# --------------------------------------------------------------------------------------------


def _check_np_image(x: Any, name: str) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy array H×W×3, got {type(x).__name__}")
    if x.ndim != 3 or x.shape[2] != 3:
        raise ValueError(f"{name} must have shape H×W×3 (RGB), got {x.shape}")
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{name} is empty: {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"{name} must be float RGB in [0, 1], got dtype {x.dtype}")
    return x


def quantize8(img: np.ndarray) -> np.ndarray:
    """Clamp to ``[0, 1]`` and round to the 8-bit grid (value stays float in ``[0, 1]``)."""
    return np.round(np.clip(np.nan_to_num(img.astype(np.float64), nan=0.0), 0.0, 1.0) * 255.0) / 255.0


def score_pair(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """PSNR/SSIM of one pair by the PEERS.md procedure.

    Both images are clamped and rounded to 8 bit; PSNR with ``data_range=1`` (``inf`` if
    equal); SSIM = ``skimage.metrics.structural_similarity(channel_axis=2, data_range=1,
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``. Needs H, W ≥ 7.

    Returns:
        ``{"psnr": float, "ssim": float}``.
    """
    _check_np_image(pred, "pred")
    _check_np_image(target, "target")
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {pred.shape} and {target.shape}")
    p, t = quantize8(pred), quantize8(target)
    with np.errstate(divide="ignore"):
        ps = float(peak_signal_noise_ratio(t, p, data_range=1.0))
    ss = float(
        structural_similarity(
            t, p, channel_axis=2, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
        )
    )
    return {"psnr": ps, "ssim": ss}


# --------------------------------------------------------------------------------------------
# UIQM (Panetta, Gao & Agaian, IEEE JOE 2016)
# --------------------------------------------------------------------------------------------

UIQM_C = (0.0282, 0.2953, 3.5753)
UISM_LAMBDA = (0.299, 0.587, 0.114)
UIQM_BLOCK = 10  # EME / logAMEE block side in pixels, as the widely used reference code


def _trimmed_mean(x: np.ndarray, alpha_l: float = 0.1, alpha_r: float = 0.1) -> float:
    r"""α-trimmed mean: :math:`\frac{1}{K-T_L-T_R}\sum_{i=T_L+1}^{K-T_R} x_{(i)}`,
    :math:`T_L=\lceil\alpha_L K\rceil`, :math:`T_R=\lfloor\alpha_R K\rfloor` (plain mean if that empties)."""
    xs = np.sort(x.ravel())
    k = xs.size
    tl, tr = math.ceil(alpha_l * k), math.floor(alpha_r * k)
    kept = xs[tl : k - tr]
    return float(kept.mean() if kept.size else xs.mean())


def uicm(img: np.ndarray) -> float:
    r"""Underwater image colourfulness measure (0–255 scale).

    .. math::

        \mathrm{UICM} = -0.0268\sqrt{\mu_{\alpha,RG}^2+\mu_{\alpha,YB}^2}
                        + 0.1586\sqrt{\sigma_{\alpha,RG}^2+\sigma_{\alpha,YB}^2}

    with RG = R − G, YB = (R + G)/2 − B on the 0–255 scale, μ_α the α-trimmed mean
    (α_L = α_R = 0.1) and σ²_α = mean over all pixels of (x − μ_α)². A constant colour
    (200, 100, 50) gives −0.0268·100·√2.

    Args:
        img: ``H×W×3`` float RGB in ``[0, 1]``.
    """
    x = _check_np_image(img, "img").astype(np.float64) * 255.0
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    rg = (r - g).ravel()
    yb = ((r + g) / 2.0 - b).ravel()
    mu_rg, mu_yb = _trimmed_mean(rg), _trimmed_mean(yb)
    var_rg = float(np.mean((rg - mu_rg) ** 2))
    var_yb = float(np.mean((yb - mu_yb) ** 2))
    return -0.0268 * math.sqrt(mu_rg**2 + mu_yb**2) + 0.1586 * math.sqrt(var_rg + var_yb)


def _blocks(x: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-block max and min over ``block×block`` tiles (remainder cropped; a side shorter
    than ``block`` is one tile). Works on H×W or H×W×C (max/min over channels too)."""
    h, w = x.shape[:2]
    bh, bw = min(block, h), min(block, w)
    k2, k1 = h // bh, w // bw
    t = x[: k2 * bh, : k1 * bw].reshape(k2, bh, k1, bw, *x.shape[2:])
    axes = (1, 3) + tuple(range(4, t.ndim))
    return t.max(axis=axes), t.min(axis=axes)


def _eme(x: np.ndarray, block: int = UIQM_BLOCK) -> float:
    r"""EME :math:`=\frac{2}{k_1k_2}\sum_{k,l}\ln\frac{I_{\max,k,l}}{I_{\min,k,l}}`; blocks with
    :math:`I_{\min}\le 0` contribute 0 (as the reference code), which also guards log(0)."""
    mx, mn = _blocks(x, block)
    ok = mn > 0
    terms = np.zeros_like(mx, dtype=np.float64)
    terms[ok] = np.log(mx[ok] / mn[ok])
    return float(2.0 / mx.size * terms.sum())


def _sobel_magnitude(c: np.ndarray) -> np.ndarray:
    """|∇c| with scipy's 3×3 Sobel (reflect border): hypot of the two derivative responses."""
    return np.hypot(ndimage.sobel(c, axis=0, mode="reflect"), ndimage.sobel(c, axis=1, mode="reflect"))


def uism(img: np.ndarray, block: int = UIQM_BLOCK) -> float:
    r"""Underwater image sharpness measure.

    .. math:: \mathrm{UISM} = \sum_{c\in\{R,G,B\}} \lambda_c\,\mathrm{EME}(|\mathrm{Sobel}(c)| \odot c)

    λ = (0.299, 0.587, 0.114); EME over ``block×block``-pixel tiles (default 10×10, remainder
    cropped): :math:`\frac{2}{k_1k_2}\sum\ln(I_{\max}/I_{\min})`, tiles whose minimum is 0
    skipped. EME is a ratio, so the Sobel normalisation and the 0–255 scale do not matter.
    """
    x = _check_np_image(img, "img").astype(np.float64) * 255.0
    return float(sum(lam * _eme(_sobel_magnitude(x[..., c]) * x[..., c], block) for c, lam in enumerate(UISM_LAMBDA)))


def uiconm(img: np.ndarray, block: int = UIQM_BLOCK) -> float:
    r"""Underwater image contrast measure: logAMEE of the intensity I = (R + G + B)/3.

    .. math::

        \mathrm{UIConM} = -\frac{1}{k_1k_2}\sum_{k,l} r_{k,l}\ln r_{k,l},\qquad
        r = \frac{I_{\max}-I_{\min}}{I_{\max}+I_{\min}}

    over ``block×block``-pixel tiles, with ordinary arithmetic in place of the paper's PLIP
    operators (as the common reference code). Tiles with r = 0 (flat) add 0, the limit of
    r ln r, so there is no log(0). A tile holding 50 and 150 (0–255) gives −0.5 ln 0.5.
    """
    x = _check_np_image(img, "img").astype(np.float64) * 255.0
    mx, mn = _blocks(x.mean(axis=2), block)
    top, bot = mx - mn, mx + mn
    ok = (top > 0) & (bot > 0)
    r = np.zeros_like(top)
    r[ok] = top[ok] / bot[ok]
    terms = np.zeros_like(r)
    terms[ok] = r[ok] * np.log(r[ok])
    return float(-terms.sum() / mx.size)


def uiqm(img: np.ndarray, block: int = UIQM_BLOCK) -> float:
    r"""UIQM = 0.0282·UICM + 0.2953·UISM + 3.5753·UIConM (higher is better).

    Conventions (they vary between implementations): pixel values on the 0–255 scale; α-trimmed
    statistics with :math:`T_L=\lceil 0.1K\rceil`, :math:`T_R=\lfloor 0.1K\rfloor` (exact paper
    indexing, no off-by-one); 10×10-pixel tiles with the remainder cropped and :math:`k_1k_2` the
    integer tile count; Sobel magnitude × channel for UISM; UIConM on (R+G+B)/3 with ordinary
    arithmetic (no PLIP); degenerate tiles add 0. The input is used as given (no 8-bit
    rounding; the :data:`METRICS` entry rounds first).

    Args:
        img: ``H×W×3`` float RGB in ``[0, 1]``.

    Reference:
        Panetta, Gao & Agaian, "Human-Visual-System-Inspired Underwater Image Quality
        Measures", IEEE J. Oceanic Eng. 41(3), 2016.
    """
    c1, c2, c3 = UIQM_C
    return c1 * uicm(img) + c2 * uism(img, block) + c3 * uiconm(img, block)


# --------------------------------------------------------------------------------------------
# UCIQE (Yang & Sowmya, IEEE TIP 2015)
# --------------------------------------------------------------------------------------------

UCIQE_C = (0.4680, 0.2745, 0.2576)


def uciqe_components(img: np.ndarray) -> dict[str, float]:
    r"""The three UCIQE terms: ``sigma_c``, ``con_l``, ``mu_s``.

    CIELab from ``skimage.color.rgb2lab`` (sRGB, D65), then **normalised by 100** on every axis:
    :math:`L \in [0, 1]`, a and b (and so chroma :math:`C=\sqrt{a^2+b^2}`) on the same scale
    (sRGB chroma ≤ ≈1.34).

    * ``sigma_c``: standard deviation (population) of C.
    * ``con_l``: 99th minus 1st percentile of L (MATLAB ``stretchlim`` defaults, as the authors'
      code).
    * ``mu_s``: mean saturation :math:`C/\sqrt{C^2+L^2}` (the authors' code; in [0, 1]; 0 for
      black).
    """
    x = np.clip(_check_np_image(img, "img").astype(np.float64), 0.0, 1.0)
    lab = rgb2lab(x) / 100.0
    lum = lab[..., 0]
    chroma = np.hypot(lab[..., 1], lab[..., 2])
    den = np.hypot(chroma, lum)
    sat = np.divide(chroma, den, out=np.zeros_like(chroma), where=den > 1e-12)
    return {
        "sigma_c": float(chroma.std()),
        "con_l": float(np.percentile(lum, 99) - np.percentile(lum, 1)),
        "mu_s": float(sat.mean()),
    }


def uciqe(img: np.ndarray) -> float:
    r"""UCIQE = 0.4680·σ_c + 0.2745·con_l + 0.2576·μ_s (higher is better).

    See :func:`uciqe_components` for the normalisation (Lab / 100). A constant image scores
    0.2576·μ_s; half black / half white scores ≈ 0.2745.

    Reference:
        Yang & Sowmya, "An Underwater Color Image Quality Evaluation Metric", IEEE TIP 24(12), 2015.
    """
    c = uciqe_components(img)
    return UCIQE_C[0] * c["sigma_c"] + UCIQE_C[1] * c["con_l"] + UCIQE_C[2] * c["mu_s"]


# --------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------


class Metric(NamedTuple):
    """A registered metric: ``fn`` on numpy H×W×3 images, ``kind`` "paired"|"noref"."""

    fn: Callable[..., float]
    kind: str
    higher_is_better: bool


def _psnr8(pred: np.ndarray, target: np.ndarray) -> float:
    return score_pair(pred, target)["psnr"]


def _ssim8(pred: np.ndarray, target: np.ndarray) -> float:
    return score_pair(pred, target)["ssim"]


def _uiqm8(img: np.ndarray) -> float:
    return uiqm(quantize8(_check_np_image(img, "img")))


def _uciqe8(img: np.ndarray) -> float:
    return uciqe(quantize8(_check_np_image(img, "img")))


def _lpips8(pred: np.ndarray, target: np.ndarray, *, net: LPIPS) -> float:
    p = torch.from_numpy(quantize8(_check_np_image(pred, "pred"))).float().permute(2, 0, 1)[None]
    t = torch.from_numpy(quantize8(_check_np_image(target, "target"))).float().permute(2, 0, 1)[None]
    with torch.inference_mode():
        return float(lpips_metric(p, t, net)[0])


METRICS: dict[str, Metric] = {
    "psnr": Metric(_psnr8, "paired", True),
    "ssim": Metric(_ssim8, "paired", True),
    "lpips": Metric(_lpips8, "paired", False),
    "uiqm": Metric(_uiqm8, "noref", True),
    "uciqe": Metric(_uciqe8, "noref", True),
}
