"""``--temporal``: flicker removal on static scenes without smearing motion.

A restoration network applied frame by frame turns sensor noise into flicker: the output is
``y = x ⊙ G(x)`` (the Hadamard form; ``G`` is the per-pixel gain the network estimates), and
both factors move from frame to frame on a static scene: ``x`` by its noise, amplified by the
gain, and ``G`` by the network's response to that noise. This filter keeps a motion-gated
recursive average of both factors and recombines them::

    G_t  = (y_t + ε) ⊘ (x_t + ε)                       per pixel and channel: the estimated map
    m_t  = dilate3×3 |B(gray x_t) − B(gray X_{t−1})|    motion: block means (b×b) of the input
                                                        against the running average, so slow
                                                        drift also counts once it adds up
    w_t  = clip((m_t − lo) / (hi − lo), 0, 1)           0 = static, 1 = moving
    a_t  = a_static + (1 − a_static) · w_t              update rate per block
    X_t  = X_{t−1} + a_t (x_t − X_{t−1})                 (only with ``smooth_input``)
    Ĝ_t  = Ĝ_{t−1} + a_t (G_t − Ĝ_{t−1})
    out  = clip((X_t + ε) ⊙ Ĝ_t − ε, 0, 1)

Where the input moves, ``a = 1`` and ``out`` is exactly the network's output (no smearing);
where it is still, ``a = a_static`` averages about ``(2 − a)/a`` frames. With ``smooth_input``
off only the map is smoothed (the amplified input noise stays; the benchmark measures both).
The filter resets on a size change and after a source gap (the pipeline calls :meth:`reset`).

All arrays are C×H×W float32 in [0, 1] (the runner's layout, no extra conversion).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class TemporalFilter:
    """Motion-gated temporal smoothing of the Hadamard gain map (and the input); see the module docstring.

    Args:
        a_static: update rate of a static block (0.2: ≈ 9 frames averaged).
        lo, hi: block-mean differences (intensity in [0, 1]) below which a block is static and
            above which it is moving; the defaults sit well above the noise of an 8×8 block mean
            (σ_noise/8 ≈ 0.004 at σ = 0.03) and below the change a moving edge makes.
        block: side of the blocks motion is measured on.
        eps: keeps the gain finite where the input is black.
        smooth_input: also average the input on static blocks (removes amplified noise flicker).
    """

    a_static: float = 0.2
    lo: float = 0.012
    hi: float = 0.04
    block: int = 8
    eps: float = 1.0 / 64
    smooth_input: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.a_static <= 1:
            raise ValueError(f"a_static must be in (0, 1], got {self.a_static}")
        if not 0 <= self.lo < self.hi:
            raise ValueError(f"need 0 ≤ lo < hi, got lo={self.lo}, hi={self.hi}")
        self.reset()

    def reset(self) -> None:
        """Forget the history (next frame passes through unchanged)."""
        self._x: np.ndarray | None = None
        self._g: np.ndarray | None = None
        self._ref: np.ndarray | None = None  # block means of the running input average
        self.last_static_fraction = 0.0

    def _blocks(self, gray: np.ndarray) -> np.ndarray:
        b = self.block
        h, w = gray.shape
        ph, pw = -h % b, -w % b
        if ph or pw:
            gray = np.pad(gray, ((0, ph), (0, pw)), mode="edge")
        return gray.reshape(gray.shape[0] // b, b, gray.shape[1] // b, b).mean(axis=(1, 3))

    @staticmethod
    def _dilate(m: np.ndarray) -> np.ndarray:
        # 3×3 max: a block next to motion counts as moving, so an edge entering it is not smeared.
        p = np.pad(m, 1, mode="edge")
        out = m.copy()
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                np.maximum(out, p[dy:dy + m.shape[0], dx:dx + m.shape[1]], out=out)
        return out

    def __call__(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """One frame: ``x`` input, ``y`` the network's output (3×H×W float32) → the filtered output."""
        eps = np.float32(self.eps)
        g = (y + eps) / (x + eps)
        blocks = self._blocks(x.mean(axis=0))
        if self._x is None or self._x.shape != x.shape:
            self._x, self._g, self._ref = x.copy(), g, blocks
            self.last_static_fraction = 0.0
            return y
        moving = np.clip((self._dilate(np.abs(blocks - self._ref)) - self.lo) / (self.hi - self.lo), 0.0, 1.0)
        a_blocks = (self.a_static + (1.0 - self.a_static) * moving).astype(np.float32)
        self.last_static_fraction = float((moving == 0).mean())
        self._ref += a_blocks * (blocks - self._ref)
        b = self.block
        h, w = x.shape[1:]
        a = np.repeat(np.repeat(a_blocks, b, axis=0), b, axis=1)[None, :h, :w]
        self._g += a * (g - self._g)
        if self.smooth_input:
            self._x += a * (x - self._x)
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


__all__ = ["TemporalFilter", "mean_abs_frame_diff"]
