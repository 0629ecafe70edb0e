"""Loss terms, loss specs and the weighted loss (DESIGN §4)."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch
from safetensors.torch import save_file

from hbl_edge import losses as L
from hbl_edge.errors import HblError, LossSpecError


def rgb(*c: float, h: int = 4, w: int = 4, n: int = 1) -> torch.Tensor:
    return torch.tensor(c, dtype=torch.float32).view(1, 3, 1, 1).expand(n, 3, h, w).clone()


# --------------------------------------------------------------------------------------------
# weight-free terms: hand values
# --------------------------------------------------------------------------------------------


class TestHandValues:
    def test_l1(self):
        assert L.l1_loss(rgb(0, 0, 0), rgb(0.5, 0.25, 0.75)).item() == pytest.approx(0.5)

    def test_l2(self):
        assert L.l2_loss(rgb(0, 0, 0), rgb(0.5, 0.5, 0.5)).item() == pytest.approx(0.25)

    def test_color_orthogonal_is_9(self):
        assert L.color_loss(rgb(1, 0, 0), rgb(0, 1, 0)).item() == pytest.approx(9.0, abs=1e-4)

    def test_color_45_degrees(self):
        assert L.color_loss(rgb(1, 0, 0), rgb(1, 1, 0)).item() == pytest.approx(4.5, abs=1e-4)

    def test_color_scale_invariant_and_black(self):
        assert L.color_loss(rgb(0.2, 0.4, 0.1), rgb(0.4, 0.8, 0.2)).item() == pytest.approx(0.0, abs=1e-3)
        assert L.color_loss(rgb(0, 0, 0), rgb(0, 0, 0)).item() == 0.0

    def test_color_batch_safe_per_pixel(self):
        pred = torch.cat([rgb(1, 0, 0), rgb(0.3, 0.3, 0.3)])
        target = torch.cat([rgb(0, 1, 0), rgb(0.3, 0.3, 0.3)])
        ang = L.color_angle(pred, target)
        assert ang.shape == (2, 4, 4)
        assert ang[0].mean().item() == pytest.approx(90.0, abs=1e-3)
        assert ang[1].abs().max().item() < 1e-3

    def test_ssim_identical_and_scale(self):
        x = torch.rand(1, 3, 16, 16)
        assert L.ssim_loss(x, x).item() == pytest.approx(0.0, abs=1e-4)
        import kornia

        y = torch.rand(1, 3, 16, 16)
        ref = kornia.metrics.ssim(x, y, 11).mean()
        assert L.ssim_loss(x, y).item() == pytest.approx(10 * (1 - ref.item()), rel=1e-5)

    def test_tv_of_step(self):
        x = torch.zeros(1, 3, 4, 4)
        x[..., 2:] = 1.0
        assert L.tv_loss(x).item() == pytest.approx(1.0 / 3.0)

    def test_laplacian_of_delta(self):
        x = torch.zeros(1, 1, 5, 5)
        x[0, 0, 2, 2] = 1.0
        assert L.laplacian_loss(x).item() == pytest.approx((64 + 8) / 25)

    def test_laplacian_of_constant_is_zero(self):
        assert L.laplacian_loss(rgb(0.3, 0.5, 0.7)).item() == pytest.approx(0.0, abs=1e-12)


class TestChecks:
    def test_shape_mismatch(self):
        with pytest.raises(ValueError, match=r"pred and target must have the same shape, got \(1, 3, 4, 4\) and \(1, 3, 4, 5\)"):
            L.l1_loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 5))

    def test_not_4d(self):
        with pytest.raises(ValueError, match=r"pred must have shape N×C×H×W, got \(3, 4, 4\)"):
            L.l2_loss(torch.zeros(3, 4, 4), torch.zeros(3, 4, 4))

    def test_color_needs_rgb(self):
        with pytest.raises(ValueError, match="pred must be RGB"):
            L.color_loss(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4))

    def test_not_tensor(self):
        with pytest.raises(TypeError, match="pred must be a torch.Tensor, got list"):
            L.tv_loss([1.0])


# --------------------------------------------------------------------------------------------
# gradients
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fn",
    [L.l1_loss, L.l2_loss, L.color_loss, L.ssim_loss, lambda p, t: L.tv_loss(p), lambda p, t: L.laplacian_loss(p)],
    ids=["l1", "l2", "color", "ssim", "tv", "laplacian"],
)
def test_gradcheck(fn):
    torch.manual_seed(0)
    shape = (1, 1, 8, 8) if fn is L.ssim_loss else (1, 3, 5, 5)  # ssim: small but > window//2
    p = (torch.rand(*shape, dtype=torch.float64) * 0.8 + 0.1).requires_grad_()
    t = torch.rand(*shape, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a: fn(a, t), (p,), eps=1e-6, atol=1e-4, fast_mode=True)


def test_color_gradient_finite_at_equality_and_black():
    for base in (torch.rand(2, 3, 4, 4), torch.zeros(2, 3, 4, 4)):
        p = base.clone().requires_grad_()
        L.color_loss(p, base.clone()).backward()
        assert torch.isfinite(p.grad).all()


# --------------------------------------------------------------------------------------------
# specs
# --------------------------------------------------------------------------------------------


class TestSpec:
    def test_parse_string(self):
        s = L.parse_loss_spec(" l1 , ssim=0.5,color=2")
        assert s.terms == {"l1": 1.0, "ssim": 0.5, "color": 2.0}
        assert list(s.terms) == ["l1", "ssim", "color"]

    def test_unknown_term_lists_known(self):
        with pytest.raises(LossSpecError) as e:
            L.parse_loss_spec("l1,perceptual=2")
        assert str(e.value) == (
            "unknown loss term 'perceptual'; known terms: l1, l2, color, ssim, vgg, lpips, tv, laplacian"
        )

    def test_bad_weight(self):
        with pytest.raises(LossSpecError, match=r"^bad weight 'x' for loss term 'l1'; write e.g. 'l1=1,ssim=0.5'$"):
            L.parse_loss_spec("l1=x")

    @pytest.mark.parametrize("text", ["l1=-1", "l1=nan", "l1=inf"])
    def test_negative_nan(self, text):
        with pytest.raises(LossSpecError, match=r"weight of loss term 'l1' must be a finite number ≥ 0, got"):
            L.parse_loss_spec(text)

    def test_duplicate_and_empty_and_all_zero(self):
        with pytest.raises(LossSpecError, match="given twice"):
            L.parse_loss_spec("l1,l1=2")
        with pytest.raises(LossSpecError, match="no terms"):
            L.parse_loss_spec(" , ")
        with pytest.raises(LossSpecError, match="every loss weight is 0"):
            L.parse_loss_spec("l1=0,ssim=0")

    def test_json_roundtrip(self, tmp_path):
        s = L.LossSpec({"l1": 1.0, "vgg": 0.2}, vgg_taps=["relu1_1", "relu3_2"], objective="critic", provenance={"seed": 1})
        p = s.save(tmp_path / "loss.json")
        d = json.loads(p.read_text())
        assert d["format"] == "hbl-loss/1" and d["terms"] == {"l1": 1.0, "vgg": 0.2}
        back = L.parse_loss_spec(str(p))
        assert back == s
        assert L.LossSpec.from_dict(s.to_dict()) == s
        assert L.parse_loss_spec(p) == s

    def test_minimal_json(self, tmp_path):
        p = tmp_path / "loss.json"
        p.write_text('{"format": "hbl-loss/1", "terms": {"ssim": 2}}')
        assert L.parse_loss_spec(p).terms == {"ssim": 2.0}

    def test_malformed_json_line_col(self, tmp_path):
        p = tmp_path / "loss.json"
        p.write_text('{"format": "hbl-loss/1",\n  "terms": {"l1": 1,}}')
        with pytest.raises(LossSpecError) as e:
            L.parse_loss_spec(p)
        assert str(e.value) == f"{p}: malformed JSON at line 2 column 21: Expecting property name enclosed in double quotes"

    def test_json_errors(self, tmp_path):
        p = tmp_path / "loss.json"
        p.write_text('{"format": "hbl-loss/2", "terms": {"l1": 1}}')
        with pytest.raises(LossSpecError, match=r"unknown loss spec format 'hbl-loss/2'; this version of hbl-edge reads 'hbl-loss/1'"):
            L.parse_loss_spec(p)
        p.write_text('{"format": "hbl-loss/1", "terms": {"l1": 1}, "weights": {}}')
        with pytest.raises(LossSpecError, match="unknown key"):
            L.parse_loss_spec(p)
        p.write_text('{"format": "hbl-loss/1", "terms": {"l1": "1"}}')
        with pytest.raises(LossSpecError, match="must be a number"):
            L.parse_loss_spec(p)
        p.write_text('{"format": "hbl-loss/1", "terms": {"l1": 1}, "vgg_taps": ["relu9_9"]}')
        with pytest.raises(LossSpecError, match=r"unknown vgg tap\(s\) 'relu9_9'; known: relu1_1"):
            L.parse_loss_spec(p)
        with pytest.raises(LossSpecError, match="loss spec file not found"):
            L.parse_loss_spec(str(tmp_path / "nope.json"))

    def test_errors_are_hbl_and_one_line(self):
        with pytest.raises(HblError) as e:
            L.parse_loss_spec("foo")
        assert "\n" not in str(e.value)


# --------------------------------------------------------------------------------------------
# WeightedLoss
# --------------------------------------------------------------------------------------------


class TestWeightedLoss:
    def test_total_and_parts(self):
        loss = L.build_loss("l1=2,l2=0.5,tv")
        assert loss.names == ["l1", "l2", "tv"]
        assert isinstance(loss.weights, torch.nn.Parameter) and not loss.weights.requires_grad
        p, t = rgb(0, 0, 0), rgb(0.5, 0.5, 0.5)
        total, parts = loss(p, t)
        assert set(parts) == {"l1", "l2", "tv"}
        assert total.item() == pytest.approx(2 * 0.5 + 0.5 * 0.25 + 0.0)
        assert total.shape == ()

    def test_grad_wrt_pred_and_weights_and_project(self):
        loss = L.build_loss("l1,ssim=0.5,color,laplacian")
        loss.weights.requires_grad_(True)
        p = torch.rand(2, 3, 16, 16, requires_grad=True)
        total, parts = loss(p, torch.rand(2, 3, 16, 16))
        total.backward()
        assert p.grad is not None and torch.isfinite(p.grad).all()
        expected = torch.stack([parts[n].detach() for n in loss.names])
        torch.testing.assert_close(loss.weights.grad, expected)
        with torch.no_grad():
            loss.weights[0] = -0.3
        loss.project_()
        assert loss.weights[0].item() == 0.0

    def test_to_spec(self):
        loss = L.build_loss("l1=2,ssim")
        assert loss.to_spec(objective="fidelity").terms == {"l1": 2.0, "ssim": 1.0}

    def test_exclusion_warning(self, caplog):
        with caplog.at_level(logging.WARNING, logger="hbl_edge.losses"):
            loss = L.build_loss("l1,vgg=0.1,lpips=0.2")
        assert loss.names == ["l1"]
        msgs = [r.getMessage() for r in caplog.records]
        assert msgs == [
            "loss term 'vgg' left out: it needs pretrained weights; enable it with --vgg-weights PATH",
            "loss term 'lpips' left out: it needs pretrained weights; enable it with --lpips-weights PATH",
        ]

    def test_nothing_left(self):
        with pytest.raises(LossSpecError, match="no usable loss terms in 'vgg=1'"):
            L.build_loss("vgg")

    def test_registry(self):
        assert list(L.LOSS_TERMS) == ["l1", "l2", "color", "ssim", "vgg", "lpips", "tv", "laplacian"]
        assert L.LOSS_TERMS["vgg"].weights_flag == "--vgg-weights PATH"
        assert L.LOSS_TERMS["l1"].weights_flag is None


# --------------------------------------------------------------------------------------------
# VGG / LPIPS with random weights
# --------------------------------------------------------------------------------------------


def _random_features_sd(cfg, prefix="features.") -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    sd, c_in, i = {}, 3, 0
    for v in cfg:
        if v == "M":
            i += 1
            continue
        sd[f"{prefix}{i}.weight"] = torch.randn(v, c_in, 3, 3, generator=g) * math.sqrt(2.0 / (9 * c_in))
        sd[f"{prefix}{i}.bias"] = torch.zeros(v)
        c_in, i = v, i + 2
    return sd


@pytest.fixture(scope="module")
def vgg_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("vgg")
    sd = _random_features_sd(L.VGG19_CFG)
    sd["classifier.0.bias"] = torch.zeros(3)  # extra keys are ignored
    save_file(sd, str(d / "vgg19.safetensors"))
    torch.save({k[len("features."):]: v for k, v in sd.items() if k.startswith("features.")}, d / "vgg19.pth")
    return d


@pytest.fixture(scope="module")
def lpips_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("lpips")
    sd = _random_features_sd(L.VGG16_CFG)
    g = torch.Generator().manual_seed(1)
    for k, c in enumerate(L.LPIPS_CHANNELS):
        sd[f"lin{k}.model.1.weight"] = torch.rand(1, c, 1, 1, generator=g)
    save_file(sd, str(d / "lpips.safetensors"))
    return d / "lpips.safetensors"


@pytest.fixture(scope="module")
def vgg_net(vgg_files):
    return L.load_vgg19_features(vgg_files / "vgg19.pth")


@pytest.fixture(scope="module")
def lpips_net(lpips_file):
    return L.load_lpips(lpips_file)


class TestVGG:
    def test_load_both_formats_equal(self, vgg_files):
        a = L.load_vgg19_features(vgg_files / "vgg19.safetensors")
        b = L.load_vgg19_features(vgg_files / "vgg19.pth")
        for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
            assert ka == kb and torch.equal(va, vb)
        assert not any(p.requires_grad for p in a.parameters())
        a.train()
        assert not a.training

    def test_loss_and_grad(self, vgg_files):
        loss = L.build_loss("l1,vgg=0.1", vgg_weights=vgg_files / "vgg19.safetensors")
        assert loss.names == ["l1", "vgg"]
        p = torch.rand(1, 3, 16, 16, requires_grad=True)
        total, parts = loss(p, torch.rand(1, 3, 16, 16))
        assert parts["vgg"].item() > 0
        total.backward()
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
        assert L.vgg_loss(p.detach(), p.detach(), loss.terms["vgg"].net).item() == 0.0

    def test_tap_logits(self, vgg_files):
        loss = L.build_loss("vgg", vgg_weights=vgg_files / "vgg19.pth", search_vgg_taps=True)
        logits = loss.vgg_tap_logits
        assert logits is not None and logits.shape == (5, 4) and logits.requires_grad
        total, _ = loss(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16))
        total.backward()
        assert torch.isfinite(logits.grad).all()
        # blocks 1-2 have two candidates: padded columns get no gradient
        assert logits.grad[:2, 2:].abs().sum() == 0 and logits.grad[2:].abs().sum() > 0
        with torch.no_grad():
            logits[0, 0] = 5.0
        assert loss.to_spec().vgg_taps == ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]

    def test_one_hot_logits_equal_fixed_taps(self, vgg_net):
        net = vgg_net
        x, y = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
        logits = torch.full((5, 4), -1e4)
        for b, block in enumerate(L.VGG_TAPS):
            logits[b, len(block) - 1] = 0.0
        torch.testing.assert_close(L.vgg_loss(x, y, net, tap_logits=logits), L.vgg_loss(x, y, net))

    def test_missing_file(self, tmp_path):
        with pytest.raises(LossSpecError) as e:
            L.build_loss("vgg", vgg_weights=tmp_path / "nope.pth")
        assert str(e.value) == f"vgg weight file not found: {tmp_path / 'nope.pth'}; pass an existing local file with --vgg-weights PATH"

    def test_wrong_keys(self, tmp_path):
        p = tmp_path / "bad.safetensors"
        save_file({"foo.weight": torch.zeros(1)}, str(p))
        with pytest.raises(LossSpecError, match=r"vgg weight file .* lacks 32 backbone keys \(features.0.weight, features.0.bias, features.2.weight, …\); the file should hold a torchvision vgg19 state dict"):
            L.load_vgg19_features(p)

    def test_wrong_shape_and_suffix(self, tmp_path):
        sd = _random_features_sd(L.VGG16_CFG)  # vgg16 is not vgg19
        p = tmp_path / "vgg16.pth"
        torch.save(sd, p)
        with pytest.raises(LossSpecError, match=r"lacks 12 backbone keys \(features.16.weight, "):
            L.load_vgg19_features(p)
        bad = _random_features_sd(L.VGG19_CFG)
        bad["features.0.weight"] = torch.zeros(32, 3, 3, 3)
        save_file(bad, str(tmp_path / "bad.safetensors"))
        with pytest.raises(LossSpecError, match=r"features.0.weight has shape \(32, 3, 3, 3\), expected \(64, 3, 3, 3\)"):
            L.load_vgg19_features(tmp_path / "bad.safetensors")
        q = tmp_path / "w.bin"
        q.write_bytes(b"x")
        with pytest.raises(LossSpecError, match=r"must end in .safetensors, .pth or .pt"):
            L.load_vgg19_features(q)
        r = tmp_path / "corrupt.pth"
        r.write_bytes(b"not a pickle")
        with pytest.raises(LossSpecError, match="cannot read vgg weight file"):
            L.load_vgg19_features(r)


class TestLPIPS:
    def test_load_and_distance(self, lpips_net):
        net = lpips_net
        x, y = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
        d = net(x, y)
        assert d.shape == (2,) and (d > 0).all()
        assert net(x, x).abs().max().item() == 0.0
        torch.testing.assert_close(net(x, y), net(y, x))

    def test_official_package_naming(self, lpips_file, lpips_net, tmp_path):
        from safetensors.torch import load_file

        sd = load_file(str(lpips_file))
        renamed = {}
        for k, v in sd.items():
            if k.startswith("features."):
                i = int(k.split(".")[1])
                renamed[f"net.slice{L._LPIPS_SLICE_OF[i]}.{k[len('features.'):]}"] = v
            else:
                renamed[k.replace("lin", "lins.", 1)] = v
        p = tmp_path / "lpips_full.pth"
        torch.save(renamed, p)
        x, y = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
        torch.testing.assert_close(L.load_lpips(p)(x, y), lpips_net(x, y))

    def test_hand_computed_against_formula(self, lpips_net):
        net = lpips_net
        x, y = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)

        def feats(z):
            h = ((2 * z - 1) - net.shift) / net.scale
            out = []
            for i, layer in enumerate(net.features):
                h = layer(h)
                if i in L.LPIPS_TAPS:
                    out.append(h / (h.norm(dim=1, keepdim=True) + 1e-10))
            return out

        ref = sum(
            (head.weight.view(1, -1, 1, 1) * (a - b) ** 2).sum(1).mean()
            for head, a, b in zip(net.heads, feats(x), feats(y))
        )
        assert net(x, y).item() == pytest.approx(ref.item(), rel=1e-5)

    def test_weighted_loss_with_lpips(self, lpips_file):
        loss = L.build_loss("lpips", lpips_weights=lpips_file)
        p = torch.rand(1, 3, 16, 16, requires_grad=True)
        total, _ = loss(p, torch.rand(1, 3, 16, 16))
        total.backward()
        assert torch.isfinite(p.grad).all()

    def test_missing_heads(self, tmp_path):
        sd = _random_features_sd(L.VGG16_CFG)
        p = tmp_path / "backbone_only.safetensors"
        save_file(sd, str(p))
        with pytest.raises(LossSpecError) as e:
            L.load_lpips(p)
        msg = str(e.value)
        assert "lacks 5 head keys (lin0.model.1.weight, lin1.model.1.weight, lin2.model.1.weight, …);" in msg
        assert "\n" not in msg

    def test_missing_both_in_one_message(self, tmp_path):
        p = tmp_path / "empty.safetensors"
        save_file({"x": torch.zeros(1)}, str(p))
        with pytest.raises(LossSpecError, match=r"lacks 26 backbone keys \(.*\) and 5 head keys \(lin0.model.1.weight, "):
            L.load_lpips(p)

    def test_missing_backbone(self, tmp_path):
        p = tmp_path / "heads_only.pth"
        torch.save({f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate(L.LPIPS_CHANNELS)}, p)
        with pytest.raises(LossSpecError, match=r"lpips weight file .* lacks 26 backbone keys \(features.0.weight, "):
            L.load_lpips(p)


# ------------------------------------------------------------------------------------------
# LPIPS with the AlexNet backbone (random weights: nothing is downloaded)
# ------------------------------------------------------------------------------------------
ALEX_CONVS = {0: (64, 3, 11), 3: (192, 64, 5), 6: (384, 192, 3), 8: (256, 384, 3), 10: (256, 256, 3)}


@pytest.fixture(scope="module")
def alex_file(tmp_path_factory):
    g = torch.Generator().manual_seed(3)
    sd = {}
    for i, (co, ci, k) in ALEX_CONVS.items():
        sd[f"features.{i}.weight"] = torch.randn(co, ci, k, k, generator=g) * math.sqrt(2.0 / (k * k * ci))
        sd[f"features.{i}.bias"] = 0.01 * torch.randn(co, generator=g)
    for k, c in enumerate(L.LPIPS_BACKBONES.get("alex").channels):
        sd[f"lin{k}.model.1.weight"] = torch.rand(1, c, 1, 1, generator=g)
    sd["classifier.1.weight"] = torch.zeros(2, 2)  # torchvision's classifier keys are ignored
    p = tmp_path_factory.mktemp("alex") / "lpips_alex.safetensors"
    save_file(sd, str(p))
    return p


class TestLPIPSAlex:
    def test_backbone_read_off_the_file(self, alex_file, lpips_file):
        assert L.load_lpips(alex_file).net == "alex"
        assert L.load_lpips(lpips_file).net == "vgg"
        assert L.load_lpips(alex_file, "alex").net == "alex"

    def test_against_formula_with_torchvision_layout(self, alex_file):
        """Recompute the distance with F.conv2d from the file's tensors and torchvision's
        alexnet strides/paddings/pools: a wrong layer, tap or stride changes the value."""
        import torch.nn.functional as F
        from safetensors.torch import load_file

        sd = load_file(str(alex_file))
        net = L.load_lpips(alex_file)
        x, y = torch.rand(2, 3, 64, 48), torch.rand(2, 3, 64, 48)
        shift = torch.tensor(L.LPIPS_SHIFT).view(1, 3, 1, 1)
        scale = torch.tensor(L.LPIPS_SCALE).view(1, 3, 1, 1)

        def taps(z):
            h = ((2 * z - 1) - shift) / scale
            conv = lambda h, i, s, p: F.relu(F.conv2d(h, sd[f"features.{i}.weight"], sd[f"features.{i}.bias"], s, p))  # noqa: E731
            r1 = conv(h, 0, 4, 2)
            r2 = conv(F.max_pool2d(r1, 3, 2), 3, 1, 2)
            r3 = conv(F.max_pool2d(r2, 3, 2), 6, 1, 1)
            r4 = conv(r3, 8, 1, 1)
            r5 = conv(r4, 10, 1, 1)
            return [t / (t.norm(dim=1, keepdim=True) + 1e-10) for t in (r1, r2, r3, r4, r5)]

        ref = sum(
            (sd[f"lin{k}.model.1.weight"].view(1, -1, 1, 1) * (a - b) ** 2).sum(1).mean(dim=(1, 2))
            for k, (a, b) in enumerate(zip(taps(x), taps(y)))
        )
        torch.testing.assert_close(net(x, y), ref, rtol=1e-5, atol=1e-7)
        assert net(x, x).abs().max().item() == 0.0

    def test_official_package_naming(self, alex_file, tmp_path):
        from safetensors.torch import load_file

        backbone = L.LPIPS_BACKBONES.get("alex")
        renamed = {}
        for k, v in load_file(str(alex_file)).items():
            if k.startswith("features."):
                i = int(k.split(".")[1])
                renamed[f"net.slice{backbone.slice_of(i)}.{k[len('features.'):]}"] = v
            elif k.startswith("lin"):
                renamed[k.replace("lin", "lins.", 1)] = v
        p = tmp_path / "lpips_alex_full.pth"
        torch.save(renamed, p)
        x, y = torch.rand(1, 3, 40, 40), torch.rand(1, 3, 40, 40)
        torch.testing.assert_close(L.load_lpips(p)(x, y), L.load_lpips(alex_file)(x, y))

    def test_wrong_backbone_named(self, alex_file, lpips_file):
        with pytest.raises(LossSpecError, match="holds the alex backbone, not vgg; pass --lpips-net alex"):
            L.load_lpips(alex_file, "vgg")
        with pytest.raises(LossSpecError, match="holds the vgg backbone, not alex"):
            L.load_lpips(lpips_file, "alex")
        with pytest.raises(LossSpecError, match="unknown LPIPS backbone 'squeeze'; known: alex, vgg"):
            L.load_lpips(alex_file, "squeeze")

    def test_missing_heads_message_names_alex_layout(self, alex_file, tmp_path):
        from safetensors.torch import load_file

        sd = {k: v for k, v in load_file(str(alex_file)).items() if k.startswith("features.")}
        p = tmp_path / "alex_backbone_only.safetensors"
        save_file(sd, str(p))
        with pytest.raises(LossSpecError, match=r"torchvision alexnet keys features.N.weight/bias \(N = 0,3,6,8,10"):
            L.load_lpips(p)

    def test_weighted_loss_and_gradient(self, alex_file):
        loss = L.build_loss("l1,lpips", lpips_weights=alex_file, lpips_net="alex")
        assert loss.terms["lpips"].net.net == "alex"
        p = torch.rand(1, 3, 32, 32, requires_grad=True)
        total, parts = loss(p, torch.rand(1, 3, 32, 32))
        total.backward()
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
        assert not any(q.requires_grad for q in loss.terms["lpips"].parameters())


class TestTargetFeatureCache:
    def test_same_target_computed_once_values_unchanged(self, vgg_net, alex_file):
        calls = {"n": 0}
        cache = L.TargetFeatureCache()
        t = torch.rand(1, 3, 8, 8)

        def compute():
            calls["n"] += 1
            return t.sum()

        assert cache.get(t, "k", compute) == cache.get(t, "k", compute) and calls["n"] == 1
        cache.get(t, "other", compute)  # another key: computed
        assert calls["n"] == 2
        t.add_(1.0)  # an in-place change invalidates
        cache.get(t, "k", compute)
        assert calls["n"] == 3
        u = t.clone()  # an equal tensor that is another object: computed
        cache.get(u, "k", compute)
        assert calls["n"] == 4
        g = torch.rand(1, 3, 8, 8, requires_grad=True)  # never cached
        cache.get(g, "k", compute)
        cache.get(g, "k", compute)
        assert calls["n"] == 6

    @pytest.mark.parametrize("term", ["vgg", "lpips"])
    def test_cached_loss_equals_uncached_and_keeps_pred_gradient(self, term, vgg_files, alex_file):
        loss = L.build_loss(term, vgg_weights=vgg_files / "vgg19.pth", lpips_weights=alex_file)
        module = loss.terms[term]
        p = torch.rand(2, 3, 48, 48, requires_grad=True)
        t = torch.rand(2, 3, 48, 48)
        first = module(p, t)
        (g1,) = torch.autograd.grad(first, p)
        second = module(p, t)  # from the cache
        (g2,) = torch.autograd.grad(second, p)
        assert torch.equal(first, second) and torch.equal(g1, g2)
        assert len(module.cache._entries) == 1
        fresh = L.build_loss(term, vgg_weights=vgg_files / "vgg19.pth", lpips_weights=alex_file).terms[term]
        torch.testing.assert_close(fresh(p, t), first)
        del t  # a dead target never matches a new tensor at the same address
        t2 = torch.rand(2, 3, 48, 48)
        torch.testing.assert_close(module(p, t2), fresh(p, t2))
