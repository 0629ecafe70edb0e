"""Latency term: table io/validation, LAT(α), objectives, devices, estimate, tiny real profiles."""

from __future__ import annotations

import json
import math
import statistics

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
from latency_fixtures import random_alpha, synthetic_table

TINY = dict(resolution=(18, 14), channels=(4, 8), units=1)


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
    fit = fit_calibration([1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 8.0])  # a line through 0 is the simpler fit
    assert fit["kind"] == "ratio" and fit["scale"] == pytest.approx(2.0) and fit["offset_ms"] == 0.0
    assert fit_calibration([1.0], [3.0]) == pytest.approx({"scale": 1.0, "offset_ms": 2.0, "kind": "offset", "n": 1, "rmse_ms": 0.0})


def test_level_scales_in_predict_and_expected():
    """Per-level scales: predict = Σ s_l·S_l + s_fixed·fixed + b, and expected(one-hot α) equals it."""
    t = synthetic_table(units=3)
    g = random_genotype(units=3, seed=4)
    terms = LatencyModel(t).terms(g)
    assert sum(terms.values()) == pytest.approx(LatencyModel(t).predict_raw(g))
    assert terms["fixed"] == pytest.approx(0.5 + 3 * 2 * 0.25)
    # the level sums are the table's times at the edges of each level, looked up by hand
    pos = edge_positions(t.channels, t.resolution)
    full = sum(t.time(op, pos["encoder"][i]) for i, op in enumerate(g.encoder) if i <= 4)
    full += sum(t.time(op, pos["decoder"][i]) for i, op in enumerate(g.decoder) if i >= 4)
    hnu = sum(t.time(op, pos["hnu"][i]) for u in g.hnu for i, op in enumerate(u))
    assert terms["full"] == pytest.approx(full) and terms["hnu"] == pytest.approx(hnu)
    t.calibration = {"kind": "levels", "scale": 1.0, "offset_ms": 3.0,
                     "scales": {"full": 0.5, "half": 2.0, "hnu": 1.5, "fixed": 1.0}}
    model = LatencyModel(t)
    want = 0.5 * terms["full"] + 2.0 * terms["half"] + 1.5 * terms["hnu"] + terms["fixed"] + 3.0
    assert model.predict(g) == pytest.approx(want, rel=1e-12)
    assert float(model.expected(model.one_hot_alpha(g))) == pytest.approx(want, rel=1e-9)
    assert torch.autograd.gradcheck(
        lambda e, d, h: model.expected({"alpha_encoder": e, "alpha_decoder": d, "alpha_hnu": h}),
        tuple(random_alpha(model, units=2, seed=1).values()),
    )
    # the scales do weight the gradient: d LAT / d α of a half-resolution edge doubles with s_half 1 → 2
    t1 = synthetic_table(units=3)
    t1.calibration = {"kind": "levels", "scale": 1.0, "offset_ms": 3.0, "scales": {"full": 0.5, "half": 1.0, "hnu": 1.5, "fixed": 1.0}}
    a1, a2 = random_alpha(model, units=3, seed=2), random_alpha(model, units=3, seed=2)
    LatencyModel(t1).expected(a1).backward()
    model.expected(a2).backward()
    assert torch.allclose(a2["alpha_encoder"].grad[5:], 2.0 * a1["alpha_encoder"].grad[5:])
    assert torch.allclose(a2["alpha_encoder"].grad[:5], a1["alpha_encoder"].grad[:5])
    bad = t.to_dict()
    bad["calibration"]["scales"] = {"quarter": 1.0}
    with pytest.raises(LatencyTableError, match="calibration.scales"):
        LatencyTable.from_dict(bad)


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
                    out=out, repeats=3, warmup=1, rounds=1, retries=0, threads=1, chain=3)
    back = LatencyTable.load(out)
    assert back.to_dict() == table.to_dict()  # what profile returns is what it wrote
    assert back.estimate is False and back.backend["name"] == backend and back.device["cpu"]
    assert back.resolution == (18, 14) and back.dtype == "float32" and back.date
    assert back.settings["threads"] == 1 and back.settings["chain"] == 3 and back.settings["load"]["before"]["loadavg"]
    sp = get_space("paper")
    # dedupe: C1 full-res positions are shared by encoder and decoder, C2 half-res likewise
    assert len(back.entries) == 4 * len(sp.fcm) + len(sp.hnu)
    assert {f["name"] for f in back.fixed} == {"io", "down1", "down2", "up1", "up2", "pair_add_full", "pair_add_half",
                                               "hnu_merge"}
    for e in back.entries:
        if e["c_in"] == e["c_out"]:  # in context: the marginal block of a chain of 3
            t1, t3 = e["chain_ms"]  # rounded to 1e-6 ms when stored
            assert e["method"] == "chain3" and e["ms"] == pytest.approx(max((t3 - t1) / 2, 0.0), abs=1e-6) and e["runs"] == 6
        else:  # head / tail alone, less the empty call
            assert e["method"] == "alone"
            assert e["ms"] == pytest.approx(max(e["raw_ms"] - back.settings["call_overhead_ms"], 0.0), abs=1e-6)
    assert all(e.get("folded") for e in back.entries if e["variant"] == "bn_folded")
    g = random_genotype(channels=TINY["channels"], units=TINY["units"], seed=0)
    model = LatencyModel(back)
    assert model.predict(g) == pytest.approx(sum(model.terms(g).values()))  # no calibration: the plain sum
    runs: list[float] = []
    meas = measure_network(g, backend, TINY["resolution"], repeats=3, warmup=1, rounds=2, threads=1, samples=runs)
    assert len(runs) == 6 and meas == pytest.approx(statistics.median(runs))
    alpha = random_alpha(model, units=1)
    model.expected(alpha).backward()
    assert alpha["alpha_hnu"].grad is not None and float(alpha["alpha_hnu"].grad.abs().sum()) > 0


def test_profile_calibrate_tiny(tmp_path):
    table = profile("cpu", "torch", TINY["resolution"], channels=TINY["channels"], units=TINY["units"],
                    repeats=2, warmup=1, rounds=1, retries=0, threads=1, calibrate=4, calibration_repeats=2)
    cal = table.calibration
    assert cal["n"] == 4 and len(cal["rows"]) == 4 and cal["kind"] in ("offset", "ratio", "linear")
    assert all(v > 0 for v in cal["scales"].values())
    path = table.save(tmp_path / "t.json")
    back = LatencyTable.load(path)
    assert back.calibration == json.loads(json.dumps(cal))  # the calibration round-trips with the table
    model = LatencyModel(back)
    g = load_genotype(random_genotype(channels=TINY["channels"], units=1, seed=99))
    terms = model.terms(g)
    assert model.predict(g) == pytest.approx(sum(cal["scales"][k] * v for k, v in terms.items()) + cal["offset_ms"])
    for row in cal["rows"]:  # each row's prediction is the stored model applied to its terms
        assert row["predicted_ms"] == pytest.approx(
            sum(cal["scales"][k] * v for k, v in row["terms_ms"].items()) + cal["offset_ms"])


def test_genotype_latency_cli_equals_predict(tmp_path):
    from typer.testing import CliRunner

    from hbl_edge.cli import app

    t = synthetic_table(units=7)
    t.calibration = {"kind": "levels", "scale": 1.0, "offset_ms": 2.0,
                     "scales": {"full": 0.9, "half": 1.2, "hnu": 0.7, "fixed": 1.0}}
    t.settings = {"threads": 2, "allow_spinning": None}
    path = t.save(tmp_path / "t.json")
    g = random_genotype(seed=11)
    gpath = g.save(tmp_path / "genotype.json")
    res = CliRunner().invoke(app, ["genotype", "latency", str(gpath), "--latency-table", str(path)])
    assert res.exit_code == 0, res.output
    got = json.loads(res.output)
    assert got["predicted_ms"] == LatencyModel(path).predict(g)
    assert got["resolution"] == [64, 48] and got["backend"] == "onnxruntime" and got["threads"] == 2
    assert got["allow_spinning"] == "default" and got["calibration"] == "levels"
    res = CliRunner().invoke(app, ["genotype", "latency", str(gpath), "--latency-table", str(tmp_path / "none.json")])
    assert res.exit_code == 2 and "does not exist" in res.output
