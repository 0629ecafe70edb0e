"""Map upsamplers of the edge network (DESIGN §10 step 3): low-resolution map → full resolution.

The Hadamard maps (illumination L, transmission t) are smooth or piecewise smooth, so the edge
network estimates them on a box-downscaled input; these modules bring them back to full
resolution. Each is ``module(p_low, image_full, image_low) -> p_full`` with

    p_low       N×C×h×w      the map at low resolution
    image_full  N×3×H×W      the input image (h = ⌈H/s⌉, w = ⌈W/s⌉)
    image_low   N×3×h×w      the same image, box-downscaled by s (:func:`box_downscale`)

Upsamplers (registry :data:`UPSAMPLERS`; the genotype's ``macro.upsample`` names one):

``bilinear``   p_full = bilinear(p_low). Ignores the guide; map edges blur over s pixels.

``guided``     fast guided-filter upsampling (He & Sun, "Fast Guided Filter", 2015): fit the
               local linear model p ≈ a·I + b at low resolution in (2r+1)² windows,
               a = cov(I, p) / (var(I) + ε), b = mean(p) − a·mean(I), average a, b over the
               windows, upsample them bilinearly and evaluate q = ā↑·I_full + b̄↑ with the
               full-resolution guide. Map edges then follow the image's edges (no halo at a
               shadow boundary) at the cost of six box filters at low resolution and one
               multiply-add at full resolution. Guide: luminance 0.299 R + 0.587 G + 0.114 B.

``learned``    the same filter with a guide computed by a small learned network
               (1×1 conv 3→2, ReLU, 1×1 conv 2→1, after Wu et al., "Fast End-to-End Trainable
               Guided Filter", CVPR 2018), applied to the full image and to the downscaled one.

The guide is divided by its per-image mean |guide| at low resolution (+0.01), so ε is relative:
var(I) of a night shot (mean 0.05) and of a hazy one (mean 0.6) mean the same thing to it. The
division is folded into the low-resolution coefficients (a/m), so it costs nothing at full
resolution.

Full resolution is never padded: the downscale averages the valid pixels of the partial blocks
at the bottom/right edge (AveragePool, ceil_mode, count_include_pad=0) and the upsampling
resizes to the exact input size (Resize ``linear`` with the input's shape). Every op here is one
TensorRT runs: AveragePool, Resize (linear, half_pixel), ReduceMean, Abs, Mul/Add/Sub/Div,
MatMul (the per-pixel channel mixes, :mod:`hbl_edge.pixelwise`), Concat, Slice, Relu.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .errors import GenotypeError
from .pixelwise import box_filter, pointwise
from .registry import Registry

LUMA = (0.299, 0.587, 0.114)
GUIDE_MEAN_OFFSET = 0.01  # keeps the normalised guide finite on a black frame
LEARNED_GUIDE_WIDTH = 2  # each hidden channel costs 3 multiply-adds per full-resolution pixel


def box_downscale(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Antialiased downscale by an integer factor: the mean of each s×s block.

    N×C×H×W → N×C×⌈H/s⌉×⌈W/s⌉; a partial block at the bottom/right edge averages the pixels it
    has (ceil_mode, count_include_pad=0), so no input size needs padding.
    """
    if scale == 1:
        return x
    return F.avg_pool2d(x, scale, stride=scale, ceil_mode=True, count_include_pad=False)


def upsample_to(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Bilinear resize of ``x`` to the H×W of ``like`` (half-pixel centres, ONNX Resize ``linear``)."""
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


def luminance(image: torch.Tensor) -> torch.Tensor:
    """N×3×H×W RGB → N×1×H×W luminance (Rec. 601 weights), one MatMul (:func:`pointwise`)."""
    return pointwise(image, image.new_tensor([LUMA]))


def guide_scale(guide_low: torch.Tensor) -> torch.Tensor:
    """N×1×1×1: the per-image mean |guide| at low resolution (+0.01) that normalises the guide.

    (|·| because a learned guide may come out negative; the filter does not care about its sign.)
    """
    return guide_low.abs().mean(dim=(2, 3), keepdim=True) + GUIDE_MEAN_OFFSET


def guided_upsample(
    p_low: torch.Tensor, guide_full: torch.Tensor, guide_low: torch.Tensor, radius: int, eps: float
) -> torch.Tensor:
    """Fast guided-filter upsampling (module docstring): p_low N×C×h×w → N×C×H×W.

    The guide (N×1, shared by every map channel) is normalised by :func:`guide_scale` m: the
    fit uses I/m at low resolution, and the output ā·(I/m) + b̄ is evaluated as (ā/m)·I + b̄,
    with the division done on the low-resolution coefficients.
    """
    m = guide_scale(guide_low)
    g = guide_low / m
    mean_i = box_filter(g, radius)
    mean_p = box_filter(p_low, radius)
    cov_ip = box_filter(g * p_low, radius) - mean_i * mean_p
    var_i = box_filter(g * g, radius) - mean_i * mean_i
    a = cov_ip / (var_i + eps)
    b = mean_p - a * mean_i
    # both coefficient maps in one Resize: at 600×400 one 2-channel Resize took 0.5 ms where two
    # 1-channel ones took 0.8 (ONNX Runtime, 2 threads)
    c = p_low.shape[1]
    ab_full = upsample_to(torch.cat([box_filter(a, radius) / m, box_filter(b, radius)], dim=1), guide_full)
    a_full, b_full = ab_full.split(c, dim=1)  # one Split node, not two Slices
    return a_full * guide_full + b_full


class Upsampler(nn.Module):
    """Base: ``forward(p_low, image_full, image_low) -> p_full`` (images N×3, maps N×C)."""

    def __init__(self, scale: int, radius: int, eps: float) -> None:
        super().__init__()
        self.scale, self.radius, self.eps = scale, radius, eps


class BilinearUpsampler(Upsampler):
    """``bilinear``: ignores the image."""

    def forward(self, p_low: torch.Tensor, image_full: torch.Tensor, image_low: torch.Tensor) -> torch.Tensor:
        return p_low if self.scale == 1 else upsample_to(p_low, image_full)


class GuidedUpsampler(Upsampler):
    """``guided``: fast guided-filter upsampling with the (normalised) luminance as guide."""

    def guide(self, image: torch.Tensor) -> torch.Tensor:
        # luminance is linear, so luminance(box(x)) = box(luminance(x)): the low-resolution
        # guide comes from the low-resolution image, with no pooling at full resolution
        return luminance(image)

    def forward(self, p_low: torch.Tensor, image_full: torch.Tensor, image_low: torch.Tensor) -> torch.Tensor:
        if self.scale == 1:  # nothing to upsample: the map already has the image's resolution
            return p_low
        return guided_upsample(p_low, self.guide(image_full), self.guide(image_low), self.radius, self.eps)


class LearnedGuideUpsampler(GuidedUpsampler):
    """``learned``: guided-filter upsampling with a learned guide, g = W2·ReLU(W1·x + c1) + c2
    (W1: 3→width, W2: width→1, each one MatMul, :func:`pointwise`).

    Initialised to the luminance (W1 = the luma weights replicated, c = 0, W2 = 1/width), so
    training starts from ``guided`` and learns away from it only where that pays off.
    """

    def __init__(self, scale: int, radius: int, eps: float) -> None:
        super().__init__(scale, radius, eps)
        k = LEARNED_GUIDE_WIDTH
        self.conv1 = nn.Conv2d(3, k, 1)
        self.conv2 = nn.Conv2d(k, 1, 1)
        with torch.no_grad():
            self.conv1.weight.copy_(torch.tensor(LUMA).reshape(1, 3, 1, 1).expand(k, 3, 1, 1))
            self.conv1.weight.add_(0.05 * torch.randn_like(self.conv1.weight))  # break the symmetry
            self.conv1.bias.zero_()
            self.conv2.weight.fill_(1.0 / k)
            self.conv2.bias.zero_()

    def guide(self, image: torch.Tensor) -> torch.Tensor:
        w1, b1 = self.conv1.weight[:, :, 0, 0], self.conv1.bias
        w2, b2 = self.conv2.weight[:, :, 0, 0], self.conv2.bias
        return pointwise(torch.relu(pointwise(image, w1, b1)), w2, b2)


UPSAMPLERS: Registry[type[Upsampler]] = Registry("map upsampler", GenotypeError)
UPSAMPLERS.add("bilinear", BilinearUpsampler)
UPSAMPLERS.add("guided", GuidedUpsampler)
UPSAMPLERS.add("learned", LearnedGuideUpsampler)


def make_upsampler(name: str, scale: int, radius: int = 1, eps: float = 1e-2) -> Upsampler:
    return UPSAMPLERS.get(name)(scale, radius, eps)


__all__ = [
    "UPSAMPLERS", "Upsampler", "BilinearUpsampler", "GuidedUpsampler", "LearnedGuideUpsampler",
    "make_upsampler", "guided_upsample", "box_filter", "box_downscale", "upsample_to", "luminance",
    "guide_scale",
]
