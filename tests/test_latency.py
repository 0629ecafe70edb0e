"""Latency term: table io/validation, LAT(α), objectives, devices, estimate, tiny real profiles."""

from __future__ import annotations

import json
import math

import pytest
import torch

from hbl_edge.errors import ConfigError, HblError
from hbl_edge.genotype import load_genotype
from hbl_edge.ops import get_space
from hbl_edge.runtime.runners import BackendError
from hbl_edge.search import devices
from hbl_edge.search.latency import (
    ESTIMATE_LABEL, FORMAT, LatencyModel, LatencyTable, LatencyTableError, additive, hinge, check_table, edge_positions,
    load_latency_model, multiplicative, random_genotype,
)
from hbl_edge.search.profiler import (
    estimate_table, fit_calibration, measure_network, parse_resolution, profile,
)

TINY = dict(resolution=(18, 14), channels=(4, 8), units=1)


def synthetic_table(space: str = "paper", channels=(16, 32), resolution=(64, 48), units: int = 7, seed: int = 0) -> LatencyTable:
    """A table with distinct made-up times at every position (no measuring)."""
    sp = get_space(space)
    g = torch.Generator().manual_seed(seed)
    entries, seen = [], set()
    for group, positions in edge_positions(channels, resolution).items():
        for pos in positions:
            for op in (sp.hnu if group == "hnu" else sp.fcm):
                key = (op, *pos.key)
                if key in seen or (op == "skip_connect" and pos.c_in != pos.c_out):
                    continue
                seen.add(key)
                entries.append({"op": op, "c_in": pos.c_in, "c_out": pos.c_out, "height": pos.height,
                                "width": pos.width, "variant": pos.variant, "ms": float(torch.rand(1, generator=g)) + 0.1})
    fixed = [{"name": "io", "per": "network", "count": 1, "ms": 0.5},
             {"name": "hnu_merge", "per": "unit", "count": 2, "ms": 0.25}]
    return LatencyTable(
        device={"name": "test cpu"}, backend={"name": "onnxruntime", "versions": {}}, resolution=resolution,
        space={"name": space, "fcm": list(sp.fcm), "hnu": list(sp.hnu)}, channels=channels, entries=entries,
        fixed=fixed, units=units, date="2024-01-01",
    )


def random_alpha(model: LatencyModel, units: int = 7, seed: int = 0, grad: bool = True):
    g = torch.Generator().manual_seed(seed)
    nf, nh = len(model.fcm), len(model.hnu)
    return {
        "alpha_encoder": torch.randn(9, nf, generator=g, dtype=torch.float64).requires_grad_(grad),
        "alpha_decoder": torch.randn(9, nf, generator=g, dtype=torch.float64).requires_grad_(grad),
        "alpha_hnu": torch.randn(units, 8, nh, generator=g, dtype=torch.float64).requires_grad_(grad),
    }


# -- table io ---------------------------------------------------------------------------------
def test_table_round_trip(tmp_path):
    t = synthetic_table()
    t.calibration = {"scale": 1.1, "offset_ms": 2.0}
    path = t.save(tmp_path / "t.json")
    back = LatencyTable.load(path)
    assert back.to_dict() == t.to_dict()
    data = json.loads(path.read_text())
    assert data["format"] == FORMAT and data["estimate"] is False and data["padded"] == [64, 48]
    g = random_genotype(seed=3)
    assert LatencyModel(back).predict(g) == pytest.approx(LatencyModel(t).predict(g))


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.update(format="hbl-latency/0"), "unknown latency table format 'hbl-latency/0'"),
        (lambda d: d.pop("entries"), "missing key 'entries'"),
        (lambda d: d.update(resolution=[64]), "'resolution' must be two positive integers"),
        (lambda d: d["entries"][0].update(ms=-1.0), "has ms -1.0"),
        (lambda d: d["entries"][0].pop("variant"), "entries[0] misses variant"),
        (lambda d: d["entries"][0].update(variant="fused"), "has variant 'fused'"),
        (lambda d: d["fixed"][0].update(per="frame"), "has per 'frame'"),
        (lambda d: d.update(estimate="no"), "'estimate' must be true or false"),
        (lambda d: d.update(calibration={"scale": "x"}), "'calibration' must be null"),
    ],
)
def test_table_validation(tmp_path, mutate, message):
    d = synthetic_table().to_dict()
    mutate(d)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(d))
    with pytest.raises(LatencyTableError) as e:
        LatencyTable.load(path)
    assert message in str(e.value) and "\n" not in str(e.value) and str(path) in str(e.value)
    assert isinstance(e.value, HblError)


def test_table_load_errors(tmp_path):
    with pytest.raises(LatencyTableError, match="does not exist"):
        LatencyTable.load(tmp_path / "nope.json")
    (tmp_path / "x.json").write_text("{oops")
    with pytest.raises(LatencyTableError, match="malformed JSON at line 1"):
        LatencyTable.load(tmp_path / "x.json")


def test_check_table_mismatch():
    t = synthetic_table()
    check_table(t, space="paper", channels=(16, 32), resolution=(64, 48))
    with pytest.raises(LatencyTableError, match="made at 64x48, the budget is stated at 1280x720"):
        check_table(t, resolution=(1280, 720))
    with pytest.raises(LatencyTableError, match="channels \\[16, 32\\]"):
        check_table(t, channels=(8, 16))


# -- LAT(α) -----------------------------------------------------------------------------------
def test_expected_differentiable_and_equals_predict_for_one_hot():
    model = LatencyModel(synthetic_table())
    alpha = random_alpha(model)
    lat = model.expected(alpha)
    assert lat.dim() == 0 and lat.requires_grad
    lat.backward()
    for a in alpha.values():
        assert a.grad is not None and torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0
    # gradient check in float64
    assert torch.autograd.gradcheck(
        lambda e, d, h: model.expected({"alpha_encoder": e, "alpha_decoder": d, "alpha_hnu": h}),
        tuple(random_alpha(model, units=2, seed=1).values()),
    )
    for seed in range(3):
        g = random_genotype(seed=seed)
        hot = model.one_hot_alpha(g)
        assert float(model.expected(hot)) == pytest.approx(model.predict(g), rel=1e-9)


def test_uniform_alpha_gives_mean_per_edge():
    t = synthetic_table(units=3)
    model = LatencyModel(t)
    alpha = {k: torch.zeros_like(v) for k, v in random_alpha(model, units=3, grad=False).items()}
    pos = edge_positions(t.channels, t.resolution)
    sp = get_space("paper")
    want = t.fixed_ms(3)
    for group, ops, n in (("encoder", sp.fcm, 1), ("decoder", sp.fcm, 1), ("hnu", sp.hnu, 3)):
        for p in pos[group]:
            want += n * sum(t.time(o, p) for o in ops) / len(ops)
    assert float(model.expected(alpha)) == pytest.approx(want, rel=1e-12)
    assert t.fixed_ms(3) == pytest.approx(0.5 + 3 * 2 * 0.25)


def test_calibration_applied_and_shape_errors():
    t = synthetic_table()
    raw = LatencyModel(t).predict("conv3x3")
    t.calibration = {"scale": 2.0, "offset_ms": 1.5}
    model = LatencyModel(t)
    assert model.predict("conv3x3") == pytest.approx(2.0 * raw + 1.5)
    assert float(model.expected(model.one_hot_alpha("conv3x3"))) == pytest.approx(2.0 * raw + 1.5)
    bad = random_alpha(model)
    bad["alpha_encoder"] = torch.zeros(9, 3)
    with pytest.raises(ValueError, match="alpha_encoder has shape"):
        model.expected(bad)
    xs = [float(i) for i in range(1, 11)]
    fit = fit_calibration(xs, [2 * x + 1 for x in xs])
    assert fit["kind"] == "linear" and fit["scale"] == pytest.approx(2.0) and fit["offset_ms"] == pytest.approx(1.0)
    fit = fit_calibration([1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 8.0])  # too few points for a line
    assert fit["kind"] == "ratio" and fit["scale"] == pytest.approx(2.0) and fit["offset_ms"] == 0.0
    assert fit_calibration([1.0], [3.0]) == pytest.approx({"scale": 1.0, "offset_ms": 2.0, "kind": "offset", "n": 1, "rmse_ms": 0.0})


def test_predict_refuses_foreign_genotype():
    model = LatencyModel(synthetic_table(channels=(16, 32)))
    g = random_genotype(channels=(4, 8), units=1)
    with pytest.raises(LatencyTableError, match="channels \\[4, 8\\]"):
        model.predict(g)


def test_objectives_hand_computed():
    loss = torch.tensor(0.5, requires_grad=True)
    lat = torch.tensor(40.0, requires_grad=True)
    a = additive(loss, lat, budget_ms=20.0, mu=0.1)
    assert a.requires_grad
    assert a.item() == pytest.approx(0.5 + 0.1 * 2.0)
    m = multiplicative(loss, lat, budget_ms=20.0, beta=0.5)
    assert m.item() == pytest.approx(0.5 * math.sqrt(2.0))
    m.backward()
    assert float(lat.grad) == pytest.approx(0.5 * 0.5 * (2.0 ** -0.5) / 20.0)
    with pytest.raises(ConfigError, match="budget must be a positive number"):
        additive(loss, lat, budget_ms=0, mu=1.0)


def test_hinge_enforces_the_budget_only_above_it():
    loss = torch.tensor(0.5)
    over = torch.tensor(40.0, requires_grad=True)
    h = hinge(loss, over, budget_ms=20.0, beta=2.0)
    assert h.item() == pytest.approx(0.5 * 4.0)
    h.backward()
    assert float(over.grad) == pytest.approx(0.5 * 2.0 * 2.0 / 20.0)
    under = torch.tensor(10.0, requires_grad=True)
    h = hinge(loss, under, budget_ms=20.0, beta=2.0)
    assert h.item() == pytest.approx(0.5)
    h.backward()
    assert float(under.grad) == 0.0  # under the budget only quality counts


# -- devices and estimates --------------------------------------------------------------------
@pytest.mark.parametrize(
    "model, compatible, want",
    [
        ("NVIDIA Jetson Orin Nano Developer Kit", "", "jetson-orin-nano"),
        ("NVIDIA Jetson AGX Orin Developer Kit", "", "jetson-agx-orin"),
        ("NVIDIA Jetson Xavier NX Developer Kit", "", "jetson-xavier-nx"),
        ("NVIDIA Orin NX Developer Kit", "", "jetson-orin-nx"),
        ("some carrier", "nvidia,p3768-0000+p3767-0000\0nvidia,p3767-0000\0nvidia,tegra234\0", "jetson-orin-nx"),
        ("QEMU Virt Machine", "linux,dummy-virt\0", None),
    ],
)
def test_detect_jetson(tmp_path, model, compatible, want):
    (tmp_path / "model").write_bytes(model.encode() + b"\0")
    (tmp_path / "compatible").write_bytes(compatible.encode())
    assert devices.detect_jetson(tmp_path) == want
    if want:
        assert devices.resolve_device("jetson", device_tree=tmp_path).name == want


def test_jetson_elsewhere_needs_a_table(tmp_path):
    with pytest.raises(ConfigError) as e:
        devices.resolve_device("jetson", device_tree=tmp_path / "absent")
    msg = str(e.value)
    assert "--latency-table" in msg and "\n" not in msg
    assert devices.resolve_device("jetson", latency_table="t.json", device_tree=tmp_path) is None
    with pytest.raises(ConfigError, match="unknown device 'tpu'"):
        devices.resolve_device("tpu")
    assert set(devices.device_names()) >= {"cpu", "cuda", "jetson-orin-nano", "jetson-orin-nx", "jetson-agx-orin",
                                           "jetson-xavier-nx", "jetson"}
    for spec in devices.DEVICES.values():
        assert spec.fp16_tflops > 0 and spec.bandwidth_gbs > 0 and spec.launch_us > 0 and spec.source


def test_load_latency_model_uses_table_or_estimate(tmp_path):
    path = synthetic_table(resolution=(64, 48)).save(tmp_path / "t.json")
    m = load_latency_model("jetson", (64, 48), latency_table=path, device_tree=tmp_path)
    assert not m.estimate
    with pytest.raises(LatencyTableError, match="made at 64x48"):
        load_latency_model("jetson", (128, 96), latency_table=path, device_tree=tmp_path)
    est = load_latency_model("jetson-orin-nano", (64, 48))
    assert est.estimate and est.label.startswith(ESTIMATE_LABEL)


def test_estimate_table_labelled_and_ordered(tmp_path):
    t = estimate_table("jetson-orin-nano", (128, 96), out=tmp_path / "e.json")
    d = json.loads((tmp_path / "e.json").read_text())
    assert d["estimate"] is True and "ESTIMATE" in d["label"] and d["device"]["preset"] == "jetson-orin-nano"
    by = {(e["op"], e["c_in"], e["c_out"], e["height"], e["variant"]): e for e in t.entries}
    assert by[("conv_5x5", 16, 16, 96, "plain")]["flops"] == 2 * 16 * 16 * 25 * 96 * 128
    assert by[("conv_5x5", 16, 16, 96, "plain")]["ms"] > by[("conv_1x1", 16, 16, 96, "plain")]["ms"]
    assert by[("denseblocks_3x3", 32, 32, 24, "bn_folded")]["kernels"] >= 3
    fast = LatencyModel(estimate_table("jetson-agx-orin", (128, 96))).predict("hbl-lol-2022")
    slow = LatencyModel(t).predict("hbl-lol-2022")
    assert 0 < fast < slow


# -- real measurements (tiny) -----------------------------------------------------------------
def test_tensorrt_unavailable_error():
    pytest.importorskip("onnxruntime")
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    with pytest.raises(BackendError, match="^TensorRT is not installed here; ") as e:
        profile("cuda", "tensorrt", (16, 16))
    assert "\n" not in str(e.value)


def test_profile_option_errors():
    with pytest.raises(ConfigError, match="unknown profiling backend 'tvm'"):
        profile("cpu", "tvm", (16, 16))
    with pytest.raises(ConfigError, match="not WxH"):
        parse_resolution("big")
    with pytest.raises(ConfigError, match="float32"):
        profile("cpu", "torch", (16, 16), dtype="float16")
    with pytest.raises(ConfigError, match="measures the machine it runs on"):
        profile("jetson-orin-nano", "torch", (16, 16), device_tree="/nonexistent")


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_tiny_profile_and_measure(tmp_path, backend):
    if backend == "onnxruntime":
        pytest.importorskip("onnxruntime")
    out = tmp_path / "table.json"
    table = profile("cpu", backend, TINY["resolution"], channels=TINY["channels"], units=TINY["units"],
                    out=out, repeats=3, warmup=1, threads=1)
    back = LatencyTable.load(out)
    assert back.to_dict() == table.to_dict()  # what profile returns is what it wrote
    assert back.estimate is False and back.backend["name"] == backend and back.device["cpu"]
    assert back.resolution == (18, 14) and back.dtype == "float32" and back.date
    sp = get_space("paper")
    # dedupe: C1 full-res positions are shared by encoder and decoder, C2 half-res likewise
    assert len(back.entries) == 4 * len(sp.fcm) + len(sp.hnu)
    assert {f["name"] for f in back.fixed} >= {"io", "down1", "down2", "up1", "up2", "hnu_merge", "hnu_relu"}
    assert all(e["ms"] >= 0 for e in back.entries)
    assert all(e.get("folded") for e in back.entries if e["variant"] == "bn_folded")
    g = random_genotype(channels=TINY["channels"], units=TINY["units"], seed=0)
    model = LatencyModel(back)
    pred = model.predict(g)
    meas = measure_network(g, backend, TINY["resolution"], repeats=3, warmup=1, threads=1)
    assert pred > 0 and meas > 0 and math.isfinite(meas)
    alpha = random_alpha(model, units=1)
    model.expected(alpha).backward()
    assert alpha["alpha_hnu"].grad is not None


def test_profile_calibrate_tiny():
    table = profile("cpu", "torch", TINY["resolution"], channels=TINY["channels"], units=TINY["units"],
                    repeats=2, warmup=1, threads=1, calibrate=3, calibration_repeats=2)
    cal = table.calibration
    assert cal["n"] == 3 and len(cal["rows"]) == 3 and cal["scale"] > 0
    g = load_genotype(random_genotype(channels=TINY["channels"], units=1, seed=99))
    model = LatencyModel(table)
    assert model.predict(g) == pytest.approx(cal["scale"] * model.predict_raw(g) + cal["offset_ms"])
