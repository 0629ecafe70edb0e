"""Task registry: the three Hadamard restoration tasks and their synthetic degradations.

Each task is one observation model y = f(x) that the network inverts as
"numerator ⊘ multiplicative map" (DESIGN.md §1):

    lowlight    y = x ⊙ L                         L ∈ (0, 1] illumination (Retinex)
    dehaze      y = J ⊙ t + A (1 − t)             t = exp(−β d) transmission, A airlight
    underwater  y_c = J_c t_c + B_c (1 − t_c)     t_c = exp(−β_c d), red attenuated most

The degradation functions synthesise training pairs from clean photos by drawing those maps
with random, physically plausible parameters. They take every random number from the
``rng`` argument (same seed -> identical output) and a fixed number of draws per call
regardless of image size. All arrays are H×W×3 float32 in [0, 1]; 256×256 takes a few ms.

Each ``degrade_*`` function also takes ``return_map=True`` to return ``(y, maps)`` with the
true maps (``{"L"}``, ``{"t", "A"}``, ``{"t", "B"}``, each broadcastable to H×W×3), so
tests and diagnostics can invert the model exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from hbl_edge.errors import ConfigError

DegradeFn = Callable[[np.ndarray, np.random.Generator], np.ndarray]

GENERIC_LAYOUTS: tuple[tuple[str, str], ...] = (("input", "target"),)


@dataclass(frozen=True)
class Task:
    """One restoration task.

    Attributes:
        name: registry key ("lowlight", "dehaze", "underwater").
        title: human-readable name.
        model: the Hadamard observation model, in words.
        degrade: clean H×W×3 float32 [0, 1] + rng -> degraded, same shape, [0, 1].
        default_loss: loss-term weights λ_k used when the user does not search them.
        edge_default_loss: the same for an edge network (DESIGN §10): plain L1, because terms
            that reward a smooth output (ssim, tv, laplacian) train an edge network, which has
            no full-resolution stage to denoise with, towards a darker output (measured on
            LOL-15: docs/benchmarks.md, "The loss terms of an edge network").
        noref_metrics: no-reference quality metrics designed for the task; unpaired evaluation of a
            task without any falls back to UIQM/UCIQE as generic colourfulness, sharpness and
            contrast indicators (see ``hbl_edge.evaluate``).
        baselines: classical (training-free) baselines evaluated alongside the network.
        layouts: (input_dir, target_dir) folder names typical for the task, first choice first.
        inverse: the inverse model an edge network applies at full resolution (DESIGN §10):
            ``retinex`` (x = y ⊘ max(L, ε)) or ``scattering`` (J = (y − A) ⊘ max(t, t₀) + A);
            an edge genotype's ``macro.model`` must name it.
    """

    name: str
    title: str
    model: str
    degrade: DegradeFn = field(repr=False)
    default_loss: dict[str, float] = field(hash=False)  # treat as read-only
    noref_metrics: tuple[str, ...]
    baselines: tuple[str, ...]
    layouts: tuple[tuple[str, str], ...]
    inverse: str = "retinex"
    edge_default_loss: dict[str, float] = field(default_factory=lambda: {"l1": 1.0}, hash=False)

    def default_loss_for(self, genotype: Any) -> dict[str, float]:
        """The default loss of a network of ``genotype`` (a :class:`~hbl_edge.genotype.Genotype`)."""
        return self.edge_default_loss if getattr(genotype, "macro", None) is not None else self.default_loss


# ------------------------------------------------------------------------ random fields

def smooth_field(height: int, width: int, rng: np.random.Generator, *,
                 cycles: float = 1.5, waves: int = 6) -> np.ndarray:
    """A smooth random field in [0, 1], H×W float64.

    field(u, v) = Σ_k a_k cos(2π (f_k · (u, v)) + φ_k), min-max normalised, with
    a_k ~ N(0, 1), |f_k| ≤ ``cycles`` per (longer) image side, φ_k ~ U[0, 2π).
    Coordinates are scaled by the longer side so the field is isotropic; cos(A + B) is
    expanded into two outer products so the cost is O(H·W) per wave without any
    H×W transcendental calls. The number of draws does not depend on the size.
    """
    freq = rng.uniform(-cycles, cycles, size=(waves, 2))
    phase = rng.uniform(0.0, 2.0 * math.pi, size=waves)
    amp = rng.standard_normal(waves)
    side = float(max(height, width))
    u = (np.arange(width) + 0.5) / side
    v = (np.arange(height) + 0.5) / side
    out = np.zeros((height, width))
    for (fx, fy), p, a in zip(freq, phase, amp):
        ax = 2.0 * math.pi * fx * u + p
        by = 2.0 * math.pi * fy * v
        out += a * (np.outer(np.cos(by), np.cos(ax)) - np.outer(np.sin(by), np.sin(ax)))
    return _minmax(out)


def _minmax(x: np.ndarray) -> np.ndarray:
    lo, hi = float(x.min()), float(x.max())
    return (x - lo) / (hi - lo) if hi - lo > 1e-12 else np.full_like(x, 0.5)


def _blur_luminance(image: np.ndarray, factor: int = 16) -> np.ndarray:
    """Heavily blurred luminance (box down-sample ×1/factor, bilinear up), H×W in [0, 1]."""
    h, w = image.shape[:2]
    lum = (image @ np.array([0.299, 0.587, 0.114])).astype(np.float32)
    small = Image.fromarray(lum, "F").resize((max(1, w // factor), max(1, h // factor)),
                                             Image.Resampling.BOX)
    return np.asarray(small.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float64)


def depth_proxy(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A plausible relative scene depth d ∈ [0, 1] (1 = far), H×W float64.

    d ∝ w_v (1 − y/H)^p + w_h (x/W − ½) + w_s field + w_l blur(luminance), min-max
    normalised, with p ~ U[0.5, 2], w_v ~ U[0.4, 1], w_h ~ U[−0.3, 0.3], w_s ~ U[0.1, 0.5],
    w_l ~ U[0, 0.4]. Outdoor and underwater scenes usually recede towards the top of the
    frame, and bright flat regions are often sky / open water (far), hence the terms.
    """
    h, w = image.shape[:2]
    p, wv, wh, ws, wl = (rng.uniform(0.5, 2.0), rng.uniform(0.4, 1.0), rng.uniform(-0.3, 0.3),
                         rng.uniform(0.1, 0.5), rng.uniform(0.0, 0.4))
    rows = (1.0 - (np.arange(h) + 0.5) / h) ** p
    cols = (np.arange(w) + 0.5) / w - 0.5
    depth = wv * rows[:, None] + wh * cols[None, :] + ws * smooth_field(h, w, rng, cycles=1.0)
    return _minmax(depth + wl * _blur_luminance(image))


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _check(clean: np.ndarray) -> np.ndarray:
    clean = np.asarray(clean)
    if clean.ndim != 3 or clean.shape[2] != 3:
        raise ValueError(f"degradations expect an H×W×3 image, got shape {clean.shape}")
    return clean.astype(np.float64, copy=False)


def _finish(y: np.ndarray) -> np.ndarray:
    return np.clip(y, 0.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------------- degradations

def degrade_lowlight(clean: np.ndarray, rng: np.random.Generator, *, noise: bool = True,
                     return_map: bool = False):
    """Retinex low light: y = clip(x ⊙ L + n).

    L = e · r^γ ⊙ c, with
      r   relative illumination in (0, 1]: 1 + a·field + Σ_k g_k·exp(−|p − p_k|²/2s_k²),
          divided by its maximum; a ~ U[0, 1.5], 0–3 light pools g_k ~ U[0.5, 2],
          s_k ~ U[0.1, 0.4] (longer side = 1);
      γ   ~ U[0.8, 1.6], sharpens or softens the fall-off away from the lights;
      c   illuminant tint per channel, U[0.85, 1] normalised to max 1;
      e   exposure, chosen so that mean(y) = m with m log-uniform in [0.03, 0.2] (the
          range of LOL low images), capped at 1 so L ≤ 1.
    Noise (Poisson–Gaussian, Gaussian approximation, signal dependent):
      n = k_c · sqrt(a_s · x⊙L + σ_r²) · N(0, 1), a_s log-U[1e-4, 3e-3] (shot),
      σ_r log-U[5e-4, 1e-2] (read), k_c ~ U[0.8, 1.25] per channel (after white balance
      the channels are amplified differently, so the noise is mildly coloured).
    With ``noise=False`` the map is the same and x = y ⊘ L holds exactly (x·L ≤ 1).
    """
    x = _check(clean)
    h, w, _ = x.shape
    side = float(max(h, w))
    u = (np.arange(w) + 0.5) / side
    v = (np.arange(h) + 0.5) / side
    rel = 1.0 + rng.uniform(0.0, 1.5) * smooth_field(h, w, rng, cycles=1.5)
    for _ in range(int(rng.integers(0, 4))):
        cx, cy = rng.uniform(0, w / side), rng.uniform(0, h / side)
        gain, s = rng.uniform(0.5, 2.0), rng.uniform(0.1, 0.4)
        rel += gain * np.outer(np.exp(-((v - cy) ** 2) / (2 * s * s)),
                               np.exp(-((u - cx) ** 2) / (2 * s * s)))
    rel = (rel / rel.max()) ** rng.uniform(0.8, 1.6)
    tint = rng.uniform(0.85, 1.0, size=3)
    shading = rel[:, :, None] * (tint / tint.max())
    target_mean = _log_uniform(rng, 0.03, 0.2)
    exposure = min(1.0, target_mean / max(float(np.mean(x * shading)), 1e-6))
    illum = exposure * shading
    y = x * illum
    shot, read = _log_uniform(rng, 1e-4, 3e-3), _log_uniform(rng, 5e-4, 1e-2)
    chroma = rng.uniform(0.8, 1.25, size=3)
    if noise:
        y = y + chroma * np.sqrt(shot * y + read * read) * rng.standard_normal(y.shape, dtype=np.float32)
    y = _finish(y)
    return (y, {"L": illum.astype(np.float32)}) if return_map else y


def degrade_dehaze(clean: np.ndarray, rng: np.random.Generator, *, return_map: bool = False):
    """Atmospheric scattering (Koschmieder): y = J ⊙ t + A (1 − t), t = exp(−β d).

      d   = d₀ + (1 − d₀)·depth_proxy, d₀ ~ U[0, 0.3] (nearest point is not at the camera);
      β   ~ U[0.6, 2.2], so t ∈ [0.11, 1] — light haze to thick fog at the far end;
      A   = a·(1 + δ_c), a ~ U[0.7, 1.0], δ_c ~ U[−0.04, 0.04] per channel, clipped ≤ 1
            (near-white, slightly tinted airlight, as in RESIDE's A ∈ [0.7, 1]).
    No noise: haze benchmarks are synthesised without it.
    """
    x = _check(clean)
    depth = depth_proxy(x, rng)
    near = rng.uniform(0.0, 0.3)
    beta = rng.uniform(0.6, 2.2)
    airlight = np.minimum(rng.uniform(0.7, 1.0) * (1.0 + rng.uniform(-0.04, 0.04, size=3)), 1.0)
    t = np.exp(-beta * (near + (1.0 - near) * depth))[:, :, None]
    y = _finish(x * t + airlight * (1.0 - t))
    if return_map:
        return y, {"t": t.astype(np.float32), "A": airlight.astype(np.float32)}
    return y


def degrade_underwater(clean: np.ndarray, rng: np.random.Generator, *,
                       return_map: bool = False):
    """Underwater image formation: y_c = J_c t_c + B_c (1 − t_c), t_c = exp(−β_c d) · (1 − v).

    Water type (coin flip), attenuation per unit distance β = (β_r, β_g, β_b):
      blue water   β_r ~ U[1.2, 2.4], β_g ~ U[0.35, 0.8], β_b ~ U[0.1, 0.5],
                   B ~ (U[0, 0.15], U[0.35, 0.6], U[0.55, 0.85]);
      green water  β_r ~ U[1.2, 2.4], β_g ~ U[0.1, 0.5],  β_b ~ U[0.35, 0.9],
                   B ~ (U[0, 0.15], U[0.5, 0.8], U[0.3, 0.6]).
    Red is always attenuated most (β_r ≥ 1.2 > β_g, β_b). Distance d = d₀ + s·depth_proxy,
    d₀ ~ U[0.3, 1], s ~ U[0.5, 1.5]. With probability ½ an extra veil v ~ U[0, 0.15] (forward
    scattering / turbidity) is folded into t, which keeps the model exactly Hadamard.
    This is the simplified Jaffe–McGlamery form behind most synthetic underwater sets: one β
    per channel for both direct and backscattered light (Akkaynak & Treibitz's revised model
    separates the two; the Hadamard inverse form needs the single map).
    """
    x = _check(clean)
    beta_r = rng.uniform(1.2, 2.4)
    if rng.integers(0, 2) == 0:  # blue water
        beta = np.array([beta_r, rng.uniform(0.35, 0.8), rng.uniform(0.1, 0.5)])
        background = np.array([rng.uniform(0, 0.15), rng.uniform(0.35, 0.6), rng.uniform(0.55, 0.85)])
    else:  # green water
        beta = np.array([beta_r, rng.uniform(0.1, 0.5), rng.uniform(0.35, 0.9)])
        background = np.array([rng.uniform(0, 0.15), rng.uniform(0.5, 0.8), rng.uniform(0.3, 0.6)])
    depth = depth_proxy(x, rng)
    distance = rng.uniform(0.3, 1.0) + rng.uniform(0.5, 1.5) * depth
    veil = rng.uniform(0.0, 0.15) if rng.random() < 0.5 else 0.0
    t = np.exp(-beta * distance[:, :, None]) * (1.0 - veil)
    y = _finish(x * t + background * (1.0 - t))
    if return_map:
        return y, {"t": t.astype(np.float32), "B": background.astype(np.float32)}
    return y


# -------------------------------------------------------------------------- registry

TASKS: dict[str, Task] = {
    "lowlight": Task(
        name="lowlight",
        title="Low-light enhancement",
        model="Retinex: observed = clean ⊙ illumination, illumination in (0, 1]",
        degrade=degrade_lowlight,
        default_loss={"l1": 1.0, "ssim": 1.0},
        noref_metrics=(),
        baselines=("gamma", "clahe"),
        layouts=(("low", "high"),) + GENERIC_LAYOUTS,
    ),
    "dehaze": Task(
        name="dehaze",
        title="Dehazing",
        model="atmospheric scattering: observed = clean ⊙ t + airlight·(1 − t), t = exp(−β·depth)",
        degrade=degrade_dehaze,
        default_loss={"l1": 1.0, "ssim": 1.0},
        noref_metrics=(),
        baselines=("dcp",),
        layouts=(("hazy", "clear"), ("hazy", "GT")) + GENERIC_LAYOUTS,
        inverse="scattering",
    ),
    "underwater": Task(
        name="underwater",
        title="Underwater enhancement",
        model="underwater formation: observed_c = clean_c ⊙ t_c + B_c·(1 − t_c), "
              "per-channel t_c, red attenuated most",
        degrade=degrade_underwater,
        default_loss={"l1": 1.0, "ssim": 1.0, "color": 1.0},
        noref_metrics=("uiqm", "uciqe"),
        baselines=("grayworld",),
        layouts=(("raw", "reference"), ("trainA", "trainB")) + GENERIC_LAYOUTS,
        inverse="scattering",
    ),
}

def invert(task: str | Task, observed: np.ndarray, maps: dict[str, np.ndarray], floor: float = 1e-3) -> np.ndarray:
    """The task's inverse model with known maps (numpy; the maps a ``degrade_*(…, return_map=True)``
    returns): retinex x = y ⊘ max(L, floor); scattering J = (y − A) ⊘ max(t, floor) + A, with A
    the airlight (dehaze, ``maps["A"]``) or the background light (underwater, ``maps["B"]``).

    The edge network (hbl_edge.edge_network) applies the same two formulas to maps it estimates.
    """
    task = get_task(task)
    y = np.asarray(observed, dtype=np.float64)
    if task.inverse == "retinex":
        return y / np.maximum(maps["L"], floor)
    light = maps["A"] if "A" in maps else maps["B"]
    return (y - light) / np.maximum(maps["t"], floor) + light


_ALIASES = {"low-light": "lowlight", "low_light": "lowlight", "haze": "dehaze",
            "dehazing": "dehaze", "uw": "underwater"}


def get_task(name: str | Task) -> Task:
    """The task registered under ``name`` (case-insensitive; a Task passes through)."""
    if isinstance(name, Task):
        return name
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in TASKS:
        raise ConfigError(f"unknown task '{name}'; choose one of: {', '.join(TASKS)}")
    return TASKS[key]
