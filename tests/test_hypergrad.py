"""Hypergradient engine (hbl_edge.search.hypergrad) against closed forms.

The main problem is ridge regression with one regulariser weight per coordinate, small
enough that everything has a closed form:

    L_tr(w, u) = ‖X w − y‖² / n + Σ_j exp(u_j) w_j²
    L_up(w, u) = ‖X_v w − y_v‖² / m  [+ κ Σ_j sin(u_j) w_j²  in the "direct" variant]

so ∇_w L_tr = 2Xᵀ(Xw − y)/n + 2 e^u ⊙ w and, for the virtual step
w' = w − η(m·b + ∇_w L_tr + wd·w), ∂w'/∂u = −η·c·diag(2 e^u ⊙ w) with c the coefficient of
the gradient in the step (1 in the DARTS setting). The one-step unrolled hypergradient is

    d/du L_up(w'(u), u) = ∂_u L_up(w', u) − 2ηc · e^u ⊙ w ⊙ ∇_w L_up(w', u).

Stated tolerances (relative error = ‖a − b‖ / ‖b‖ over the whole gradient; "observed" is
on this machine, torch 2.13 CPU):
- TOL_EXACT, exact vs closed form, float64: 1e-8 (observed ~1e-16);
- TOL_FD_QUADRATIC, second (finite differences) vs exact, float64, quadratic problems: 1e-10
  (∇_u L_tr is quadratic in w, so the central difference has no truncation error, only
  rounding; observed ~1e-14);
- TOL_FD_NETWORK, second vs exact, float64, the tiny non-quadratic mixed-op network: 1e-4
  (truncation O(ε²‖v‖²) = O(1e-4) times third derivatives; observed ~7e-6);
- TOL_FLOAT32, second in float32 vs the float64 exact value: 1e-3 (rounding in the difference
  quotient, ~ float32 eps·|∇_u L_tr| / (ε‖v‖ = 0.01); observed ~3e-6 to 7e-6).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from hbl_edge.search.hypergrad import (
    HyperGradResult,
    LowerStep,
    apply_hypergradient,
    direct_gradient_is_zero,
    hypergradient,
    sgd_momentum_buffers,
    virtual_step,
)

D64 = torch.float64
TOL_EXACT = 1e-8
TOL_FD_QUADRATIC = 1e-10
TOL_FD_NETWORK = 1e-4
TOL_FLOAT32 = 1e-3


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


class Ridge:
    """The ridge problem above, as parameters + loss closures + closed forms."""

    def __init__(self, d: int = 5, n: int = 40, m: int = 30, kappa: float = 0.0,
                 dtype: torch.dtype = D64, seed: int = 0, scalar_u: bool = False,
                 val_scale: float = 1.0) -> None:
        g = torch.Generator().manual_seed(seed)
        w_true = torch.randn(d, generator=g, dtype=D64)
        self.X = torch.randn(n, d, generator=g, dtype=D64)
        self.y = self.X @ w_true + 0.5 * torch.randn(n, generator=g, dtype=D64)
        self.Xv = torch.randn(m, d, generator=g, dtype=D64)
        self.yv = val_scale * self.Xv @ w_true + 0.5 * torch.randn(m, generator=g, dtype=D64)
        self.kappa = kappa
        self.w = nn.Parameter(torch.randn(d, generator=g, dtype=D64).to(dtype))
        u0 = 0.3 * torch.randn(1 if scalar_u else d, generator=g, dtype=D64)
        self.u = nn.Parameter((u0[0] if scalar_u else u0).to(dtype))
        for name in ("X", "y", "Xv", "yv"):
            setattr(self, name, getattr(self, name).to(dtype))

    # -- closures (read the current parameter values) --
    def train_loss(self) -> torch.Tensor:
        r = self.X @ self.w - self.y
        return r @ r / len(self.y) + (self.u.exp() * self.w**2).sum()

    def upper_loss(self) -> torch.Tensor:
        r = self.Xv @ self.w - self.yv
        out = r @ r / len(self.yv)
        if self.kappa:
            out = out + self.kappa * (torch.sin(self.u) * self.w**2).sum()
        return out

    # -- closed forms, float64, no autograd --
    def grad_tr(self, w: torch.Tensor) -> torch.Tensor:
        X, y, u = self.X.double(), self.y.double(), self.u.detach().double()
        return 2 * X.T @ (X @ w - y) / len(y) + 2 * u.exp() * w

    def grad_up_w(self, w: torch.Tensor) -> torch.Tensor:
        Xv, yv, u = self.Xv.double(), self.yv.double(), self.u.detach().double()
        return 2 * Xv.T @ (Xv @ w - yv) / len(yv) + 2 * self.kappa * torch.sin(u) * w

    def grad_up_u(self, w: torch.Tensor) -> torch.Tensor:
        u = self.u.detach().double()
        g = self.kappa * torch.cos(u) * w**2
        return g.sum() if u.dim() == 0 else g

    def unrolled_hypergrad(self, step: LowerStep, buf: torch.Tensor | None = None,
                           c: float = 1.0) -> torch.Tensor:
        """d/du L_up(w'(u), u), by hand."""
        w = self.w.detach().double()
        w1 = virtual_step([w], [self.grad_tr(w)], step, [buf])[0]
        u = self.u.detach().double()
        indirect = -2 * step.lr * c * u.exp() * w * self.grad_up_w(w1)
        if u.dim() == 0:
            indirect = indirect.sum()
        return self.grad_up_u(w1) + indirect

    def solve(self) -> torch.Tensor:
        """w*(u) (scalar u): (XᵀX/n + e^u I)^{-1} Xᵀy/n."""
        X, y, u = self.X.double(), self.y.double(), self.u.detach().double()
        A = X.T @ X / len(y) + u.exp() * torch.eye(X.shape[1], dtype=D64)
        return torch.linalg.solve(A, X.T @ y / len(y))

    def implicit_hypergrad(self) -> torch.Tensor:
        """dL_up(w*(u))/du (scalar u) by implicit differentiation: −(∂_u∇_w L_tr)ᵀ H⁻¹ ∇L_up."""
        X, u = self.X.double(), self.u.detach().double()
        w = self.solve()
        H = 2 * (X.T @ X / X.shape[0] + u.exp() * torch.eye(X.shape[1], dtype=D64))
        return -(2 * u.exp() * w) @ torch.linalg.solve(H, self.grad_up_w(w))

    def run(self, order: str, step: LowerStep, **kw) -> HyperGradResult:
        return hypergradient(order, [self.u], [self.w], self.train_loss, self.upper_loss, step,
                             **kw)


STEP = LowerStep(lr=0.05, momentum=0.0)


# --------------------------------------------------------------------------------------
# 1. exact == closed form of the one-step unrolled objective


@pytest.mark.parametrize("kappa", [0.0, 0.7], ids=["no-direct", "direct"])
@pytest.mark.parametrize("scalar_u", [False, True], ids=["vector-u", "scalar-u"])
def test_exact_matches_closed_form(kappa, scalar_u):
    p = Ridge(kappa=kappa, scalar_u=scalar_u)
    res = p.run("exact", STEP)
    assert rel(res.grads[0], p.unrolled_hypergrad(STEP)) < TOL_EXACT
    assert res.grads[0].shape == p.u.shape


def test_exact_matches_closed_form_with_momentum_and_weight_decay():
    p = Ridge(kappa=0.7)
    step = LowerStep(lr=0.05, momentum=0.9, weight_decay=1e-2)
    buf = torch.randn(5, dtype=D64, generator=torch.Generator().manual_seed(3))
    res = p.run("exact", step, momentum_buffers=[buf])
    assert rel(res.grads[0], p.unrolled_hypergrad(step, buf)) < TOL_EXACT


def test_exact_matches_closed_form_loss_weights():
    """Stage-L shape: u = λ weights two loss terms, L_tr = λ₁ℓ₁(w) + λ₂ℓ₂(w).

    ∂w'/∂λ_k = −η ∇ℓ_k(w), so d/dλ_k L_up(w') = −η ∇ℓ_k(w) · ∇L_up(w').
    """
    p = Ridge()
    lam = nn.Parameter(torch.tensor([1.0, 0.5], dtype=D64))
    target = torch.linspace(-1, 1, 5, dtype=D64)

    def l1(w):
        r = p.X @ w - p.y
        return r @ r / len(p.y)

    def l2(w):
        return ((w - target) ** 2).sum()

    def train_loss():
        return lam[0] * l1(p.w) + lam[1] * l2(p.w)

    for order in ("exact", "second"):
        res = hypergradient(order, [lam], [p.w], train_loss, p.upper_loss, STEP)
        w = p.w.detach()
        g1 = 2 * p.X.T @ (p.X @ w - p.y) / len(p.y)
        g2 = 2 * (w - target)
        w1 = w - STEP.lr * (lam.detach()[0] * g1 + lam.detach()[1] * g2)
        v = p.grad_up_w(w1)
        expected = -STEP.lr * torch.stack([g1 @ v, g2 @ v])
        assert rel(res.grads[0], expected) < (TOL_EXACT if order == "exact" else TOL_FD_QUADRATIC)
        assert res.info.direct_zero  # the upper objective does not see λ


# --------------------------------------------------------------------------------------
# 2. second (finite differences) == exact


@pytest.mark.parametrize("kappa", [0.0, 0.7], ids=["no-direct", "direct"])
def test_second_matches_exact_float64(kappa):
    p = Ridge(kappa=kappa)
    step = LowerStep(lr=0.05, momentum=0.9, weight_decay=1e-3)
    buf = torch.full((5,), 0.1, dtype=D64)
    exact = p.run("exact", step, momentum_buffers=[buf]).grads[0]
    res = p.run("second", step, momentum_buffers=[buf])
    assert rel(res.grads[0], exact) < TOL_FD_QUADRATIC
    assert res.info.epsilon == pytest.approx(0.01 / res.info.v_norm)


def test_second_float32_close_to_float64_exact():
    p64, p32 = Ridge(kappa=0.7), Ridge(kappa=0.7, dtype=torch.float32)
    exact64 = p64.run("exact", STEP).grads[0]
    res = p32.run("second", STEP)
    assert res.grads[0].dtype == torch.float32
    assert rel(res.grads[0], exact64) < TOL_FLOAT32


@pytest.mark.parametrize(
    "step",
    [
        LowerStep(lr=0.05, momentum=0.9, nesterov=True),
        LowerStep(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=1e-2),
    ],
    ids=["nesterov", "dampening"],
)
@pytest.mark.parametrize("with_buffer", [True, False], ids=["buffer", "first-step"])
def test_gradient_coefficient_of_the_step(step, with_buffer):
    """Nesterov/dampening change the coefficient c of ∇_w L_tr in w'; second order scales v."""
    p = Ridge(kappa=0.7)
    buf = torch.full((5,), -0.2, dtype=D64) if with_buffer else None
    c_buf = (1 - step.dampening) if with_buffer else 1.0
    c = 1 + step.momentum * c_buf if step.nesterov else c_buf
    exact = p.run("exact", step, momentum_buffers=[buf]).grads[0]
    assert rel(exact, p.unrolled_hypergrad(step, buf, c=c)) < TOL_EXACT
    assert rel(p.run("second", step, momentum_buffers=[buf]).grads[0], exact) < TOL_FD_QUADRATIC


class MixedNet(nn.Module):
    """Two layers with a DARTS-like mixed op between them: Σ_o softmax(α)_o op_o(h)."""

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.inp = nn.Linear(3, 4)
        self.ops = nn.ModuleList([nn.Linear(4, 4, bias=False),
                                  nn.Sequential(nn.Linear(4, 4), nn.Tanh()),
                                  nn.Identity()])
        self.head = nn.Linear(4, 1)
        self.alpha = nn.Parameter(0.3 * torch.randn(3))
        self.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.inp(x))
        mix = torch.softmax(self.alpha, 0)
        h = sum(wgt * op(h) for wgt, op in zip(mix, self.ops))
        return self.head(h).squeeze(-1)


def _mixed_net_problem(dtype: torch.dtype):
    torch.manual_seed(0)
    net = MixedNet(dtype)
    g = torch.Generator().manual_seed(1)
    xt, xv = (torch.randn(32, 3, generator=g).to(dtype) for _ in range(2))
    yt, yv = torch.sin(xt.sum(1)), torch.sin(xv.sum(1))
    weights = [p for n, p in net.named_parameters() if n != "alpha"]
    train = lambda: ((net(xt) - yt) ** 2).mean()  # noqa: E731
    upper = lambda: ((net(xv) - yv) ** 2).mean()  # noqa: E731
    return net, weights, train, upper


def test_second_matches_exact_on_mixed_op_network():
    net, weights, train, upper = _mixed_net_problem(D64)
    step = LowerStep(lr=0.1, momentum=0.9, weight_decay=1e-3)
    bufs = [0.05 * torch.ones_like(w) for w in weights]
    exact = hypergradient("exact", [net.alpha], weights, train, upper, step, bufs)
    second = hypergradient("second", [net.alpha], weights, train, upper, step, bufs)
    assert exact.info.implicit_norm > 1e-3 * exact.info.direct_norm  # the test is not vacuous
    assert rel(second.grads[0], exact.grads[0]) < TOL_FD_NETWORK
    # The one-step term matters: second differs from first order by more than the FD error.
    first = hypergradient("first", [net.alpha], weights, train, upper, step)
    assert rel(first.grads[0], exact.grads[0]) > 10 * rel(second.grads[0], exact.grads[0])


def test_second_float32_on_mixed_op_network():
    net64, w64, t64, u64 = _mixed_net_problem(D64)
    net32, w32, t32, u32 = _mixed_net_problem(torch.float32)
    step = LowerStep(lr=0.1, momentum=0.0)
    exact = hypergradient("exact", [net64.alpha], w64, t64, u64, step).grads[0]
    second = hypergradient("second", [net32.alpha], w32, t32, u32, step).grads[0]
    assert rel(second, exact) < TOL_FLOAT32


# --------------------------------------------------------------------------------------
# 3. first order == direct gradient; zero (and flagged) without direct dependence


def test_first_order_is_zero_and_flagged_without_direct_dependence():
    p = Ridge(kappa=0.0)
    res = p.run("first", STEP)
    assert torch.equal(res.grads[0], torch.zeros_like(p.u))
    assert res.info.direct_zero and res.stalled
    assert res.info.unused == (0,)
    assert direct_gradient_is_zero([p.u], p.upper_loss)
    # The higher orders are not zero, and flag that their direct part is.
    second = p.run("second", STEP)
    assert second.info.direct_zero and not second.stalled
    assert second.grads[0].abs().max() > 0


def test_first_order_equals_direct_gradient():
    p = Ridge(kappa=0.7)
    res = p.run("first", LowerStep(lr=0.05))
    assert torch.allclose(res.grads[0], p.grad_up_u(p.w.detach()), rtol=1e-12, atol=0)
    assert not res.info.direct_zero and not res.stalled
    assert res.info.unused == () and res.info.train_loss is None
    assert res.info.implicit_norm == 0.0
    assert not direct_gradient_is_zero([p.u], p.upper_loss)


def test_upper_variable_reaching_no_loss_gets_zeros():
    p = Ridge(kappa=0.7)
    stray = nn.Parameter(torch.ones(2, 2, dtype=D64))
    res = hypergradient("second", [p.u, stray], [p.w], p.train_loss, p.upper_loss, STEP)
    assert torch.equal(res.grads[1], torch.zeros(2, 2, dtype=D64))
    assert res.info.unused == (1,)


# --------------------------------------------------------------------------------------
# 4. the virtual step is torch.optim.SGD's step


@pytest.mark.parametrize(
    "kw",
    [
        dict(momentum=0.9, weight_decay=1e-2),
        dict(momentum=0.9, weight_decay=1e-2, nesterov=True),
        dict(momentum=0.9, dampening=0.2),
        dict(momentum=0.0, weight_decay=1e-2),
    ],
    ids=["momentum-wd", "nesterov", "dampening", "plain"],
)
@pytest.mark.parametrize("warm", [2, 0], ids=["warm-buffers", "first-step"])
def test_virtual_step_is_sgd_step(kw, warm):
    p = Ridge(kappa=0.7)
    unused_w = nn.Parameter(torch.ones(3, dtype=D64))  # no gradient: SGD leaves it alone
    opt = torch.optim.SGD([p.w, unused_w], lr=0.05, **kw)
    for _ in range(warm):  # fill the momentum buffers with real steps
        opt.zero_grad()
        p.train_loss().backward()
        opt.step()
    seen = []

    def upper():  # records the values it is evaluated at: w'
        seen.append(p.w.detach().clone())
        return p.upper_loss()

    step = LowerStep.from_sgd(opt)
    params = [p.w, unused_w]
    res = hypergradient("second", [p.u], params, p.train_loss, upper, step,
                        sgd_momentum_buffers(opt, params))
    assert res.info.train_loss == pytest.approx(float(p.train_loss().detach()))

    real = copy.deepcopy((p.w, unused_w, opt))  # a real SGD step on a copy
    real_w, real_unused, real_opt = real
    real_opt.zero_grad()
    _with_w(p, real_w).train_loss().backward()
    real_opt.step()
    assert len(seen) == 1
    torch.testing.assert_close(seen[0], real_w.detach(), rtol=0, atol=0)  # bit-exact on CPU
    assert torch.equal(real_unused.detach(), unused_w.detach())


def _with_w(p: Ridge, w: torch.Tensor) -> Ridge:
    q = copy.copy(p)
    q.w = w
    return q


# --------------------------------------------------------------------------------------
# 5. nothing is modified


@pytest.mark.parametrize("order", ["first", "second", "exact"])
@pytest.mark.parametrize("dtype", [D64, torch.float32])
def test_parameters_restored_bit_exactly_and_no_grad_left(order, dtype):
    p = Ridge(kappa=0.7, dtype=dtype)
    w0, u0 = p.w.detach().clone(), p.u.detach().clone()
    step = LowerStep(lr=0.1, momentum=0.9, weight_decay=1e-2)
    buf = torch.full_like(w0, 0.3)
    for _ in range(20):  # repeated calls must not drift
        p.run(order, step, momentum_buffers=[buf])
    assert torch.equal(p.w.detach(), w0) and torch.equal(p.u.detach(), u0)
    assert torch.equal(buf, torch.full_like(w0, 0.3))
    assert p.w.grad is None and p.u.grad is None


def test_parameters_restored_when_a_closure_raises():
    p = Ridge()
    w0 = p.w.detach().clone()
    calls = []

    def failing_train():
        calls.append(1)
        if len(calls) == 2:  # the first finite-difference evaluation, at w + εv
            raise RuntimeError("boom")
        return p.train_loss()

    with pytest.raises(RuntimeError, match="boom"):
        hypergradient("second", [p.u], [p.w], failing_train, p.upper_loss, STEP)
    assert torch.equal(p.w.detach(), w0)


def test_restore_keeps_batchnorm_statistics():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))
    alpha = nn.Parameter(torch.zeros(()))
    x = torch.randn(16, 3)

    def train():
        return (net(x) ** 2).mean() + alpha.exp() * sum((w**2).sum() for w in net.parameters())

    def upper():
        return ((net(x) - 1) ** 2).mean()

    before = [b.clone() for b in net.buffers()]
    hypergradient("second", [alpha], list(net.parameters()), train, upper, STEP,
                  restore=list(net.buffers()))
    assert all(torch.equal(a, b) for a, b in zip(before, net.buffers()))
    hypergradient("second", [alpha], list(net.parameters()), train, upper, STEP)
    assert not all(torch.equal(a, b) for a, b in zip(before, net.buffers()))  # why it exists


# --------------------------------------------------------------------------------------
# 6. sanity against the true (implicit) hypergradient at the fixed point


@pytest.mark.parametrize(
    "u, val_scale, sign",
    [(-2.0, 1.0, 1), (0.0, 1.0, 1), (1.0, 1.0, 1), (-3.0, 0.3, -1), (-1.0, 0.3, -1)],
)
def test_second_order_sign_matches_implicit_hypergradient_at_fixed_point(u, val_scale, sign):
    """At w = w*(u) the one-step hypergradient approximates dL_up(w*(u))/du (DARTS' premise).

    With ∇_w L_tr(w*) = 0 the virtual step stays at w*, and second order gives
    −η (∂_u∇_w L_tr)ᵀ ∇L_up(w*) instead of the implicit −(∂_u∇_w L_tr)ᵀ H⁻¹ ∇L_up(w*): the
    Hessian inverse is replaced by η·I. It is a one-step approximation, so only the sign
    (the direction u moves) is checked; it agrees here because H is well conditioned.
    Validation targets shrunk by ``val_scale`` < 1 want more regularisation (sign −1): both
    directions are covered.
    """
    p = Ridge(scalar_u=True, d=5, n=200, m=50, seed=4, val_scale=val_scale)
    with torch.no_grad():
        p.u.fill_(u)
        p.w.copy_(p.solve())
    assert p.grad_tr(p.w.detach()).norm() < 1e-10  # at the fixed point
    implicit = p.implicit_hypergrad()
    second = p.run("second", STEP).grads[0]
    assert int(torch.sign(implicit)) == sign
    assert int(torch.sign(second)) == sign


def test_second_order_is_scaled_implicit_gradient_for_isotropic_design():
    """With XᵀX/n = I the Hessian is h·I (h = 2 + 2e^u), so second = η·h·implicit exactly."""
    p = Ridge(scalar_u=True, d=4, n=64, seed=2)
    q, _ = torch.linalg.qr(p.X)
    p.X = q * math.sqrt(p.X.shape[0])
    with torch.no_grad():
        p.w.copy_(p.solve())
    h = 2 + 2 * math.exp(float(p.u.detach()))
    second = p.run("second", STEP).grads[0]
    assert rel(second, STEP.lr * h * p.implicit_hypergrad()) < TOL_FD_QUADRATIC


# --------------------------------------------------------------------------------------
# API: helpers and wrong inputs


def test_lower_step_from_sgd_and_buffers():
    w = nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([w], lr=5e-4, momentum=0.9, weight_decay=3e-4, nesterov=True)
    assert LowerStep.from_sgd(opt) == LowerStep(lr=5e-4, momentum=0.9, weight_decay=3e-4,
                                                nesterov=True)
    assert sgd_momentum_buffers(opt, [w]) == [None]
    (w**2).sum().backward()
    opt.step()
    assert torch.equal(sgd_momentum_buffers(opt, [w])[0], opt.state[w]["momentum_buffer"])
    with pytest.raises(ValueError, match="mirrors torch.optim.SGD, got Adam"):
        LowerStep.from_sgd(torch.optim.Adam([w]))


def test_apply_hypergradient_overwrites_grad_and_steps():
    p = Ridge(kappa=0.7)
    p.u.grad = torch.full_like(p.u, 99.0)  # stale: must be overwritten, not accumulated
    opt = torch.optim.SGD([p.u], lr=0.5)
    u0 = p.u.detach().clone()
    res = p.run("second", STEP)
    apply_hypergradient(opt, [p.u], res.grads)
    assert torch.allclose(p.u.detach(), u0 - 0.5 * res.grads[0])


def test_wrong_inputs():
    p = Ridge()
    run = lambda order="second", up=None, low=None, **kw: hypergradient(  # noqa: E731
        order, up or [p.u], low or [p.w], p.train_loss, p.upper_loss, STEP, **kw)
    with pytest.raises(ValueError, match="unknown hypergradient order 'third'; use one of "
                                         "first, second, exact"):
        run("third")
    with pytest.raises(ValueError, match="both an upper variable and a lower parameter"):
        run(up=[p.u, p.w])
    with pytest.raises(ValueError, match=r"upper_vars\[0\] must be a tensor with requires_grad"):
        run(up=[torch.zeros(2)])
    with pytest.raises(ValueError, match="momentum_buffers has 2 entries for 1 lower"):
        run(momentum_buffers=[None, None])
    with pytest.raises(ValueError, match="lists the same tensor twice"):
        run(low=[p.w, p.w])
    with pytest.raises(ValueError, match=r"upper_loss\(\) must return a scalar tensor, got \(5,\)"):
        hypergradient("second", [p.u], [p.w], p.train_loss, lambda: p.w * 1, STEP)
    with pytest.raises(ValueError, match="LowerStep.lr must be finite and >= 0"):
        LowerStep(lr=-1.0)
    with pytest.raises(ValueError, match="Nesterov needs momentum > 0"):
        LowerStep(lr=0.1, momentum=0.0, nesterov=True)


def test_works_under_no_grad_context():
    """Stage code may call it from inside torch.no_grad(); the engine enables grad itself."""
    p = Ridge(kappa=0.7)
    expected = p.run("second", STEP).grads[0]
    with torch.no_grad():
        got = p.run("second", STEP).grads[0]
    assert torch.equal(got, expected)


def test_module_docstring_example_runs():
    import doctest

    import hbl_edge.search.hypergrad as mod

    assert doctest.testmod(mod).failed == 0


# --------------------------------------------------------------------------------------
# data parallelism and the reused lower gradient (hooks the search uses)


@pytest.mark.parametrize("order", ["first", "second", "exact"])
def test_reduce_sees_every_gradient_before_use(order):
    """The reducer gets each gradient list the engine computes, in order; an identity reducer
    changes nothing (bit for bit), a reducer that doubles doubles the hypergradient (every
    part of it goes through the reducer exactly once: linear parts scale, the ε of the finite
    difference is computed after reduction)."""
    p = Ridge(kappa=0.7)
    step = LowerStep(lr=0.05, momentum=0.9)
    bufs = [0.1 * torch.ones_like(p.w)]
    plain = p.run(order, step, momentum_buffers=bufs)
    seen: list[int] = []

    def identity(ts):
        seen.append(len(ts))
        return ts

    same = p.run(order, step, momentum_buffers=bufs, reduce=identity)
    assert torch.equal(same.grads[0], plain.grads[0])
    # first: [∇_u L_up, L_up]; second/exact: [∇_w L_tr, L_tr], [∇_u L_up, ∇_w' L_up, L_up], [implicit]
    assert seen == ([2] if order == "first" else [2, 3, 1])
    if order == "first":
        doubled = p.run(order, step, reduce=lambda ts: [None if t is None else 2 * t for t in ts])
        torch.testing.assert_close(doubled.grads[0], 2 * plain.grads[0])
        assert doubled.info.upper_loss == pytest.approx(2 * plain.info.upper_loss)


def test_keep_lower_grad_returns_the_virtual_steps_gradient_and_keeps_its_buffers():
    """keep_lower_grad: ∇_w L_tr(w, u) at the current w, and the buffers as the first
    train pass left them (one training forward), not as before the call."""
    p = Ridge(kappa=0.7)
    counter = torch.zeros(1, dtype=D64)

    def train():
        counter.add_(1.0)  # a "running statistic" every pass moves
        return p.train_loss()

    res = hypergradient("second", [p.u], [p.w], train, p.upper_loss, STEP, restore=[counter],
                        keep_lower_grad=True)
    torch.testing.assert_close(res.lower_grad[0], p.grad_tr(p.w.detach().double()), rtol=1e-12, atol=1e-12)
    assert counter.item() == 1.0  # three train passes ran; the state after the first is kept
    plain = hypergradient("second", [p.u], [p.w], train, p.upper_loss, STEP, restore=[counter])
    assert counter.item() == 1.0 and plain.lower_grad is None
    assert torch.equal(plain.grads[0], res.grads[0])
