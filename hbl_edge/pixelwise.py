"""Full-resolution primitives, written for how ONNX Runtime's CPU provider executes them.

An edge network spends most of its time in a few passes over the full-resolution image, with
one to three channels. There a Conv node is the wrong tool (ONNX Runtime's NCHWc layout adds
reorders that cost more than the arithmetic), so the per-pixel linear maps of the network, the
map upsamplers and the refinement ops are written with these two:

``pointwise(x, W, b)``  y = W·x + b at every pixel: one MatMul on the N×C×(H·W) view.
``box_filter(x, r)``    the (2r+1)² mean, windows clipped at the border: one AveragePool.

Both are ops TensorRT runs natively (MatMul with Shuffle, Pooling), and both export with the
input's symbolic size, so one ONNX graph serves every resolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pointwise(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """y = W·x + b at every pixel (a 1×1 convolution), computed as one MatMul over the pixels.

    x N×C×H×W, weight O×C, bias O or None → N×O×H×W. Why not ``F.conv2d``: at full resolution
    with 3 channels ONNX Runtime's CPU Conv costs 1.5–1.8 ms at 600×400 (its NCHWc reorders),
    where the MatMul on the N×C×(H·W) view costs about 0.1 ms beyond the memory pass
    (``bench/refine_ops.py``); against per-channel slices and multiply-adds, the luminance
    (1×3) took 0.13 ms instead of 0.20. The reshapes are traced on the input's shape, so one
    ONNX graph serves every size; TensorRT runs MatMul and Shuffle natively.
    """
    n, _, h, w = x.shape
    y = torch.matmul(weight, x.flatten(2)).reshape(n, weight.shape[0], h, w)
    return y if bias is None else y + bias.reshape(1, -1, 1, 1)


def box_filter(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over (2r+1)² windows, same size; windows are clipped at the border (not zero-padded).

    N×C×H×W → N×C×H×W. AveragePool with count_include_pad=0 in ONNX.
    """
    return F.avg_pool2d(x, 2 * radius + 1, stride=1, padding=radius, count_include_pad=False)


__all__ = ["pointwise", "box_filter"]
