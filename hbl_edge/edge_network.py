"""The resolution-decoupled edge network (DESIGN §10): maps at low resolution, inverse at full.

For a genotype with a macro section (``hbl-genotype/2``, :class:`hbl_edge.genotype.Macro`)::

    y (N×3×H×W, any H, W ≥ 1; never padded at full resolution)
      ─ box-downscale by s (mean of s×s blocks: antialiased; partial edge blocks
        average the pixels they have)                                                = y_s (⌈H/s⌉×⌈W/s⌉)
      ─ HNU network (the paper's structure, §2, unchanged inside) on y_s padded to a
        multiple of 4 (reflect, at low resolution); its tail outputs the task's maps,
        cropped back to ⌈H/s⌉×⌈W/s⌉:   z  (map_channels, + 3 for scattering)
      ─ map head:  retinex      L_s = σ(z + b)
                   scattering   t_s = σ(z_t + b_t),  A = σ(mean_{h,w}(z_A) + b_A)  (one RGB per image)
      ─ upsample the map to exactly H×W, guided by y (hbl_edge.upsample)              = L or t
      ─ inverse model at full resolution:
                   retinex      x = c·y ⊘ max(L, ε)  (c: the exposure gain, applied as L_s/c)
                   scattering   x = (y − A) ⊘ max(t, t₀) + A
      ─ optional refinement branch at full resolution: x + R(x), R = a few registry ops
        (3→C_r, ReLU, …, C_r→3), its last linear map zero-initialised so training starts
        at x; ``mix_1x1`` / ``boxmix_3x3`` / ``boxmix_5x5`` are MatMul ops, far cheaper at 3
        channels than a Conv (one of them alone computes x + R(x) in its MatMul)
                                                                                      = output

What the network costs at full resolution is a few elementwise passes (the pooling, the
upsampler's resize and multiply-add, the division) plus the refinement branch when it is on; the
HNU network runs on H·W/s² pixels. ``s = 1`` is the paper network with a physical output layer.

Export protocol: :class:`EdgeNetwork` is a :class:`~hbl_edge.network.Network`, so the existing
export path takes it. ``fold_batchnorm`` folds the BatchNorms of its HNUs (the ``units``
property is the inner network's chain; nothing else here has BatchNorm). It takes every input
size itself, which it declares with ``input_multiple = 1`` (the export graph then skips its own
padding to a multiple of 4, two full-resolution Gathers); the low-resolution padding
(:func:`pad_low`) is two ONNX Pads on the symbolic size, so one ONNX graph serves every input size.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import GenotypeError
from .genotype import Genotype, Macro
from .network import PAD_MULTIPLE, Network
from .ops import last_linear_weight, make_op
from .upsample import box_downscale, make_upsampler

#: Initial map-head biases (logits): the maps start at σ(b) where the network has learned nothing.
#: L = 0.5 (a 2× gain), t = 0.7 (light haze), A = 0.8 (a bright airlight).
INITIAL_LOGITS = {"L": 0.0, "t": 0.85, "A": 1.4}


# ---------------------------------------------------------------------------------------------
# Inverse models (pure functions; the network applies them at full resolution)
# ---------------------------------------------------------------------------------------------
def retinex_inverse(y: torch.Tensor, illumination: torch.Tensor, floor: float | torch.Tensor) -> torch.Tensor:
    """x = y ⊘ max(L, ε). y N×3×H×W; L N×1×H×W or N×3×H×W (broadcast); ε a number, or a tensor
    that broadcasts (the network's ε/c when the exposure gain is folded into L)."""
    if isinstance(floor, torch.Tensor):
        return y / torch.maximum(illumination, floor)
    return y / torch.clamp(illumination, min=floor)


def scattering_inverse(y: torch.Tensor, transmission: torch.Tensor, airlight: torch.Tensor, floor: float) -> torch.Tensor:
    """J = (y − A) ⊘ max(t, t₀) + A. y N×3×H×W; t N×1|3×H×W; A N×3×1×1 (or any broadcastable)."""
    return (y - airlight) / torch.clamp(transmission, min=floor) + airlight


# ---------------------------------------------------------------------------------------------
# Trace-safe padding and cropping
# ---------------------------------------------------------------------------------------------
def pad_low(x: torch.Tensor, multiple: int = PAD_MULTIPLE) -> torch.Tensor:
    """Pad H and W up to a multiple of ``multiple`` (bottom/right): reflect, and where a side is
    too small to reflect that far (reflection needs pad < size), reflect what it can and
    replicate the rest. Where both sides can reflect this is
    :func:`hbl_edge.network.pad_to_multiple`; the two differ only on images under ``multiple``
    pixels high or wide (pad_to_multiple then replicates the whole pad on both axes).

    Exported as ONNX ``Pad`` (reflect, then edge) with pads computed from the symbolic H, W, so
    one graph serves every size. Why not the reflect-or-replicate choice of pad_to_multiple: a
    choice between two pads of different sizes is a Where over index tensors and two Gathers,
    which took 0.14 ms at the 150×100 of a 600×400 input at s = 4 (ONNX Runtime), where the two
    Pads take 0.02.
    """
    if not torch.jit.is_tracing() and x.shape[2] % multiple == 0 and x.shape[3] % multiple == 0:
        return x
    h, w = _size(x, 2), _size(x, 3)
    ph, pw = (-h) % multiple, (-w) % multiple
    rh, rw = _minimum(ph, h - 1), _minimum(pw, w - 1)
    x = F.pad(x, (0, rw, 0, rh), mode="reflect")
    if torch.jit.is_tracing() or rh < ph or rw < pw:
        x = F.pad(x, (0, pw - rw, 0, ph - rh), mode="replicate")
    return x


def _minimum(a, b):
    """min of two ints, or of two traced 0-d tensors (the tracer would freeze Python's min)."""
    return torch.minimum(a, b) if isinstance(a, torch.Tensor) else min(a, b)


def _size(x: torch.Tensor, dim: int):
    """x.shape[dim] as an int, or as a traced 0-d tensor under the tracer (for dynamic slicing)."""
    return torch.as_tensor(x.shape[dim]) if torch.jit.is_tracing() else x.shape[dim]


# ---------------------------------------------------------------------------------------------
# Parts
# ---------------------------------------------------------------------------------------------
class MapNetwork(Network):
    """The paper's HNU network (§2, unchanged inside) whose tail outputs the task's maps.

    Input N×3×h×w; output N×``macro.out_channels``×h×w logits (no activation).
    """

    @property
    def out_channels(self) -> int:  # type: ignore[override]
        return self.genotype.macro.out_channels


class MapHead(nn.Module):
    """Logits → maps: σ(z + b) for L / t; A = σ(mean(z_A) + b_A), one RGB value per image."""

    def __init__(self, macro: Macro) -> None:
        super().__init__()
        self.model, self.map_channels = macro.model, macro.map_channels
        if macro.model == "retinex":
            init = [INITIAL_LOGITS["L"]] * macro.map_channels
        else:
            init = [INITIAL_LOGITS["t"]] * macro.map_channels + [INITIAL_LOGITS["A"]] * 3
        self.bias = nn.Parameter(torch.tensor(init).reshape(1, -1, 1, 1))
        if macro.model == "retinex":
            # the global exposure gain of EdgeNetwork.calibrate_exposure (1: none); a buffer, not
            # trained: it is fitted after training on whole frames, where the crops cannot see it
            self.register_buffer("exposure", torch.ones(1))

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(map N×C×h×w, airlight N×3×1×1 or None)."""
        if self.model == "retinex":
            return torch.sigmoid(z + self.bias), None
        c = self.map_channels
        t = torch.sigmoid(z[:, :c] + self.bias[:, :c])
        a = torch.sigmoid(z[:, c:].mean(dim=(2, 3), keepdim=True) + self.bias[:, c:])
        return t, a


class Refinement(nn.Module):
    """x + R(x) at full resolution; R = op₁ (3→C_r), ReLU, …, op_k (C_r→3); k = 1: one 3→3 op.

    The last op's last conv starts at zero, so the branch starts as the identity and only
    learns a correction (noise, detail) the inverse model cannot express.
    """

    def __init__(self, ops: tuple[str, ...], width: int) -> None:
        super().__init__()
        chans = [3] + [width] * (len(ops) - 1) + [3]
        self.ops = nn.ModuleList(make_op(op, chans[i], chans[i + 1]) for i, op in enumerate(ops))
        nn.init.zeros_(last_linear_weight(self.ops[-1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.ops) == 1 and hasattr(self.ops[0], "residual"):
            return self.ops[0].residual(x)  # a MatMul op: x + R(x) in its own MatMul, no Add pass
        r = x
        for k, op in enumerate(self.ops):
            if k > 0:
                r = torch.relu(r)
            r = op(r)
        return x + r


@torch.no_grad()
def map_head_start(macro: Macro, z: torch.Tensor, inputs: torch.Tensor,
                   targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
    """The map head's bias that makes the first batch's maps right on average.

    ``z``: the inner network's logits on the batch (N×C×h×w, before the head). Then

    - retinex: mean L = mean(y) / mean(x) per channel (clipped to [floor, 0.99]): the global
      gain is right from step 0 instead of being learned through the whole network, which took
      hundreds of steps on LOL (L ≈ 0.1–0.2 against the σ(0) = 0.5 start);
    - scattering: one global t and A fitted to the batch by least squares on the model itself,
      y_c = t_c · x_c + (1 − t_c) · A_c per channel (slope t, intercept (1 − t)·A; one t shared
      over the channels when the map has one channel), clipped to [floor, 0.99] and [0.01, 0.99].
      Without it, t = 0.7 and A = 0.8 fixed, one underwater seed in three never left the
      identity-like start (docs/benchmarks.md).

    Returns the bias (the head's shape) and what was set.
    """
    c = macro.map_channels
    z_mean = z.mean(dim=(0, 2, 3))
    if macro.model == "retinex":
        ratio = inputs.mean(dim=(0, 2, 3)) / targets.mean(dim=(0, 2, 3)).clamp(min=1e-4)  # per RGB channel
        level = (ratio.mean().reshape(1) if c == 1 else ratio).clamp(macro.floor, 0.99)
        return (torch.logit(level) - z_mean).reshape(1, c, 1, 1), {"L": [round(float(v), 4) for v in level]}
    y = inputs.transpose(0, 1).reshape(3, -1).double()
    x = targets.transpose(0, 1).reshape(3, -1).double()
    xm, ym = x.mean(dim=1), y.mean(dim=1)
    var = ((x - xm[:, None]) ** 2).mean(dim=1).clamp(min=1e-8)
    slope = ((x - xm[:, None]) * (y - ym[:, None])).mean(dim=1) / var
    t = (slope.mean().expand(3) if c == 1 else slope).clamp(macro.floor, 0.99)
    a = ((ym - t * xm) / (1.0 - t)).clamp(0.01, 0.99)
    t_set = t[:1] if c == 1 else t
    bias = torch.cat([torch.logit(t_set) - z_mean[:c].double(), torch.logit(a) - z_mean[c:].double()])
    return bias.float().reshape(1, c + 3, 1, 1), {"t": [round(float(v), 4) for v in t_set],
                                                 "A": [round(float(v), 4) for v in a]}


# ---------------------------------------------------------------------------------------------
# The network
# ---------------------------------------------------------------------------------------------
class EdgeNetwork(Network):
    """The resolution-decoupled network of an ``hbl-genotype/2`` genotype (module docstring).

    Input N×3×H×W in [0, 1], any H, W ≥ 1; output N×3×H×W (unbounded; clamp for images).
    Attributes: ``core`` (:class:`MapNetwork`), ``head`` (:class:`MapHead`), ``upsampler``,
    ``refine`` (:class:`Refinement` or None).
    """

    def __init__(self, genotype: Genotype) -> None:
        nn.Module.__init__(self)  # Network.__init__ would build the paper layers at this level
        if genotype.macro is None:
            raise GenotypeError("EdgeNetwork needs a genotype with a 'macro' section (hbl-genotype/2)")
        m = genotype.macro
        self.genotype = genotype
        self.macro = m
        self.core = MapNetwork(genotype)
        self.head = MapHead(m)
        self.upsampler = make_upsampler(m.upsample, m.scale, m.radius, m.eps)
        self.refine = Refinement(m.refine, m.refine_channels) if m.refine else None

    @property
    def units(self) -> nn.ModuleList:  # type: ignore[override]
        """The HNU chain of the inner network (what ``fold_batchnorm`` folds)."""
        return self.core.units

    #: Any input size is taken as it is (export protocol: the export graph pads to this multiple).
    input_multiple = 1

    def maps(self, y: torch.Tensor, map_gain: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The full-resolution maps of an input (for inspection and tests).

        ``{"L": N×C×H×W}`` (retinex) or ``{"t": N×C×H×W, "A": N×3×1×1}`` (scattering).
        ``map_gain`` multiplies the map at low resolution, before the upsampling: every upsampler
        is linear in the map, so this is the full-resolution map times the gain.
        """
        m = self.macro
        low = box_downscale(y, m.scale)
        z = self.core(pad_low(low))[:, :, : _size(low, 2), : _size(low, 3)]
        p_low, airlight = self.head(z)
        if map_gain is not None:
            p_low = p_low * map_gain
        p_full = self.upsampler(p_low, y, low)
        if m.model == "retinex":
            return {"L": p_full}
        return {"t": p_full, "A": airlight}

    @torch.no_grad()
    def init_from_data(self, inputs: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
        """Data-dependent start of the map head (training calls this once, on its first batch);
        :func:`map_head_start` says what is set. Returns it."""
        z = self.core(pad_low(box_downscale(inputs, self.macro.scale)))
        bias, info = map_head_start(self.macro, z, inputs, targets)
        self.head.bias.copy_(bias)
        return info

    #: State added after bundles were first written, with the value an older bundle means.
    optional_state = {"head.exposure": 1.0}

    @torch.no_grad()
    def calibrate_exposure(self, frames: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float | None:
        """Fit the retinex output's global gain on whole frames: c* = ⟨o, y⟩ / ⟨o, o⟩, pooled.

        Why: a network trained on crops with L1 settles its global exposure by seed and by
        candidate, mostly too dark on whole frames (LOL: outputs 0.28–0.40 against references
        0.46; docs/benchmarks.md), and PSNR is a squared error. One least-squares gain over the
        training frames (``frames``: (input, target) pairs, 1×3×H×W each, from the *training*
        split) moves the exposure to where the training references put it; the gain is kept in
        ``head.exposure`` and multiplies the inverse's output before the refinement (applied as
        a division of the low-resolution map by c, :meth:`forward`, so it costs no
        full-resolution pass). Returns c* (None for a scattering network: no exposure gain).
        """
        if self.macro.model != "retinex":
            return None
        self.head.exposure.fill_(1.0)
        num = den = 0.0
        for inp, tgt in frames:
            out = self(inp).clamp(0, 1)
            num += float((out * tgt).sum())
            den += float((out * out).sum())
        gain = num / den if den > 0 else 1.0
        self.head.exposure.fill_(gain)
        return gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected an N×3×H×W image batch, got shape {tuple(x.shape)}")
        if self.macro.model == "retinex":
            # c·x ⊘ max(L, ε) = x ⊘ max(L/c, ε/c), and L/c is the upsampled L_low/c: the exposure
            # gain c is applied to the low-resolution map, which saves a multiply over the
            # 3-channel full-resolution image
            inv_gain = 1.0 / self.head.exposure
            out = retinex_inverse(x, self.maps(x, map_gain=inv_gain)["L"], self.macro.floor * inv_gain)
        else:
            maps = self.maps(x)
            out = scattering_inverse(x, maps["t"], maps["A"], self.macro.floor)
        if self.refine is not None:
            out = self.refine(out)
        return out


def build_network(genotype) -> Network:
    """The network of any genotype (alias of :meth:`Network.from_genotype`)."""
    return Network.from_genotype(genotype)


__all__ = [
    "EdgeNetwork", "MapNetwork", "MapHead", "Refinement", "build_network", "retinex_inverse",
    "scattering_inverse", "pad_low", "INITIAL_LOGITS", "map_head_start",
]
