"""INT8 export (hbl_edge.export.quantize): Q/DQ form TensorRT accepts, calibration, parity and quality."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import onnx
import pytest
import torch

from hbl_edge.bundle import save_bundle
from hbl_edge.export import ExportError, export_onnx
from hbl_edge.export.onnx_export import onnx_runner, parity_images
from hbl_edge.export.quantize import calibration_batches, quantize_int8, record_int8
from hbl_edge.genotype import Genotype
from hbl_edge.network import Network

TINY = Genotype(encoder=["conv_3x3"] * 9, decoder=["conv_3x3"] * 9,
                hnu=[["conv_1x1", "resconv_3x3", "skip_connect", "denseblocks_1x1"] * 2], channels=(4, 8), units=1)


@pytest.fixture(scope="module")
def int8(tmp_path_factory):
    root = tmp_path_factory.mktemp("int8")
    torch.manual_seed(0)
    bundle = save_bundle(root / "run", Network(TINY).eval(), task="lowlight", loss={"l1": 1.0})
    result = export_onnx(bundle, root / "run" / "export", images=parity_images(0, [(1, 5, 7)]))
    report = quantize_int8(result.onnx_path, task="lowlight", samples=4, crop=32, val_limit=3)
    return result, report


def test_calibration_batches_are_task_crops():
    batches = calibration_batches("lowlight", samples=3, crop=24, seed=1)
    assert len(batches) == 3 and all(b.shape == (1, 3, 24, 24) and b.dtype == np.float32 for b in batches)
    assert all(0.0 <= b.min() and b.max() <= 1.0 for b in batches)
    again = calibration_batches("lowlight", samples=3, crop=24, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))


def test_int8_graph_is_explicit_symmetric_qdq(int8):
    _, report = int8
    model = onnx.load(str(report.path))
    onnx.checker.check_model(model, full_check=True)
    ops = [n.op_type for n in model.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert not any(op.startswith("QLinear") or op == "ConvInteger" for op in ops)  # QDQ, not QOperator
    inits = {t.name: t for t in model.graph.initializer}
    zero_points = [onnx.numpy_helper.to_array(inits[n.input[2]]) for n in model.graph.node
                   if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2 and n.input[2] in inits]
    assert zero_points and all(zp.dtype == np.int8 and not zp.any() for zp in zero_points)  # symmetric int8
    # per-channel weights (a scale vector), biases left float (TensorRT rejects int32 DequantizeLinear)
    dq_inputs = [inits[n.input[0]] for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert any(len(inits[n.input[1]].dims) == 1 and inits[n.input[1]].dims[0] > 1
               for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[1] in inits)
    assert all(t.data_type == onnx.TensorProto.INT8 for t in dq_inputs)
    props = {p.key: p.value for p in model.metadata_props}
    assert props["hbl_edge.precision"] == "int8"


def test_int8_parity_and_quality(int8):
    result, report = int8
    assert report.parity["max_abs"] < 0.05 and report.parity["mean_abs"] < 5e-3
    assert report.quality["images"] == 3 and report.quality["psnr_min_db"] > 35
    # a dark odd-sized input, like the calibration data (uniform bright noise is outside the
    # calibrated ranges and saturates: that is what calibrating on the task's data means)
    x = np.random.default_rng(0).random((1, 3, 21, 17), dtype=np.float32) * 0.2
    out = onnx_runner(report.path)(x)
    assert out.shape == x.shape and 0 <= out.min() and out.max() <= 1
    assert np.abs(out - onnx_runner(result.onnx_path)(x)).max() < 0.05
    record_int8(result.meta_path, report)
    meta = json.loads(result.meta_path.read_text())
    assert meta["artifacts"]["model.int8.onnx"]["sha256"] == report.sha256
    assert meta["int8"]["quality_vs_fp32"]["psnr_mean_db"] == report.quality["psnr_mean_db"]
    assert meta["int8"]["settings"]["format"] == "QDQ"


def test_int8_errors(tmp_path):
    with pytest.raises(ExportError, match="does not exist"):
        quantize_int8(tmp_path / "missing.onnx")


@pytest.mark.skipif(importlib.util.find_spec("tensorrt_rtx") is None, reason="tensorrt_rtx is not installed")
def test_tensorrt_rtx_builds_the_int8_model(int8, tmp_path):
    from hbl_edge.export import build_engine

    result, _ = int8
    r = build_engine(result.onnx_path, tmp_path, kind="tensorrt-rtx", int8=True,
                     shapes=["min=1x1,opt=32x32,max=64x64"], workspace_mb=64)
    assert r.precision == "int8" and r.onnx_path.name == "model.int8.onnx" and r.path.stat().st_size > 0
    lonely = tmp_path / "alone" / "model.onnx"
    lonely.parent.mkdir()
    lonely.write_bytes(result.onnx_path.read_bytes())
    with pytest.raises(ExportError, match="--int8"):
        build_engine(lonely, tmp_path, kind="tensorrt-rtx", int8=True)
