"""Op registry: the candidate operations of the search spaces (DESIGN §3).

Every op is bias-free with "same" padding, so a feature map keeps its size through any edge.
Ops are built by one factory, :func:`make_op`, from a registered name; the search spaces are
named lists of those names (:data:`SPACES`). Adding an op is one ``@register_op`` function;
adding a space is one :class:`Space` entry.

Why bias-free: inside a Hadamard unit every op is followed by BatchNorm (which would cancel a
bias), and at inference BatchNorm is folded back into the preceding conv (see
:func:`hbl_edge.network.fold_batchnorm`), which is where a bias reappears.

**Folding protocol.** Every op class implements ``fold_output_affine(scale, shift) -> nn.Module``:
a new module computing ``op(x) · scale + shift`` per output channel (what "op, then
running-statistics BatchNorm" is at inference), with the affine folded into the op's last conv
(or, for the parameter-free identity, a :class:`ChannelAffine`). The op itself is left
untouched. :func:`hbl_edge.network.fold_batchnorm` relies only on this method, so a new op
class that implements it folds without touching network.py.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .errors import GenotypeError
from .registry import Registry
from .pixelwise import box_filter, pointwise

OpFactory = Callable[[int, int], nn.Module]
OPS: Registry[OpFactory] = Registry("op", GenotypeError)


def register_op(name: str) -> Callable[[OpFactory], OpFactory]:
    """Register an op factory ``(c_in, c_out) -> nn.Module`` under ``name``."""
    return OPS.register(name)


def conv2d(c_in: int, c_out: int, k: int, dilation: int = 1, bias: bool = False) -> nn.Conv2d:
    """A k×k conv with "same" zero padding (for odd k), optionally dilated."""
    return nn.Conv2d(c_in, c_out, k, padding=dilation * (k // 2), dilation=dilation, bias=bias)


@torch.no_grad()
def fold_into_conv(conv: nn.Conv2d, scale: torch.Tensor, shift: torch.Tensor) -> nn.Conv2d:
    """A new conv with bias computing ``conv(x) · scale + shift`` per output channel."""
    fused = nn.Conv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
        padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True,
    ).to(conv.weight)
    fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(shift)
    fused.bias.copy_(bias * scale + shift)
    return fused


def _with_folded_last_conv(op: nn.Module, attr: str, scale: torch.Tensor, shift: torch.Tensor) -> nn.Module:
    """A deep copy of ``op`` whose last conv (``op.<attr>``) carries the output affine."""
    folded = copy.deepcopy(op)
    setattr(folded, attr, fold_into_conv(getattr(op, attr), scale, shift))
    return folded


class ChannelAffine(nn.Module):
    """y = x · scale + shift per channel: what skip_connect + BatchNorm becomes after folding."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", scale.reshape(1, -1, 1, 1).clone())
        self.register_buffer("shift", shift.reshape(1, -1, 1, 1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


class Identity(nn.Module):
    """``skip_connect``: y = x (parameter-free)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        if c_in != c_out:
            raise GenotypeError(
                f"skip_connect needs equal input and output channels, got {c_in}→{c_out}; "
                "use a conv op on this edge"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def fold_output_affine(self, scale: torch.Tensor, shift: torch.Tensor) -> nn.Module:
        return ChannelAffine(scale, shift)


class Conv(nn.Module):
    """``conv_kxk`` / ``dilconv_3x3``: y = W ⋆ x."""

    def __init__(self, c_in: int, c_out: int, k: int, dilation: int = 1) -> None:
        super().__init__()
        self.conv = conv2d(c_in, c_out, k, dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)

    def fold_output_affine(self, scale: torch.Tensor, shift: torch.Tensor) -> nn.Module:
        return fold_into_conv(self.conv, scale, shift)


class ResConv(nn.Module):
    """``resconv_kxk`` / ``resdilconv_3x3``: y = W ⋆ x + x.

    At inference the identity is re-parameterised into the kernel's centre tap
    (:meth:`as_conv`), so the residual costs nothing after export.
    """

    def __init__(self, c_in: int, c_out: int, k: int, dilation: int = 1) -> None:
        super().__init__()
        if c_in != c_out:
            raise GenotypeError(f"residual ops need equal channels, got {c_in}→{c_out}")
        self.conv = conv2d(c_in, c_out, k, dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + x

    @torch.no_grad()
    def as_conv(self) -> nn.Conv2d:
        """An equivalent single conv (identity folded into the centre tap)."""
        conv = self.conv
        fused = conv2d(conv.in_channels, conv.out_channels, conv.kernel_size[0], conv.dilation[0])
        fused = fused.to(conv.weight)
        fused.weight.copy_(conv.weight)
        centre = conv.kernel_size[0] // 2
        idx = torch.arange(conv.out_channels)
        fused.weight[idx, idx, centre, centre] += 1.0
        return fused

    def fold_output_affine(self, scale: torch.Tensor, shift: torch.Tensor) -> nn.Module:
        # Re-parameterise the residual first, so the folded op is one conv with bias.
        return fold_into_conv(self.as_conv(), scale, shift)


class DenseBlock(nn.Module):
    """``denseblocks_kxk``: y1 = ReLU(W1 ⋆ x); y = W2 ⋆ concat[x, y1] (2C → C)."""

    def __init__(self, c_in: int, c_out: int, k: int) -> None:
        super().__init__()
        if c_in != c_out:
            raise GenotypeError(f"dense blocks need equal channels, got {c_in}→{c_out}")
        self.conv1 = conv2d(c_in, c_in, k)
        self.conv2 = conv2d(2 * c_in, c_out, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y1 = torch.relu(self.conv1(x))
        return self.conv2(torch.cat([x, y1], dim=1))

    def fold_output_affine(self, scale: torch.Tensor, shift: torch.Tensor) -> nn.Module:
        return _with_folded_last_conv(self, "conv2", scale, shift)


class SepConv(nn.Module):
    """``sepconv_kxk`` / ``dilsepconv_3x3``: depthwise k×k (one filter per input channel),
    then pointwise 1×1 ``c_in → c_out``; y = P ⋆ (D ⊛ x).

    No activation between the two: this is the factorised (rank-structured) form of one
    k×k conv, k²·C + C·C' multiply-adds per pixel instead of k²·C·C'. Channel changes are
    done by the pointwise conv, so it also serves as a head (3→C1) or tail (C1→3) op.
    """

    def __init__(self, c_in: int, c_out: int, k: int, dilation: int = 1) -> None:
        super().__init__()
        self.dw = nn.Conv2d(c_in, c_in, k, padding=dilation * (k // 2), dilation=dilation, groups=c_in, bias=False)
        self.pw = conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(self.dw(x))

    def fold_output_affine(self, scale: torch.Tensor, shift: torch.Tensor) -> nn.Module:
        return _with_folded_last_conv(self, "pw", scale, shift)


class HalfConv(nn.Module):
    """``conv_3x3_half``: a 3×3 conv at half width inside a 1×1 bottleneck,
    y = W3 ⋆ ReLU(W2 ⋆ ReLU(W1 ⋆ x)), W1: c_in→m (1×1), W2: m→m (3×3), W3: m→c_out (1×1),
    m = max(1, max(c_in, c_out) // 2).

    At C → C this is 3.25·C² multiply-adds per pixel against 9·C² for ``conv_3x3`` (36%).
    The ReLUs make it a small bottleneck block rather than a low-rank 3×3 conv (which the
    linear version would be); the last conv is linear so the BatchNorm after it folds in.
    """

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        mid = max(1, max(c_in, c_out) // 2)
        self.reduce = conv2d(c_in, mid, 1)
        self.conv = conv2d(mid, mid, 3)
        self.expand = conv2d(mid, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.expand(torch.relu(self.conv(torch.relu(self.reduce(x)))))

    def fold_output_affine(self, scale: torch.Tensor, shift: torch.Tensor) -> nn.Module:
        return _with_folded_last_conv(self, "expand", scale, shift)


class _PixelLinear(nn.Module):
    """Base of the MatMul ops: y = W·f(x) (+ b) per pixel, f(x) = the op's per-pixel features.

    f(x) = [x; g₁(x); …] (:meth:`groups`), each group C_in channels, the first x itself. Group k
    enters scaled by ``taps[k]`` (a window mean enters as its window sum: its weight is per tap,
    as a conv's weights are). The scale is applied to the weight, W·diag(taps), a product of
    two constants that the ONNX exporter folds, not a full-resolution multiply.

    ``weight`` (O×F) is the op's last linear map (what a refinement branch zero-initialises);
    ``bias`` is None until :meth:`fold_output_affine` adds one. :meth:`residual` computes
    x + op(x) in the same MatMul, with the identity added to the weight's x columns.
    """

    #: Scale of each feature group (the first, x itself, is 1).
    taps: tuple[float, ...] = (1.0,)

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        fan_in = c_in * len(self.taps)
        self.weight = nn.Parameter(torch.empty(c_out, fan_in))
        with torch.no_grad():
            # the default init of a 1×1 conv with this fan-in (kaiming uniform, a = √5), on the
            # unscaled features: the taps change how fast a group learns, not where it starts
            nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)
            self.weight.div_(torch.tensor(self.taps).repeat_interleave(c_in))
        self.bias: nn.Parameter | None = None
        # constants of the forward pass (not state: a bundle stores only weight and bias)
        self.register_buffer("column_scale", torch.tensor(self.taps).repeat_interleave(c_in), persistent=False)
        if c_in == c_out:
            self.register_buffer("identity", torch.eye(c_out, fan_in), persistent=False)

    def groups(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        g = self.groups(x)
        return g[0] if len(g) == 1 else torch.cat(g, dim=1)

    def effective_weight(self) -> torch.Tensor:
        """W·diag(taps): the O×F matrix the features are multiplied with."""
        return self.weight * self.column_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pointwise(self.features(x), self.effective_weight(), self.bias)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """x + op(x) as one MatMul, (W + [I 0])·f(x): saves the full-resolution Add of a residual
        branch (0.16 ms at 600×400 with 3 channels). Needs c_in = c_out."""
        if not hasattr(self, "identity"):
            raise GenotypeError(f"{type(self).__name__}: a residual needs as many input as output channels")
        return pointwise(self.features(x), self.effective_weight() + self.identity, self.bias)

    @torch.no_grad()
    def fold_output_affine(self, scale: torch.Tensor, shift: torch.Tensor) -> nn.Module:
        folded = copy.deepcopy(self)
        folded.weight.mul_(scale.reshape(-1, 1))
        bias = self.bias if self.bias is not None else torch.zeros_like(shift)
        folded.bias = nn.Parameter(bias * scale + shift)
        return folded


class PixelMix(_PixelLinear):
    """``mix_1x1``: y = W·x per pixel — a 1×1 conv exported as one MatMul (:func:`pointwise`).

    For full-resolution branches with few channels (a colour correction), where a Conv node
    costs more than the arithmetic.
    """


class BoxMix(_PixelLinear):
    """``boxmix_3x3``: y = W·[x; 9·box₃(x)] per pixel, box₃ the 3×3 mean (border windows clipped).

    A 3×3 filter restricted to "centre tap + local mean" per input channel and mixed across
    channels: it can smooth (denoise), sharpen (centre minus mean) and correct colour, which is
    what a full-resolution refinement needs, with 2·C·C' weights instead of 9·C·C'. Exported as
    one AveragePool, a Concat and a MatMul: at 600×400 with 3 channels about 0.9 ms through ONNX
    Runtime against 2.0 ms for a Conv 3×3 (``bench/refine_ops.py``).

    The mean enters as the window sum (taps 9; the clipped mean × 9 at the border). Why: Adam
    moves every weight by about the learning rate per step, so a weight on the plain mean learns
    the smoothing 9× slower than a conv does. With the plain mean, LOL training (2000 steps)
    ended at a box weight of 0.2 where the conv reached 0.9, and 1.7 dB below it on LOL-15.
    """

    taps = (1.0, 9.0)

    def groups(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x, box_filter(x, 1)]  # box_filter: border windows clipped


class BoxMix5(_PixelLinear):
    """``boxmix_5x5``: y = W·[x; 9·box₃(x); 25·box₅(x)] per pixel (the 3×3 and 5×5 means).

    :class:`BoxMix` with a second, wider mean. As a 5×5 kernel per input channel it has three
    free levels (centre w₀ + w₁ + w₂, the inner ring w₁ + w₂, the outer ring w₂), mixed across
    channels, so the branch can denoise over a wider window than it sharpens. One more
    AveragePool at full resolution than ``boxmix_3x3`` (``bench/refine_ops.py``).
    """

    taps = (1.0, 9.0, 25.0)

    def groups(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x, box_filter(x, 1), box_filter(x, 2)]


def last_linear_weight(op: nn.Module) -> torch.Tensor:
    """The weight of an op's last linear map (its last conv, or a MatMul op's ``weight``):
    what a residual branch zero-initialises so it starts as the identity."""
    if isinstance(op, _PixelLinear):
        return op.weight
    convs = [m for m in op.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise GenotypeError(f"{type(op).__name__} has no linear map to start at zero")
    return convs[-1].weight


register_op("skip_connect")(Identity)
register_op("conv_1x1")(lambda ci, co: Conv(ci, co, 1))
register_op("conv_3x3")(lambda ci, co: Conv(ci, co, 3))
register_op("conv_5x5")(lambda ci, co: Conv(ci, co, 5))
register_op("dilconv_3x3")(lambda ci, co: Conv(ci, co, 3, dilation=2))
register_op("resconv_1x1")(lambda ci, co: ResConv(ci, co, 1))
register_op("resconv_3x3")(lambda ci, co: ResConv(ci, co, 3))
register_op("resdilconv_3x3")(lambda ci, co: ResConv(ci, co, 3, dilation=2))
register_op("denseblocks_1x1")(lambda ci, co: DenseBlock(ci, co, 1))
register_op("denseblocks_3x3")(lambda ci, co: DenseBlock(ci, co, 3))

# Cheaper ops of the "edge" space (docs/search_spaces.md says why each is there).
register_op("sepconv_3x3")(lambda ci, co: SepConv(ci, co, 3))
register_op("dilsepconv_3x3")(lambda ci, co: SepConv(ci, co, 3, dilation=2))
register_op("conv_3x3_half")(HalfConv)
# Full-resolution ops of the edge network's refinement branch (MatMul-based: cheap with 3 channels).
register_op("mix_1x1")(PixelMix)
register_op("boxmix_3x3")(BoxMix)
register_op("boxmix_5x5")(BoxMix5)

#: Ops that hold no weights; the search guards against collapsing onto them.
PARAMETER_FREE_OPS = frozenset({"skip_connect"})


def make_op(name: str, c_in: int, c_out: int) -> nn.Module:
    """Build the registered op ``name`` mapping ``c_in`` to ``c_out`` channels."""
    return OPS.get(name)(c_in, c_out)


@dataclass(frozen=True)
class Space:
    """A search space: the ops allowed on Hadamard-unit edges and on encoder/decoder edges."""

    name: str
    hnu: tuple[str, ...]
    fcm: tuple[str, ...]
    doc: str = ""


SPACES: dict[str, Space] = {}


def register_space(space: Space) -> Space:
    for op in space.hnu + space.fcm:
        if op not in OPS:
            raise ValueError(f"space {space.name!r} uses unregistered op {op!r}")
    SPACES[space.name] = space
    return space


PAPER_HNU_OPS = (
    "skip_connect", "conv_1x1", "conv_3x3", "dilconv_3x3", "resconv_1x1", "resconv_3x3",
    "resdilconv_3x3", "denseblocks_1x1", "denseblocks_3x3",
)
PAPER_FCM_OPS = ("conv_5x5", "conv_1x1", "conv_3x3", "dilconv_3x3")

register_space(
    Space(
        name="paper",
        hnu=PAPER_HNU_OPS,
        fcm=PAPER_FCM_OPS,
        doc="The space of the HBL paper and its reference code (the default, for reproduction).",
    )
)


register_space(
    Space(
        name="edge",
        # The paper's ops first, in the paper's order, then the cheap ones.
        hnu=PAPER_HNU_OPS + ("sepconv_3x3", "dilsepconv_3x3", "conv_3x3_half"),
        fcm=PAPER_FCM_OPS + ("sepconv_3x3", "conv_3x3_half"),
        doc=(
            "The paper's space plus cheaper ops for small GPUs (depthwise-separable 3×3, dilated "
            "depthwise-separable 3×3, half-width 3×3 bottleneck); pair it with the latency term."
        ),
    )
)


def get_space(name: str) -> Space:
    if not isinstance(name, str):
        raise GenotypeError(f"unknown search space {name!r}; known spaces: {', '.join(sorted(SPACES))}")
    try:
        return SPACES[name]
    except KeyError:
        raise GenotypeError(
            f"unknown search space {name!r}; known spaces: {', '.join(sorted(SPACES))}"
        ) from None
