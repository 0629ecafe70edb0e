"""Stages L and A of the hierarchical search (DESIGN §5): two bilevel problems, one loop.

Both stages alternate, every step, an *upper* step on the upper variables u (stage L: the loss
weights λ, and the VGG tap logits when the vgg term is on; stage A: the architecture logits α)
with a *lower* step on the supernet weights w. The upper step follows the hypergradient of the
upper objective through one virtual lower step (:mod:`hbl_edge.search.hypergrad`); lower and upper
batches come from separate data splits (train and val), each a pure function of (seed, step)
so a resumed run sees the batches an uninterrupted one would.

- Stage L: α frozen at its near-uniform initialisation; lower loss Σ λ_k ℓ_k; upper objective
  ``critic`` (cross-entropy of "clean" from a frozen quality critic) or ``fidelity``. After each
  step λ is projected onto λ ≥ 0 and rescaled to mean 1: the lower problem's minimiser does not
  change with the scale of λ, but the virtual step does (a larger λ is a larger step), so without
  the rescaling the search could "improve" by inflating every λ.
- Stage A: λ* frozen; upper objective the λ*-weighted loss on the val split combined with the
  expected latency LAT(α) (additive or multiplicative form) when a budget is given.

:func:`bilevel_step` also runs data parallel (``dist``: every gradient averaged over the ranks,
docs/distributed.md) and takes the lower step either after the upper step (``alternating``,
DARTS) or with the virtual step's gradient (``simultaneous``, one pass fewer); :func:`place`
puts a supernet where and how a step runs it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from ..distributed import SINGLE, DistContext, sync_batchnorm_
from .hypergrad import LowerStep, apply_hypergradient, hypergradient, sgd_momentum_buffers
from .supernet import Supernet

log = logging.getLogger(__name__)

UpperFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: When the lower step is taken (see :func:`bilevel_step`).
LOWER_STEPS = ("alternating", "simultaneous")


def memory_format(dist: DistContext) -> torch.memory_format:
    """Channels-last on the CPU: oneDNN's convolutions skip a layout conversion per call
    (measured: a stage-A step 10–15 % faster, docs/search.md); the default elsewhere."""
    return torch.channels_last if dist.device.type == "cpu" else torch.contiguous_format


def place(net: Supernet, dist: DistContext = SINGLE) -> Supernet:
    """The supernet as a search step runs it: BatchNorm over the global batch (data parallel),
    on the run's device, in its memory format (state-dict keys and values unchanged)."""
    return sync_batchnorm_(net, dist).to(device=dist.device, memory_format=memory_format(dist))


def place_batch(batch: tuple[torch.Tensor, torch.Tensor], dist: DistContext = SINGLE) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = batch
    return x.to(dist.device).contiguous(memory_format=memory_format(dist)), y.to(dist.device)


@dataclass
class BilevelState:
    """Everything one stage checkpoints besides the data order (which is the step)."""

    supernet: Supernet
    upper_vars: list[torch.Tensor]
    w_opt: torch.optim.SGD
    u_opt: torch.optim.Adam
    step: int = 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "supernet": self.supernet.state_dict(),
            "upper_vars": [u.detach().clone() for u in self.upper_vars],
            "w_opt": self.w_opt.state_dict(),
            "u_opt": self.u_opt.state_dict(),
            "step": self.step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.supernet.load_state_dict(state["supernet"])
        with torch.no_grad():
            for u, saved in zip(self.upper_vars, state["upper_vars"]):
                u.copy_(saved)
        self.w_opt.load_state_dict(state["w_opt"])
        self.u_opt.load_state_dict(state["u_opt"])
        self.step = int(state["step"])


def make_optimizers(cfg, supernet: Supernet, upper_vars: list[torch.Tensor],
                    upper_lr: float | None = None) -> tuple[torch.optim.SGD, torch.optim.Adam]:
    """SGD for the weights, Adam for the upper variables (``upper_lr`` overrides ``cfg.upper_lr``)."""
    w_opt = torch.optim.SGD(supernet.weight_parameters(), lr=cfg.w_lr, momentum=cfg.w_momentum)
    u_opt = torch.optim.Adam(upper_vars, lr=upper_lr or cfg.upper_lr, betas=tuple(cfg.upper_betas),
                             weight_decay=cfg.upper_weight_decay)
    return w_opt, u_opt


def bilevel_step(
    state: BilevelState,
    *,
    order: str,
    lower_batch: tuple[torch.Tensor, torch.Tensor],
    upper_batch: tuple[torch.Tensor, torch.Tensor],
    lower_loss: nn.Module,
    upper_objective: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    clip: float,
    after_upper: Callable[[], None] | None = None,
    dist: DistContext = SINGLE,
    lower_step: str = "simultaneous",
    upper_frozen: bool = False,
) -> dict[str, Any]:
    """One upper step (hypergradient) then one lower step (SGD). Returns the step's record.

    ``upper_frozen``: the lower step alone (the upper variables do not move), as stage A's
    warm-up takes it (``SearchConfig.arch_warmup``): the candidates' weights train before α
    compares them, so an op is not judged while it is still at its initialisation.

    ``lower_step`` (:data:`LOWER_STEPS`): ``"simultaneous"`` (the default, as in
    :class:`~hbl_edge.search.config.SearchConfig`) takes the lower step with ∇_w L_tr(w_t, u_t),
    the gradient the second-order (or exact) virtual step has just computed on the same batch,
    and saves that pass (one of five); ``"alternating"`` (DARTS, the reference code) takes it at
    the updated upper variables, ∇_w L_tr(w_t, u_{t+1}), with a pass of its own. The first order
    has no virtual step and always takes its own lower pass. Why the default: docs/search.md.

    ``dist``: data parallelism (:mod:`hbl_edge.distributed`). Each rank passes its own slice
    of the global batch; every gradient (the hypergradient's internal ones, the lower step's)
    is averaged over the ranks before use, so every rank takes the same steps and the result
    is the step of one process on the concatenated batch. The record's losses are the
    averages over the ranks (the global batch's values).
    """
    if lower_step not in LOWER_STEPS:
        raise ValueError(f"lower_step must be one of {', '.join(LOWER_STEPS)}, got {lower_step!r}")
    reuse = lower_step == "simultaneous" and order != "first" and not upper_frozen
    net = state.supernet
    params = net.weight_parameters()
    lo_x, lo_y = lower_batch
    up_x, up_y = upper_batch

    first_terms: dict[str, torch.Tensor] = {}

    def train_loss() -> torch.Tensor:
        loss, terms = lower_loss(net(lo_x), lo_y)
        if not first_terms:  # the pass at (w, u): what a reused lower step logs
            first_terms.update(terms)
        return loss

    def upper_loss() -> torch.Tensor:
        return upper_objective(net(up_x), up_y)

    res = None
    if not upper_frozen:
        res = hypergradient(
            order, state.upper_vars, params, train_loss, upper_loss,
            LowerStep.from_sgd(state.w_opt), sgd_momentum_buffers(state.w_opt, params),
            restore=list(net.buffers()),  # the extra forwards must not move BatchNorm statistics
            reduce=dist.mean if dist.enabled else None,
            keep_lower_grad=reuse,
        )
        apply_hypergradient(state.u_opt, state.upper_vars, res.grads)
        if after_upper:
            after_upper()

    state.w_opt.zero_grad(set_to_none=True)
    if res is not None and res.lower_grad is not None:  # simultaneous: the virtual step's gradient, already averaged
        for p, g in zip(params, res.lower_grad):
            p.grad = g
        loss_value, terms = float(res.info.train_loss), first_terms  # type: ignore[arg-type]
        logged = dist.mean_floats({f"term_{k}": v.item() for k, v in terms.items()})
    else:
        loss, terms = lower_loss(net(lo_x), lo_y)
        # the weights' gradient only: .backward() would also accumulate ∇_u L_tr into the upper
        # variables' .grad (wasted work, and it would overwrite the hypergradient left there)
        for p, g in zip(params, torch.autograd.grad(loss, params, allow_unused=True)):
            p.grad = g
        dist.mean_grads_(params)  # before clipping: the clip sees the global gradient
        logged = dist.mean_floats({"lower_loss": loss.item(), **{f"term_{k}": v.item() for k, v in terms.items()}})
        loss_value = logged.pop("lower_loss")
    gnorm = torch.nn.utils.clip_grad_norm_(params, clip)
    state.w_opt.step()
    state.step += 1
    return {
        "step": state.step,
        "lower_loss": loss_value,
        "upper_loss": res.info.upper_loss if res else None,
        "hypergrad_norm": float(sum(g.norm() ** 2 for g in res.grads) ** 0.5) if res else 0.0,
        "direct_zero": bool(res.info.direct_zero) if res else None,
        "upper_frozen": upper_frozen,
        "grad_norm": float(gnorm),
        **logged,
    }


@torch.no_grad()
def normalise_weights_(weights: torch.Tensor) -> None:
    """Project λ onto λ ≥ 0, then rescale to mean 1 (see the module docstring)."""
    weights.clamp_min_(0.0)
    total = weights.sum()
    if total > 0:
        weights.mul_(weights.numel() / total)
    else:  # every weight hit zero: restart from uniform rather than dividing by zero
        weights.fill_(1.0)
