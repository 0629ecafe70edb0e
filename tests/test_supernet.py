"""Tests of the search supernet and derivation (hbl_edge.search.supernet)."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hbl_edge.errors import GenotypeError
from hbl_edge.genotype import FORMAT, Genotype
from hbl_edge.network import BranchNorm, Network, fold_batchnorm, iter_batchnorms
from hbl_edge.ops import PARAMETER_FREE_OPS, SPACES
from hbl_edge.ops import OPS, make_op
from hbl_edge.search.supernet import (
    ALPHA_INIT_SCALE,
    HNU_NORMS,
    DerivationReport,
    MixedOp,
    Supernet,
    decompose,
    derive,
    derived_state_dict,
)

SMALL = dict(channels=(4, 8), units=2)


def _x(*shape: int, seed: int = 1, dtype=torch.float32) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _supernet(space: str = "paper", seed: int = 0, **kw) -> Supernet:
    torch.manual_seed(seed)
    args = {**SMALL, **kw}
    return Supernet(space=space, seed=seed, **args)


def _random_genotype(seed: int, space: str = "paper", channels=(4, 8), units: int = 2) -> Genotype:
    rng = random.Random(seed)
    s = SPACES[space]
    return Genotype(
        encoder=[rng.choice(s.fcm) for _ in range(9)],
        decoder=[rng.choice(s.fcm) for _ in range(9)],
        hnu=[[rng.choice(s.hnu) for _ in range(8)] for _ in range(units)],
        space=space, channels=channels, units=units,
    )


def _warm(model: nn.Module, steps: int = 3, seed: int = 5, dtype=torch.float32) -> nn.Module:
    """Train-mode passes so BatchNorm running statistics are non-trivial; then eval()."""
    g = torch.Generator().manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(torch.rand(2, 3, 16, 16, generator=g, dtype=dtype) * 2.0)
    return model.eval()


# ---------------------------------------------------------------------------------------------
# Architecture parameters
# ---------------------------------------------------------------------------------------------
class TestAlpha:
    def test_paper_full_size_shapes_and_count(self):
        net = Supernet(space="paper", channels=(16, 32), units=7, seed=0)
        assert net.alpha_encoder.shape == (9, 4)
        assert net.alpha_decoder.shape == (9, 4)
        assert net.alpha_hnu.shape == (7, 8, 9)
        assert sum(p.numel() for p in net.arch_parameters()) == 7 * 8 * 9 + 9 * 4 + 9 * 4 == 576

    def test_edge_space_shapes(self):
        net = _supernet("edge")
        s = SPACES["edge"]
        assert net.alpha_encoder.shape == (9, len(s.fcm))
        assert net.alpha_hnu.shape == (2, 8, len(s.hnu))

    def test_init_scale(self):
        net = Supernet(space="paper", channels=(4, 8), units=7, seed=0)
        a = torch.cat([p.detach().flatten() for p in net.arch_parameters()])
        assert ALPHA_INIT_SCALE == 1e-3
        assert 0.8e-3 < a.std().item() < 1.2e-3
        assert abs(a.mean().item()) < 2e-4
        assert a.abs().max().item() < 6e-3
        # near-uniform: every probability within 1% of 1/n
        for group, p in net.edge_probabilities().items():
            n = p.shape[-1]
            assert torch.allclose(p, torch.full_like(p, 1 / n), rtol=1e-2), group

    def test_init_reproducible_from_seed_or_generator(self):
        a = Supernet(seed=3, **SMALL)
        b = Supernet(generator=torch.Generator().manual_seed(3), **SMALL)
        c = Supernet(seed=4, **SMALL)
        for pa, pb, pc in zip(a.arch_parameters(), b.arch_parameters(), c.arch_parameters()):
            assert torch.equal(pa, pb)
            assert not torch.equal(pa, pc)

    def test_alpha_are_parameters_and_in_state_dict(self):
        net = _supernet()
        params = dict(net.named_parameters())
        state = net.state_dict()
        for name in ("alpha_encoder", "alpha_decoder", "alpha_hnu"):
            assert isinstance(params[name], nn.Parameter)
            assert name in state
        # a checkpoint round trip restores α
        other = _supernet(seed=9)
        other.load_state_dict(state)
        for pa, pb in zip(net.arch_parameters(), other.arch_parameters()):
            assert torch.equal(pa, pb)

    def test_parameter_groups_disjoint_and_covering(self):
        net = _supernet("edge")
        arch = {id(p) for p in net.arch_parameters()}
        weights = {id(p) for p in net.weight_parameters()}
        assert len(arch) == 3
        assert arch.isdisjoint(weights)
        assert arch | weights == {id(p) for p in net.parameters()}
        assert len(net.weight_parameters()) + 3 == len(list(net.parameters()))

    def test_edge_probabilities(self):
        net = _supernet()
        probs = net.edge_probabilities()
        assert set(probs) == {"encoder", "decoder", "hnu"}
        assert probs["hnu"].shape == (2, 8, 9)
        for p in probs.values():
            torch.testing.assert_close(p.sum(-1), torch.ones(p.shape[:-1]))
        assert probs["hnu"].requires_grad  # differentiable (the latency term needs it)


# ---------------------------------------------------------------------------------------------
# Topology and mixed ops
# ---------------------------------------------------------------------------------------------
class TestTopology:
    @pytest.mark.parametrize("norm", HNU_NORMS)
    def test_every_edge_is_a_mixed_op_over_its_space(self, norm):
        net = _supernet("edge", hnu_norm=norm)
        s = SPACES["edge"]
        ops = dict(net.mixed_ops())
        assert len(ops) == 9 + 9 + 8 * 2
        for name, m in ops.items():
            if m.group == "hnu":
                assert name.startswith("units.")
                assert m.names == s.hnu and m.normed_output and m.norm == norm
                per_candidate = all(isinstance(c, BranchNorm) for c in m.candidates)
                assert per_candidate == (norm == "candidate")
                assert (m.bn is None) == (norm == "candidate")
            else:
                assert m.names == s.fcm and not m.normed_output and m.bn is None
        assert isinstance(net.head, MixedOp) and isinstance(net.tail, MixedOp)
        # one BatchNorm per HNU candidate (or per HNU edge), none elsewhere; HNU did not wrap
        # the mixed op again
        per_edge = len(s.hnu) if norm == "candidate" else 1
        assert len(list(iter_batchnorms(net))) == 2 * 8 * per_edge
        assert all(isinstance(e, MixedOp) for u in net.units for e in [*u.branch_r, *u.branch_i])

    def test_fusion_plan_of_the_paper_space(self):
        net = _supernet(hnu_norm="edge")
        hnu, fcm = net.units[0].branch_r[0], net.head
        # every HNU candidate splits: one 3×3 mixed kernel (1×1, 3×3, residuals, skip, the
        # dense blocks' x-halves) and one dilated 3×3; the encoder/decoder edges are one 5×5
        assert hnu.fused == SPACES["paper"].hnu and hnu._groups == {1: 3, 2: 3}
        assert fcm.fused == SPACES["paper"].fcm and fcm._groups == {1: 5}
        # per-candidate BatchNorm leaves nothing to fuse on HNU edges (a BN sits between)
        cand = _supernet(hnu_norm="candidate")
        assert cand.units[0].branch_r[0].fused == () and cand.head.fused == SPACES["paper"].fcm
        assert _supernet(fuse=False).head.fused == ()
        with pytest.raises(GenotypeError, match="hnu_norm must be one of edge, candidate"):
            _supernet(hnu_norm="both")

    def test_fixed_layers_like_network(self):
        net = _supernet()
        g = _random_genotype(0)
        ref = Network(g)
        for name in ("down1", "down2", "up1", "up2"):
            assert type(getattr(net, name)) is type(getattr(ref, name))
            assert getattr(net, name).weight.shape == getattr(ref, name).weight.shape

    @pytest.mark.parametrize("fuse", [True, False], ids=["fused", "unfused"])
    @pytest.mark.parametrize("norm", HNU_NORMS)
    def test_mixed_op_is_weighted_sum(self, norm, fuse):
        net = _supernet(hnu_norm=norm, fuse=fuse).eval()
        _warm(net)
        edge = net.units[1].branch_i[2]
        x = _x(2, 8, 5, 6)
        w = torch.softmax(torch.randn(9, generator=torch.Generator().manual_seed(0)), 0)
        edge.weights = w
        with torch.no_grad():
            if norm == "candidate":
                manual = sum(w[i] * c.bn(c.op(x)) for i, c in enumerate(edge.candidates))
            else:
                manual = edge.bn(sum(w[i] * c(x) for i, c in enumerate(edge.candidates)))
            torch.testing.assert_close(edge(x), manual)
        head = net.head
        head.weights = w[:4] / w[:4].sum()
        x3 = _x(1, 3, 6, 6)
        with torch.no_grad():
            manual = sum(head.weights[i] * c(x3) for i, c in enumerate(head.candidates))
            torch.testing.assert_close(head(x3), manual)

    def test_forward_hands_softmax_rows_to_edges(self):
        net = _supernet().eval()
        seen = {}
        for name, m in net.mixed_ops():
            m.register_forward_pre_hook(lambda mod, inp, name=name: seen.__setitem__(name, mod.weights.detach()))
        with torch.no_grad():
            net(_x(1, 3, 8, 8))
        probs = net.edge_probabilities()
        assert len(seen) == 34
        torch.testing.assert_close(seen["head"], probs["encoder"][0])
        torch.testing.assert_close(seen["enc_half.1.op2"], probs["encoder"][8])
        torch.testing.assert_close(seen["tail"], probs["decoder"][8])
        torch.testing.assert_close(seen["units.1.branch_i.3"], probs["hnu"][1, 7])
        # weights are released after the pass (no graph of α kept alive)
        assert all(m.weights is None for _, m in net.mixed_ops())

    def test_mixed_op_outside_supernet_forward_raises(self):
        net = _supernet()
        with pytest.raises(RuntimeError, match="Supernet.forward"):
            net.head(_x(1, 3, 4, 4))

    @pytest.mark.parametrize("hw", [(1, 1), (5, 7), (3, 2), (9, 14)])
    def test_odd_sizes(self, hw):
        net = _supernet("edge").eval()
        with torch.no_grad():
            y = net(_x(1, 3, *hw))
        assert y.shape == (1, 3, *hw) and torch.isfinite(y).all()

    def test_odd_size_train_mode(self):
        net = _supernet().train()
        y = net(_x(2, 3, 5, 7))
        assert y.shape == (2, 3, 5, 7)

    @pytest.mark.parametrize(
        "kw,match",
        [
            (dict(space="nope"), "unknown search space"),
            (dict(channels=(4,)), "channels"),
            (dict(channels=(4, 0)), "channels"),
            (dict(units=0), "units"),
        ],
    )
    def test_bad_arguments(self, kw, match):
        with pytest.raises(GenotypeError, match=match):
            Supernet(**{**SMALL, **kw})


# ---------------------------------------------------------------------------------------------
# Gradients and frozen α
# ---------------------------------------------------------------------------------------------
class TestGradients:
    def test_gradient_reaches_alpha_and_weights(self):
        net = _supernet("edge", units=1).train()
        loss = (net(_x(2, 3, 8, 8)) - _x(2, 3, 8, 8, seed=2)).abs().mean()
        loss.backward()
        for p in net.arch_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all()
            assert (p.grad != 0).float().mean() > 0.9
        for name, p in net.named_parameters():
            assert p.grad is not None, name
            assert p.grad.abs().sum() > 0, name

    def test_frozen_alpha(self):
        net = _supernet(freeze_alpha=True).train()
        assert net.alpha_frozen
        before = [p.detach().clone() for p in net.arch_parameters()]
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        loss = net(_x(2, 3, 8, 8)).square().mean()
        loss.backward()
        assert all(p.grad is None for p in net.arch_parameters())
        assert all(p.grad is not None for p in net.weight_parameters())
        opt.step()
        assert all(torch.equal(a, b) for a, b in zip(before, net.arch_parameters()))
        # still near-uniform probabilities, and still in the checkpoint
        assert "alpha_hnu" in net.state_dict()
        net.freeze_arch(False)
        assert not net.alpha_frozen
        net(_x(2, 3, 8, 8)).square().mean().backward()
        assert all(p.grad is not None for p in net.arch_parameters())


# ---------------------------------------------------------------------------------------------
# One-hot α == the derived network
# ---------------------------------------------------------------------------------------------
@pytest.fixture(params=HNU_NORMS)
def hnu_norm(request):
    return request.param


@pytest.mark.parametrize("space", ["paper", "edge"])
class TestOneHotEquivalence:
    def test_one_hot_supernet_equals_derived_network(self, space, hnu_norm):
        g = _random_genotype(7, space)
        net = _supernet(space, hnu_norm=hnu_norm)
        net.set_alpha_from_genotype(g)
        for p in net.edge_probabilities().values():  # exactly one-hot in float32
            assert set(p.unique().tolist()) == {0.0, 1.0}
        derived, report = derive(net)
        assert derived == g and not report.capped

        x = _x(2, 3, 13, 10, seed=4)
        _warm(net)
        ref = Network.from_genotype(derived)
        ref.load_state_dict(derived_state_dict(net, derived), strict=True)
        ref.eval()
        for bn in iter_batchnorms(ref):  # the statistics really are non-trivial
            assert not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))
        with torch.no_grad():
            torch.testing.assert_close(ref(x), net(x), rtol=0, atol=1e-5)
            # train mode (batch statistics) matches as well
            torch.testing.assert_close(ref.train()(x), net.train()(x), rtol=0, atol=1e-5)

    def test_one_hot_float64(self, space, hnu_norm):
        g = _random_genotype(8, space)
        net = _supernet(space, hnu_norm=hnu_norm).double()
        net.set_alpha_from_genotype(g)
        _warm(net, dtype=torch.float64)
        ref = Network(g).double()
        ref.load_state_dict(derived_state_dict(net, g))
        x = _x(1, 3, 9, 12, dtype=torch.float64)
        with torch.no_grad():
            torch.testing.assert_close(ref.eval()(x), net(x), rtol=1e-12, atol=1e-12)

    def test_derived_network_folds(self, space, hnu_norm):
        # supernet → derive → Network → fold_batchnorm: the whole export path.
        g = _random_genotype(9, space)
        net = _supernet(space, hnu_norm=hnu_norm)
        net.set_alpha_from_genotype(g)
        _warm(net)
        ref = Network(g)
        ref.load_state_dict(derived_state_dict(net, g))
        x = _x(2, 3, 11, 8)
        with torch.no_grad():
            torch.testing.assert_close(fold_batchnorm(ref.eval())(x), net(x), rtol=0, atol=1e-5)


class TestDerivedStateDict:
    @pytest.mark.parametrize("norm", HNU_NORMS)
    def test_keys_and_values(self, norm):
        g = _random_genotype(1)
        net = _warm(_supernet(hnu_norm=norm))
        sd = derived_state_dict(net, g)
        assert list(sd) == list(Network(g).state_dict())
        assert not any("alpha" in k or "candidates" in k for k in sd)
        idx = SPACES["paper"].hnu.index(g.hnu[1][5])
        edge = net.units[1].branch_i[1]
        src = edge.candidates[idx]
        prefix = "" if norm == "candidate" else "op."
        for k, v in src.state_dict().items():
            assert torch.equal(sd[f"units.1.branch_i.1.{prefix}{k}"], v)
        if norm == "edge":  # the edge's own statistics become the derived BranchNorm's
            assert torch.equal(sd["units.1.branch_i.1.bn.running_var"], edge.bn.running_var)
        assert torch.equal(sd["down1.weight"], net.down1.weight)
        sd["down1.weight"].add_(1.0)  # copies, not views
        assert not torch.equal(sd["down1.weight"], net.down1.weight)

    def test_mismatched_genotype(self):
        net = _supernet()
        with pytest.raises(GenotypeError, match="space"):
            derived_state_dict(net, _random_genotype(0, "edge"))
        with pytest.raises(GenotypeError, match="unit"):
            derived_state_dict(net, _random_genotype(0, units=3))
        with pytest.raises(GenotypeError, match="channels"):
            net.set_alpha_from_genotype(_random_genotype(0, channels=(4, 16)))


# ---------------------------------------------------------------------------------------------
# Derivation
# ---------------------------------------------------------------------------------------------
class TestDerive:
    def test_argmax(self):
        net = _supernet("edge")
        g0 = torch.Generator().manual_seed(11)
        with torch.no_grad():
            for p in net.arch_parameters():
                p.copy_(torch.randn(p.shape, generator=g0))
        g, report = derive(net)
        s = SPACES["edge"]
        assert list(g.encoder) == [s.fcm[i] for i in net.alpha_encoder.argmax(-1).tolist()]
        assert list(g.decoder) == [s.fcm[i] for i in net.alpha_decoder.argmax(-1).tolist()]
        for u in range(2):
            assert list(g.hnu[u]) == [s.hnu[i] for i in net.alpha_hnu[u].argmax(-1).tolist()]
        assert isinstance(report, DerivationReport) and report.replaced == ()
        assert "plain argmax" in report.summary()

    def test_genotype_file_validates_and_records_space(self, tmp_path):
        g, _ = derive(_supernet("edge"))
        d = g.to_dict()
        assert d["format"] == FORMAT == "hbl-genotype/1"
        assert d["space"] == "edge" and d["channels"] == [4, 8] and d["units"] == 2
        assert Genotype.from_dict(d) == g
        from hbl_edge.genotype import load_genotype
        assert load_genotype(g.save(tmp_path / "genotype.json")) == g

    def _skippy(self) -> Supernet:
        """Unit 0: skips on edges 0, 2, 5, 6 with margins 0.5, tiny, large, medium."""
        net = _supernet()
        s = SPACES["paper"]
        skip, c3, c1, d3 = (s.hnu.index(n) for n in ("skip_connect", "conv_3x3", "conv_1x1", "denseblocks_3x3"))
        with torch.no_grad():
            a = net.alpha_hnu
            a.zero_()
            a[:, :, c3] = 1.0  # default argmax: conv_3x3
            a[0, 0, skip], a[0, 0, c1] = 2.0, 1.5   # margin  moderate, best weighted conv_1x1
            a[0, 2, skip], a[0, 2, d3] = 1.6, 1.55  # smallest margin, best weighted denseblocks_3x3
            a[0, 5, skip] = 6.0                     # largest margin
            a[0, 6, skip] = 3.0                     # second largest
            a[1, 3, skip] = 5.0                     # unit 1: one skip only
        return net

    def test_cap_replaces_smallest_margins(self):
        net = self._skippy()
        g, report = derive(net, max_parameter_free_per_unit=2)
        assert report.parameter_free_argmax == (4, 1)
        assert report.parameter_free_derived == (2, 1)
        assert report.capped
        assert [(r.unit, r.edge, r.replaced, r.by) for r in report.replaced] == [
            (0, 2, "skip_connect", "denseblocks_3x3"),
            (0, 0, "skip_connect", "conv_1x1"),
        ]
        assert all(r.margin >= 0 for r in report.replaced)
        assert report.replaced[0].margin < report.replaced[1].margin
        assert g.hnu[0][5] == g.hnu[0][6] == g.hnu[1][3] == "skip_connect"
        assert g.hnu[0][2] == "denseblocks_3x3" and g.hnu[0][0] == "conv_1x1"
        text = report.summary()
        assert "2 edge(s) replaced" in text and "unit 0 edge 2 (R2): skip_connect → denseblocks_3x3" in text
        d = report.to_dict()
        assert d["max_parameter_free_per_unit"] == 2 and len(d["replaced"]) == 2

    def test_cap_zero_and_none(self):
        net = self._skippy()
        g, report = derive(net, max_parameter_free_per_unit=0)
        assert not any(op in PARAMETER_FREE_OPS for u in g.hnu for op in u)
        assert len(report.replaced) == 5 and report.parameter_free_derived == (0, 0)
        g, report = derive(net, max_parameter_free_per_unit=None)
        assert sum(op == "skip_connect" for op in g.hnu[0]) == 4 and not report.capped
        g, report = derive(net, max_parameter_free_per_unit=4)
        assert not report.capped

    @pytest.mark.parametrize("cap", [-1, 1.5, "2"])
    def test_bad_cap(self, cap):
        with pytest.raises(ValueError, match="max_parameter_free_per_unit"):
            derive(_supernet(), max_parameter_free_per_unit=cap)


# ---------------------------------------------------------------------------------------------
# Folding parity for the edge space (every op of every space folds)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1])
def test_fold_batchnorm_random_edge_genotype(seed):
    g = _random_genotype(100 + seed, "edge", channels=(16, 32), units=7)
    torch.manual_seed(seed)
    net = _warm(Network(g))
    x = _x(2, 3, 13, 18, seed=8)
    with torch.no_grad():
        folded = fold_batchnorm(net)
        torch.testing.assert_close(folded(x), net(x), rtol=0, atol=1e-5)
    assert list(iter_batchnorms(folded)) == []


# ---------------------------------------------------------------------------------------------
# Fusion: the mixed-kernel evaluation is the same function as the sum over candidates
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(OPS))
def test_decompose_reproduces_every_op(name):
    """Σ parts + identity + rest == op(x) in float64, for every op that splits."""
    torch.manual_seed(0)
    op = make_op(name, 6, 6).double()
    dec = decompose(op)
    x = _x(2, 6, 9, 7, dtype=torch.float64)
    if dec is None:
        # a bottleneck with ReLUs inside; means clipped at the border: evaluated as they are
        assert name in {"conv_3x3_half", "boxmix_3x3", "boxmix_5x5"}
        return
    y = sum((F.conv2d(x, p.kernel, padding=p.dilation * (p.kernel.shape[-1] // 2), dilation=p.dilation)
             for p in dec.parts), torch.zeros_like(x))
    if dec.identity:
        y = y + x
    if dec.rest is not None:
        y = y + dec.rest(x)
    torch.testing.assert_close(y, op(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("space", ["paper", "edge"])
@pytest.mark.parametrize("norm", HNU_NORMS)
def test_fused_supernet_equals_unfused_values_and_gradients(space, norm):
    """Same weights, fuse on/off: outputs, ∂/∂α and ∂/∂w agree to float64 rounding."""
    fused = _supernet(space, hnu_norm=norm, fuse=True).double().train()
    plain = _supernet(space, hnu_norm=norm, fuse=False).double().train()
    plain.load_state_dict(fused.state_dict())
    with torch.no_grad():  # α away from uniform, so every mixture weight differs
        for p in fused.arch_parameters():
            p.normal_(0, 1, generator=torch.Generator().manual_seed(3))
        for a, b in zip(plain.arch_parameters(), fused.arch_parameters()):
            a.copy_(b)
    x, y = _x(2, 3, 12, 10, dtype=torch.float64), _x(2, 3, 12, 10, seed=2, dtype=torch.float64)
    outs = []
    for net in (fused, plain):
        out = net(x)
        loss = (out - y).pow(2).mean()
        outs.append((out.detach(), torch.autograd.grad(loss, list(net.parameters()))))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-10, atol=1e-12)
    for (name, _), ga, gb in zip(fused.named_parameters(), outs[0][1], outs[1][1]):
        torch.testing.assert_close(ga, gb, rtol=1e-9, atol=1e-12, msg=name)
    # the BatchNorm statistics followed the same activations
    for (k, a), b in zip(fused.state_dict().items(), plain.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=k)


def test_placed_supernet_computes_the_same_function():
    """stages.place (channels-last on the CPU, as the search runs it): same outputs and
    gradients as the contiguous supernet, to float32 rounding; same state-dict keys."""
    from hbl_edge.search.stages import place, place_batch

    a = _supernet(hnu_norm="edge").train()
    b = _supernet(hnu_norm="edge").train()
    b.load_state_dict(a.state_dict())
    b = place(b)
    assert b.head.candidates[0].conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert list(a.state_dict()) == list(b.state_dict())
    x, y = _x(2, 3, 16, 12), _x(2, 3, 16, 12, seed=3)
    xb, _ = place_batch((x, y))
    la, lb = ((net(inp) - y).abs().mean() for net, inp in ((a, x), (b, xb)))
    torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-6)
    for ga, gb in zip(torch.autograd.grad(la, a.arch_parameters()), torch.autograd.grad(lb, b.arch_parameters())):
        torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-6)
