"""The small graphs the latency profiler times: each op in context at its position, and the fixed parts.

**Ops in context.** An op timed alone pays what it never pays inside the network: the call into
the runtime, the layout reorders at the graph's borders (onnxruntime's CPU provider converts
convolutions to a blocked NCHWc layout and back), and an unfused ReLU. Measured alone at
640×360, a 1×1 conv C1→C1 cost 4–5× its share of a whole network, and the sum of isolated ops
came to about twice the whole network's time. So an op at a C→C position is timed as the
**marginal cost of one block in a chain**: graphs of 1 and of ``chain`` blocks
``op → ReLU`` at the position's size, and

    t(op, position) = (T_chain − T_1) / (chain − 1)

which keeps what the op costs between neighbours (its kernels, the ReLU fused or not as the
runtime does it in the network, the memory traffic of its output feeding the next op at the
network's feature sizes) and drops the per-call and border costs, which a network pays once.
HNU ops are built BatchNorm-folded, as the exported network runs them. The head (3→C1) and the
tail (C1→3) cannot be chained: they are timed alone, less the cost of an empty call.

**Fixed parts** (genotype-independent): ``io`` (the deployed padding/crop/clamp graph, one call
with host arrays), ``down1``, ``down2``, ``up1``/``up2`` (skip add + transposed conv), the
residual add of each encoder/decoder pair, and per HNU the merge
``ReLU(x+R) ⊘ max(σ(ReLU(x+I)), 0.01)``. The ReLUs between ops are inside the op chains; the
roofline estimate, which models no fusion, counts them as fixed parts of their own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from ..ops import get_space, make_op
from .latency import Position, edge_positions, op_buildable, padded_size
from .timing import Graph

#: Blocks in the longer chain an op's in-context cost is taken from.
CHAIN = 4


class _Stub(nn.Module):
    """Stands in for the network inside the deployed I/O graph (pad → network → crop → clamp)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class TorchIO(nn.Module):
    """Eager I/O: Network.forward's padding and crop, plus the clamp to [0, 1]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from ..network import pad_to_multiple

        y, h, w = pad_to_multiple(x)
        return y[..., :h, :w].clamp(0.0, 1.0)


class Relu(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x)


class Add(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


class AddUp(nn.Module):
    """The skip add and transposed conv of Up1 / Up2."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(c_in, c_out, 2, stride=2, bias=False)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.up(a + b)


class HnuMerge(nn.Module):
    """What an HNU does around its branches: residual adds, ReLUs, σ, floor, division."""

    def forward(self, x: torch.Tensor, br: torch.Tensor, bi: torch.Tensor) -> torch.Tensor:
        from ..network import MAP_FLOOR

        r = torch.relu(x + br)
        i = torch.relu(x + bi)
        return r / torch.clamp(torch.sigmoid(i), min=MAP_FLOOR)


class OpChain(nn.Module):
    """``x → op₁ → ReLU → … → op_k → ReLU``: ops in the company they keep inside the network."""

    def __init__(self, ops: Sequence[nn.Module]) -> None:
        super().__init__()
        self.ops = nn.ModuleList(ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for op in self.ops:
            x = torch.relu(op(x))
        return x


def op_module(op: str, pos: Position) -> tuple[nn.Module, bool | None]:
    """The module an op is at a position; HNU ops BatchNorm-folded as exported (None: not applicable)."""
    m = make_op(op, pos.c_in, pos.c_out)
    if pos.variant != "bn_folded":
        return m.eval(), None
    from ..network import BranchNorm, _fold_branch_op

    bn = BranchNorm(m, pos.c_out)
    with torch.no_grad():  # plausible running statistics, so the folded weights are ordinary numbers
        bn.bn.running_mean.uniform_(-0.1, 0.1)
        bn.bn.running_var.uniform_(0.5, 2.0)
    try:
        return _fold_branch_op(bn).eval(), True
    except TypeError:  # an op with no folding rule: the deployed net would run op + BatchNorm
        return bn.eval(), False


@dataclass
class EntryGraphs:
    """What is timed for one table entry: ``{"chain1", "chainK"}`` (in context) or ``{"alone"}``."""

    entry: dict
    graphs: dict[str, Graph]
    folded: bool | None = None
    chain: int = 0  # blocks in the long chain; 0 when timed alone

    @property
    def method(self) -> str:
        return f"chain{self.chain}" if self.chain else "alone"


def entry_graphs(
    space: str, channels: Sequence[int], resolution: Sequence[int], chain: int = CHAIN,
) -> dict[tuple, EntryGraphs]:
    """One :class:`EntryGraphs` per distinct (op, c_in, c_out, H, W, variant) of the space."""
    if chain < 2:
        raise ValueError(f"chain must be ≥ 2 blocks, got {chain}")
    sp = get_space(space)
    seen: dict[tuple, EntryGraphs] = {}
    for group, positions in edge_positions(channels, resolution).items():
        ops = sp.hnu if group == "hnu" else sp.fcm
        for pos in positions:
            for op in ops:
                key = (op, *pos.key)
                if key in seen or not op_buildable(op, pos.c_in, pos.c_out):
                    continue
                entry = {
                    "op": op, "c_in": pos.c_in, "c_out": pos.c_out, "height": pos.height, "width": pos.width,
                    "variant": pos.variant,
                }
                shape = [(1, pos.c_in, pos.height, pos.width)]
                first, folded = op_module(op, pos)
                if pos.c_in == pos.c_out:
                    more = [op_module(op, pos)[0] for _ in range(chain - 1)]
                    graphs = {"chain1": Graph(OpChain([first]), shape), "chainK": Graph(OpChain([first, *more]), shape)}
                    seen[key] = EntryGraphs(entry, graphs, folded, chain)
                else:
                    seen[key] = EntryGraphs(entry, {"alone": Graph(first, shape)}, folded)
    return seen


@dataclass
class FixedGraph:
    meta: dict
    graph: Graph
    subtract_overhead: bool = field(default=True)


def fixed_graphs(
    channels: Sequence[int], resolution: Sequence[int], backend: str, *, relus: bool = False,
) -> list[FixedGraph]:
    """The genotype-independent parts; ``relus`` adds the ReLUs between ops (for the roofline)."""
    c1, c2 = (int(c) for c in channels)
    w, h = (int(v) for v in resolution)
    pw, ph = padded_size(resolution)
    full, half, quarter = (ph, pw), (ph // 2, pw // 2), (ph // 4, pw // 4)
    if backend == "torch":
        io: nn.Module = TorchIO()
    else:
        from ..export.onnx_export import ExportGraph

        io = ExportGraph(_Stub())  # type: ignore[arg-type]
    spec = [
        ("io", "network", 1, io, [(1, 3, h, w)], True, "pad to ×4, crop, clamp; one call with host input/output"),
        ("down1", "network", 1, nn.Conv2d(c1, c2, 2, stride=2, bias=False), [(1, c1, *full)], False, "conv 2×2/2"),
        ("down2", "network", 1, nn.Conv2d(c2, c2, 2, stride=2, bias=False), [(1, c2, *half)], False, "conv 2×2/2"),
        ("up1", "network", 1, AddUp(c2, c2), [(1, c2, *quarter)] * 2, False, "h + s2, convT 2×2/2"),
        ("up2", "network", 1, AddUp(c2, c1), [(1, c2, *half)] * 2, False, "q + s1, convT 2×2/2"),
        ("pair_add_full", "network", 4, Add(), [(1, c1, *full)] * 2, False, "residual add of a pair"),
        ("pair_add_half", "network", 4, Add(), [(1, c2, *half)] * 2, False, "residual add of a pair"),
        ("hnu_merge", "unit", 1, HnuMerge(), [(1, c2, *quarter)] * 3, False, "ReLU(x+R) / max(σ(ReLU(x+I)), 0.01)"),
    ]
    if relus:
        spec += [
            ("pair_relu_full", "network", 4, Relu(), [(1, c1, *full)], False, "ReLU inside a residual pair"),
            ("pair_relu_half", "network", 4, Relu(), [(1, c2, *half)], False, "ReLU inside a residual pair"),
            ("hnu_relu", "unit", 6, Relu(), [(1, c2, *quarter)], False, "ReLU between branch ops"),
        ]
    return [
        FixedGraph({"name": n, "per": per, "count": count, "what": what}, Graph(m.eval(), shapes, plain), not plain)
        for n, per, count, m, shapes, plain, what in spec
    ]


def empty_call() -> Graph:
    """A 1-element graph: what an empty call into the runtime costs (subtracted from graphs timed alone)."""
    return Graph(Relu(), [(1, 1, 1, 1)])


__all__ = [
    "CHAIN", "EntryGraphs", "FixedGraph", "OpChain", "empty_call", "entry_graphs", "fixed_graphs", "op_module",
]
