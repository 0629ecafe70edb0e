"""One bilevel step (hbl_edge.search.stages.bilevel_step): what the lower step uses, and what it leaves."""

from __future__ import annotations

import copy

import pytest
import torch

from hbl_edge.losses import build_loss
from hbl_edge.search.config import SearchConfig
from hbl_edge.search.hypergrad import LowerStep, hypergradient, sgd_momentum_buffers
from hbl_edge.search.stages import BilevelState, bilevel_step, make_optimizers


def _state(seed: int = 0):
    torch.manual_seed(seed)
    from hbl_edge.search.supernet import Supernet

    net = Supernet("paper", (4, 8), 1, seed=1).double().train()
    criterion = build_loss("l1=1,l2=1,tv=1").double()
    cfg = SearchConfig(w_lr=0.05, upper_lr=0.05)
    upper = list(net.arch_parameters())
    w_opt, u_opt = make_optimizers(cfg, net, upper)
    return BilevelState(net, upper, w_opt, u_opt), criterion, cfg


def _batches():
    g = torch.Generator().manual_seed(4)
    return [(torch.rand(2, 3, 16, 16, generator=g, dtype=torch.float64),
             torch.rand(2, 3, 16, 16, generator=g, dtype=torch.float64)) for _ in range(2)]


def _step(state, criterion, cfg, lower_step, order="second"):
    lo, up = _batches()
    return bilevel_step(state, order=order, lower_batch=lo, upper_batch=up, lower_loss=criterion,
                        upper_objective=lambda p, t: criterion(p, t)[0], clip=1e9, lower_step=lower_step)


def _manual_sgd(state, criterion, cfg, *, alpha_after: bool):
    """The state after one upper step and one SGD step of ∇_w L_tr at α before (or after) the
    upper step's update, computed by hand."""
    ref = copy.deepcopy(state)
    lo, up = _batches()
    net = ref.supernet
    params = net.weight_parameters()
    res = hypergradient("second", ref.upper_vars, params, lambda: criterion(net(lo[0]), lo[1])[0],
                        lambda: criterion(net(up[0]), up[1])[0], LowerStep.from_sgd(ref.w_opt),
                        sgd_momentum_buffers(ref.w_opt, params), restore=list(net.buffers()))

    def lower_grads():
        return torch.autograd.grad(criterion(net(lo[0]), lo[1])[0], params)

    grads = None if alpha_after else lower_grads()
    for u, g in zip(ref.upper_vars, res.grads):
        u.grad = g.clone()
    ref.u_opt.step()
    if alpha_after:
        grads = lower_grads()
    with torch.no_grad():
        for p, g in zip(params, grads):
            p.add_(g, alpha=-cfg.w_lr)  # first step: no momentum buffer yet
    return ref, res, None


@pytest.mark.parametrize("lower_step", ["alternating", "simultaneous"])
def test_lower_step_gradient_and_batchnorm(lower_step):
    state, criterion, cfg = _state()
    expected, res, _ = _manual_sgd(state, criterion, cfg, alpha_after=(lower_step == "alternating"))
    rec = _step(state, criterion, cfg, lower_step)
    # the upper step is the same hypergradient either way, and .grad holds exactly it
    for u, g in zip(state.upper_vars, res.grads):
        torch.testing.assert_close(u.grad, g, rtol=1e-12, atol=1e-14)
    # alternating: ∇_w L_tr at α_{t+1}; simultaneous: at α_t (the virtual step's gradient)
    for (k, a), b in zip(state.supernet.state_dict().items(), expected.supernet.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-13, msg=k)  # weights and BN statistics
    assert rec["lower_loss"] == pytest.approx(res.info.train_loss if lower_step == "simultaneous"
                                              else rec["lower_loss"], rel=1e-12)
    assert set(rec) >= {"term_l1", "term_l2", "term_tv"}


def test_the_two_lower_steps_differ_by_the_alpha_update():
    """Not vacuous: the alternating and simultaneous weights differ (α moved in between)."""
    a_state, criterion, cfg = _state()
    s_state = copy.deepcopy(a_state)
    _step(a_state, criterion, cfg, "alternating")
    _step(s_state, criterion, cfg, "simultaneous")
    diff = max(float((p - q).detach().abs().max()) for p, q in zip(a_state.supernet.weight_parameters(),
                                                         s_state.supernet.weight_parameters()))
    assert diff > 1e-9


def test_first_order_takes_its_own_lower_pass_either_way():
    a_state, criterion, cfg = _state()
    s_state = copy.deepcopy(a_state)
    _step(a_state, criterion, cfg, "alternating", order="first")
    _step(s_state, criterion, cfg, "simultaneous", order="first")
    for (k, a), b in zip(a_state.supernet.state_dict().items(), s_state.supernet.state_dict().values()):
        assert torch.equal(a, b), k


def test_unknown_lower_step():
    state, criterion, cfg = _state()
    with pytest.raises(ValueError, match="lower_step must be one of alternating, simultaneous"):
        _step(state, criterion, cfg, "gauss-seidel")


def test_a_frozen_upper_step_trains_the_weights_alone():
    """The warm-up step (``upper_frozen``): α stays exactly where it was, and the weights take the
    plain SGD step of ∇_w L_tr at that α (the same as the alternating step with α unmoved)."""
    state, criterion, cfg = _state()
    ref = copy.deepcopy(state)
    alpha_before = [u.detach().clone() for u in state.upper_vars]
    lo, up = _batches()
    rec = bilevel_step(state, order="second", lower_batch=lo, upper_batch=up, lower_loss=criterion,
                       upper_objective=lambda p, t: criterion(p, t)[0], clip=1e9, upper_frozen=True)
    for u, a in zip(state.upper_vars, alpha_before):
        assert torch.equal(u.detach(), a)
    params = ref.supernet.weight_parameters()
    grads = torch.autograd.grad(criterion(ref.supernet(lo[0]), lo[1])[0], params)
    with torch.no_grad():
        for p, g in zip(params, grads):
            p.add_(g, alpha=-cfg.w_lr)
    for (k, a), b in zip(state.supernet.state_dict().items(), ref.supernet.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-13, msg=k)
    moved = max(float((p - q).detach().abs().max()) for p, q in zip(state.supernet.weight_parameters(),
                                                          copy.deepcopy(_state()[0]).supernet.weight_parameters()))
    assert moved > 1e-6  # not vacuous: the weights did move
    assert rec["upper_frozen"] is True and rec["upper_loss"] is None and rec["hypergrad_norm"] == 0.0


def test_stage_a_warmup_steps_from_the_fraction():
    from hbl_edge.errors import ConfigError

    cfg = SearchConfig(arch_warmup=0.25)
    assert cfg.warmup_steps(400) == 100 and cfg.warmup_steps(100) == 25 and SearchConfig().warmup_steps(400) == 0
    with pytest.raises(ConfigError, match="--arch-warmup is a fraction"):
        SearchConfig(arch_warmup=1.0).validate()
