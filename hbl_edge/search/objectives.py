r"""Upper-level objectives of the loss search, stage L (DESIGN §4–5).

Every objective is called as ``objective(restored, target) -> scalar tensor``, lower is
better, differentiable with respect to ``restored`` (``N×3×H×W``, nominally in [0, 1]; it is
*not* clamped, since clamping would cut the gradient where the network overshoots). Each is
a pure function plus a thin ``nn.Module``; :data:`OBJECTIVES` maps a name to a factory and
:func:`build_objective` is the one way to create one.

``critic``
    .. math:: Q_{critic}(\hat y) = \operatorname{mean}_n \operatorname{BCE}\big(C(\hat y_n), 1\big)
              = \operatorname{mean}_n \log\big(1 + e^{-C(\hat y_n)}\big)

    the cross-entropy of "clean" under a frozen :class:`~hbl_edge.search.critic.QualityCritic`
    ``C`` (the paper's image-quality objective; ``target`` is ignored). It depends on the loss
    weights λ **only through the network weights** w*(λ): ∂Q/∂λ = 0 at fixed w, so the
    first-order hypergradient with respect to λ is exactly zero and λ would never move. Stage
    L must use the second-order (or exact) hypergradient with this objective, where the
    −η ∇²_{λ,w} L_tr · ∇_w Q term carries all the signal.

``fidelity``
    .. math:: Q_{fid}(\hat y, y) = \operatorname{mean}_n \Big[\Big(1 - \frac{\mathrm{PSNR}_\epsilon(\hat y_n, y_n)}{50}\Big)
              + \big(1 - \mathrm{SSIM}(\hat y_n, y_n)\big)\Big],
    .. math:: \mathrm{PSNR}_\epsilon = 10 \log_{10}\frac{1}{\mathrm{MSE}_n + \epsilon},\quad \epsilon = 10^{-5}

    PSNR is capped at 50 dB by ε, so the first term lies in [0, 1] for any PSNR ≥ 0 dB and is
    exactly 0 at ŷ = y (as is the second): Q_fid(y, y) = 0, and Q_fid is finite and smooth
    everywhere. The 1/50 scale sets the exchange rate 1 dB ≙ 0.02 SSIM, about what separates
    restoration methods on both metrics at once, so neither term swamps the other. SSIM:
    Gaussian window 11, σ 1.5, data range 1, valid padding (:func:`hbl_edge.metrics.ssim`,
    the scikit-image convention), so H, W ≥ 11. Unlike ``critic`` this does not depend on λ
    directly either; it rewards the validation metrics the benchmarks report.

Example:
    >>> obj = build_objective("fidelity")
    >>> float(obj(torch.full((1, 3, 16, 16), 0.5), torch.full((1, 3, 16, 16), 0.5)))
    0.0
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from hbl_edge.errors import ConfigError
from hbl_edge.registry import Registry
from hbl_edge.losses import _check_image, _check_pair
from hbl_edge.metrics import ssim as _ssim
from hbl_edge.search.critic import QualityCritic, freeze

__all__ = [
    "OBJECTIVES",
    "PSNR_SCALE_DB",
    "PSNR_EPS",
    "critic_objective",
    "fidelity_objective",
    "CriticObjective",
    "FidelityObjective",
    "register_objective",
    "build_objective",
]

PSNR_SCALE_DB = 50.0   # 1 dB of PSNR weighs as much as 0.02 of SSIM
PSNR_EPS = 1e-5        # caps PSNR at 10·log10(1/ε) = 50 dB, so the objective is 0 at ŷ = y


# ------------------------------------------------------------------------ functions

def critic_objective(restored: torch.Tensor, critic: QualityCritic) -> torch.Tensor:
    r"""Mean binary cross-entropy of "clean": ``BCEWithLogits(critic(restored), 1)``.

    Args:
        restored: ``N×3×H×W``, H, W ≥ 32.
        critic: a (frozen) :class:`QualityCritic`.

    Returns:
        scalar tensor ≥ 0; ``log 2`` where the critic is undecided, → 0 as it is sure the
        images are clean.
    """
    _check_image(restored, "restored", rgb=True)
    logits = critic(restored)
    return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))


def fidelity_objective(restored: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    r"""``mean_n[(1 − PSNR_ε/50) + (1 − SSIM)]`` (module docstring); 0 at ``restored == target``.

    Args:
        restored, target: ``N×3×H×W``, H, W ≥ 11.

    Returns:
        scalar tensor.

    Example:
        ŷ = 0, y = 0.1 everywhere: MSE = 0.01, PSNR_ε = 10·log10(1/0.01001) ≈ 19.9957 dB;
        SSIM = C1/(0.1² + C1) with C1 = 0.01², ≈ 0.0099; Q ≈ 0.6001 + 0.9901 = 1.5902.
    """
    _check_pair(restored, target, rgb=True)
    mse = (restored - target).pow(2).flatten(1).mean(dim=1)
    psnr = 10.0 * torch.log10(1.0 / (mse + PSNR_EPS))
    return ((1.0 - psnr / PSNR_SCALE_DB) + (1.0 - _ssim(restored, target))).mean()


# -------------------------------------------------------------------------- modules

class CriticObjective(nn.Module):
    """:func:`critic_objective` with its critic frozen inside; ``forward(restored, target=None)``.

    The critic is a sub-module (so ``.to(device)`` moves it) with ``requires_grad`` off, so it
    adds no parameters to any optimiser.
    """

    name = "critic"
    uses_target = False
    #: ∂Q/∂λ at fixed weights is identically zero: first-order hypergradients stall.
    first_order_stalls = True

    def __init__(self, critic: QualityCritic) -> None:
        super().__init__()
        if not isinstance(critic, QualityCritic):
            raise ConfigError(f"the critic objective needs a QualityCritic, got "
                              f"{type(critic).__name__}; train one or pass --critic PATH")
        self.critic = freeze(critic)

    def train(self, mode: bool = True) -> CriticObjective:
        super().train(mode)
        self.critic.eval()  # frozen: stays in eval mode whatever the caller toggles
        return self

    def forward(self, restored: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        return critic_objective(restored, self.critic)


class FidelityObjective(nn.Module):
    """:func:`fidelity_objective` as a module; ``forward(restored, target)``."""

    name = "fidelity"
    uses_target = True
    first_order_stalls = True

    def forward(self, restored: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return fidelity_objective(restored, target)


# ------------------------------------------------------------------------- registry

ObjectiveFactory = Callable[..., nn.Module]
OBJECTIVES: Registry[ObjectiveFactory] = Registry("objective", ConfigError)


def register_objective(name: str) -> Callable[[ObjectiveFactory], ObjectiveFactory]:
    """Decorator adding a factory ``(**kwargs) -> nn.Module`` to :data:`OBJECTIVES`."""
    return OBJECTIVES.register(name)


@register_objective("critic")
def _make_critic(critic: QualityCritic | None = None, **_: Any) -> nn.Module:
    if critic is None:
        raise ConfigError("the critic objective needs a quality critic; let stage L train one "
                          "or pass --critic PATH")
    return CriticObjective(critic)


@register_objective("fidelity")
def _make_fidelity(**_: Any) -> nn.Module:
    return FidelityObjective()


def build_objective(name: str, **kwargs: Any) -> nn.Module:
    """The stage-L objective registered as ``name`` (``critic`` needs ``critic=...``).

    Raises:
        ConfigError: unknown name, or a missing critic.
    """
    return OBJECTIVES.get(str(name).strip().lower())(**kwargs)
