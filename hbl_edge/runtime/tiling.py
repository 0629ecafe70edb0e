"""Overlapping-tile inference for images too large to process in one piece.

The network is fully convolutional and, in eval mode, its output at a pixel depends only on a
neighbourhood of the input, so an image can be cut into overlapping tiles, each enhanced on
its own, and blended back. Overlaps are blended with linear ramps (feathering) so tile seams
do not show. Works on numpy arrays with any ``run(batch N×3×h×w) -> N×3×h×w`` function, so
every backend (torch, onnxruntime, TensorRT) shares it.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

RunFn = Callable[[np.ndarray], np.ndarray]

#: Images above this many pixels are tiled automatically (≈ 4 MP keeps peak memory near 2 GB).
DEFAULT_MAX_PIXELS = 4_000_000
DEFAULT_TILE = 1024
DEFAULT_OVERLAP = 64


def _starts(size: int, tile: int, step: int) -> list[int]:
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, step))
    starts.append(size - tile)
    return starts


def _ramp(length: int, overlap: int, at_start: bool, at_end: bool) -> np.ndarray:
    """1-D blending weights: linear ramps over the overlap on interior sides."""
    w = np.ones(length, dtype=np.float32)
    r = min(overlap, length // 2)
    if r > 0:
        ramp = (np.arange(r, dtype=np.float32) + 0.5) / r
        if not at_start:
            w[:r] = ramp
        if not at_end:
            w[-r:] = ramp[::-1]
    return w


def run_tiled(run: RunFn, image: np.ndarray, tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP) -> np.ndarray:
    """Enhance one C×H×W float32 image tile by tile; returns C×H×W."""
    if tile <= 2 * overlap:
        raise ValueError(f"tile ({tile}) must be larger than twice the overlap ({overlap})")
    c, h, w = image.shape
    out = np.zeros((3, h, w), dtype=np.float32)
    weight = np.zeros((1, h, w), dtype=np.float32)
    step = tile - overlap
    ys, xs = _starts(h, tile, step), _starts(w, tile, step)
    for y in ys:
        for x in xs:
            patch = image[:, y:y + tile, x:x + tile]
            res = run(patch[None])[0]
            ph, pw = patch.shape[1:]
            wy = _ramp(ph, overlap, y == 0, y + ph >= h)
            wx = _ramp(pw, overlap, x == 0, x + pw >= w)
            wgt = wy[:, None] * wx[None, :]
            out[:, y:y + ph, x:x + pw] += res * wgt
            weight[:, y:y + ph, x:x + pw] += wgt
    return out / np.maximum(weight, 1e-8)


def run_image(
    run: RunFn,
    image: np.ndarray,
    *,
    tile: int | None = None,
    overlap: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Enhance one H×W×3 image in [0,1]; tiles when ``tile`` is set or the image is large.

    ``overlap`` defaults to 64 px, or a quarter of a smaller tile.
    """
    chw = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)
    h, w = image.shape[:2]
    if tile is None and h * w > max_pixels:
        tile = DEFAULT_TILE
    if tile is not None and (h > tile or w > tile):
        if overlap is None:
            overlap = min(DEFAULT_OVERLAP, tile // 4)
        out = run_tiled(run, chw, tile=tile, overlap=overlap)
    else:
        out = run(chw[None])[0]
    return np.clip(out.transpose(1, 2, 0), 0.0, 1.0)
