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
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from .hypergrad import LowerStep, apply_hypergradient, hypergradient, sgd_momentum_buffers
from .supernet import Supernet

log = logging.getLogger(__name__)

UpperFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


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


def make_optimizers(cfg, supernet: Supernet, upper_vars: list[torch.Tensor]) -> tuple[torch.optim.SGD, torch.optim.Adam]:
    w_opt = torch.optim.SGD(supernet.weight_parameters(), lr=cfg.w_lr, momentum=cfg.w_momentum)
    u_opt = torch.optim.Adam(upper_vars, lr=cfg.upper_lr, betas=tuple(cfg.upper_betas), weight_decay=cfg.upper_weight_decay)
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
) -> dict[str, Any]:
    """One upper step (hypergradient) then one lower step (SGD). Returns the step's record."""
    net = state.supernet
    params = net.weight_parameters()
    lo_x, lo_y = lower_batch
    up_x, up_y = upper_batch

    def train_loss() -> torch.Tensor:
        return lower_loss(net(lo_x), lo_y)[0]

    def upper_loss() -> torch.Tensor:
        return upper_objective(net(up_x), up_y)

    res = hypergradient(
        order, state.upper_vars, params, train_loss, upper_loss,
        LowerStep.from_sgd(state.w_opt), sgd_momentum_buffers(state.w_opt, params),
        restore=list(net.buffers()),  # the extra forwards must not move BatchNorm statistics
    )
    apply_hypergradient(state.u_opt, state.upper_vars, res.grads)
    if after_upper:
        after_upper()

    state.w_opt.zero_grad(set_to_none=True)
    loss, terms = lower_loss(net(lo_x), lo_y)
    loss.backward()
    gnorm = torch.nn.utils.clip_grad_norm_(params, clip)
    state.w_opt.step()
    state.step += 1
    return {
        "step": state.step,
        "lower_loss": loss.item(),
        "upper_loss": res.info.upper_loss,
        "hypergrad_norm": float(sum(g.norm() ** 2 for g in res.grads) ** 0.5),
        "direct_zero": bool(res.info.direct_zero),
        "grad_norm": float(gnorm),
        **{f"term_{k}": v.item() for k, v in terms.items()},
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
