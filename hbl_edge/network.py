"""The Hadamard network (DESIGN §2): a small U-shaped CNN with a chain of Hadamard-inspired units.

Layout (C1, C2 = genotype.channels; "pair" = a residual pair a = f + op₂(ReLU(op₁(f)))):

    x ─ reflect-pad to a multiple of 4
      ─ head op 3→C1 ─ pair ─ pair ─ Down1 (2×2/2, C1→C2) = s1 ─ pair ─ pair ─ Down2 (2×2/2) = s2
      ─ HNU × units (1/4 resolution, C2 channels)                               = h
      ─ Up1 (ConvT 2×2/2) on h + s2 ─ pair ─ pair ─ Up2 (ConvT 2×2/2, C2→C1) on q + s1
      ─ pair ─ pair ─ tail op C1→3 ─ crop back                                  = output (no activation)

Hadamard-inspired neural unit (HNU), input x:
    R = ReLU(x + branch_R(x)),  I = ReLU(x + branch_I(x)),  out = R ⊘ max(σ(I), 0.01)
where each branch is 4 searched ops, each followed by BatchNorm(affine=False), with ReLU
between ops. σ after ReLU puts the map in [0.5, 1): each unit amplifies at most 2×, which is
what keeps 7 chained divisions stable (as in the reference code).

Edges are created by :meth:`Network.make_edge`, which the search supernet
(:class:`hbl_edge.search.supernet.Supernet`) overrides to put a mixed op on every edge;
everything else (topology, padding, HNU maths) is shared. An HNU edge is a *normed* edge: its
output is already batch-normalised (:class:`BranchNorm` here, a mixed op with one BatchNorm
per candidate in the supernet).
"""

from __future__ import annotations

import copy
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .errors import GenotypeError
from .genotype import BRANCH_OPS, Genotype, GenotypeLike, load_genotype
from .ops import ChannelAffine, make_op

PAD_MULTIPLE = 4
MAP_FLOOR = 0.01


def pad_to_multiple(x: torch.Tensor, multiple: int = PAD_MULTIPLE) -> tuple[torch.Tensor, int, int]:
    """Pad H and W up to a multiple of ``multiple`` (bottom/right).

    Reflect padding avoids the dark border a zero pad would teach the network; a side too
    small to reflect (reflection needs pad < size) falls back to replicate.
    """
    h, w = x.shape[-2:]
    ph = (-h) % multiple
    pw = (-w) % multiple
    if ph == 0 and pw == 0:
        return x, h, w
    mode = "reflect" if (ph < h and pw < w) else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode), h, w


class BranchNorm(nn.Module):
    """An HNU op followed by BatchNorm(affine=False); after folding, the BN is gone."""

    #: Marks an edge whose output is already normalised: :class:`HNU` uses it as it is.
    normed_output = True

    def __init__(self, op: nn.Module, channels: int) -> None:
        super().__init__()
        self.op = op
        self.bn = nn.BatchNorm2d(channels, affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.op(x))


def _normed(edge: nn.Module, channels: int) -> nn.Module:
    return edge if getattr(edge, "normed_output", False) else BranchNorm(edge, channels)


class HNU(nn.Module):
    """Hadamard-inspired neural unit: a learned numerator divided by a learned map.

    ``r_ops`` / ``i_ops`` are the 4 edges of each branch: plain ops (each gets wrapped in a
    :class:`BranchNorm`) or edges that already normalise their output (``normed_output``).
    """

    def __init__(self, r_ops: list[nn.Module], i_ops: list[nn.Module], channels: int) -> None:
        super().__init__()
        self.branch_r = nn.ModuleList(_normed(op, channels) for op in r_ops)
        self.branch_i = nn.ModuleList(_normed(op, channels) for op in i_ops)

    @staticmethod
    def _branch(ops: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
        y = x
        for k, op in enumerate(ops):
            if k > 0:
                y = torch.relu(y)
            y = op(y)
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = torch.relu(x + self._branch(self.branch_r, x))
        i = torch.relu(x + self._branch(self.branch_i, x))
        return r / torch.clamp(torch.sigmoid(i), min=MAP_FLOOR)


class ResidualPair(nn.Module):
    """Feature-convert pair: a = f + op₂(ReLU(op₁(f)))."""

    def __init__(self, op1: nn.Module, op2: nn.Module) -> None:
        super().__init__()
        self.op1 = op1
        self.op2 = op2

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return f + self.op2(torch.relu(self.op1(f)))


class Network(nn.Module):
    """The restoration network for one genotype. Input/output N×3×H×W, any H, W.

    A genotype with a macro section (``hbl-genotype/2``, an edge network) is built by
    :meth:`from_genotype`, which dispatches to :class:`hbl_edge.edge_network.EdgeNetwork`.
    """

    #: Channels of the tail op's output (the image). A subclass that outputs maps sets its own.
    out_channels: int = 3

    def __init__(self, genotype: Genotype) -> None:
        super().__init__()
        if getattr(genotype, "macro", None) is not None and type(self) is Network:
            raise GenotypeError(
                "this genotype has a 'macro' section (an edge network); build it with Network.from_genotype"
            )
        self.genotype = genotype
        self._build(genotype.channels, genotype.units)

    # -- construction -----------------------------------------------------------------------
    def _build(self, channels: tuple[int, int], units: int) -> None:
        """Create the layers; every searched edge comes from :meth:`make_edge`."""
        c1, c2 = channels
        self.head = self.make_edge("encoder", 0, 3, c1)
        self.enc_full = nn.Sequential(*self._pairs("encoder", 1, c1))
        self.down1 = nn.Conv2d(c1, c2, 2, stride=2, bias=False)
        self.enc_half = nn.Sequential(*self._pairs("encoder", 5, c2))
        self.down2 = nn.Conv2d(c2, c2, 2, stride=2, bias=False)
        self.units = nn.ModuleList(
            HNU(
                [self.make_edge("hnu", (u, k), c2, c2) for k in range(BRANCH_OPS)],
                [self.make_edge("hnu", (u, BRANCH_OPS + k), c2, c2) for k in range(BRANCH_OPS)],
                c2,
            )
            for u in range(units)
        )
        self.up1 = nn.ConvTranspose2d(c2, c2, 2, stride=2, bias=False)
        self.dec_half = nn.Sequential(*self._pairs("decoder", 0, c2))
        self.up2 = nn.ConvTranspose2d(c2, c1, 2, stride=2, bias=False)
        self.dec_full = nn.Sequential(*self._pairs("decoder", 4, c1))
        self.tail = self.make_edge("decoder", 8, c1, self.out_channels)

    def make_edge(self, group: str, index, c_in: int, c_out: int) -> nn.Module:
        """The module on one searched edge; ``index`` is an int, or (unit, edge) for HNUs.

        HNU edges are normed edges (op + BatchNorm, :class:`BranchNorm`); encoder/decoder
        edges are bare ops.
        """
        if group == "hnu":
            unit, edge = index
            return BranchNorm(make_op(self.genotype.hnu[unit][edge], c_in, c_out), c_out)
        return make_op(getattr(self.genotype, group)[index], c_in, c_out)

    def _pairs(self, group: str, start: int, c: int) -> list[ResidualPair]:
        return [
            ResidualPair(self.make_edge(group, start + 2 * p, c, c), self.make_edge(group, start + 2 * p + 1, c, c))
            for p in range(2)
        ]

    @classmethod
    def from_genotype(cls, genotype: GenotypeLike) -> "Network":
        """Build the network of a genotype (a :class:`Genotype`, a built-in name or a JSON path).

        The one factory for both formats: a genotype with a macro section builds an
        :class:`~hbl_edge.edge_network.EdgeNetwork`, one without builds this paper network.
        """
        g = load_genotype(genotype)
        if g.macro is not None:
            from .edge_network import EdgeNetwork  # edge_network builds on this module

            return EdgeNetwork(g)
        return cls(g)

    # -- forward ----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected an N×3×H×W image batch, got shape {tuple(x.shape)}")
        x, h, w = pad_to_multiple(x)
        f = self.enc_full(self.head(x))
        s1 = self.down1(f)
        s2 = self.down2(self.enc_half(s1))
        hid = s2
        for unit in self.units:
            hid = unit(hid)
        q = self.dec_half(self.up1(hid + s2))
        y = self.tail(self.dec_full(self.up2(q + s1)))
        return y[..., :h, :w]

    @torch.no_grad()
    def enhance(self, x: torch.Tensor) -> torch.Tensor:
        """Inference helper: output clamped to [0, 1] (the image a user sees)."""
        return self(x).clamp_(0.0, 1.0)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# BatchNorm folding (per-op rules live with the ops: ``fold_output_affine``, see hbl_edge.ops)
# ---------------------------------------------------------------------------------------------
def _bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Running-statistics BatchNorm as y = x·scale + shift."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    shift = -bn.running_mean * scale
    if bn.affine:
        shift = shift * bn.weight + bn.bias
        scale = scale * bn.weight
    return scale, shift


@torch.no_grad()
def _fold_branch_op(m: nn.Module) -> nn.Module:
    if not isinstance(m, BranchNorm):
        raise TypeError(f"cannot fold BatchNorm in a {type(m).__name__} edge; fold a Network, not a supernet")
    fold = getattr(m.op, "fold_output_affine", None)
    if fold is None:
        raise TypeError(
            f"cannot fold BatchNorm after {type(m.op).__name__}; implement fold_output_affine(scale, shift) on it"
        )
    scale, shift = _bn_affine(m.bn)
    return fold(scale, shift)


@torch.no_grad()
def fold_batchnorm(model: Network) -> Network:
    """An inference copy of ``model`` with every BatchNorm folded into the op before it.

    Uses running statistics, so a frame's output never depends on the frame itself (no
    flicker on video). Residual convs are re-parameterised into one conv on the way. The
    result is in eval mode; ``model`` is left untouched.
    """
    folded = copy.deepcopy(model).eval()
    for unit in folded.units:
        for branch in (unit.branch_r, unit.branch_i):
            for k in range(len(branch)):
                branch[k] = _fold_branch_op(branch[k])
    return folded.eval()  # again: the modules created while folding start in train mode


def iter_batchnorms(model: nn.Module) -> Iterator[nn.BatchNorm2d]:
    return (m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))


__all__ = [
    "HNU", "Network", "ResidualPair", "BranchNorm", "ChannelAffine", "fold_batchnorm",
    "count_parameters", "pad_to_multiple", "iter_batchnorms", "MAP_FLOOR", "PAD_MULTIPLE",
]
