r"""Hypergradients through one step of the lower problem (DESIGN §5).

Both bilevel stages of the search use this one engine:

- stage L: upper variables ``u`` = loss weights λ (and VGG tap logits), lower ``w`` = weights;
- stage A: upper variables ``u`` = architecture logits α, lower ``w`` = weights.

The lower problem :math:`\min_w L_{tr}(w, u)` is replaced by one virtual step of the lower
optimiser (SGD with momentum, as in DARTS):

.. math::

    w'(u) = w - \eta\,\big(\mathrm{momentum}\cdot b + \nabla_w L_{tr}(w, u)
            + \mathrm{wd}\cdot w\big),

and the hypergradient is the total derivative of the one-step unrolled upper objective
(Liu et al., *DARTS: Differentiable Architecture Search*, ICLR 2019, eq. 7):

.. math::

    \frac{d}{du} L_{up}(w'(u), u)
      = \nabla_u L_{up}(w', u) - \eta\,\nabla^2_{u,w} L_{tr}(w, u)\; v,
    \qquad v = \nabla_{w'} L_{up}(w', u).

Three ways of computing it (``order``):

``"second"``
    DARTS' second-order approximation: the mixed Hessian-vector product by central finite
    differences (DARTS eq. 8),

    .. math::

        \nabla^2_{u,w} L_{tr}(w, u)\, v \approx
        \frac{\nabla_u L_{tr}(w^+, u) - \nabla_u L_{tr}(w^-, u)}{2\epsilon},
        \quad w^\pm = w \pm \epsilon v,\ \epsilon = 0.01 / \lVert v \rVert .

    Cost: one forward/backward pass of ``upper_loss`` and three of ``train_loss``; no
    double backward, so it works with any op.

``"first"``
    :math:`g = \nabla_u L_{up}(w, u)` at the current ``w``, the direct gradient only (DARTS
    "first order", η = 0). **When the upper objective does not depend on u directly** (stage
    L's critic objective does not depend on λ) this is exactly zero and u never moves: the
    result says so (:attr:`HyperGradInfo.direct_zero`, :attr:`HyperGradResult.stalled`) and
    the stage code must tell the user to use the second order.

``"exact"``
    The same unrolled objective differentiated by autograd through :math:`w'(u)`
    (``create_graph=True`` on :math:`\nabla_w L_{tr}`): exact up to rounding, needs
    double-backward support of every op and keeps the graph of ∇_w L_tr alive; for tests and
    tiny problems.

The virtual step mirrors :class:`torch.optim.SGD` exactly, including weight decay, dampening,
Nesterov and the first step (no momentum buffer yet: ``b = d``); a lower parameter that the
training loss does not reach is left where it is, as SGD skips parameters without a gradient.
With momentum the coefficient of :math:`\nabla_w L_{tr}` in the step is not always 1
(``1 - dampening``, or ``1 + momentum·(…)`` with Nesterov), so the second order scales ``v``
per parameter by that coefficient before the finite difference; with the DARTS setting
(dampening 0, no Nesterov) it is 1. Gradient clipping of the real step is not mirrored (as in
DARTS).

**Contract with the closures.** ``train_loss()`` and ``upper_loss()`` evaluate their loss at
the *current values* of the parameter tensors (in practice ``nn.Module`` parameters, with
their data split/batch fixed by the closure). The engine evaluates at :math:`w'` and
:math:`w^\pm` by copying values into ``lower_params`` in place (under ``torch.no_grad``) and
always copies the original values back (bit-exact, also on an exception). It uses
:func:`torch.autograd.grad` only, so no ``.grad`` attribute is written, neither on the lower
parameters nor on the upper variables. Extra forward passes in training mode update
BatchNorm running statistics: pass those buffers as ``restore`` to leave no trace.

Applying the result is left to the caller (:func:`apply_hypergradient` is the two-line
helper), because the stages post-process it (λ is projected onto λ ≥ 0 after the step).

**Data parallelism.** ``reduce`` (e.g. the average over torchrun ranks) is applied to every
gradient the engine computes before it is used, so N processes on N batch slices compute the
hypergradient of the whole batch (:mod:`hbl_edge.distributed`). **Memory.** The second order
writes w' and w ± εv into the parameters in place and restores them from one snapshot, so it
holds the weights twice (plus v), never a copy per evaluation point.

Example::

    >>> import torch
    >>> w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    >>> u = torch.nn.Parameter(torch.zeros(()))
    >>> train = lambda: ((w - 3.0) ** 2).sum() + u.exp() * (w**2).sum()
    >>> val = lambda: ((w - 2.0) ** 2).sum()
    >>> res = hypergradient("second", [u], [w], train, val, LowerStep(lr=0.1, momentum=0.0))
    >>> res.grads[0].shape, res.info.direct_zero
    (torch.Size([]), True)
    >>> hypergradient("first", [u], [w], train, val, LowerStep(lr=0.1)).stalled
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Literal, Optional

import torch
from torch import Tensor

__all__ = [
    "HyperGradInfo",
    "HyperGradResult",
    "LowerStep",
    "ORDERS",
    "Order",
    "apply_hypergradient",
    "direct_gradient_is_zero",
    "hypergradient",
    "sgd_momentum_buffers",
    "virtual_step",
]

Order = Literal["first", "second", "exact"]
#: A gradient reducer (e.g. the average over data-parallel ranks): same length, None kept.
Reduce = Callable[[list[Optional[Tensor]]], list[Optional[Tensor]]]
ORDERS: tuple[str, ...] = ("first", "second", "exact")

#: DARTS' finite-difference radius: ε = FD_RADIUS / ‖v‖.
FD_RADIUS = 0.01


@dataclass(frozen=True)
class LowerStep:
    """The virtual step's hyperparameters: a mirror of the lower optimiser (SGD).

    ``lr`` is η, the lower optimiser's *current* learning rate (after any schedule).
    """

    lr: float
    momentum: float = 0.9  # the reference code's weight optimiser
    weight_decay: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False

    def __post_init__(self) -> None:
        for name in ("lr", "momentum", "weight_decay"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"LowerStep.{name} must be finite and >= 0, got {value}")
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("LowerStep: Nesterov needs momentum > 0 and dampening 0 (as SGD)")

    @classmethod
    def from_sgd(cls, optimizer: torch.optim.Optimizer) -> LowerStep:
        """The step of an SGD optimiser (all parameter groups must share hyperparameters)."""
        if not isinstance(optimizer, torch.optim.SGD):
            raise ValueError(
                f"the virtual step mirrors torch.optim.SGD, got {type(optimizer).__name__}; "
                "build a LowerStep(lr=..., momentum=...) explicitly"
            )
        keys = ("lr", "momentum", "weight_decay", "dampening", "nesterov")
        groups = {tuple(float(g[k]) for k in keys) for g in optimizer.param_groups}
        if len(groups) != 1:
            raise ValueError("SGD parameter groups differ in lr/momentum/weight decay; "
                             "build a LowerStep explicitly")
        if any(g.get("maximize", False) for g in optimizer.param_groups):
            raise ValueError("the virtual step assumes a minimising SGD (maximize=False)")
        g = optimizer.param_groups[0]
        return cls(lr=float(g["lr"]), momentum=float(g["momentum"]),
                   weight_decay=float(g["weight_decay"]), dampening=float(g["dampening"]),
                   nesterov=bool(g["nesterov"]))


def sgd_momentum_buffers(optimizer: torch.optim.Optimizer,
                     params: Sequence[Tensor]) -> list[Optional[Tensor]]:
    """The SGD momentum buffer of each parameter (``None`` before its first step)."""
    return [optimizer.state.get(p, {}).get("momentum_buffer") for p in params]


@dataclass(frozen=True)
class HyperGradInfo:
    """Diagnostics of one hypergradient (plain floats, cheap to log).

    ``direct_zero`` is True when the direct part ∇_u L_up is exactly zero for every upper
    variable (including variables the upper loss does not reach at all, listed in
    ``unused``). With ``order="first"`` the whole hypergradient is then zero.
    """

    order: str
    direct_zero: bool
    unused: tuple[int, ...]     # indices of upper_vars with no path from upper_loss
    upper_loss: float           # at w' (second/exact) or w (first)
    train_loss: Optional[float]  # at w; None for first order
    direct_norm: float          # ‖∇_u L_up‖
    implicit_norm: float        # ‖η ∇²_{u,w} L_tr v‖ (0 for first order)
    v_norm: Optional[float]     # ‖v‖ (the Nesterov/dampening-scaled v), second/exact
    epsilon: Optional[float]    # finite-difference ε (second order only)


@dataclass(frozen=True)
class HyperGradResult:
    """``grads[i]`` is the hypergradient for ``upper_vars[i]`` (same shape and dtype)."""

    grads: list[Tensor]
    info: HyperGradInfo
    #: ∇_w L_tr(w, u) at the current w (reduced), when asked for with ``keep_lower_grad``:
    #: the gradient the virtual step used, for a lower step that reuses it.
    lower_grad: Optional[list[Optional[Tensor]]] = None

    @property
    def stalled(self) -> bool:
        """First order with a zero direct gradient: applying it moves nothing."""
        return self.info.order == "first" and self.info.direct_zero


def virtual_step(params: Sequence[Tensor], grads: Sequence[Optional[Tensor]], step: LowerStep,
                 buffers: Optional[Sequence[Optional[Tensor]]] = None) -> list[Tensor]:
    """New values w' of one SGD step, without modifying anything (differentiable in ``grads``).

    Same operations and order as the single-tensor :class:`torch.optim.SGD` update:
    ``d = g + wd·w``; ``b = d`` (no buffer) or ``momentum·b + (1 - dampening)·d``;
    ``d = d + momentum·b`` (Nesterov) or ``b``; ``w' = w - lr·d``. A parameter whose gradient
    is ``None`` keeps its value, as SGD skips it. ``params`` should be detached values.
    """
    if buffers is None:
        buffers = [None] * len(params)
    out: list[Tensor] = []
    for p, g, buf in zip(params, grads, buffers):
        if g is None:
            out.append(p)
            continue
        d = torch.add(g, p, alpha=step.weight_decay) if step.weight_decay != 0 else g
        if step.momentum != 0:
            if buf is None:
                b = d
            else:
                b = torch.add(buf * step.momentum, d, alpha=1 - step.dampening)
            d = torch.add(d, b, alpha=step.momentum) if step.nesterov else b
        out.append(torch.add(p, d, alpha=-step.lr))
    return out


def _grad_coefficient(step: LowerStep, has_grad: bool, buf: Optional[Tensor]) -> float:
    """c in ∂w'/∂u = -η·c·∂(∇_w L_tr)/∂u for one parameter (see :func:`virtual_step`)."""
    if not has_grad:
        return 0.0
    if step.momentum == 0:
        return 1.0
    c_buf = 1.0 if buf is None else 1.0 - step.dampening
    return 1.0 + step.momentum * c_buf if step.nesterov else c_buf


@contextmanager
def _preserved(tensors: Sequence[Tensor]) -> Iterator[list[Tensor]]:
    """Snapshot ``tensors`` and copy the snapshot back on exit (bit-exact, also on errors).

    Values are copied back rather than undoing the perturbation arithmetically, which would
    drift by rounding on every call.
    """
    saved = [t.detach().clone() for t in tensors]
    try:
        yield saved
    finally:
        with torch.no_grad():
            for t, s in zip(tensors, saved):
                t.copy_(s)


def _assign(params: Sequence[Tensor], values: Sequence[Tensor]) -> None:
    with torch.no_grad():
        for p, v in zip(params, values):
            p.copy_(v)


def _scalar(loss: Tensor, name: str) -> Tensor:
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
        raise ValueError(f"{name}() must return a scalar tensor, got {shape}")
    return loss.reshape(())


def _grads(loss: Tensor, inputs: Sequence[Tensor], **kwargs: object) -> list[Optional[Tensor]]:
    """``autograd.grad`` with ``None`` for unreached inputs, also when nothing is reached."""
    if not loss.requires_grad:
        return [None] * len(inputs)
    return list(torch.autograd.grad(loss, list(inputs), allow_unused=True, **kwargs))


def _identity(tensors: list[Optional[Tensor]]) -> list[Optional[Tensor]]:
    return tensors


def _zeros_for_none(grads: Sequence[Optional[Tensor]], like: Sequence[Tensor]) -> list[Tensor]:
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, like)]


def _norm(tensors: Sequence[Tensor]) -> float:
    if not tensors:
        return 0.0
    return math.sqrt(sum(float(t.detach().double().pow(2).sum()) for t in tensors))


def _check_inputs(order: str, upper_vars: Sequence[Tensor], lower_params: Sequence[Tensor],
                  buffers: Optional[Sequence[Optional[Tensor]]]) -> None:
    if order not in ORDERS:
        raise ValueError(f"unknown hypergradient order {order!r}; use one of {', '.join(ORDERS)}")
    if not upper_vars:
        raise ValueError("upper_vars is empty: nothing to differentiate")
    if not lower_params:
        raise ValueError("lower_params is empty: there is no lower problem to step through")
    for name, group in (("upper_vars", upper_vars), ("lower_params", lower_params)):
        for i, t in enumerate(group):
            if not isinstance(t, Tensor) or not t.requires_grad:
                raise ValueError(f"{name}[{i}] must be a tensor with requires_grad=True")
        if len({id(t) for t in group}) != len(group):
            raise ValueError(f"{name} lists the same tensor twice")
    if {id(t) for t in upper_vars} & {id(t) for t in lower_params}:
        raise ValueError("a tensor is both an upper variable and a lower parameter; "
                         "split them (e.g. architecture logits vs. weights)")
    if buffers is not None and len(buffers) != len(lower_params):
        raise ValueError(f"momentum_buffers has {len(buffers)} entries for "
                         f"{len(lower_params)} lower parameters; pass one (or None) per parameter")


def hypergradient(
    order: Order,
    upper_vars: Sequence[Tensor],
    lower_params: Sequence[Tensor],
    train_loss: Callable[[], Tensor],
    upper_loss: Callable[[], Tensor],
    step: LowerStep,
    momentum_buffers: Optional[Sequence[Optional[Tensor]]] = None,
    *,
    restore: Sequence[Tensor] = (),
    fd_radius: float = FD_RADIUS,
    reduce: Optional[Reduce] = None,
    keep_lower_grad: bool = False,
) -> HyperGradResult:
    r"""Hypergradient of ``upper_loss`` w.r.t. ``upper_vars`` through one lower step.

    Args:
        order: ``"first"``, ``"second"`` (DARTS, finite differences) or ``"exact"``
            (autograd through the virtual step); see the module docstring for the maths.
        upper_vars: u, tensors with ``requires_grad`` (α, λ, tap logits).
        lower_params: w, tensors with ``requires_grad`` that the closures read (weights).
        train_loss: closure returning L_tr(w, u) at the current values (training batch).
        upper_loss: closure returning L_up(w, u) at the current values (validation batch).
        step: the lower optimiser's step (:meth:`LowerStep.from_sgd`).
        momentum_buffers: the lower optimiser's momentum buffers, one per lower parameter
            (``None`` entries before its first step); :func:`sgd_momentum_buffers` reads them.
            Ignored by the first order.
        restore: extra tensors to snapshot and restore, e.g. BatchNorm running statistics
            (``list(model.buffers())``) that the extra forward passes would otherwise update.
        fd_radius: r in ε = r / ‖v‖ (DARTS: 0.01).
        reduce: data parallelism. Called on every list of gradients the engine computes (and
            on the loss values it reports), right after it is computed and before it is used:
            ∇_w L_tr for the virtual step, [∇_u L_up, v] at w', the Hessian-vector product
            (the finite difference is linear in the two gradients, so it is reduced once) and
            the first-order direct gradient. With ``DistContext.mean`` (the average over
            ranks), N processes with batch B compute the hypergradient of one process with
            batch N·B; ``None`` entries must be kept. None: one process, nothing reduced.
        keep_lower_grad: return ∇_w L_tr(w, u) (:attr:`HyperGradResult.lower_grad`, second
            and exact orders) and treat the first ``train_loss()`` pass as the lower step's
            own forward pass: ``restore`` is then reset to its state *after* that pass, so
            BatchNorm statistics move once, as one training forward moves them. A lower step
            can then apply that gradient instead of computing ∇_w L_tr(w, u_new) again
            (the "simultaneous" update of both levels, one pass fewer per step).

    Returns:
        :class:`HyperGradResult`: ``grads`` (one tensor per upper variable, zeros for a
        variable no loss reaches) and :class:`HyperGradInfo`. Nothing is modified: lower
        parameters (and ``restore``) hold their original values bit for bit, and no
        ``.grad`` is written.

    Raises:
        ValueError: unknown order, empty or overlapping variable lists, a tensor that does
            not require grad, mismatched buffers, or a non-scalar loss.
    """
    _check_inputs(order, upper_vars, lower_params, momentum_buffers)
    if not fd_radius > 0:
        raise ValueError(f"fd_radius must be > 0, got {fd_radius}")
    upper_vars, lower_params = list(upper_vars), list(lower_params)
    red = reduce or _identity
    if order == "first":
        with torch.enable_grad(), _preserved(list(restore)):
            l_up = _scalar(upper_loss(), "upper_loss")
            *raw, l_up = red([*_grads(l_up, upper_vars), l_up.detach()])
        direct = _zeros_for_none(raw, upper_vars)
        return HyperGradResult(direct, _info(order, raw, direct, l_up, None, [], None, None))

    n_u = len(upper_vars)
    bufs = list(momentum_buffers) if momentum_buffers is not None else [None] * len(lower_params)
    kept: Optional[list[Optional[Tensor]]] = None
    with torch.enable_grad(), _preserved(lower_params) as w0, _preserved(list(restore)) as buffers0:
        # Virtual step w' = w - η(momentum·b + ∇_w L_tr + wd·w), at the current w.
        l_tr = _scalar(train_loss(), "train_loss")
        if keep_lower_grad:  # this pass is the lower step's forward: keep what it did to the buffers
            buffers0[:] = [t.detach().clone() for t in restore]
        *g_tr, l_tr = red([*_grads(l_tr, lower_params), l_tr.detach()])
        if keep_lower_grad:
            kept = list(g_tr)
        # c scales v where the step's coefficient of ∇_w L_tr is not 1 (dampening, Nesterov).
        coef = [_grad_coefficient(step, g is not None, b) for g, b in zip(g_tr, bufs)]
        if order == "second":
            # w' straight into the parameters (the snapshot w0 restores them): no second copy
            _virtual_step_(lower_params, g_tr, step, bufs)
        else:
            _assign(lower_params, virtual_step(w0, g_tr, step, bufs))
        del g_tr

        # Direct part ∇_u L_up(w', u) and v = ∇_{w'} L_up(w', u), at w'.
        l_up = _scalar(upper_loss(), "upper_loss")
        *raw_all, l_up = red([*_grads(l_up, upper_vars + lower_params), l_up.detach()])
        raw, direct = raw_all[:n_u], _zeros_for_none(raw_all[:n_u], upper_vars)
        v = _zeros_for_none(raw_all[n_u:], lower_params)
        del raw_all
        _assign(lower_params, w0)

        cv = [t if c == 1.0 else c * t for c, t in zip(coef, v)]
        v_norm = _norm(cv)
        eps: Optional[float] = None
        if v_norm == 0.0 or step.lr == 0.0:
            # L_up does not reach w' (or the step is null): no indirect term, and ε = r/0.
            implicit = [torch.zeros_like(u) for u in upper_vars]
        elif order == "second":
            eps = fd_radius / v_norm
            del v
            implicit = _implicit_fd(upper_vars, lower_params, train_loss, step, w0, cv, eps)
        else:
            implicit = _implicit_exact(upper_vars, lower_params, train_loss, step, w0, v, bufs)
        if reduce is not None and not (v_norm == 0.0 or step.lr == 0.0):
            implicit = _zeros_for_none(reduce(list(implicit)), upper_vars)
    grads = [d + i for d, i in zip(direct, implicit)]
    return HyperGradResult(grads, _info(order, raw, direct, l_up, l_tr, implicit, v_norm, eps), kept)


@torch.no_grad()
def _virtual_step_(params: Sequence[Tensor], grads: Sequence[Optional[Tensor]], step: LowerStep,
                   buffers: Sequence[Optional[Tensor]]) -> None:
    """:func:`virtual_step` written into ``params`` in place: the same operations in the same
    order (so the same values bit for bit), with per-parameter temporaries only."""
    for p, g, buf in zip(params, grads, buffers):
        if g is None:
            continue
        d = torch.add(g, p, alpha=step.weight_decay) if step.weight_decay != 0 else g
        if step.momentum != 0:
            if buf is None:
                b = d
            else:
                b = torch.add(buf * step.momentum, d, alpha=1 - step.dampening)
            d = torch.add(d, b, alpha=step.momentum) if step.nesterov else b
        p.add_(d, alpha=-step.lr)


def _implicit_fd(upper_vars: list[Tensor], lower_params: list[Tensor],
                 train_loss: Callable[[], Tensor], step: LowerStep, w0: list[Tensor],
                 cv: list[Tensor], eps: float) -> list[Tensor]:
    """-η ∇²_{u,w} L_tr(w, u)·(c⊙v) by central differences at w ± ε(c⊙v) (DARTS eq. 8).

    w ± ε(c⊙v) is written into the parameters in place (``w0 + s·ε·d``, the same rounding
    as ``torch.add(w0, d, alpha=s·ε)``), so the perturbed weights cost no extra copy.
    """
    grads_pm = []
    for sign in (1.0, -1.0):
        with torch.no_grad():
            for p, w, d in zip(lower_params, w0, cv):
                p.copy_(w).add_(d, alpha=sign * eps)
        l_tr = _scalar(train_loss(), "train_loss")
        g = _grads(l_tr, upper_vars)
        grads_pm.append(_zeros_for_none(g, upper_vars))
    _assign(lower_params, w0)
    scale = -step.lr / (2.0 * eps)
    return [(gp - gm) * scale for gp, gm in zip(*grads_pm)]


def _implicit_exact(upper_vars: list[Tensor], lower_params: list[Tensor],
                    train_loss: Callable[[], Tensor], step: LowerStep, w0: list[Tensor],
                    v: list[Tensor], buffers: Sequence[Optional[Tensor]]) -> list[Tensor]:
    """(∂w'/∂u)ᵀ v by autograd through w'(u) = virtual_step(w, ∇_w L_tr(w, u)).

    The graph is built here, after w has been restored, and not before the swaps to w':
    in-place copies into the parameters would invalidate (or silently alter) the tensors
    a live graph saved.
    """
    l_tr = _scalar(train_loss(), "train_loss")
    g_tr = _grads(l_tr, lower_params, create_graph=True)
    w1 = virtual_step(w0, g_tr, step, buffers)
    pairs = [(w, t) for w, t in zip(w1, v) if w.requires_grad]
    if not pairs:
        return [torch.zeros_like(u) for u in upper_vars]
    outs, vecs = zip(*pairs)
    g = torch.autograd.grad(outs, upper_vars, grad_outputs=vecs, allow_unused=True)
    return [t.detach() for t in _zeros_for_none(g, upper_vars)]


def _info(order: str, raw: Sequence[Optional[Tensor]], direct: list[Tensor], l_up: Tensor,
          l_tr: Optional[Tensor], implicit: list[Tensor], v_norm: Optional[float],
          eps: Optional[float]) -> HyperGradInfo:
    unused = tuple(i for i, g in enumerate(raw) if g is None)
    direct_zero = all(not bool(torch.any(d != 0)) for d in direct)
    return HyperGradInfo(
        order=order,
        direct_zero=direct_zero,
        unused=unused,
        upper_loss=float(l_up.detach()),
        train_loss=None if l_tr is None else float(l_tr.detach()),
        direct_norm=_norm(direct),
        implicit_norm=_norm(implicit),
        v_norm=v_norm,
        epsilon=eps,
    )


def direct_gradient_is_zero(upper_vars: Sequence[Tensor], upper_loss: Callable[[], Tensor]) -> bool:
    """Whether ∇_u L_up is exactly zero at the current parameters (first order would stall).

    Stage code calls this once before a first-order search and, if True, tells the user that
    the upper objective does not depend on these variables directly and that ``second`` (or
    ``exact``) order is needed for them to move.
    """
    upper_vars = list(upper_vars)
    if not upper_vars:
        raise ValueError("upper_vars is empty: nothing to differentiate")
    with torch.enable_grad():
        l_up = _scalar(upper_loss(), "upper_loss")
        raw = _grads(l_up, upper_vars)
    return all(g is None or not bool(torch.any(g != 0)) for g in raw)


def apply_hypergradient(optimizer: torch.optim.Optimizer, upper_vars: Sequence[Tensor],
                        grads: Sequence[Tensor]) -> None:
    """Set ``u.grad = g`` (overwriting, not accumulating) for each upper variable, then step.

    Projections (λ ≥ 0) and logging are the caller's: they follow this call.
    """
    if len(upper_vars) != len(grads):
        raise ValueError(f"{len(grads)} gradients for {len(upper_vars)} upper variables")
    for u, g in zip(upper_vars, grads):
        if g.shape != u.shape:
            raise ValueError(f"gradient of shape {tuple(g.shape)} for a variable of shape "
                             f"{tuple(u.shape)}")
        u.grad = g.detach().to(dtype=u.dtype, device=u.device).clone()
    optimizer.step()
