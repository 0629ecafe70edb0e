"""Tests of the op registry (hbl_edge.ops), kornia style.

Generic tests are parametrised over the registry itself (``OPS``), so an op added later is
covered automatically; hand-computed values are checked per op kind.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hbl_edge.errors import GenotypeError, HblError
from hbl_edge.ops import (
    OPS,
    PARAMETER_FREE_OPS,
    SPACES,
    BoxMix,
    BoxMix5,
    Conv,
    DenseBlock,
    HalfConv,
    Identity,
    PixelMix,
    ResConv,
    SepConv,
    Space,
    get_space,
    last_linear_weight,
    make_op,
    pointwise,
    register_op,
    register_space,
)

ALL_OPS = sorted(OPS)
FCM_OPS = sorted({op for space in SPACES.values() for op in space.fcm})
HNU_OPS = sorted({op for space in SPACES.values() for op in space.hnu})

# DESIGN §3.
PAPER_HNU = (
    "skip_connect", "conv_1x1", "conv_3x3", "dilconv_3x3", "resconv_1x1",
    "resconv_3x3", "resdilconv_3x3", "denseblocks_1x1", "denseblocks_3x3",
)
PAPER_FCM = ("conv_5x5", "conv_1x1", "conv_3x3", "dilconv_3x3")


# Ops that need C_in == C_out by definition (identity / residual / dense concat).
EQUAL_CHANNEL_OPS = (
    "skip_connect", "resconv_1x1", "resconv_3x3", "resdilconv_3x3",
    "denseblocks_1x1", "denseblocks_3x3",
)


def _op(name: str, c_in: int = 4, c_out: int | None = None, seed: int = 0, dtype=torch.float32) -> nn.Module:
    torch.manual_seed(seed)
    return make_op(name, c_in, c_in if c_out is None else c_out).to(dtype)


def _x(*shape: int, seed: int = 1, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype)


def _delta(size: int = 9) -> torch.Tensor:
    x = torch.zeros(1, 1, size, size)
    x[0, 0, size // 2, size // 2] = 1.0
    return x


# ---------------------------------------------------------------------------------------------
# Generic: every registered op
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL_OPS)
class TestEveryOp:
    def test_smoke(self, name):
        op = _op(name)
        assert isinstance(op, nn.Module)
        y = op(_x(1, 4, 6, 6))
        assert isinstance(y, torch.Tensor)
        assert torch.isfinite(y).all()

    @pytest.mark.parametrize("shape", [(1, 4, 6, 6), (2, 4, 5, 7), (1, 4, 1, 1), (3, 4, 2, 9)])
    def test_shape_c_to_c(self, name, shape):
        assert _op(name)(_x(*shape)).shape == shape

    def test_bias_free(self, name):
        op = _op(name)
        names = [n for n, _ in op.named_parameters()]
        assert not any(n.split(".")[-1] == "bias" for n in names), names
        for m in op.modules():
            if isinstance(m, nn.modules.conv._ConvNd):
                assert m.bias is None

    def test_parameter_free_flag(self, name):
        n_params = sum(p.numel() for p in _op(name).parameters())
        if name in PARAMETER_FREE_OPS:
            assert n_params == 0
        else:
            assert n_params > 0

    def test_gradcheck(self, name):
        op = _op(name, c_in=2, dtype=torch.float64)
        x = _x(1, 2, 5, 5, dtype=torch.float64).requires_grad_(True)
        assert torch.autograd.gradcheck(op, (x,), eps=1e-6, atol=1e-5)

    def test_gradcheck_weights(self, name):
        op = _op(name, c_in=2, dtype=torch.float64)
        params = tuple(op.parameters())
        if not params:
            pytest.skip("parameter-free op")
        x = _x(1, 2, 4, 4, dtype=torch.float64)

        def f(*ws):
            return torch.func.functional_call(op, dict(zip([n for n, _ in op.named_parameters()], ws)), (x,))

        ws = tuple(p.detach().clone().requires_grad_(True) for p in params)
        assert torch.autograd.gradcheck(f, ws, eps=1e-6, atol=1e-5)

    def test_module_deterministic(self, name):
        op = _op(name)
        x = _x(2, 4, 6, 6)
        assert torch.equal(op(x), op(x))

    def test_construction_deterministic_under_seed(self, name):
        a, b = _op(name, seed=3), _op(name, seed=3)
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
        x = _x(1, 4, 6, 6)
        assert torch.equal(a(x), b(x))

    def test_does_not_modify_input(self, name):
        x = _x(1, 4, 6, 6)
        x0 = x.clone()
        _op(name)(x)
        assert torch.equal(x, x0)

    def test_batch_independent(self, name):
        op = _op(name)
        x = _x(3, 4, 6, 6)
        torch.testing.assert_close(op(x)[1:2], op(x[1:2]), rtol=1e-5, atol=1e-6)

    def test_channel_change_is_supported_or_a_genotype_error(self, name):
        # Never another exception type: a genotype asking for 3→16 on any op is a user error.
        for c_in, c_out in ((3, 16), (16, 3)):
            try:
                op = make_op(name, c_in, c_out)
            except GenotypeError as e:
                assert "\n" not in str(e)
                continue
            assert op(_x(1, c_in, 6, 6)).shape == (1, c_out, 6, 6)


@pytest.mark.parametrize("name", FCM_OPS)
class TestFcmOps:
    def test_head_shape_3_to_16(self, name):
        assert _op(name, 3, 16)(_x(1, 3, 6, 6)).shape == (1, 16, 6, 6)

    def test_tail_shape_16_to_3(self, name):
        assert _op(name, 16, 3)(_x(1, 16, 6, 6)).shape == (1, 3, 6, 6)

    @pytest.mark.parametrize("hw", [(1, 1), (5, 7), (2, 3)])
    def test_head_odd_sizes(self, name, hw):
        assert _op(name, 3, 16)(_x(1, 3, *hw)).shape == (1, 16, *hw)


@pytest.mark.parametrize("name", EQUAL_CHANNEL_OPS)
@pytest.mark.parametrize("c_in,c_out", [(3, 16), (16, 3), (4, 5)])
def test_wrong_channels_raise_genotype_error(name, c_in, c_out):
    with pytest.raises(GenotypeError, match=rf"{c_in}→{c_out}") as info:
        make_op(name, c_in, c_out)
    assert isinstance(info.value, HblError)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------
# Hand-computed values per op kind
# ---------------------------------------------------------------------------------------------
class TestSkipConnect:
    def test_identity(self):
        x = _x(2, 4, 6, 6)
        assert torch.equal(make_op("skip_connect", 4, 4)(x), x)

    def test_type_and_message(self):
        assert isinstance(make_op("skip_connect", 4, 4), Identity)
        with pytest.raises(GenotypeError, match=r"skip_connect needs equal input and output channels, got 3→16"):
            make_op("skip_connect", 3, 16)


class TestConv1x1:
    def test_set_weight_matrix(self):
        op = make_op("conv_1x1", 2, 3)
        m = torch.tensor([[1.0, 2.0], [-1.0, 0.5], [0.0, 3.0]])
        with torch.no_grad():
            op.conv.weight.copy_(m.reshape(3, 2, 1, 1))
        x = torch.tensor([[[[1.0, -2.0]], [[4.0, 0.25]]]])  # 1×2×1×2
        expected = torch.tensor([[[[9.0, -1.5]], [[1.0, 2.125]], [[12.0, 0.75]]]])
        torch.testing.assert_close(op(x), expected)

    def test_structure(self):
        op = make_op("conv_1x1", 4, 4)
        assert isinstance(op, Conv)
        assert op.conv.kernel_size == (1, 1) and op.conv.dilation == (1, 1) and op.conv.padding == (0, 0)


@pytest.mark.parametrize("name,k", [("conv_3x3", 3), ("conv_5x5", 5)])
class TestConvKxK:
    def test_delta_gives_flipped_kernel(self, name, k):
        # conv2d is a cross-correlation: out[c + d] = w[r - d] for a delta at c (r = k // 2).
        op = make_op(name, 1, 1)
        w = torch.arange(1.0, k * k + 1).reshape(1, 1, k, k)
        with torch.no_grad():
            op.conv.weight.copy_(w)
        y = op(_delta(9))
        c, r = 4, k // 2
        torch.testing.assert_close(y[0, 0, c - r : c + r + 1, c - r : c + r + 1], torch.flip(w[0, 0], (0, 1)))
        mask = torch.ones(9, 9, dtype=torch.bool)
        mask[c - r : c + r + 1, c - r : c + r + 1] = False
        assert (y[0, 0][mask] == 0).all()

    def test_same_zero_padding(self, name, k):
        # A constant image: a corner sees only the in-image part of an all-ones kernel.
        op = make_op(name, 1, 1)
        with torch.no_grad():
            op.conv.weight.fill_(1.0)
        y = op(torch.ones(1, 1, 7, 7))
        r = k // 2
        assert y[0, 0, 3, 3].item() == k * k
        assert y[0, 0, 0, 0].item() == (r + 1) ** 2

    def test_structure(self, name, k):
        op = make_op(name, 4, 4)
        assert isinstance(op, Conv)
        assert op.conv.kernel_size == (k, k) and op.conv.dilation == (1, 1)


class TestDilConv3x3:
    def test_delta_taps_two_apart(self):
        op = make_op("dilconv_3x3", 1, 1)
        w = torch.arange(1.0, 10.0).reshape(1, 1, 3, 3)
        with torch.no_grad():
            op.conv.weight.copy_(w)
        y = op(_delta(9))[0, 0]
        c = 4
        flipped = torch.flip(w[0, 0], (0, 1))
        torch.testing.assert_close(y[c - 2 : c + 3 : 2, c - 2 : c + 3 : 2], flipped)
        mask = torch.ones(9, 9, dtype=torch.bool)
        mask[c - 2 : c + 3 : 2, c - 2 : c + 3 : 2] = False
        assert (y[mask] == 0).all()
        assert torch.count_nonzero(y) == 9

    def test_structure(self):
        op = make_op("dilconv_3x3", 4, 4)
        assert isinstance(op, Conv)
        assert op.conv.kernel_size == (3, 3) and op.conv.dilation == (2, 2) and op.conv.padding == (2, 2)


@pytest.mark.parametrize("name,k,d", [("resconv_1x1", 1, 1), ("resconv_3x3", 3, 1), ("resdilconv_3x3", 3, 2)])
class TestResConv:
    def test_equals_conv_plus_x(self, name, k, d):
        op = _op(name, c_in=3)
        assert isinstance(op, ResConv)
        assert op.conv.kernel_size == (k, k) and op.conv.dilation == (d, d)
        x = _x(2, 3, 6, 7)
        expected = F.conv2d(x, op.conv.weight, padding=d * (k // 2), dilation=d) + x
        torch.testing.assert_close(op(x), expected)

    def test_zero_weight_is_identity(self, name, k, d):
        op = _op(name, c_in=3)
        with torch.no_grad():
            op.conv.weight.zero_()
        x = _x(1, 3, 5, 5)
        torch.testing.assert_close(op(x), x)

    def test_as_conv_equals_op(self, name, k, d):
        op = _op(name, c_in=3)
        fused = op.as_conv()
        assert isinstance(fused, nn.Conv2d)
        assert fused.bias is None
        assert fused.kernel_size == (k, k) and fused.dilation == (d, d)
        x = _x(2, 3, 7, 6)
        torch.testing.assert_close(fused(x), op(x), rtol=1e-5, atol=1e-6)

    def test_as_conv_float64_and_leaves_op_unchanged(self, name, k, d):
        op = _op(name, c_in=3, dtype=torch.float64)
        w0 = op.conv.weight.detach().clone()
        fused = op.as_conv()
        assert fused.weight.dtype == torch.float64
        assert torch.equal(op.conv.weight, w0)
        x = _x(1, 3, 5, 5, dtype=torch.float64)
        torch.testing.assert_close(fused(x), op(x))


class TestDenseBlocks:
    def test_1x1_set_weights(self):
        # One channel: y = b·x + c·ReLU(a·x).
        op = make_op("denseblocks_1x1", 1, 1)
        assert isinstance(op, DenseBlock)
        a, b, c = 2.0, 0.5, -3.0
        with torch.no_grad():
            op.conv1.weight.fill_(a)
            op.conv2.weight.copy_(torch.tensor([b, c]).reshape(1, 2, 1, 1))
        x = torch.tensor([[[[1.0, -1.0, 0.0, 2.5]]]])
        expected = torch.tensor([[[[0.5 - 6.0, -0.5, 0.0, 1.25 - 15.0]]]])
        torch.testing.assert_close(op(x), expected)

    @pytest.mark.parametrize("name,k", [("denseblocks_1x1", 1), ("denseblocks_3x3", 3)])
    def test_matches_functional_reference(self, name, k):
        op = _op(name, c_in=3)
        assert op.conv1.weight.shape == (3, 3, k, k)
        assert op.conv2.weight.shape == (3, 6, k, k)
        x = _x(2, 3, 6, 5)
        y1 = torch.relu(F.conv2d(x, op.conv1.weight, padding=k // 2))
        expected = F.conv2d(torch.cat([x, y1], 1), op.conv2.weight, padding=k // 2)
        torch.testing.assert_close(op(x), expected)

    def test_3x3_delta(self):
        # conv1 = 0 kills the dense path: the op is conv2's x-half, a plain 3×3 correlation.
        op = make_op("denseblocks_3x3", 1, 1)
        w = torch.arange(1.0, 10.0).reshape(3, 3)
        with torch.no_grad():
            op.conv1.weight.zero_()
            op.conv2.weight.zero_()
            op.conv2.weight[0, 0] = w
            op.conv2.weight[0, 1] = 100.0
        y = op(_delta(7))[0, 0]
        torch.testing.assert_close(y[2:5, 2:5], torch.flip(w, (0, 1)))
        assert torch.count_nonzero(y) == 9


# ---------------------------------------------------------------------------------------------
# Factory, registry and spaces
# ---------------------------------------------------------------------------------------------
class TestMakeOp:
    def test_unknown_op_lists_known_ops(self):
        with pytest.raises(GenotypeError) as info:
            make_op("conv_7x7", 4, 4)
        msg = str(info.value)
        assert "'conv_7x7'" in msg
        assert "\n" not in msg
        for name in OPS:
            assert name in msg

    def test_each_call_builds_a_fresh_module(self):
        a, b = make_op("conv_3x3", 4, 4), make_op("conv_3x3", 4, 4)
        assert a is not b and a.conv.weight is not b.conv.weight

    def test_register_twice_rejected(self):
        before = dict(OPS)
        with pytest.raises(ValueError, match="registered twice"):
            register_op("conv_1x1")(lambda ci, co: Conv(ci, co, 1))
        assert OPS == before

    def test_space_with_unregistered_op_rejected(self):
        before = dict(SPACES)
        with pytest.raises(ValueError, match="unregistered op 'nope'"):
            register_space(Space(name="bogus-test-space", hnu=("nope",), fcm=("conv_1x1",)))
        assert SPACES == before


class TestSpaces:
    def test_paper_space_is_the_design_space(self):
        paper = get_space("paper")
        assert paper.name == "paper"
        assert set(paper.hnu) == set(PAPER_HNU) and len(paper.hnu) == 9
        assert set(paper.fcm) == set(PAPER_FCM) and len(paper.fcm) == 4
        # 9 + 4 = 13 entries; the two lists share conv_1x1, conv_3x3 and dilconv_3x3, so the
        # paper uses 10 distinct ops: exactly the 10 rows of the DESIGN §3 table.
        assert len(paper.hnu) + len(paper.fcm) == 13
        assert len(set(paper.hnu) | set(paper.fcm)) == 10
        assert set(paper.hnu) & set(paper.fcm) == {"conv_1x1", "conv_3x3", "dilconv_3x3"}

    def test_paper_hnu_order(self):
        # The order is the α layout of every HNU edge in the supernet (checkpoints depend on it).
        assert get_space("paper").hnu == PAPER_HNU

    @pytest.mark.parametrize("space", sorted(SPACES))
    def test_spaces_are_registered_and_duplicate_free(self, space):
        s = SPACES[space]
        assert s.name == space
        assert len(set(s.hnu)) == len(s.hnu) and len(set(s.fcm)) == len(s.fcm)
        assert all(op in OPS for op in s.hnu + s.fcm)
        assert s.hnu and s.fcm

    @pytest.mark.parametrize("space", sorted(SPACES))
    def test_fcm_ops_can_change_channels(self, space):
        # Head (3→C1) and tail (C1→3) are FCM edges: every FCM op must allow it.
        for op in SPACES[space].fcm:
            assert make_op(op, 3, 16)(_x(1, 3, 4, 4)).shape == (1, 16, 4, 4)

    @pytest.mark.parametrize("space", sorted(SPACES))
    def test_hnu_ops_keep_channels(self, space):
        for op in SPACES[space].hnu:
            assert make_op(op, 4, 4)(_x(1, 4, 4, 4)).shape == (1, 4, 4, 4)

    def test_design_ops_all_registered(self):
        assert set(PAPER_HNU) | set(PAPER_FCM) <= set(OPS)

    def test_unknown_space(self):
        with pytest.raises(GenotypeError) as info:
            get_space("nope")
        msg = str(info.value)
        assert "'nope'" in msg and "paper" in msg and "\n" not in msg

    def test_space_is_immutable(self):
        with pytest.raises(Exception):
            get_space("paper").hnu = ()  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------
# Folding protocol: every op folds an output affine (BatchNorm at inference) into itself
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL_OPS)
class TestFoldOutputAffine:
    def _affine(self, c: int, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(7)
        return (torch.rand(c, generator=g, dtype=dtype) * 2 + 0.1, torch.randn(c, generator=g, dtype=dtype))

    def test_equals_op_then_affine(self, name):
        op = _op(name, c_in=4, dtype=torch.float64)
        scale, shift = self._affine(4, torch.float64)
        folded = op.fold_output_affine(scale, shift)
        x = _x(2, 4, 6, 5, dtype=torch.float64)
        with torch.no_grad():
            expected = op(x) * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)
            torch.testing.assert_close(folded(x), expected, rtol=1e-12, atol=1e-12)

    def test_channel_change(self, name):
        try:
            op = _op(name, c_in=3, c_out=5)
        except GenotypeError:
            pytest.skip("op needs equal channels")
        scale, shift = self._affine(5)
        x = _x(1, 3, 5, 5)
        with torch.no_grad():
            torch.testing.assert_close(op.fold_output_affine(scale, shift)(x),
                                       op(x) * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1))

    def test_leaves_op_untouched_and_shares_no_storage(self, name):
        op = _op(name)
        state = {k: v.clone() for k, v in op.state_dict().items()}
        folded = op.fold_output_affine(*self._affine(4))
        assert all(torch.equal(op.state_dict()[k], v) for k, v in state.items())
        ptrs = {p.data_ptr() for p in op.parameters()}
        assert not ptrs & {t.data_ptr() for t in [*folded.parameters(), *folded.buffers()]}


# ---------------------------------------------------------------------------------------------
# Ops of the "edge" space
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,d", [("sepconv_3x3", 1), ("dilsepconv_3x3", 2)])
class TestSepConv:
    def test_structure_and_parameter_count(self, name, d):
        op = make_op(name, 4, 6)
        assert isinstance(op, SepConv)
        assert op.dw.groups == 4 and op.dw.kernel_size == (3, 3) and op.dw.dilation == (d, d)
        assert op.dw.padding == (d, d)
        assert op.pw.kernel_size == (1, 1) and op.pw.out_channels == 6
        assert sum(p.numel() for p in op.parameters()) == 9 * 4 + 4 * 6

    def test_matches_functional_reference(self, name, d):
        op = _op(name, c_in=3, c_out=5)
        x = _x(2, 3, 7, 6)
        y = F.conv2d(x, op.dw.weight, padding=d, dilation=d, groups=3)
        torch.testing.assert_close(op(x), F.conv2d(y, op.pw.weight))

    def test_hand_computed_one_channel(self, name, d):
        # One channel: y = p · (w ⋆ x); a delta gives the flipped kernel times p, taps d apart.
        op = make_op(name, 1, 1)
        w = torch.arange(1.0, 10.0).reshape(3, 3)
        with torch.no_grad():
            op.dw.weight.copy_(w.reshape(1, 1, 3, 3))
            op.pw.weight.fill_(-2.0)
        y = op(_delta(9))[0, 0]
        c = 4
        torch.testing.assert_close(y[c - d : c + d + 1 : d, c - d : c + d + 1 : d], -2.0 * torch.flip(w, (0, 1)))
        assert torch.count_nonzero(y) == 9


class TestHalfConv:
    def test_structure(self):
        op = make_op("conv_3x3_half", 32, 32)
        assert isinstance(op, HalfConv)
        assert (op.reduce.in_channels, op.reduce.out_channels, op.reduce.kernel_size) == (32, 16, (1, 1))
        assert (op.conv.in_channels, op.conv.out_channels, op.conv.kernel_size) == (16, 16, (3, 3))
        assert (op.expand.in_channels, op.expand.out_channels, op.expand.kernel_size) == (16, 32, (1, 1))
        # 3.25·C² weights, against 9·C² for conv_3x3
        assert sum(p.numel() for p in op.parameters()) == 32 * 16 + 9 * 16 * 16 + 16 * 32 == int(3.25 * 32 * 32)

    @pytest.mark.parametrize("c_in,c_out,mid", [(3, 16, 8), (16, 3, 8), (1, 1, 1), (5, 5, 2)])
    def test_mid_width(self, c_in, c_out, mid):
        op = make_op("conv_3x3_half", c_in, c_out)
        assert op.conv.in_channels == op.conv.out_channels == mid

    def test_matches_functional_reference(self):
        op = _op("conv_3x3_half", c_in=4)
        x = _x(2, 4, 6, 7)
        y = torch.relu(F.conv2d(x, op.reduce.weight))
        y = torch.relu(F.conv2d(y, op.conv.weight, padding=1))
        torch.testing.assert_close(op(x), F.conv2d(y, op.expand.weight))

    def test_hand_computed(self):
        # 2→1→2 with 1×1-like centre taps: y = e · ReLU(c · ReLU(r·x)).
        op = make_op("conv_3x3_half", 2, 2)
        with torch.no_grad():
            op.reduce.weight.copy_(torch.tensor([1.0, -1.0]).reshape(1, 2, 1, 1))
            op.conv.weight.zero_()
            op.conv.weight[0, 0, 1, 1] = 2.0
            op.expand.weight.copy_(torch.tensor([3.0, -0.5]).reshape(2, 1, 1, 1))
        x = torch.tensor([[[[2.0, 0.0]], [[1.0, 1.0]]]])  # r·x = [1, -1] → ReLU [1, 0] → ×2
        expected = torch.tensor([[[[6.0, 0.0]], [[-1.0, 0.0]]]])
        torch.testing.assert_close(op(x), expected)


class TestEdgeSpace:
    def test_contains_paper_space_first_in_order(self):
        edge, paper = get_space("edge"), get_space("paper")
        assert edge.hnu[: len(paper.hnu)] == paper.hnu
        assert edge.fcm[: len(paper.fcm)] == paper.fcm

    def test_cheap_ops(self):
        edge = get_space("edge")
        assert {"sepconv_3x3", "dilsepconv_3x3", "conv_3x3_half"} <= set(edge.hnu)
        assert {"sepconv_3x3", "conv_3x3_half"} <= set(edge.fcm)
        assert not set(edge.hnu) & PARAMETER_FREE_OPS - {"skip_connect"}

    @pytest.mark.parametrize("name", ["sepconv_3x3", "dilsepconv_3x3", "conv_3x3_half"])
    def test_cheaper_than_conv_3x3(self, name):
        n = sum(p.numel() for p in make_op(name, 32, 32).parameters())
        assert n < 0.4 * sum(p.numel() for p in make_op("conv_3x3", 32, 32).parameters())


class TestMatMulOps:
    """mix_1x1 and boxmix_3x3: per-pixel linear maps computed as one MatMul (refinement ops)."""

    def test_pointwise_is_a_1x1_conv(self):
        x, w, b = _x(2, 3, 5, 7), _x(4, 3, seed=2), _x(4, seed=3)
        torch.testing.assert_close(pointwise(x, w, b), F.conv2d(x, w[:, :, None, None], b))

    def test_mix_1x1_equals_conv_1x1_with_its_weights(self):
        op = _op("mix_1x1", c_in=3, c_out=5)
        assert isinstance(op, PixelMix) and op.weight.shape == (5, 3)
        x = _x(2, 3, 4, 6)
        torch.testing.assert_close(op(x), F.conv2d(x, op.weight[:, :, None, None]))

    def test_boxmix_is_centre_tap_plus_local_mean(self):
        op = _op("boxmix_3x3", c_in=2, c_out=3)
        assert isinstance(op, BoxMix) and op.weight.shape == (3, 4)
        x = _x(1, 2, 7, 8)
        # inside the border the op is one 3×3 conv: the centre tap W_x plus W_box / 9 on every tap
        kernel = op.weight[:, 2:, None, None].expand(3, 2, 3, 3) * 1.0  # the box weight is per tap
        kernel = kernel.clone()
        kernel[:, :, 1, 1] += op.weight[:, :2]
        torch.testing.assert_close(op(x)[..., 1:-1, 1:-1], F.conv2d(x, kernel)[..., :, :])
        # at the border the mean is over the pixels the window has (a constant image stays constant)
        const = torch.full((1, 2, 5, 5), 0.5)
        out = op(const)
        torch.testing.assert_close(out, out[..., 2:3, 2:3].expand_as(out))

    def test_boxmix_on_one_pixel(self):
        op = _op("boxmix_3x3", c_in=3, c_out=3)
        x = _x(1, 3, 1, 1)  # the 3×3 mean of a lone pixel is the pixel (and enters as 9 taps of it)
        torch.testing.assert_close(op(x), F.conv2d(x, (op.weight[:, :3] + 9 * op.weight[:, 3:])[:, :, None, None]))

    def test_boxmix_5x5_is_a_three_level_5x5_conv(self):
        op = _op("boxmix_5x5", c_in=2, c_out=3)
        assert isinstance(op, BoxMix5) and op.weight.shape == (3, 6)
        w0, w1, w2 = op.weight[:, :2], op.weight[:, 2:4], op.weight[:, 4:]
        # as a 5×5 kernel: outer ring w2, inner 3×3 ring w1 + w2, centre w0 + w1 + w2 (weights per tap)
        kernel = w2[:, :, None, None].expand(3, 2, 5, 5).clone()
        kernel[:, :, 1:4, 1:4] += w1[:, :, None, None]
        kernel[:, :, 2, 2] += w0
        x = _x(1, 2, 9, 10)
        torch.testing.assert_close(op(x)[..., 2:-2, 2:-2], F.conv2d(x, kernel))

    @pytest.mark.parametrize("name", ["boxmix_3x3", "boxmix_5x5"])
    def test_boxmix_starts_like_the_default_init_on_the_means(self, name):
        # the taps scale how fast a mean's weight learns, not where the op starts: the effective
        # weight on each window sum is the default init / taps, i.e. the default init on the mean
        torch.manual_seed(3)
        op = _op(name, c_in=3, c_out=3)
        bound = 1 / (3 * len(op.taps)) ** 0.5  # kaiming uniform, a = √5: U(±1/√fan_in)
        for k, t in enumerate(op.taps):
            block = op.effective_weight()[:, 3 * k:3 * (k + 1)] / t
            assert block.abs().max() <= bound

    @pytest.mark.parametrize("name", ["mix_1x1", "boxmix_3x3", "boxmix_5x5"])
    def test_residual_is_x_plus_the_op_in_one_matmul(self, name):
        op = _op(name, c_in=3, c_out=3)
        x = _x(2, 3, 6, 7)
        torch.testing.assert_close(op.residual(x), x + op(x))
        folded = op.fold_output_affine(torch.tensor([2.0, 0.5, 1.0]), torch.tensor([0.1, 0.0, -0.2]))
        torch.testing.assert_close(folded.residual(x), x + folded(x))

    def test_residual_needs_equal_channels(self):
        with pytest.raises(GenotypeError, match="as many input as output channels"):
            _op("boxmix_3x3", c_in=3, c_out=8).residual(_x(1, 3, 4, 4))

    @pytest.mark.parametrize("name", ["mix_1x1", "boxmix_3x3", "boxmix_5x5"])
    def test_state_is_only_weight_and_bias(self, name):
        # the taps and the identity are constants of the forward pass, not saved state: bundles
        # written before they existed load unchanged
        assert set(_op(name, c_in=3, c_out=3).state_dict()) == {"weight"}

    @pytest.mark.parametrize("name", ["mix_1x1", "boxmix_3x3", "boxmix_5x5", "conv_3x3", "sepconv_3x3", "conv_3x3_half"])
    def test_last_linear_weight_is_what_the_output_depends_on_last(self, name):
        op = _op(name, c_in=3, c_out=3)
        with torch.no_grad():
            last_linear_weight(op).zero_()
        assert torch.equal(op(_x(1, 3, 6, 6)), torch.zeros(1, 3, 6, 6))

    def test_last_linear_weight_of_an_op_without_one(self):
        with pytest.raises(GenotypeError, match="no linear map"):
            last_linear_weight(Identity(3, 3))

    @pytest.mark.parametrize("name", ["mix_1x1", "boxmix_3x3", "boxmix_5x5"])
    def test_not_in_the_search_spaces(self, name):
        # refinement-branch ops: the HNU spaces (and their latency tables) are unchanged
        assert all(name not in sp.hnu and name not in sp.fcm for sp in SPACES.values())
