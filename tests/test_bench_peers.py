"""bench/peers.py: the peers' re-implemented inference architectures and the shared timing path."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import peers  # noqa: E402


@pytest.mark.parametrize("name,params", [("sci", 258), ("zerodce++", 10_561), ("aodnet", 1_761), ("physicalnn", 2_027)])
def test_parameter_counts_are_the_published_ones(name, params):
    assert peers.count_parameters(peers.peer_module(name)) == params


def test_sci_is_the_division_by_its_illumination():
    m = peers.peer_module("sci")
    x = torch.rand(1, 3, 9, 11) * 0.5
    with torch.no_grad():
        f = torch.relu(m.inc(x))
        f = f + m.blocks[0](f)
        illumination = torch.clamp(torch.sigmoid(m.outc(f)) + x, 1e-4, 1.0)
        torch.testing.assert_close(m(x), torch.clamp(x / illumination, 0, 1))


def test_zerodce_curve_iterations():
    m = peers.peer_module("zerodce++")
    with torch.no_grad():
        for conv in (m.e7.depthwise, m.e7.pointwise):
            conv.weight.zero_()
            conv.bias.zero_()
        m.e7.pointwise.bias.fill_(10.0)  # tanh → 1: r = 1 everywhere
        x = torch.full((1, 3, 24, 36), 0.2)
        y = x.clone()
        for _ in range(8):
            y = y + (y * y - y)  # LE(x) = x + r·(x² − x), r = 1: x ← x²
        torch.testing.assert_close(m(x), y.clamp(0, 1))


def test_export_and_time_through_the_ort_runner(tmp_path):
    paths = {}
    for name in ("sci", "physicalnn"):
        module = peers.peer_module(name)
        paths[name] = peers.export_peer(module, tmp_path / f"{name}.onnx")
        from hbl_edge.runtime.runners import create_runner

        x = np.random.default_rng(0).random((1, 3, 23, 31), dtype=np.float32)  # not the export size
        with torch.no_grad():
            ref = module(torch.from_numpy(x)).numpy()
        got = create_runner("ort", paths[name], threads=1).run(x)
        np.testing.assert_allclose(got, ref, atol=1e-5)
    res = peers.time_onnx(paths, resolutions=((32, 24),), threads=1, warmup=1, repeats=3)
    for name in paths:
        st = res[name]["32x24"]
        assert st["n"] == 3 and st["min_ms"] <= st["median_ms"] and st["iqr_ms"] >= 0


def test_our_genotype_is_exported_through_the_package_path(tmp_path):
    path, info = peers.export_ours("edge-lol-s8", tmp_path)
    assert path.name == "model.onnx" and info["kind"] == "genotype (random weights)"
    assert info["genotype"].startswith("edge s8 retinex")


def test_deployed_timing_is_the_searchs_method_per_model_and_resolution(tmp_path, monkeypatch):
    """time_onnx_deployed hands every model to deployed.measure_onnx (one session at a time) with
    the runner settings, and reports each model's runs; then once for real through ONNX Runtime."""
    import hbl_edge.search.deployed as deployed

    paths = {n: peers.export_peer(peers.peer_module(n), tmp_path / f"{n}.onnx") for n in ("sci", "zerodce++")}
    calls = []

    def fake(ps, resolution, **kw):
        calls.append((list(ps), tuple(resolution), kw["threads"], kw["rounds"]))
        return [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]

    monkeypatch.setattr(deployed, "measure_onnx", fake)
    res = peers.time_onnx_deployed(paths, resolutions=((32, 24), (16, 12)), threads=1, warmup=1, repeats=3)
    assert calls == [([paths["sci"], paths["zerodce++"]], (32, 24), 1, 2), ([paths["sci"], paths["zerodce++"]], (16, 12), 1, 2)]
    assert res["sci"]["32x24"]["median_ms"] == 2.0 and res["zerodce++"]["16x12"]["median_ms"] == 5.0
    monkeypatch.undo()
    real = peers.time_onnx_deployed(paths, resolutions=((32, 24),), threads=1, warmup=1, repeats=3)
    assert all(real[n]["32x24"]["n"] == 6 for n in paths)  # 3 consecutive runs × 2 rounds


def test_an_onnx_file_exported_elsewhere_is_timed_as_it_is(tmp_path):
    """--onnx NAME=PATH: the file's own graph beside the peers (an A/B of export changes)."""
    path, _ = peers.export_ours("edge-lol-s8", tmp_path / "ours")
    files = peers.parse_onnx_specs([f"old={path}"])
    assert files == {"old": path}
    info = peers.onnx_file_info(path)
    assert info["kind"] == "ONNX file" and info["parameters"] > 0 and len(info["sha256"]) == 64
    res = peers.time_onnx(files, resolutions=((32, 24),), threads=1, warmup=1, repeats=2)
    assert res["old"]["32x24"]["n"] == 2
    with pytest.raises(SystemExit, match="NAME=PATH"):
        peers.parse_onnx_specs([str(path)])
    with pytest.raises(SystemExit, match="no file"):
        peers.parse_onnx_specs([f"old={tmp_path / 'missing.onnx'}"])
