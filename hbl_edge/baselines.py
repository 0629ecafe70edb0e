"""Classical, parameter-free baselines, one registry (the peers of PEERS.md).

Every baseline maps a numpy ``H×W×3`` float RGB image in ``[0, 1]`` to one of the same shape,
dtype float32, clipped to ``[0, 1]``; all are deterministic.

========== ========== ==========================================================================
name       task       method
========== ========== ==========================================================================
gamma      lowlight   auto-gamma mapping the mean luminance to 0.45
clahe      lowlight   CLAHE on CIELab L, colour (a, b) kept
dcp        dehaze     dark channel prior + guided-filter refinement
grayworld  underwater gray-world white balance
========== ========== ==========================================================================

Look one up with :func:`get_baseline`; add one with :func:`register_baseline`.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
from scipy import ndimage
from skimage import exposure
from skimage.color import lab2rgb, rgb2lab

from .errors import ConfigError
from .registry import Registry

log = logging.getLogger(__name__)

__all__ = [
    "Baseline",
    "BASELINES",
    "register_baseline",
    "get_baseline",
    "time_baselines",
    "auto_gamma",
    "clahe",
    "guided_filter",
    "dark_channel",
    "dehaze_dcp",
    "gray_world",
]

ImageFn = Callable[[np.ndarray], np.ndarray]
LUMA = np.array([0.299, 0.587, 0.114])  # Rec. 601 luma weights


@dataclass(frozen=True)
class Baseline:
    """A registered baseline: ``fn`` maps H×W×3 float [0, 1] → H×W×3 float32 [0, 1]."""

    name: str
    task: str
    fn: ImageFn
    doc: str

    def __call__(self, img: np.ndarray) -> np.ndarray:
        return self.fn(img)


BASELINES: Registry[Baseline] = Registry("baseline", ConfigError)


def register_baseline(name: str, task: str) -> Callable[[ImageFn], ImageFn]:
    """Register ``fn`` as baseline ``name`` for ``task``; the doc is its docstring's first line."""

    def deco(fn: ImageFn) -> ImageFn:
        doc = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        BASELINES.add(name, Baseline(name, task, fn, doc))
        return fn

    return deco


def get_baseline(name: str) -> Baseline:
    """The registered baseline ``name``; unknown names raise :class:`ConfigError` listing the known ones."""
    return BASELINES.get(name)


def time_baselines(names: Sequence[str], resolution: Sequence[int], *, warmup: int = 2, repeats: int = 9,
                   seed: int = 0) -> dict[str, list[float]]:
    """Every timed call (ms) of each baseline on one seeded random float32 H×W×3 image.

    ``resolution`` is (W, H). After ``warmup`` untimed calls each, ``repeats`` rounds in which
    every baseline runs once (so a burst of load from another process hits all alike). For
    reference only: a classical method's time is how it is written (float32 vs float64 numpy),
    not a latency target.
    """
    import time

    w, h = resolution
    img = np.random.default_rng(seed).random((h, w, 3), dtype=np.float32)
    fns = {n: get_baseline(n).fn for n in names}
    for fn in fns.values():
        for _ in range(warmup):
            fn(img)
    samples: dict[str, list[float]] = {n: [] for n in fns}
    for _ in range(repeats):
        for n, fn in fns.items():
            t0 = time.perf_counter()
            fn(img)
            samples[n].append((time.perf_counter() - t0) * 1e3)
    return samples


def _check(img: Any) -> np.ndarray:
    if not isinstance(img, np.ndarray):
        raise TypeError(f"img must be a numpy array H×W×3, got {type(img).__name__}")
    if img.ndim != 3 or img.shape[2] != 3 or img.shape[0] < 1 or img.shape[1] < 1:
        raise ValueError(f"img must have shape H×W×3 (RGB), got {img.shape}")
    if not np.issubdtype(img.dtype, np.floating):
        raise TypeError(f"img must be float RGB in [0, 1], got dtype {img.dtype}")
    return np.clip(img.astype(np.float64), 0.0, 1.0)


def _out(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------------------------
# low light
# --------------------------------------------------------------------------------------------


@register_baseline("gamma", "lowlight")
def auto_gamma(img: np.ndarray, target: float = 0.45) -> np.ndarray:
    r"""Auto-gamma: :math:`x^{\gamma}` per channel with :math:`\gamma = \ln 0.45 / \ln \bar Y`.

    :math:`\bar Y` is the mean Rec. 601 luma (0.299 R + 0.587 G + 0.114 B), clamped to
    ``[1e-4, 1 − 1e-4]`` so black or white images stay finite. A constant image maps exactly
    to luma 0.45; otherwise to ≈0.45 (Jensen). The PEERS.md "auto-gamma (mean → 0.45)" peer.
    """
    x = _check(img)
    mean = float(np.clip((x @ LUMA).mean(), 1e-4, 1.0 - 1e-4))
    gamma = math.log(target) / math.log(mean)
    return _out(x**gamma)


@register_baseline("clahe", "lowlight")
def clahe(img: np.ndarray, clip_limit: float = 0.01) -> np.ndarray:
    """CLAHE (``skimage.exposure.equalize_adapthist``, default 1/8-image tiles) on CIELab L; a, b kept.

    Reference: Zuiderveld, "Contrast Limited Adaptive Histogram Equalization", Graphics Gems IV, 1994.
    """
    x = _check(img)
    lab = rgb2lab(x)
    lab[..., 0] = exposure.equalize_adapthist(lab[..., 0] / 100.0, clip_limit=clip_limit) * 100.0
    with warnings.catch_warnings():
        # Brightening can push a colour out of the sRGB gamut; clipping it is the intended behaviour.
        warnings.filterwarnings("ignore", message="Conversion from CIE-LAB", category=UserWarning)
        return _out(lab2rgb(lab))


# --------------------------------------------------------------------------------------------
# dehazing
# --------------------------------------------------------------------------------------------


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float = 1e-3) -> np.ndarray:
    r"""Gray-guide guided filter with box means (He, Sun & Tang, TPAMI 2013, Alg. 1).

    .. math::

        a = \frac{\operatorname{cov}_\omega(I, p)}{\operatorname{var}_\omega(I) + \epsilon},\quad
        b = \bar p_\omega - a\,\bar I_\omega,\quad q = \bar a_\omega I + \bar b_\omega

    with :math:`\omega` a ``(2r+1)²`` box (``scipy.ndimage.uniform_filter``, reflect border).

    Args:
        guide, src: ``H×W`` float arrays.
        radius: box radius r.
        eps: regularisation ε.
    """
    if guide.shape != src.shape or guide.ndim != 2:
        raise ValueError(f"guide and src must be equal H×W arrays, got {guide.shape} and {src.shape}")
    size = 2 * int(radius) + 1

    def box(a: np.ndarray) -> np.ndarray:
        return ndimage.uniform_filter(a, size=size, mode="reflect")

    mean_i, mean_p = box(guide), box(src)
    cov_ip = box(guide * src) - mean_i * mean_p
    var_i = box(guide * guide) - mean_i * mean_i
    a = cov_ip / (var_i + eps)
    b = mean_p - a * mean_i
    return box(a) * guide + box(b)


def dark_channel(img: np.ndarray, patch: int = 15) -> np.ndarray:
    """Dark channel: min over RGB, then a ``patch×patch`` minimum filter (H×W)."""
    return ndimage.minimum_filter(img.min(axis=2), size=patch, mode="nearest")


@register_baseline("dcp", "dehaze")
def dehaze_dcp(
    img: np.ndarray,
    patch: int = 15,
    omega: float = 0.95,
    t0: float = 0.1,
    top: float = 0.001,
    radius: int | None = None,
    eps: float = 1e-3,
) -> np.ndarray:
    r"""Dark channel prior dehazing with guided-filter refinement.

    1. Airlight A: per-channel mean of the input over the brightest ``top`` = 0.1 % pixels of
       the dark channel (at least one pixel); the mean, rather than He's single brightest
       pixel, is less sensitive to one saturated pixel.
    2. Transmission :math:`\tilde t = 1 - \omega\,\mathrm{dark}(I / A)`, ``patch`` 15, ω = 0.95.
    3. Refined by :func:`guided_filter` guided by the luma, ε = 1e-3, radius
       ``round(0.15·min(H, W))`` (60 for a 600×400 image) unless given.
    4. :math:`J = (I - A)/\max(t, t_0) + A`, t0 = 0.1, clipped to [0, 1].

    Reference:
        He, Sun & Tang, "Single Image Haze Removal Using Dark Channel Prior", CVPR 2009 / TPAMI
        2011; "Guided Image Filtering", TPAMI 2013.
    """
    x = _check(img)
    h, w = x.shape[:2]
    dark = dark_channel(x, patch)
    n = max(1, int(round(top * h * w)))
    idx = np.argpartition(dark.ravel(), -n)[-n:]
    airlight = np.maximum(x.reshape(-1, 3)[idx].mean(axis=0), 1e-3)
    t = 1.0 - omega * dark_channel(x / airlight, patch)
    r = max(1, int(round(0.15 * min(h, w)))) if radius is None else int(radius)
    t = np.clip(guided_filter(x @ LUMA, t, r, eps), t0, 1.0)
    return _out((x - airlight) / t[..., None] + airlight)


# --------------------------------------------------------------------------------------------
# underwater
# --------------------------------------------------------------------------------------------


@register_baseline("grayworld", "underwater")
def gray_world(img: np.ndarray) -> np.ndarray:
    r"""Gray-world white balance: :math:`x_c \cdot \bar\mu / \mu_c`, clipped to [0, 1].

    :math:`\mu_c` is the mean of channel c and :math:`\bar\mu` the mean of the three channel means.

    A channel with mean < 1e-6 (absent) is left unscaled rather than blown up.

    Reference: Buchsbaum, "A spatial processor model for object colour perception", 1980.
    """
    x = _check(img)
    mu = x.reshape(-1, 3).mean(axis=0)
    gray = mu.mean()
    scale = np.where(mu > 1e-6, gray / np.maximum(mu, 1e-6), 1.0)
    return _out(x * scale)
