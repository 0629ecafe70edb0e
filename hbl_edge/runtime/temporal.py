"""``--temporal``: flicker removal on static scenes without smearing motion.

A restoration network applied frame by frame turns sensor noise into flicker: on a still scene
each frame's noise is amplified (the output is ``y = x ⊙ G(x)``, ``G`` the per-pixel gain the
network estimates) and the network's response to it changes from frame to frame. This filter
averages over time where, and only where, the input is still::

    σ    = noise of s(x) = x_R + x_G + x_B, Immerkær's estimator (central crop, every few frames, averaged)
    z_b  = mean_b |s(x_t) − S_{t−1}| / (σ_d √(2/π))   per b×b block: the change against the running
                                                      average S of s(x), in units of what noise alone
                                                      gives (≈ 1 on a still block; σ_d is the
                                                      noise of that difference)
    w_b  = clip((dilate3×3 z_b − lo) / (hi − lo), 0, 1)          0 = still, 1 = moving
    a    = a_static + (1 − a_static) · w                          update rate of each block
    S_t  = S_{t−1} + a (s(x_t) − S_{t−1})
    out  = Ŷ_t = Ŷ_{t−1} + a (y_t − Ŷ_{t−1})                      (mode "output", the default)

Where the input moves, ``a = 1`` and ``out`` is exactly the network's output (no smearing);
where it is still, ``a = a_static`` averages about ``(2 − a)/a`` frames. Measuring the change
per pixel (the mean absolute difference in a block, not a difference of block means) and in
noise units makes the gate see a slow pan of fine texture and stay shut on noise, at any
exposure.

What is averaged (``mode``), measured in ``bench/temporal.py`` (docs/runtime.md, "Temporal"):

- ``"output"`` (default): the output itself. Least flicker, and the closest to the network's
  output on a noise-free input.
- ``"map"``: only the Hadamard gain map ``G = (y + ε) ⊘ (x + ε)``, recombined with the current
  input: ``out = (x + ε) ⊙ Ĝ − ε``. It *adds* flicker: the network's map partly cancels the
  input's noise (G is low where the noise is high), and a smoothed map no longer does.
- ``"map+input"``: the map and the input, ``out = (X̂ + ε) ⊙ Ĝ − ε``. Nearly as steady as
  ``"output"`` but biased (E[G] ≠ G(E[x]): dark regions come out brighter).

The filter resets on a size change and after a source gap (the pipeline calls :meth:`reset`).
All arrays are C×H×W float32 in [0, 1] (the runner's layout, no extra conversion).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MODES = ("output", "map", "map+input")


def noise_sigma(gray: np.ndarray) -> float:
    """Standard deviation of white noise in ``gray`` (H×W float), Immerkær's fast estimator
    (J. Immerkær, "Fast noise variance estimation", CVIU 1996): the image convolved with
    [[1,−2,1],[−2,4,−2],[1,−2,1]], which cancels linear structure, σ = √(π/2)/6 · mean |·|."""
    g = gray
    c = (g[:-2, :-2] + g[:-2, 2:] + g[2:, :-2] + g[2:, 2:]
         - 2 * (g[:-2, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] + g[2:, 1:-1]) + 4 * g[1:-1, 1:-1])
    return float(math.sqrt(math.pi / 2) / 6 * np.abs(c).mean())


@dataclass
class TemporalFilter:
    """Motion-gated temporal averaging of a network's output; see the module docstring.

    Args:
        a_static: update rate of a still block (0.2: ≈ 9 frames averaged).
        lo, hi: block change in noise units (≈ 1 for noise alone) below which a block is still and
            above which it is moving.
        block: side of the blocks motion is measured on.
        mode: ``"output"`` | ``"map"`` | ``"map+input"`` (what is averaged, see above).
        eps: keeps the gain map finite where the input is black (the map modes).
        min_sigma: floor of the noise estimate (per channel, ≈ 8-bit quantisation), so a clean
            synthetic or heavily compressed picture does not turn every tiny change into motion.
        noise_every: re-estimate the noise every this many frames (it is a camera property).
    """

    a_static: float = 0.2
    lo: float = 1.3
    hi: float = 2.5
    block: int = 8
    mode: str = "output"
    eps: float = 1.0 / 64
    min_sigma: float = 0.5 / 255
    noise_every: int = 8

    def __post_init__(self) -> None:
        if not 0 < self.a_static <= 1:
            raise ValueError(f"a_static must be in (0, 1], got {self.a_static}")
        if not 0 <= self.lo < self.hi:
            raise ValueError(f"need 0 ≤ lo < hi, got lo={self.lo}, hi={self.hi}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        self.reset()

    def reset(self) -> None:
        """Forget the history (the next frame passes through unchanged)."""
        self._shape: tuple[int, ...] | None = None
        self._ref: np.ndarray | None = None  # running average of s(x), H×W
        self._y: np.ndarray | None = None  # running output (mode "output")
        self._g: np.ndarray | None = None  # running gain map (map modes)
        self._x: np.ndarray | None = None  # running input ("map+input")
        self._sigma: float | None = None
        self._n = 0
        #: fraction of blocks judged still in the last frame (for tests and curiosity)
        self.last_still_fraction = 0.0

    # -- pieces ---------------------------------------------------------------------------
    def _block_mean(self, a: np.ndarray) -> np.ndarray:
        b = self.block
        h, w = a.shape
        ph, pw = -h % b, -w % b
        if ph or pw:
            a = np.pad(a, ((0, ph), (0, pw)), mode="edge")
        return a.reshape(a.shape[0] // b, b, a.shape[1] // b, b).mean(axis=(1, 3))

    @staticmethod
    def _dilate(m: np.ndarray) -> np.ndarray:
        # 3×3 max: a block next to motion counts as moving, so an edge entering it is not smeared.
        p = np.pad(m, 1, mode="edge")
        out = m.copy()
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                np.maximum(out, p[dy:dy + m.shape[0], dx:dx + m.shape[1]], out=out)
        return out

    def _noise(self, s: np.ndarray) -> float:
        if self._sigma is None or self._n % self.noise_every == 0:
            h, w = s.shape
            ch, cw = min(h, 256), min(w, 256)  # a central crop: the estimate needs pixels, not all of them
            y0, x0 = (h - ch) // 2, (w - cw) // 2
            est = noise_sigma(s[y0:y0 + ch, x0:x0 + cw]) if ch >= 3 and cw >= 3 else 0.0
            self._sigma = est if self._sigma is None else 0.7 * self._sigma + 0.3 * est
        self._n += 1
        return max(self._sigma, self.min_sigma * math.sqrt(3))  # s sums 3 channels

    def _blend(self, state: np.ndarray, new: np.ndarray, a_blocks: np.ndarray) -> None:
        """state += a · (new − state), a constant per block (broadcast, no full-size rate map)."""
        b = self.block
        diff = np.subtract(new, state)
        h, w = diff.shape[-2:]
        if h % b == 0 and w % b == 0:
            lead = diff.shape[:-2]
            view = diff.reshape(*lead, h // b, b, w // b, b)
            view *= a_blocks[:, None, :, None]
        else:
            diff *= np.repeat(np.repeat(a_blocks, b, axis=0), b, axis=1)[:h, :w]
        state += diff

    # -- one frame ------------------------------------------------------------------------
    def __call__(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """``x`` input, ``y`` the network's output (3×H×W float32) → the filtered output (do not
        modify it in place: it is the filter's state in the default mode)."""
        s = x[0] + x[1]
        s += x[2]
        if self._shape != x.shape:
            self.reset()
            self._shape = x.shape
            self._ref = s
            self._noise(s)
            if self.mode == "output":
                self._y = y.copy()
            else:
                eps = np.float32(self.eps)
                self._g = (y + eps) / (x + eps)
                self._x = x.copy() if self.mode == "map+input" else None
            return y
        sigma = self._noise(s)
        # Noise of s(x_t) − S: the frame's own plus what is left in the running average.
        sigma_d = sigma * math.sqrt(1 + self.a_static / (2 - self.a_static))
        change = np.subtract(s, self._ref)
        np.abs(change, out=change)
        z = self._block_mean(change) * (1.0 / (sigma_d * math.sqrt(2 / math.pi)))
        moving = np.clip((self._dilate(z) - self.lo) / (self.hi - self.lo), 0.0, 1.0)
        self.last_still_fraction = float((moving == 0).mean())
        a_blocks = (self.a_static + (1.0 - self.a_static) * moving).astype(np.float32)
        self._blend(self._ref, s, a_blocks)
        if self.mode == "output":
            self._blend(self._y, y, a_blocks)
            return self._y
        eps = np.float32(self.eps)
        self._blend(self._g, (y + eps) / (x + eps), a_blocks)
        if self.mode == "map+input":
            self._blend(self._x, x, a_blocks)
            base = self._x
        else:
            base = x
        out = (base + eps) * self._g
        out -= eps
        return np.clip(out, 0.0, 1.0, out=out)


def mean_abs_frame_diff(frames: list[np.ndarray] | np.ndarray) -> float:
    """Mean |f_t − f_{t−1}| over a clip (any shape per frame, same scale): the flicker measure."""
    arr = np.asarray(frames, dtype=np.float32)
    if arr.shape[0] < 2:
        raise ValueError("need at least two frames")
    return float(np.abs(np.diff(arr, axis=0)).mean())


__all__ = ["MODES", "TemporalFilter", "mean_abs_frame_diff", "noise_sigma"]
