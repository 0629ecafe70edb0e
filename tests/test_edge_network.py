"""The resolution-decoupled edge network (hbl_edge.edge_network, hbl_edge.upsample), DESIGN §10."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from hbl_edge.bundle import load_bundle, read_meta, save_bundle
from hbl_edge.edge_network import EdgeNetwork, MapNetwork, pad_low, retinex_inverse, scattering_inverse
from hbl_edge.errors import ConfigError, GenotypeError
from hbl_edge.export import export_onnx, parity_images
from hbl_edge.genotype import NAMED_GENOTYPES, Macro, edge_genotype
from hbl_edge.network import Network, count_parameters, fold_batchnorm, iter_batchnorms, pad_to_multiple
from hbl_edge.tasks import degrade_dehaze, degrade_lowlight, degrade_underwater, invert
from hbl_edge.upsample import (
    UPSAMPLERS,
    LearnedGuideUpsampler,
    box_downscale,
    box_filter,
    guided_upsample,
    luminance,
)

_S = "skip_connect"
# Tiny shapes: every HNU op kind that folding rewrites appears.
TINY_HNU = ("conv_3x3", _S, "resconv_3x3", "denseblocks_1x1", "sepconv_3x3", "dilconv_3x3", _S, "conv_1x1")


def tiny(scale=4, model="retinex", map_channels=1, upsample="guided", refine=(), **kw):
    return edge_genotype(scale=scale, model=model, map_channels=map_channels, upsample=upsample, channels=(4, 8),
                         units=1, hnu=TINY_HNU, refine=refine, refine_channels=4, **kw)


def make(genotype, seed=0, perturb=True) -> EdgeNetwork:
    """An edge network with non-trivial BatchNorm statistics and (when on) a non-zero refinement."""
    torch.manual_seed(seed)
    net = Network.from_genotype(genotype)
    with torch.no_grad():
        for bn in iter_batchnorms(net):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 2.0)
        if perturb and net.refine is not None:
            for p in net.refine.parameters():
                p.normal_(0.0, 0.1)
    return net.eval()


# ---------------------------------------------------------------------------------------------
# Construction
# ---------------------------------------------------------------------------------------------
class TestConstruction:
    def test_factory_dispatches_on_the_macro_section(self):
        assert type(Network.from_genotype("edge-lol-s8")) is EdgeNetwork
        assert type(Network.from_genotype("hbl-lol-2022")) is Network

    def test_plain_constructor_refuses_an_edge_genotype(self):
        with pytest.raises(GenotypeError, match="Network.from_genotype") as info:
            Network(NAMED_GENOTYPES["edge-lol-s8"])
        assert "\n" not in str(info.value)

    def test_edge_network_needs_a_macro(self):
        with pytest.raises(GenotypeError, match="macro"):
            EdgeNetwork(NAMED_GENOTYPES["conv3x3"])

    @pytest.mark.parametrize("model,mc,out", [("retinex", 1, 1), ("retinex", 3, 3), ("scattering", 1, 4), ("scattering", 3, 6)])
    def test_core_tail_outputs_the_maps(self, model, mc, out):
        net = Network.from_genotype(tiny(model=model, map_channels=mc))
        assert isinstance(net.core, MapNetwork) and net.core.out_channels == out
        assert net.core.tail.conv.out_channels == out  # conv_3x3 tail C1 → maps
        assert net.core(torch.rand(2, 3, 8, 12)).shape == (2, out, 8, 12)

    def test_paper_network_unchanged(self):
        # The hook that sets the tail's channels keeps the paper network's 3.
        net = Network(NAMED_GENOTYPES["hbl-lol-2022"])
        assert net.out_channels == 3 and net.tail.conv.out_channels == 3
        assert count_parameters(net) == 527_840  # as before the hook (tests/test_network.py)

    def test_paper_ops_inside_edge_genotype(self):
        # edge-lol-s4-paper: the paper's network unchanged inside, plus the map head (1 bias).
        g = NAMED_GENOTYPES["edge-lol-s4-paper"]
        inner = Network(NAMED_GENOTYPES["hbl-lol-2022"])
        edge = Network.from_genotype(g)
        tail_diff = 16 * 3 - 16 * 1  # the 1×1 tail outputs 1 channel (L) instead of 3
        assert count_parameters(edge) == count_parameters(inner) - tail_diff + 1

    def test_units_are_the_inner_chain(self):
        net = Network.from_genotype(tiny())
        assert net.units is net.core.units and len(net.units) == 1


# ---------------------------------------------------------------------------------------------
# Pieces: inverse models, downscale, guided filter, padding
# ---------------------------------------------------------------------------------------------
class TestPieces:
    def test_retinex_inverse_hand_value(self):
        y = torch.tensor([0.2, 0.05, 0.3]).reshape(1, 3, 1, 1)
        L = torch.tensor([0.4]).reshape(1, 1, 1, 1)
        assert torch.allclose(retinex_inverse(y, L, 0.01).flatten(), torch.tensor([0.5, 0.125, 0.75]))
        assert torch.allclose(retinex_inverse(y, torch.zeros(1, 1, 1, 1), 0.1).flatten(), torch.tensor([2.0, 0.5, 3.0]))

    def test_scattering_inverse_hand_value(self):
        y = torch.tensor([0.6, 0.7, 0.8]).reshape(1, 3, 1, 1)
        t = torch.tensor([0.5]).reshape(1, 1, 1, 1)
        A = torch.tensor([0.9, 0.9, 0.9]).reshape(1, 3, 1, 1)
        # (0.6 − 0.9)/0.5 + 0.9 = 0.3, (0.7 − 0.9)/0.5 + 0.9 = 0.5, 0.7
        assert torch.allclose(scattering_inverse(y, t, A, 0.05).flatten(), torch.tensor([0.3, 0.5, 0.7]))

    @pytest.mark.parametrize("task,fn,kw", [("lowlight", degrade_lowlight, {"noise": False}),
                                            ("dehaze", degrade_dehaze, {}), ("underwater", degrade_underwater, {})])
    def test_inverse_with_the_true_maps_recovers_the_clean_image(self, task, fn, kw):
        clean = np.random.default_rng(0).random((24, 32, 3)).astype(np.float32)
        y, maps = fn(clean, np.random.default_rng(1), return_map=True, **kw)
        np.testing.assert_allclose(invert(task, y, maps), clean, atol=1e-5)
        t = lambda a: torch.from_numpy(np.ascontiguousarray(np.broadcast_to(a, clean.shape).transpose(2, 0, 1)))[None]
        if task == "lowlight":
            got = retinex_inverse(t(y), t(maps["L"]), 1e-3)
        else:
            light = maps.get("A", maps.get("B"))
            got = scattering_inverse(t(y), t(maps["t"]), torch.from_numpy(light).reshape(1, 3, 1, 1), 1e-3)
        np.testing.assert_allclose(got[0].numpy().transpose(1, 2, 0), clean, atol=1e-5)

    def test_box_downscale_partial_blocks_average_what_they_have(self):
        x = torch.arange(15, dtype=torch.float64).reshape(1, 1, 3, 5)
        got = box_downscale(x, 4)
        assert got.shape == (1, 1, 1, 2)
        assert got[0, 0, 0, 0] == x[0, 0, :, :4].mean() and got[0, 0, 0, 1] == x[0, 0, :, 4].mean()
        assert box_downscale(x, 1) is x

    def test_box_filter_clips_windows_at_the_border(self):
        x = torch.arange(9, dtype=torch.float64).reshape(1, 1, 3, 3)
        got = box_filter(x, 1)
        assert got[0, 0, 1, 1] == 4.0  # the mean of all nine
        assert got[0, 0, 0, 0] == (0 + 1 + 3 + 4) / 4  # four pixels in the corner window

    def test_luminance_is_the_rec601_mix(self):
        x = torch.rand(2, 3, 5, 7, dtype=torch.float64)
        torch.testing.assert_close(luminance(x), 0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:])

    def test_learned_guide_is_two_1x1_convs(self):
        up = LearnedGuideUpsampler(4, 1, 1e-2)
        with torch.no_grad():
            for p in up.parameters():
                p.copy_(torch.randn_like(p))
        x = torch.rand(2, 3, 5, 7)
        want = up.conv2(torch.relu(up.conv1(x)))
        torch.testing.assert_close(up.guide(x), want)

    @pytest.mark.parametrize("channels", [1, 3])
    def test_guided_upsample_is_the_two_coefficient_resizes(self, channels):
        # one Resize of [ā; b̄] is the same as resizing each (bilinear acts per channel)
        torch.manual_seed(1)
        y = torch.rand(1, 3, 17, 23)
        low = box_downscale(y, 4)
        p_low = torch.rand(1, channels, *low.shape[-2:])
        g, g_low = luminance(y), luminance(low)
        got = guided_upsample(p_low, g, g_low, 1, 1e-2)
        m = g_low.abs().mean(dim=(2, 3), keepdim=True) + 0.01
        gi = g_low / m
        mi, mp = box_filter(gi, 1), box_filter(p_low, 1)
        a = (box_filter(gi * p_low, 1) - mi * mp) / (box_filter(gi * gi, 1) - mi * mi + 1e-2)
        b = mp - a * mi
        up = lambda t: F.interpolate(t, size=y.shape[-2:], mode="bilinear", align_corners=False)
        torch.testing.assert_close(got, up(box_filter(a, 1) / m) * g + up(box_filter(b, 1)))

    def test_guided_upsample_reproduces_a_map_linear_in_the_guide(self):
        # p = 2·I + 0.3 at low resolution: a tiny ε makes the local fit exact, so the map comes
        # back at full resolution with the full-resolution guide's edges (bilinear would blur them).
        torch.manual_seed(0)
        full = torch.rand(1, 1, 16, 24, dtype=torch.float64)
        low = box_downscale(full, 4)
        got = guided_upsample(2 * low + 0.3, full, low, radius=1, eps=1e-12)
        torch.testing.assert_close(got, 2 * full + 0.3, atol=1e-6, rtol=0)
        blurred = F.interpolate(2 * low + 0.3, size=(16, 24), mode="bilinear", align_corners=False)
        assert (blurred - (2 * full + 0.3)).abs().max() > 0.2

    def test_guided_upsample_keeps_a_constant_map(self):
        full = torch.rand(2, 1, 12, 20, dtype=torch.float64)
        low = box_downscale(full, 4)
        got = guided_upsample(torch.full((2, 3, 3, 5), 0.37, dtype=torch.float64), full, low, 2, 1e-2)
        torch.testing.assert_close(got, torch.full((2, 3, 12, 20), 0.37, dtype=torch.float64))

    def test_guided_upsample_gradcheck(self):
        torch.manual_seed(0)
        full = torch.rand(1, 1, 8, 8, dtype=torch.float64)
        low = box_downscale(full, 2).requires_grad_(True)
        p = torch.rand(1, 1, 4, 4, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda p, low: guided_upsample(p, full, low, 1, 1e-2), (p, low))

    def test_learned_guide_starts_at_the_luminance(self):
        torch.manual_seed(0)
        up = LearnedGuideUpsampler(4, 1, 1e-2)
        x = torch.rand(1, 3, 8, 8)
        # W2 = 1/k and W1 ≈ luma: close to the luminance where every hidden unit is active
        assert (up.guide(x) - luminance(x)).abs().max() < 0.1

    def test_upsampler_registry(self):
        assert UPSAMPLERS.names() == ["bilinear", "guided", "learned"]
        with pytest.raises(GenotypeError, match="unknown map upsampler 'cubic'"):
            UPSAMPLERS.get("cubic")

    @pytest.mark.parametrize("h,w", [(1, 1), (3, 5), (4, 8), (7, 10), (100, 150)])
    def test_pad_low_is_pad_to_multiple_where_both_sides_reflect(self, h, w):
        x = torch.rand(1, 3, h, w)
        assert torch.equal(pad_low(x), pad_to_multiple(x, 4)[0])

    def test_pad_low_reflects_what_a_small_side_can_and_replicates_the_rest(self):
        x = torch.arange(18.0).reshape(1, 1, 9, 2)  # W = 2: a pad of 2 can reflect one column
        got = pad_low(x)
        assert got.shape == (1, 1, 12, 4)
        torch.testing.assert_close(got[..., :9, :], torch.stack([x[..., 0], x[..., 1], x[..., 0], x[..., 0]], -1))
        torch.testing.assert_close(got[..., 9:, :2], x[..., [7, 6, 5], :])  # H = 9 reflects its 3 rows

    def test_pad_low_exports_for_every_size(self, tmp_path):
        class Pad(torch.nn.Module):
            def forward(self, x):
                return pad_low(x)

        path = tmp_path / "pad.onnx"
        torch.onnx.export(Pad(), (torch.rand(1, 3, 100, 150),), str(path), input_names=["x"],
                          dynamic_axes={"x": {2: "h", 3: "w"}}, dynamo=False, opset_version=17)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for h, w in ((100, 150), (101, 153), (1, 1), (9, 2), (2, 3)):
            x = torch.rand(1, 3, h, w)
            np.testing.assert_array_equal(session.run(None, {"x": x.numpy()})[0], pad_low(x).numpy())


# ---------------------------------------------------------------------------------------------
# The whole network
# ---------------------------------------------------------------------------------------------
class TestForward:
    @pytest.mark.parametrize("scale", [1, 2, 4, 8])
    @pytest.mark.parametrize("model", ["retinex", "scattering"])
    @pytest.mark.parametrize("size", [(1, 1), (3, 5), (2, 37, 53)], ids=str)
    def test_any_size_in_any_size_out(self, scale, model, size):
        n, (h, w) = (size[0], size[1:]) if len(size) == 3 else (1, size)
        net = make(tiny(scale=scale, model=model, map_channels=3))
        with torch.no_grad():
            y = net(torch.rand(n, 3, h, w))
        assert y.shape == (n, 3, h, w) and torch.isfinite(y).all()

    def test_core_runs_at_one_over_s(self):
        net = make(tiny(scale=8))
        seen = []
        net.core.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape)))
        with torch.no_grad():
            net(torch.rand(1, 3, 50, 70))
        assert seen == [(1, 3, 8, 12)]  # ⌈50/8⌉ = 7, ⌈70/8⌉ = 9, padded to multiples of 4

    def test_output_is_the_inverse_model_of_the_maps(self):
        net = make(tiny(scale=4, model="scattering", map_channels=3, floor=0.05))
        x = torch.rand(2, 3, 20, 28)
        with torch.no_grad():
            m = net.maps(x)
            assert m["t"].shape == (2, 3, 20, 28) and m["A"].shape == (2, 3, 1, 1)
            torch.testing.assert_close(net(x), (x - m["A"]) / m["t"].clamp(min=0.05) + m["A"])

    def test_retinex_floor_bounds_the_gain(self):
        net = make(tiny(scale=2, floor=0.25))
        with torch.no_grad():
            net.head.bias.fill_(-30.0)  # L → 0: every pixel is divided by the floor
            x = torch.rand(1, 3, 16, 16) * 0.2
            torch.testing.assert_close(net(x), x / 0.25)

    def test_refinement_starts_as_the_identity(self):
        g_on = tiny(refine=("sepconv_3x3", "conv_3x3"))
        on = make(g_on, perturb=False)
        off = make(tiny(), perturb=False)
        off.load_state_dict({k: v for k, v in on.state_dict().items() if not k.startswith("refine.")})
        x = torch.rand(1, 3, 16, 24)
        with torch.no_grad():
            assert torch.equal(on(x), off(x))
        assert [type(op).__name__ for op in on.refine.ops] == ["SepConv", "Conv"]
        assert on.refine.ops[0].pw.out_channels == 4 and on.refine.ops[1].conv.out_channels == 3

    @pytest.mark.parametrize("refine", [("boxmix_3x3",), ("mix_1x1", "boxmix_3x3"), ("boxmix_3x3", "mix_1x1")])
    def test_matmul_refinement_starts_as_the_identity(self, refine):
        on, off = make(tiny(refine=refine), perturb=False), make(tiny(), perturb=False)
        off.load_state_dict({k: v for k, v in on.state_dict().items() if not k.startswith("refine.")})
        x = torch.rand(2, 3, 13, 21)
        with torch.no_grad():
            assert torch.equal(on(x), off(x))
        assert on.refine.ops[-1].weight.shape[0] == 3 and not on.refine.ops[-1].weight.any()

    def test_trains(self):
        torch.manual_seed(0)
        net = Network.from_genotype(tiny(scale=2, refine=("conv_3x3",), upsample="learned"))
        opt = torch.optim.Adam(net.parameters(), 1e-2)
        x = torch.rand(4, 3, 16, 16) * 0.3
        target = (x * 2.5).clamp(0, 1)
        losses = []
        for _ in range(40):
            loss = (net(x) - target).abs().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert losses[-1] < 0.5 * losses[0]
        assert net.upsampler.conv1.weight.grad is not None and net.refine.ops[0].conv.weight.grad.abs().sum() > 0

    @pytest.mark.parametrize("genotype", ["retinex-guided", "scattering-learned-refine", "bilinear-s1"])
    def test_fold_batchnorm_parity(self, genotype):
        g = {"retinex-guided": tiny(), "scattering-learned-refine": tiny(model="scattering", upsample="learned",
                                                                         refine=("conv_3x3",)),
             "bilinear-s1": tiny(scale=1, upsample="bilinear", map_channels=3)}[genotype]
        net = make(g)
        folded = fold_batchnorm(net)
        assert type(folded) is EdgeNetwork and not list(iter_batchnorms(folded))
        x = torch.rand(2, 3, 19, 23)
        with torch.no_grad():
            torch.testing.assert_close(folded(x), net(x), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Bundle, training, export
# ---------------------------------------------------------------------------------------------
def test_bundle_round_trip(tmp_path):
    net = make(tiny(model="scattering", map_channels=3, refine=("conv_3x3",)))
    save_bundle(tmp_path, net, task="underwater", loss={"format": "hbl-loss/1", "terms": {"l1": 1.0}})
    meta = read_meta(tmp_path)
    assert meta["genotype"]["format"] == "hbl-genotype/2" and meta["genotype"]["macro"]["model"] == "scattering"
    assert meta["input"]["pad_multiple"] == 1
    b = load_bundle(tmp_path)
    assert type(b.model) is EdgeNetwork and b.genotype == net.genotype
    x = torch.rand(1, 3, 13, 29)
    with torch.no_grad():
        assert torch.equal(b.model(x), net(x))


def test_train_edge_genotype_end_to_end(tmp_path):
    from hbl_edge.train import TrainConfig, train

    path = tiny(scale=2).save(tmp_path / "genotype.json")
    cfg = TrainConfig(genotype=str(path), data="embedded", out=str(tmp_path / "run"), steps=3, batch_size=2, crop=32,
                      val_every=3, ckpt_every=3, val_crop=32)
    res = train(cfg)
    assert res.steps == 3 and np.isfinite(res.metrics["val_psnr"])
    assert type(load_bundle(tmp_path / "run").model) is EdgeNetwork


def test_train_refuses_a_genotype_of_another_task(tmp_path):
    from hbl_edge.train import TrainConfig

    with pytest.raises(ConfigError, match="applies the scattering model, but task 'lowlight' inverts with retinex"):
        TrainConfig(task="lowlight", genotype="edge-uw-s4", out=str(tmp_path)).validate()


#: What the exported edge graphs may contain: ops TensorRT's ONNX parser supports.
TENSORRT_OPS = {
    "Abs", "Add", "And", "AveragePool", "Cast", "Clip", "Concat", "Constant", "Conv", "ConvTranspose", "Div",
    "ConstantOfShape", "Gather", "Identity", "Less", "MatMul", "Max", "Min", "Mod", "Mul", "Neg", "Pad", "Range",
    "Reciprocal", "ReduceMean", "Relu", "Reshape", "Resize", "Shape", "Sigmoid", "Slice", "Split", "Sub", "Transpose",
    "Unsqueeze", "Where",
}


@pytest.mark.parametrize("genotype", ["s4-guided-refine", "s8-scattering-learned", "s2-bilinear", "s8-matmul-refine",
                                      "s4-boxmix5"])
def test_onnx_export_parity_and_ops(tmp_path, genotype):
    g = {"s4-guided-refine": tiny(scale=4, refine=("sepconv_3x3", "conv_3x3")),
         "s8-matmul-refine": tiny(scale=8, refine=("mix_1x1", "boxmix_3x3")),
         "s4-boxmix5": tiny(scale=4, refine=("boxmix_5x5",)),
         "s8-scattering-learned": tiny(scale=8, model="scattering", map_channels=3, upsample="learned"),
         "s2-bilinear": tiny(scale=2, upsample="bilinear", map_channels=3)}[genotype]
    net = make(g)
    sizes = [(1, 1, 1), (1, 3, 5), (2, 37, 53), (1, 64, 96)]
    res = export_onnx(net, tmp_path, images=parity_images(0, sizes), fp16=genotype == "s4-guided-refine")
    assert res.parity.passed, res.parity.summary()
    if res.fp16_parity is not None:  # FP16 compute: the guided filter's variances and the division stay finite
        assert res.fp16_parity.passed and res.fp16_parity.max_abs < 5e-3, res.fp16_parity.summary()
    assert res.parity.max_abs < 1e-4 and len(res.parity.cases) == 6
    graph = onnx.load(str(res.onnx_path)).graph
    ops = {n.op_type for n in graph.node}
    assert ops <= TENSORRT_OPS, ops - TENSORRT_OPS
    assert "BatchNormalization" not in ops  # folded
    if genotype != "s2-bilinear":
        assert {"AveragePool", "Resize", "Div", "Clip"} <= ops
    for node in graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Resize":
            assert attrs["mode"] == b"linear" and attrs["coordinate_transformation_mode"] == b"half_pixel"
        if node.op_type == "AveragePool":
            assert attrs.get("count_include_pad", 0) == 0  # partial windows average what they have
    if genotype == "s4-boxmix5":
        # one MatMul op: the taps and the residual are in its (constant-folded) weight, so the
        # branch makes no full-resolution Mul or Add
        refine_ops = {n.op_type for n in graph.node if "/refine/" in n.name}
        assert {"AveragePool", "Concat", "MatMul"} <= refine_ops and not refine_ops & {"Mul", "Add"}, refine_ops
    # No full-resolution padding: the graph input goes straight into the downscale and the division.
    consumers = {n.op_type for n in graph.node if graph.input[0].name in n.input}
    assert "Gather" not in consumers, consumers
    meta = json.loads((tmp_path / "export.json").read_text())
    assert meta["source"]["genotype"]["format"] == "hbl-genotype/2"


# ---------------------------------------------------------------------------------------------
# Training helpers: data-dependent start, BatchNorm recalibration
# ---------------------------------------------------------------------------------------------
def test_init_from_data_sets_the_exposure_ratio():
    torch.manual_seed(0)
    net = Network.from_genotype(tiny(scale=2, map_channels=3)).train()
    x = torch.rand(2, 3, 16, 16) * 0.1
    target = x * torch.tensor([5.0, 4.0, 8.0]).reshape(1, 3, 1, 1)
    net.eval()  # so the check below sees the same z as the call (BN statistics fixed)
    got = net.init_from_data(x, target)
    assert got["L"] == pytest.approx([0.2, 0.25, 0.125], abs=1e-4)
    with torch.no_grad():
        z = net.core(pad_low(box_downscale(x, 2)))[:, :, :8, :8]
        level = torch.sigmoid(z.mean(dim=(0, 2, 3)) + net.head.bias.flatten())
    torch.testing.assert_close(level, torch.tensor([0.2, 0.25, 0.125]), atol=1e-5, rtol=0)



@pytest.mark.parametrize("map_channels", [1, 3])
def test_init_from_data_fits_t_and_a_of_the_scattering_model(map_channels):
    """A batch made by the model itself, y = t·x + (1 − t)·A, gives back t and A, and the head's
    maps then have that t and A on the batch."""
    torch.manual_seed(0)
    net = Network.from_genotype(tiny(model="scattering", map_channels=map_channels)).eval()
    clean = torch.rand(2, 3, 16, 16)
    t = torch.tensor([0.6, 0.6, 0.6] if map_channels == 1 else [0.5, 0.6, 0.8]).reshape(1, 3, 1, 1)
    a = torch.tensor([0.8, 0.7, 0.9]).reshape(1, 3, 1, 1)
    hazy = clean * t + (1 - t) * a
    got = net.init_from_data(hazy, clean)
    assert got["t"] == pytest.approx(t.flatten()[:map_channels].tolist(), abs=1e-3)
    assert got["A"] == pytest.approx(a.flatten().tolist(), abs=1e-3)
    with torch.no_grad():
        z = net.core(pad_low(box_downscale(hazy, net.macro.scale)))[:, :, :8, :8]
        t_map, a_map = net.head(z)
    assert float(a_map.mean(dim=0).flatten()[0]) == pytest.approx(0.8, abs=0.02)
    assert float(t_map.mean()) == pytest.approx(float(t.flatten()[:map_channels].mean()), abs=0.05)


def test_recalibrate_batchnorm_averages_whole_image_statistics():
    import sys
    from pathlib import Path

    from hbl_edge.data import PairSource

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from edge_recipe import recalibrate_batchnorm  # the LOL diagnostics' BN pass

    torch.manual_seed(0)
    net = Network.from_genotype("conv3x3").eval()
    rng = np.random.default_rng(0)
    images = [rng.random((h, w, 3)).astype(np.float32) for h, w in ((20, 28), (24, 16), (12, 12))]
    src = PairSource.from_arrays([(f"i{k}", im, im) for k, im in enumerate(images)], description="t")
    bn = net.units[0].branch_r[0].bn
    seen = []
    hook = net.units[0].branch_r[0].op.register_forward_hook(lambda m, a, out: seen.append(out.detach()))
    with torch.no_grad():
        for im in images:
            net(torch.from_numpy(im.transpose(2, 0, 1).copy())[None])
    hook.remove()
    expected = torch.stack([s.mean(dim=(0, 2, 3)) for s in seen]).mean(0)
    assert recalibrate_batchnorm(net, src) == 3
    torch.testing.assert_close(bn.running_mean, expected, atol=1e-5, rtol=1e-5)
    assert not net.training and bn.momentum == 0.1  # modes and momentum restored
