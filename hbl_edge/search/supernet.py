r"""The search supernet (DESIGN §3): the final network's topology with a mixed op on every edge.

Every searched edge e computes

.. math::

    \bar o_e(x) = \sum_{o \in \mathcal O_e} \mathrm{softmax}(\alpha_e)_o \; o(x),

over its space (``space.hnu`` on the 8 edges of each HNU, ``space.fcm`` on the 9 encoder
and 9 decoder edges). HNU edges are normalised by BatchNorm(affine=False): once per edge,
after the mixture (``hnu_norm="edge"``, the reference code's choice and the default), or once
per candidate before it (``"candidate"``, as DARTS); either way a one-hot α reproduces the
final network's ``BranchNorm(op)`` exactly, running statistics included. Each edge evaluates
its linear candidates as one mixed-kernel convolution (:class:`MixedOp`). Everything else
(padding, up/down layers, residual pairs, the HNU division) is
:class:`hbl_edge.network.Network`'s code.

The architecture logits are registered parameters, so checkpoints hold them:

=================  =============================  =========================
name               shape                          paper space, 7 units
=================  =============================  =========================
``alpha_encoder``  [9, len(space.fcm)]            9 × 4
``alpha_decoder``  [9, len(space.fcm)]            9 × 4
``alpha_hnu``      [units, 8, len(space.hnu)]     7 × 8 × 9
=================  =============================  =========================

(576 logits for the paper space at full size.) The op order along the last axis is the
space's order (:data:`hbl_edge.ops.SPACES`), which checkpoints therefore depend on.

:func:`derive` turns the logits into a :class:`~hbl_edge.genotype.Genotype` (argmax per edge,
with an optional cap on parameter-free ops per unit against the DARTS collapse to skip
connections); :func:`derived_state_dict` hands the chosen candidates' weights and BatchNorm
statistics to ``Network.from_genotype(derived)``.

Example::

    >>> import torch
    >>> from hbl_edge.search.supernet import Supernet, derive
    >>> net = Supernet(space="paper", channels=(4, 8), units=1, seed=0)
    >>> net(torch.rand(2, 3, 8, 8)).shape
    torch.Size([2, 3, 8, 8])
    >>> genotype, report = derive(net, max_parameter_free_per_unit=2)
    >>> genotype.space
    'paper'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import GenotypeError
from ..genotype import BRANCH_OPS, DECODER_EDGES, ENCODER_EDGES, HNU_EDGES, Genotype
from ..network import BranchNorm, Network
from ..ops import PARAMETER_FREE_OPS, Space, get_space, make_op

ALPHA_INIT_SCALE = 1e-3
ALPHA_NAMES = ("alpha_encoder", "alpha_decoder", "alpha_hnu")
_GROUP_ALPHA = {"encoder": "alpha_encoder", "decoder": "alpha_decoder", "hnu": "alpha_hnu"}
_CANDIDATES = "candidates"


#: How an HNU edge normalises: one BatchNorm per candidate (DARTS) or one after the mixture
#: (the reference code). Encoder/decoder edges have no normalisation either way.
HNU_NORMS = ("edge", "candidate")


class LinearPart(NamedTuple):
    """``conv2d(x, kernel, dilation=dilation)`` with "same" padding, ``kernel`` odd ``k×k``."""

    kernel: torch.Tensor
    dilation: int


class Decomposition(NamedTuple):
    """op(x) = Σ_parts conv(x, part) + [identity]·x + rest(x) (``rest`` None: no such term)."""

    parts: tuple[LinearPart, ...]
    identity: bool
    rest: Optional[Callable[[torch.Tensor], torch.Tensor]]


def _same_conv_kernel(conv: nn.Conv2d) -> Optional[LinearPart]:
    k, d = conv.kernel_size[0], conv.dilation[0]
    if (conv.bias is not None or conv.stride != (1, 1) or conv.groups != 1 or k % 2 == 0
            or conv.kernel_size[1] != k or conv.dilation[1] != d or conv.padding != (d * (k // 2),) * 2):
        return None
    return LinearPart(conv.weight, d)


def decompose(op: nn.Module) -> Optional[Decomposition]:
    """Split an op into same-padded stride-1 convolutions of its input, an identity, and the rest.

    ``conv_*``/``dilconv_3x3``: one part; ``resconv_*``: one part + identity; ``skip_connect``:
    identity; ``mix_1x1``: one 1×1 part; ``sepconv_*``: one part with kernel
    K[o, i] = P[o, i]·D[i] (pointwise after depthwise, no activation between); ``denseblocks_k``: conv2 acts on concat[x, y1], so
    conv2(concat[x, y1]) = W2[:, :C] ⋆ x + W2[:, C:] ⋆ y1: the first term is a part, the
    second the nonlinear rest. The kernels are views of (or built from) the op's parameters,
    so gradients reach them. None for ops that do not split (anything else, biases, strides;
    ``boxmix_3x3`` / ``boxmix_5x5``, whose means are clipped at the border, are no zero-padded
    convolutions).
    """
    from ..ops import Conv, DenseBlock, Identity, PixelMix, ResConv, SepConv

    if isinstance(op, Identity):
        return Decomposition((), True, None)
    if isinstance(op, PixelMix):  # mix_1x1: a 1×1 conv computed as a MatMul
        return None if op.bias is not None else Decomposition((LinearPart(op.weight[:, :, None, None], 1),), False, None)
    if isinstance(op, (Conv, ResConv)):
        part = _same_conv_kernel(op.conv)
        return None if part is None else Decomposition((part,), isinstance(op, ResConv), None)
    if isinstance(op, SepConv):
        dw, pw = op.dw, op.pw
        kd, d = dw.kernel_size[0], dw.dilation[0]
        if (dw.bias is not None or pw.bias is not None or dw.stride != (1, 1) or pw.kernel_size != (1, 1)
                or dw.padding != (d * (kd // 2),) * 2):
            return None
        return Decomposition((LinearPart(pw.weight[:, :, 0, 0, None, None] * dw.weight[:, 0][None], d),), False, None)
    if isinstance(op, DenseBlock):
        first, second = _same_conv_kernel(op.conv1), _same_conv_kernel(op.conv2)
        if first is None or second is None or second.dilation != 1:
            return None
        c = op.conv1.in_channels
        w2 = op.conv2.weight

        def rest(x: torch.Tensor, op: DenseBlock = op) -> torch.Tensor:
            y1 = torch.relu(op.conv1(x))
            # contiguous: a strided weight view sends CPU convolution down a slow path
            return F.conv2d(y1, w2[:, c:].contiguous(), padding=op.conv2.padding)

        return Decomposition((LinearPart(w2[:, :c], 1),), False, rest)
    return None


def _written_out(kernel: torch.Tensor, dilation: int) -> torch.Tensor:
    """A dilated k×k kernel as the dense ((k−1)·d+1)² kernel it is (zeros between the taps)."""
    if dilation == 1:
        return kernel
    k = kernel.shape[-1]
    size = dilation * (k - 1) + 1
    out = kernel.new_zeros(*kernel.shape[:2], size, size)
    out[..., ::dilation, ::dilation] = kernel  # differentiable: a copy into a slice of a new tensor
    return out


def _centre(kernel: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad an odd ``s×s`` kernel to ``size×size`` around its centre (same output)."""
    p = (size - kernel.shape[-1]) // 2
    return F.pad(kernel, (p, p, p, p)) if p else kernel


class MixedOp(nn.Module):
    r"""One searched edge of the supernet: Σ_o w_o · candidate_o(x).

    Candidates are ``make_op`` modules (encoder/decoder edges, and HNU edges with
    ``norm="edge"``) or ``BranchNorm(op)`` modules (HNU edges with ``norm="candidate"``),
    stored in :attr:`candidates` in the space's order, so a candidate's state-dict keys are
    the final network's keys with ``candidates.<i>.`` inserted (``candidates.<i>.`` in place of
    ``op.`` with ``norm="edge"``). The weights ``w`` (a softmax row of α) are handed over by
    :meth:`Supernet.forward` for the duration of one forward pass; all candidates are
    evaluated, whatever their weight (a zero weight still gives a zero gradient).

    ``normed=True`` (HNU edges) normalises the edge's output with BatchNorm(affine=False):

    - ``norm="candidate"``: one BatchNorm per candidate, before the mixture (DARTS):
      Σ_o w_o · BN_o(o(x));
    - ``norm="edge"``: one BatchNorm after the mixture (the reference code):
      BN(Σ_o w_o · o(x)). A one-hot w gives BN(o(x)), the final network's ``BranchNorm(op)``,
      and the edge's running statistics are then those of the chosen op.

    **Fusion** (``fuse=True``, candidates not followed by their own BatchNorm): convolution is
    linear in its kernel, so the linear parts of all candidates (:func:`decompose`: every
    conv, residual, skip and separable op, and the x-half of a dense block's second conv) are
    evaluated as ONE convolution per dilation with the mixed kernel

    .. math:: K_d = \sum_o w_o \sum_{\text{parts of } o \text{ at } d} \hat K + \Big(\sum_{o \text{ with identity}} w_o\Big)\, I\otimes\delta,

    each :math:`\hat K` zero-padded to the group's largest kernel; a dilated group whose
    written-out extent fits inside the dilation-1 kernel joins it (paper space: the
    encoder/decoder edges are one 5×5 convolution; an HNU edge is one 3×3 convolution, one
    dilated 3×3 and the two dense blocks' nonlinear halves). Σ_o w_o (K_o ⋆ x) = (Σ_o w_o K_o)
    ⋆ x exactly, up to rounding. The candidates keep their own parameters and state-dict keys;
    autograd carries ∂L/∂K to each of them and ∂L/∂w_o = ⟨∂L/∂K, K̂_o⟩. Candidates that do not
    split (e.g. ``conv_3x3_half``) are evaluated one by one and added.
    """

    def __init__(self, names: Sequence[str], c_in: int, c_out: int, *, normed: bool,
                 group: str, index: Any, norm: str = "candidate", fuse: bool = True) -> None:
        super().__init__()
        if norm not in HNU_NORMS:
            raise ValueError(f"norm must be one of {', '.join(HNU_NORMS)}, got {norm!r}")
        self.names = tuple(names)
        self.group = group
        self.index = index
        self.normed_output = normed  # HNU uses a normed edge as it is (no extra BatchNorm)
        self.norm = norm if normed else None
        per_candidate = normed and norm == "candidate"
        self.candidates = nn.ModuleList(
            BranchNorm(make_op(n, c_in, c_out), c_out) if per_candidate else make_op(n, c_in, c_out)
            for n in self.names
        )
        self.bn = nn.BatchNorm2d(c_out, affine=False) if normed and norm == "edge" else None
        self.weights: Optional[torch.Tensor] = None
        self.c_out = c_out
        self._fused: tuple[int, ...] = ()
        self._groups: dict[int, int] = {}  # dilation → kernel side of its mixed kernel
        if fuse and not per_candidate:
            self._plan_fusion()
        self._unfused = tuple(i for i in range(len(self.candidates)) if i not in self._fused)

    def _plan_fusion(self) -> None:
        decs = {i: decompose(c) for i, c in enumerate(self.candidates)}
        fused = tuple(i for i, d in decs.items() if d is not None)
        n_linear = sum(len(decs[i].parts) + decs[i].identity for i in fused)  # type: ignore[union-attr]
        if n_linear < 2:
            return  # nothing to merge
        sides: dict[int, int] = {}
        for i in fused:
            for part in decs[i].parts:  # type: ignore[union-attr]
                sides[part.dilation] = max(sides.get(part.dilation, 1), part.kernel.shape[-1])
        if any(decs[i].identity for i in fused):  # type: ignore[union-attr]
            sides.setdefault(1, 1)
        base = sides.get(1, 0)
        groups = {1: base} if base else {}
        for d, k in sides.items():  # a dilated kernel that fits inside the dense one costs nothing there
            if d != 1 and not (base and d * (k - 1) + 1 <= base):
                groups[d] = k
        self._fused, self._groups = fused, groups

    @property
    def fused(self) -> tuple[str, ...]:
        """Names of the candidates whose linear parts are evaluated as mixed-kernel convolutions."""
        return tuple(self.names[i] for i in self._fused)

    @property
    def candidate_prefix(self) -> str:
        """What ``candidates.<i>.`` stands for in the final network's keys (see the class doc)."""
        return "op." if self.norm == "edge" else ""

    def mixed_kernels(self, w: torch.Tensor) -> tuple[dict[int, torch.Tensor], list[int]]:
        """{dilation: K_d} of the fused candidates, and the fused candidates with a nonlinear rest."""
        kernels: dict[int, torch.Tensor] = {}
        identity: Optional[torch.Tensor] = None
        with_rest = []
        for i in self._fused:
            dec = decompose(self.candidates[i])
            assert dec is not None
            for part in dec.parts:
                d = part.dilation if part.dilation in self._groups else 1
                k = part.kernel if d == part.dilation else _written_out(part.kernel, part.dilation)
                term = w[i] * _centre(k, self._groups[d])
                kernels[d] = term if d not in kernels else kernels[d] + term
            if dec.identity:
                identity = w[i] if identity is None else identity + w[i]
            if dec.rest is not None:
                with_rest.append(i)
        if identity is not None:
            eye = _identity_kernel(self.c_out, self._groups[1], w.dtype, w.device)
            kernels[1] = identity * eye if 1 not in kernels else kernels[1] + identity * eye
        return kernels, with_rest

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weights
        if w is None:
            raise RuntimeError("a MixedOp is evaluated through Supernet.forward, which sets its weights")
        out: Optional[torch.Tensor] = None
        if self._fused:
            kernels, with_rest = self.mixed_kernels(w)
            for d, k in kernels.items():
                y = F.conv2d(x, k, padding=d * (k.shape[-1] // 2), dilation=d)
                out = y if out is None else out + y
            for i in with_rest:
                rest = decompose(self.candidates[i]).rest  # type: ignore[union-attr]
                out = out + w[i] * rest(x)  # type: ignore[misc, operator]
        for i in self._unfused:
            term = w[i] * self.candidates[i](x)
            out = term if out is None else out + term
        assert out is not None
        return out if self.bn is None else self.bn(out)

    def extra_repr(self) -> str:
        extra = f", norm={self.norm!r}" if self.norm else ""
        fused = f", fused={list(self.fused)}, kernels={self._groups}" if self._fused else ""
        return f"group={self.group!r}, index={self.index!r}{extra}{fused}"


_EYE_CACHE: dict[tuple[int, int, torch.dtype, torch.device], torch.Tensor] = {}


def _identity_kernel(c: int, size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """I ⊗ δ: the ``[c, c, size, size]`` kernel of the identity (cached, never written)."""
    key = (c, size, dtype, device)
    eye = _EYE_CACHE.get(key)
    if eye is None:
        eye = torch.zeros(c, c, size, size, dtype=dtype, device=device)
        eye[torch.arange(c), torch.arange(c), size // 2, size // 2] = 1.0
        _EYE_CACHE[key] = eye
    return eye


class Supernet(Network):
    """The continuous relaxation of the network: a mixed op on each of the 18 + 8·units edges.

    Args:
        space: search space name (``"paper"``, ``"edge"``, ...; :data:`hbl_edge.ops.SPACES`).
        channels: (C1, C2), the full- and lower-resolution widths.
        units: number of HNUs in the chain.
        generator: RNG for the α initialisation (1e-3·N(0, 1)); ``seed`` makes one. The
            weights are initialised from the global RNG, as :class:`Network` does.
        freeze_alpha: keep α at its initial value (stage L searches the loss with α frozen
            at its near-uniform initialisation); see :meth:`freeze_arch`.
        hnu_norm: ``"edge"`` (one BatchNorm per HNU edge, after the mixture, as the reference
            code) or ``"candidate"`` (one per candidate, as DARTS); see :class:`MixedOp`.
        fuse: evaluate each edge's linear candidates as one mixed-kernel convolution
            (:class:`MixedOp`); the same function up to rounding, fewer and cheaper passes.

    ``arch_parameters()`` and ``weight_parameters()`` partition ``parameters()``: give them
    to separate optimisers (Adam for α, SGD for the weights).
    """

    def __init__(self, space: str = "paper", channels: Sequence[int] = (16, 32), units: int = 7, *,
                 generator: Optional[torch.Generator] = None, seed: Optional[int] = None,
                 freeze_alpha: bool = False, hnu_norm: str = "edge", fuse: bool = True) -> None:
        nn.Module.__init__(self)  # no genotype: Network.__init__ is bypassed on purpose
        self.space: Space = get_space(space)
        if hnu_norm not in HNU_NORMS:
            raise GenotypeError(f"hnu_norm must be one of {', '.join(HNU_NORMS)}, got {hnu_norm!r}")
        self.hnu_norm, self.fuse = hnu_norm, bool(fuse)
        channels = tuple(channels) if isinstance(channels, (list, tuple)) else channels
        if (
            not isinstance(channels, tuple) or len(channels) != 2
            or not all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in channels)
        ):
            raise GenotypeError(f"'channels' must be two positive integers [C1, C2], got {channels!r}")
        if not isinstance(units, int) or isinstance(units, bool) or units < 1:
            raise GenotypeError(f"'units' must be a positive integer, got {units!r}")
        self.channels: tuple[int, int] = channels  # type: ignore[assignment]
        self.n_units = units
        self._build(self.channels, units)

        if generator is None and seed is not None:
            generator = torch.Generator().manual_seed(seed)
        n_fcm, n_hnu = len(self.space.fcm), len(self.space.hnu)

        def init(*shape: int) -> nn.Parameter:
            return nn.Parameter(ALPHA_INIT_SCALE * torch.randn(*shape, generator=generator))

        self.alpha_encoder = init(ENCODER_EDGES, n_fcm)
        self.alpha_decoder = init(DECODER_EDGES, n_fcm)
        self.alpha_hnu = init(units, HNU_EDGES, n_hnu)
        self.freeze_arch(freeze_alpha)

    # -- construction -----------------------------------------------------------------------
    def make_edge(self, group: str, index, c_in: int, c_out: int) -> nn.Module:
        if group == "hnu":
            return MixedOp(self.space.hnu, c_in, c_out, normed=True, group=group, index=tuple(index),
                           norm=self.hnu_norm, fuse=self.fuse)
        return MixedOp(self.space.fcm, c_in, c_out, normed=False, group=group, index=index, fuse=self.fuse)

    # -- parameters -------------------------------------------------------------------------
    def arch_parameters(self) -> list[nn.Parameter]:
        """The architecture logits α (encoder, decoder, hnu), frozen or not."""
        return [self.alpha_encoder, self.alpha_decoder, self.alpha_hnu]

    def weight_parameters(self) -> list[nn.Parameter]:
        """Every parameter that is not an architecture logit (the lower-level variables w)."""
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def freeze_arch(self, frozen: bool = True) -> None:
        """Freeze (or unfreeze) α: frozen logits get no gradient and keep their value."""
        for p in self.arch_parameters():
            p.requires_grad_(not frozen)

    @property
    def alpha_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.arch_parameters())

    def edge_probabilities(self) -> dict[str, torch.Tensor]:
        """softmax(α) per edge: ``{"encoder": [9, n_fcm], "decoder": [9, n_fcm], "hnu": [units, 8, n_hnu]}``.

        Differentiable in α (the latency term is built on it); detach for plots and logs.
        """
        return {group: torch.softmax(getattr(self, name), dim=-1) for group, name in _GROUP_ALPHA.items()}

    @torch.no_grad()
    def set_alpha_from_genotype(self, genotype: Genotype, gap: float = 1e4) -> None:
        """Set α to ``gap`` at the genotype's op of each edge and 0 elsewhere.

        With the default gap, softmax is exactly one-hot (exp(−1e4) underflows to 0 in
        float32 and float64), so the supernet computes exactly ``Network(genotype)`` with the
        same weights. Also a warm start for a search from a known genotype.
        """
        _check_compatible(self, genotype)
        for group, name in _GROUP_ALPHA.items():
            alpha = getattr(self, name)
            alpha.zero_()
            ops = self.space.hnu if group == "hnu" else self.space.fcm
            if group == "hnu":
                for u, unit in enumerate(genotype.hnu):
                    for k, op in enumerate(unit):
                        alpha[u, k, ops.index(op)] = gap
            else:
                for k, op in enumerate(getattr(genotype, group)):
                    alpha[k, ops.index(op)] = gap

    # -- edges ------------------------------------------------------------------------------
    def mixed_ops(self) -> Iterator[tuple[str, MixedOp]]:
        """(module path, mixed op) of every searched edge."""
        for name, m in self.named_modules():
            if isinstance(m, MixedOp):
                yield name, m

    # -- forward ----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = self.edge_probabilities()  # one softmax per tensor per pass, not per edge
        ops = [m for _, m in self.mixed_ops()]
        for m in ops:
            if m.group == "hnu":
                u, k = m.index
                m.weights = probs["hnu"][u, k]
            else:
                m.weights = probs[m.group][m.index]
        try:
            return super().forward(x)
        finally:
            for m in ops:  # do not keep the autograd graph of α alive between passes
                m.weights = None


# ---------------------------------------------------------------------------------------------
# Derivation
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReplacedEdge:
    """An HNU edge whose parameter-free argmax was replaced by its best weighted op."""

    unit: int
    edge: int  # 0–3: R branch, 4–7: I branch
    replaced: str
    by: str
    margin: float  # softmax(α)[replaced] − softmax(α)[by] (≥ 0): how much the search preferred it

    def describe(self) -> str:
        branch = "R" if self.edge < BRANCH_OPS else "I"
        return (f"unit {self.unit} edge {self.edge} ({branch}{self.edge % BRANCH_OPS}): "
                f"{self.replaced} → {self.by} (margin {self.margin:.4g})")


@dataclass(frozen=True)
class DerivationReport:
    """What :func:`derive` did beyond a plain argmax."""

    space: str
    max_parameter_free_per_unit: Optional[int]
    parameter_free_argmax: tuple[int, ...]  # per unit, before the cap
    parameter_free_derived: tuple[int, ...]  # per unit, after the cap
    replaced: tuple[ReplacedEdge, ...]

    @property
    def capped(self) -> bool:
        return bool(self.replaced)

    def summary(self) -> str:
        cap = self.max_parameter_free_per_unit
        head = (f"derived from the {self.space!r} space; parameter-free ops per unit "
                f"{list(self.parameter_free_argmax)} (cap {cap if cap is not None else 'none'})")
        if not self.replaced:
            return head + "; plain argmax"
        lines = [head + f"; {len(self.replaced)} edge(s) replaced by their best weighted op:"]
        lines += ["  " + r.describe() for r in self.replaced]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "space": self.space,
            "max_parameter_free_per_unit": self.max_parameter_free_per_unit,
            "parameter_free_argmax": list(self.parameter_free_argmax),
            "parameter_free_derived": list(self.parameter_free_derived),
            "replaced": [r.__dict__.copy() for r in self.replaced],
        }


@torch.no_grad()
def derive(supernet: Supernet, max_parameter_free_per_unit: Optional[int] = None) -> tuple[Genotype, DerivationReport]:
    """The discrete architecture of ``supernet``: argmax of α per edge.

    With ``max_parameter_free_per_unit`` (a guard against the DARTS collapse to skip
    connections), a unit whose argmax has more parameter-free ops
    (:data:`~hbl_edge.ops.PARAMETER_FREE_OPS`) than the cap keeps the ones the search
    preferred most; on the others, those with the smallest margin
    softmax(α)[parameter-free op] − max softmax(α)[weighted op] (ties: lower edge index),
    the parameter-free op is replaced by the best weighted op. The report lists them.
    """
    if max_parameter_free_per_unit is not None and (
        not isinstance(max_parameter_free_per_unit, int) or max_parameter_free_per_unit < 0
    ):
        raise ValueError(f"max_parameter_free_per_unit must be a non-negative integer or None, "
                         f"got {max_parameter_free_per_unit!r}")
    space = supernet.space
    probs = {k: v.detach().float().cpu() for k, v in supernet.edge_probabilities().items()}
    encoder = [space.fcm[i] for i in probs["encoder"].argmax(-1).tolist()]
    decoder = [space.fcm[i] for i in probs["decoder"].argmax(-1).tolist()]
    weighted = [i for i, op in enumerate(space.hnu) if op not in PARAMETER_FREE_OPS]

    hnu: list[list[str]] = []
    replaced: list[ReplacedEdge] = []
    free_before: list[int] = []
    free_after: list[int] = []
    for u in range(supernet.n_units):
        p = probs["hnu"][u]
        ops = [space.hnu[i] for i in p.argmax(-1).tolist()]
        free = [k for k, op in enumerate(ops) if op in PARAMETER_FREE_OPS]
        free_before.append(len(free))
        cap = max_parameter_free_per_unit
        if cap is not None and len(free) > cap and weighted:
            margins = []
            for k in free:
                best = max(weighted, key=lambda i: (p[k, i].item(), -i))
                margins.append((p[k, space.hnu.index(ops[k])].item() - p[k, best].item(), k, best))
            margins.sort()
            for margin, k, best in margins[: len(free) - cap]:
                replaced.append(ReplacedEdge(u, k, ops[k], space.hnu[best], margin))
                ops[k] = space.hnu[best]
        free_after.append(sum(op in PARAMETER_FREE_OPS for op in ops))
        hnu.append(ops)

    genotype = Genotype(encoder=encoder, decoder=decoder, hnu=hnu, space=space.name,
                        channels=supernet.channels, units=supernet.n_units)
    report = DerivationReport(space.name, max_parameter_free_per_unit, tuple(free_before),
                              tuple(free_after), tuple(replaced))
    return genotype, report


def _check_compatible(supernet: Supernet, genotype: Genotype) -> None:
    if genotype.space != supernet.space.name:
        raise GenotypeError(f"genotype is of the {genotype.space!r} space, the supernet of {supernet.space.name!r}")
    if tuple(genotype.channels) != supernet.channels or genotype.units != supernet.n_units:
        raise GenotypeError(
            f"genotype has channels {list(genotype.channels)} and {genotype.units} unit(s), the supernet "
            f"{list(supernet.channels)} and {supernet.n_units}"
        )


def _chosen_op(genotype: Genotype, m: MixedOp) -> str:
    if m.group == "hnu":
        u, k = m.index
        return genotype.hnu[u][k]
    return getattr(genotype, m.group)[m.index]


@torch.no_grad()
def derived_state_dict(supernet: Supernet, genotype: Genotype) -> dict[str, torch.Tensor]:
    """A state dict for ``Network(genotype)`` holding the supernet's weights of the chosen ops.

    Each edge's chosen candidate (its weights, and on HNU edges its BatchNorm's running
    statistics) is mapped to the final network's key names; the fixed layers (up/down) are
    copied as they are; α are left out. Tensors are detached copies. Load it with
    ``load_state_dict(..., strict=True)``.
    """
    _check_compatible(supernet, genotype)
    edges = dict(supernet.mixed_ops())
    chosen = {name: m.names.index(_chosen_op(genotype, m)) for name, m in edges.items()}
    marker = f".{_CANDIDATES}."
    out: dict[str, torch.Tensor] = {}
    for key, value in supernet.state_dict().items():
        if key in ALPHA_NAMES:
            continue
        if marker in key:
            prefix, rest = key.split(marker, 1)
            idx, tail = rest.split(".", 1)
            if int(idx) != chosen[prefix]:
                continue
            key = f"{prefix}.{edges[prefix].candidate_prefix}{tail}"
        out[key] = value.detach().clone()

    # Self-check against the network the genotype builds (on the meta device: no memory,
    # and with the global RNG left as it was).
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        expected = Network(genotype).state_dict().keys()
    if set(out) != set(expected):
        missing, unexpected = sorted(set(expected) - set(out)), sorted(set(out) - set(expected))
        raise RuntimeError(f"derived state dict does not match Network(genotype): missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    return {k: out[k] for k in expected}


__all__ = [
    "ALPHA_INIT_SCALE", "DerivationReport", "HNU_NORMS", "MixedOp", "ReplacedEdge", "Supernet", "derive",
    "decompose", "derived_state_dict",
]
