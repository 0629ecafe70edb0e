"""Tests of the Hadamard network (hbl_edge.network): layout, HNU maths, padding, BN folding."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hbl_edge.genotype import NAMED_GENOTYPES, Genotype
from hbl_edge.network import (
    HNU,
    MAP_FLOOR,
    PAD_MULTIPLE,
    BranchNorm,
    ChannelAffine,
    Network,
    ResidualPair,
    count_parameters,
    fold_batchnorm,
    iter_batchnorms,
    pad_to_multiple,
)
from hbl_edge.ops import SPACES, Conv, DenseBlock, Identity, ResConv, make_op


def _x(*shape: int, seed: int = 1, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g, dtype=dtype)


def _net(genotype="hbl-lol-2022", seed: int = 0) -> Network:
    torch.manual_seed(seed)
    return Network.from_genotype(genotype)


def _random_genotype(seed: int, space: str = "paper") -> Genotype:
    rng = random.Random(seed)
    s = SPACES[space]
    return Genotype(
        encoder=[rng.choice(s.fcm) for _ in range(9)],
        decoder=[rng.choice(s.fcm) for _ in range(9)],
        hnu=[[rng.choice(s.hnu) for _ in range(8)] for _ in range(7)],
        space=space,
    )


def _warm_bn(model: Network, steps: int = 3, seed: int = 5) -> Network:
    """A few train-mode passes so running statistics are far from (0, 1); then eval()."""
    g = torch.Generator().manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(torch.rand(2, 3, 16, 16, generator=g) * 2.0)
    return model.eval()


def _op_name(m: nn.Module) -> str:
    """The registry name of a built op module (inverse of make_op, from structure alone)."""
    if isinstance(m, Identity):
        return "skip_connect"
    if isinstance(m, DenseBlock):
        k = m.conv1.kernel_size[0]
        return f"denseblocks_{k}x{k}"
    conv = m.conv
    k, d = conv.kernel_size[0], conv.dilation[0]
    if isinstance(m, ResConv):
        return "resdilconv_3x3" if d == 2 else f"resconv_{k}x{k}"
    if isinstance(m, Conv):
        return "dilconv_3x3" if d == 2 else f"conv_{k}x{k}"
    raise AssertionError(type(m))


def _op_params(name: str, c_in: int, c_out: int) -> int:
    """Independent parameter count of an op (DESIGN §3 definitions)."""
    if name == "skip_connect":
        return 0
    k = 1 if name.endswith("1x1") else 5 if name.endswith("5x5") else 3
    if name.startswith("denseblocks"):
        return k * k * c_in * c_in + k * k * 2 * c_in * c_out
    return k * k * c_in * c_out


def _expected_params(g: Genotype) -> int:
    c1, c2 = g.channels
    n = _op_params(g.encoder[0], 3, c1) + _op_params(g.decoder[8], c1, 3)
    n += sum(_op_params(o, c1, c1) for o in g.encoder[1:5]) + sum(_op_params(o, c2, c2) for o in g.encoder[5:9])
    n += sum(_op_params(o, c2, c2) for o in g.decoder[0:4]) + sum(_op_params(o, c1, c1) for o in g.decoder[4:8])
    n += sum(_op_params(o, c2, c2) for u in g.hnu for o in u)
    n += 4 * (c1 * c2 + c2 * c2 + c2 * c2 + c2 * c1)  # down1, down2, up1, up2 (2×2 kernels)
    return n


# ---------------------------------------------------------------------------------------------
# Layout
# ---------------------------------------------------------------------------------------------
class TestLayout:
    def test_parameter_count_hbl_lol_2022(self):
        n = count_parameters(_net("hbl-lol-2022"))
        assert n == 527_840
        assert 500_000 <= n <= 560_000  # the paper's ≈0.53 M

    @pytest.mark.parametrize("genotype", ["hbl-lol-2022", "conv3x3", "random"])
    def test_parameter_count_matches_formula(self, genotype):
        g = _random_genotype(11) if genotype == "random" else NAMED_GENOTYPES[genotype]
        assert count_parameters(Network(g)) == _expected_params(g)

    def test_conv3x3_parameter_count(self):
        assert count_parameters(_net("conv3x3")) == 621_408

    @pytest.mark.parametrize("genotype", ["hbl-lol-2022", "random"])
    def test_edges_follow_genotype(self, genotype):
        g = _random_genotype(3) if genotype == "random" else NAMED_GENOTYPES[genotype]
        net = Network(g)
        enc = [net.head] + [op for p in [*net.enc_full, *net.enc_half] for op in (p.op1, p.op2)]
        dec = [op for p in [*net.dec_half, *net.dec_full] for op in (p.op1, p.op2)] + [net.tail]
        assert [_op_name(m) for m in enc] == list(g.encoder)
        assert [_op_name(m) for m in dec] == list(g.decoder)
        assert len(net.units) == g.units
        for u, unit in enumerate(net.units):
            assert [_op_name(b.op) for b in [*unit.branch_r, *unit.branch_i]] == list(g.hnu[u])

    def test_channels_and_resampling_layers(self):
        net = _net("hbl-lol-2022")
        assert net.head.conv.in_channels == 3 and net.head.conv.out_channels == 16
        assert net.tail.conv.in_channels == 16 and net.tail.conv.out_channels == 3
        for layer, (ci, co) in [(net.down1, (16, 32)), (net.down2, (32, 32))]:
            assert isinstance(layer, nn.Conv2d) and not isinstance(layer, nn.ConvTranspose2d)
            assert (layer.in_channels, layer.out_channels) == (ci, co)
            assert layer.kernel_size == (2, 2) and layer.stride == (2, 2)
        for layer, (ci, co) in [(net.up1, (32, 32)), (net.up2, (32, 16))]:
            assert isinstance(layer, nn.ConvTranspose2d)
            assert (layer.in_channels, layer.out_channels) == (ci, co)
            assert layer.kernel_size == (2, 2) and layer.stride == (2, 2)
        assert all(isinstance(p, ResidualPair) for p in [*net.enc_full, *net.enc_half, *net.dec_half, *net.dec_full])
        assert len(net.enc_full) == len(net.enc_half) == len(net.dec_half) == len(net.dec_full) == 2

    def test_custom_units_and_channels(self):
        g = Genotype(encoder=["conv_3x3"] * 9, decoder=["conv_1x1"] * 9, hnu=[["skip_connect"] * 8] * 2,
                     channels=(4, 8), units=2)
        net = Network(g).eval()
        assert len(net.units) == 2
        assert net.down1.out_channels == 8 and net.head.conv.out_channels == 4
        assert net(_x(1, 3, 9, 10)).shape == (1, 3, 9, 10)

    def test_unfolded_is_bias_free_and_bn_not_affine(self):
        net = _net("hbl-lol-2022")
        n_conv = 0
        for m in net.modules():
            if isinstance(m, nn.modules.conv._ConvNd):
                n_conv += 1
                assert m.bias is None, m
        assert n_conv > 0
        assert not any(n.endswith("bias") for n, _ in net.named_parameters())
        bns = list(iter_batchnorms(net))
        assert len(bns) == 7 * 8
        for bn in bns:
            assert isinstance(bn, nn.BatchNorm2d)
            assert bn.affine is False and bn.weight is None and bn.bias is None
            assert bn.track_running_stats and bn.num_features == 32

    def test_from_genotype_accepts_name_object_and_path(self, tmp_path):
        g = NAMED_GENOTYPES["conv3x3"]
        path = g.save(tmp_path / "genotype.json")
        for spec in ("conv3x3", g, path, tmp_path):
            assert Network.from_genotype(spec).genotype == g


# ---------------------------------------------------------------------------------------------
# Forward: sizes, activation, modes
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lol_eval() -> Network:
    return _warm_bn(_net("hbl-lol-2022"))


class TestForward:
    @pytest.mark.parametrize("hw", [(1, 1), (3, 2), (5, 7), (37, 51), (4, 4), (8, 12), (2, 9)])
    def test_any_size_returns_same_size(self, lol_eval, hw):
        x = _x(2, 3, *hw)
        with torch.no_grad():
            y = lol_eval(x)
        assert y.shape == x.shape
        assert torch.isfinite(y).all()

    @pytest.mark.parametrize("shape", [(3, 8, 8), (1, 1, 8, 8), (1, 4, 8, 8), (1, 1, 3, 8, 8)])
    def test_wrong_input_shape(self, lol_eval, shape):
        with pytest.raises(ValueError, match="expected an N×3×H×W image batch"):
            lol_eval(torch.zeros(shape))

    def test_no_output_activation_but_enhance_clamps(self):
        net = _net("conv3x3").eval()
        with torch.no_grad():
            net.tail.conv.weight.mul_(1000.0)
        x = _x(2, 3, 12, 10)
        with torch.no_grad():
            y = net(x)
        assert (y < 0).any() and (y > 1).any()
        z = net.enhance(x)
        assert not z.requires_grad
        assert z.min() >= 0 and z.max() <= 1
        torch.testing.assert_close(z, y.clamp(0, 1))

    def test_enhance_shape(self, lol_eval):
        x = _x(1, 3, 5, 7)
        z = lol_eval.enhance(x)
        assert z.shape == x.shape and z.min() >= 0 and z.max() <= 1

    def test_deterministic(self, lol_eval):
        x = _x(2, 3, 16, 12)
        with torch.no_grad():
            assert torch.equal(lol_eval(x), lol_eval(x))
        a, b = _net(seed=7), _net(seed=7)
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)

    def test_batch_independent_in_eval(self, lol_eval):
        x = _x(3, 3, 16, 12)
        with torch.no_grad():
            full = lol_eval(x)
            single = lol_eval(x[1:2])
        torch.testing.assert_close(full[1:2], single, rtol=1e-5, atol=1e-5)

    def test_batch_dependent_in_train(self):
        net = _net("hbl-lol-2022").train()
        x = _x(3, 3, 16, 12)
        with torch.no_grad():
            full = net(x)
            pair = net(x[:2])
        assert not torch.allclose(full[:2], pair, atol=1e-4)

    def test_train_and_eval_differ(self):
        net = _warm_bn(_net("hbl-lol-2022"))
        x = _x(2, 3, 16, 16, seed=9)
        with torch.no_grad():
            y_eval = net(x)
            y_train = net.train()(x)
        assert not torch.allclose(y_eval, y_train, atol=1e-4)
        # eval() really uses running statistics: eval output does not move when the stats do not.
        net.eval()
        with torch.no_grad():
            before = net(x)
            for bn in iter_batchnorms(net):
                bn.running_mean.add_(0.5)
            after = net(x)
        assert not torch.allclose(before, after, atol=1e-4)

    def test_train_mode_updates_running_stats(self):
        net = _net("conv3x3")
        bn = next(iter_batchnorms(net))
        assert torch.equal(bn.running_mean, torch.zeros(32))
        _warm_bn(net)
        assert not torch.equal(bn.running_mean, torch.zeros(32))
        assert not torch.equal(bn.running_var, torch.ones(32))

    def test_gradient_reaches_every_parameter(self):
        net = _net("hbl-lol-2022").train()
        x, target = _x(2, 3, 16, 16, seed=2), _x(2, 3, 16, 16, seed=3)
        loss = (net(x) - target).abs().mean()
        loss.backward()
        for name, p in net.named_parameters():
            assert p.grad is not None, name
            assert torch.isfinite(p.grad).all(), name
            assert p.grad.abs().sum() > 0, name
        # and one SGD step changes the loss
        with torch.no_grad():
            for p in net.parameters():
                p -= 1e-2 * p.grad
        assert (net(x) - target).abs().mean().item() != loss.item()

    def test_gradcheck_tiny_network(self):
        g = Genotype(encoder=["conv_3x3"] * 9, decoder=["conv_1x1"] * 9,
                     hnu=[["conv_1x1", "skip_connect", "resconv_1x1", "skip_connect"] * 2], channels=(2, 2), units=1)
        torch.manual_seed(0)
        net = _warm_bn(Network(g)).double()
        x = _x(1, 3, 5, 5, dtype=torch.float64).requires_grad_(True)
        assert torch.autograd.gradcheck(net, (x,), eps=1e-6, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Padding
# ---------------------------------------------------------------------------------------------
class TestPadToMultiple:
    def test_reflect_when_possible(self):
        x = _x(1, 2, 5, 6)
        y, h, w = pad_to_multiple(x)
        assert (h, w) == (5, 6)
        assert y.shape == (1, 2, 8, 8)
        torch.testing.assert_close(y, F.pad(x, (0, 2, 0, 3), mode="reflect"))
        assert torch.equal(y[..., :5, :6], x)  # bottom/right only
        # reflection, not replication: row 5 mirrors row 3, row 7 mirrors row 1
        assert torch.equal(y[..., 5, :6], x[..., 3, :]) and torch.equal(y[..., 7, :6], x[..., 1, :])

    @pytest.mark.parametrize("hw", [(1, 1), (2, 2), (1, 8), (6, 2)])
    def test_replicate_when_too_small_to_reflect(self, hw):
        x = _x(1, 2, *hw)
        y, h, w = pad_to_multiple(x)
        assert (h, w) == hw
        H, W = -(-hw[0] // 4) * 4, -(-hw[1] // 4) * 4
        assert y.shape[-2:] == (H, W)
        torch.testing.assert_close(y, F.pad(x, (0, W - hw[1], 0, H - hw[0]), mode="replicate"))

    def test_no_pad_returns_input(self):
        x = _x(1, 3, 8, 12)
        y, h, w = pad_to_multiple(x)
        assert y is x and (h, w) == (8, 12)

    @pytest.mark.parametrize("multiple", [2, 8])
    def test_other_multiples(self, multiple):
        x = _x(1, 1, 9, 10)
        y, _, _ = pad_to_multiple(x, multiple)
        assert y.shape[-2] % multiple == 0 and y.shape[-1] % multiple == 0
        assert y.shape[-2] - 9 < multiple and y.shape[-1] - 10 < multiple

    def test_default_multiple(self):
        assert PAD_MULTIPLE == 4

    def test_network_output_on_padded_input_is_cropped(self, lol_eval):
        # The network pads internally: an input that is already a multiple of 4 and its own
        # reflect-padded crop give the same top-left pixels.
        x = _x(1, 3, 5, 6)
        xp, _, _ = pad_to_multiple(x)
        with torch.no_grad():
            torch.testing.assert_close(lol_eval(x), lol_eval(xp)[..., :5, :6])


# ---------------------------------------------------------------------------------------------
# HNU maths
# ---------------------------------------------------------------------------------------------
def _set_stats(unit: HNU, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for bn in iter_batchnorms(unit):
        c = bn.num_features
        bn.running_mean.copy_(torch.randn(c, generator=g, dtype=bn.running_mean.dtype) * 0.5)
        bn.running_var.copy_(torch.rand(c, generator=g, dtype=bn.running_var.dtype) * 1.5 + 0.25)


def _ref_bn(y: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    m = bn.running_mean.reshape(1, -1, 1, 1)
    v = bn.running_var.reshape(1, -1, 1, 1)
    return (y - m) / torch.sqrt(v + bn.eps)


def _ref_branch(ops: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    y = x
    for k, bnop in enumerate(ops):
        if k > 0:
            y = torch.relu(y)
        y = _ref_bn(bnop.op(y), bnop.bn)
    return y


class TestHNU:
    def _skip_unit(self, c: int = 3, dtype=torch.float32) -> HNU:
        unit = HNU([Identity(c, c) for _ in range(4)], [Identity(c, c) for _ in range(4)], c).to(dtype)
        _set_stats(unit, seed=4)
        return unit.eval()

    def test_all_skip_hand_written(self):
        # float64 so that σ(I) < 1 holds exactly (in float32 σ rounds to 1.0 for I ≳ 17).
        unit = self._skip_unit(dtype=torch.float64)
        x = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2
        stats_r = [(bn.running_mean.view(1, -1, 1, 1), bn.running_var.view(1, -1, 1, 1)) for bn in (b.bn for b in unit.branch_r)]
        stats_i = [(bn.running_mean.view(1, -1, 1, 1), bn.running_var.view(1, -1, 1, 1)) for bn in (b.bn for b in unit.branch_i)]

        def branch(stats, v):
            for k, (m, var) in enumerate(stats):
                if k > 0:
                    v = torch.clamp(v, min=0)
                v = (v - m) / torch.sqrt(var + 1e-5)
            return v

        r = torch.clamp(x + branch(stats_r, x), min=0)
        i = torch.clamp(x + branch(stats_i, x), min=0)
        s = 1 / (1 + torch.exp(-i))
        expected = r / torch.clamp(s, min=0.01)
        with torch.no_grad():
            out = unit(x)
        torch.testing.assert_close(out, expected)

        # The map σ(I) lies in [0.5, 1): out = R / map, so out/R ∈ (1, 2] wherever R > 0.
        assert (s >= 0.5).all() and (s < 1).all()
        pos = r > 0
        assert pos.any() and (~pos).any()
        ratio = out[pos] / r[pos]
        assert (ratio > 1).all() and (ratio <= 2 + 1e-6).all()
        assert (out[~pos] == 0).all()  # R = 0 ⇒ out = 0; never negative
        assert (out >= 0).all()

    def test_map_floor_constant(self):
        assert MAP_FLOOR == 0.01

    def test_matches_reference_with_searched_ops(self):
        torch.manual_seed(0)
        names_r = ["conv_3x3", "denseblocks_1x1", "resdilconv_3x3", "skip_connect"]
        names_i = ["resconv_1x1", "dilconv_3x3", "skip_connect", "denseblocks_3x3"]
        c = 4
        unit = HNU([make_op(n, c, c) for n in names_r], [make_op(n, c, c) for n in names_i], c)
        _set_stats(unit, seed=1)
        unit.eval()
        x = torch.randn(2, c, 6, 5)
        with torch.no_grad():
            r = torch.relu(x + _ref_branch(unit.branch_r, x))
            i = torch.relu(x + _ref_branch(unit.branch_i, x))
            expected = r / torch.sigmoid(i).clamp(min=0.01)
            torch.testing.assert_close(unit(x), expected)
        assert all(isinstance(b, BranchNorm) for b in [*unit.branch_r, *unit.branch_i])

    def test_train_mode_uses_batch_statistics(self):
        unit = self._skip_unit().train()
        x = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(3))

        def bn(v):
            return (v - v.mean((0, 2, 3), keepdim=True)) / torch.sqrt(v.var((0, 2, 3), unbiased=False, keepdim=True) + 1e-5)

        def branch(v):
            for k in range(4):
                if k > 0:
                    v = torch.relu(v)
                v = bn(v)
            return v

        expected = torch.relu(x + branch(x)) / torch.sigmoid(torch.relu(x + branch(x)))
        with torch.no_grad():
            torch.testing.assert_close(unit(x), expected, rtol=1e-4, atol=1e-5)

    def test_gradcheck(self):
        torch.manual_seed(0)
        c = 2
        unit = HNU([make_op(n, c, c) for n in ["conv_3x3", "skip_connect", "denseblocks_1x1", "resconv_3x3"]],
                   [make_op(n, c, c) for n in ["dilconv_3x3", "conv_1x1", "skip_connect", "resdilconv_3x3"]], c)
        _set_stats(unit, seed=2)
        unit = unit.double().eval()
        x = torch.randn(1, c, 5, 5, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(unit, (x,), eps=1e-6, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# BatchNorm folding
# ---------------------------------------------------------------------------------------------
def _genotype(name: str) -> Genotype:
    return _random_genotype(2024) if name == "random-paper" else NAMED_GENOTYPES[name]


@pytest.mark.parametrize("name", ["hbl-lol-2022", "conv3x3", "random-paper"])
class TestFoldBatchnorm:
    def test_outputs_match(self, name):
        net = _warm_bn(_net(_genotype(name)))
        for bn in iter_batchnorms(net):
            assert not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))
        x = _x(2, 3, 13, 18, seed=8)
        with torch.no_grad():
            before = net(x)
            folded = fold_batchnorm(net)
            after = folded(x)
        torch.testing.assert_close(after, before, rtol=0, atol=1e-5)

    def test_folded_structure(self, name):
        net = _warm_bn(_net(_genotype(name)))
        folded = fold_batchnorm(net)
        assert folded is not net
        assert not folded.training
        assert list(iter_batchnorms(folded)) == []
        assert not any(isinstance(m, (nn.BatchNorm2d, BranchNorm, ResConv)) for m in folded.units.modules())
        g = _genotype(name)
        for u, unit in enumerate(folded.units):
            for op_name, m in zip(g.hnu[u], [*unit.branch_r, *unit.branch_i]):
                if op_name == "skip_connect":
                    assert isinstance(m, ChannelAffine)
                elif op_name.startswith("denseblocks"):
                    assert m.conv2.bias is not None
                else:
                    assert isinstance(m, nn.Conv2d) and m.bias is not None
        # encoder/decoder are untouched by folding
        assert folded.genotype == net.genotype
        assert count_parameters(folded) <= count_parameters(net) + 7 * 8 * 32

    def test_folded_submodules_in_eval_mode(self, name):
        folded = fold_batchnorm(_warm_bn(_net(_genotype(name))))
        assert [n for n, m in folded.named_modules() if m.training] == []

    def test_original_unchanged(self, name):
        net = _net(_genotype(name))
        _warm_bn(net).train()  # folding must not flip the caller's mode either
        state = {k: v.clone() for k, v in net.state_dict().items()}
        types = [type(m) for m in net.modules()]
        fold_batchnorm(net)
        assert net.training
        assert [type(m) for m in net.modules()] == types
        now = net.state_dict()
        assert now.keys() == state.keys()
        assert all(torch.equal(now[k], state[k]) for k in state)
        assert len(list(iter_batchnorms(net))) == 56
        # and the folded copy shares no storage with the original
        folded = fold_batchnorm(net)
        with torch.no_grad():
            for p in folded.parameters():
                p.add_(1.0)
        assert all(torch.equal(net.state_dict()[k], state[k]) for k in state)

    def test_folded_is_batch_independent(self, name):
        folded = fold_batchnorm(_warm_bn(_net(_genotype(name))))
        x = _x(3, 3, 8, 12)
        with torch.no_grad():
            torch.testing.assert_close(folded(x)[2:], folded(x[2:]), rtol=1e-5, atol=1e-5)


def test_fold_float64_is_exact():
    net = _warm_bn(_net("hbl-lol-2022")).double()
    x = _x(1, 3, 9, 11, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(fold_batchnorm(net)(x), net(x), rtol=1e-10, atol=1e-10)


def test_fold_with_random_running_stats():
    # Stats far from what 3 training steps produce (large means, small and large variances).
    net = _net(_random_genotype(99)).eval()
    for u in net.units:
        _set_stats(u, seed=5)
    x = _x(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(fold_batchnorm(net)(x), net(x), rtol=0, atol=1e-5)


def test_channel_affine():
    m = ChannelAffine(torch.tensor([2.0, -1.0]), torch.tensor([0.5, 3.0]))
    x = torch.ones(1, 2, 2, 2)
    assert torch.equal(m(x)[0, :, 0, 0], torch.tensor([2.5, 2.0]))
    assert dict(m.named_buffers()).keys() == {"scale", "shift"}
