"""``hbl-edge export``, ``bench`` and ``enhance --backend`` on a tiny bundle."""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from hbl_edge.bundle import save_bundle
from hbl_edge.cli import app
from hbl_edge.genotype import Genotype
from hbl_edge.network import Network

runner = CliRunner()
TINY = Genotype(encoder=["conv_3x3"] * 9, decoder=["conv_3x3"] * 9, hnu=[["conv_1x1"] * 8], channels=(4, 8), units=1)
needs_rtx = pytest.mark.skipif(importlib.util.find_spec("tensorrt_rtx") is None, reason="tensorrt_rtx is not installed")


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def error_lines(result):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    return [line for line in result.output.splitlines() if line.startswith("error:")]


def assert_user_error(result, *needles):
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert error_lines(result) and len(lines) == 1, result.output
    for n in needles:
        assert n in result.output, (n, result.output)


def make_bundle(path, seed=0):
    torch.manual_seed(seed)
    return save_bundle(path, Network(TINY).eval(), task="lowlight", loss={"l1": 1.0})


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("cli-export") / "run")


def test_export_writes_onnx_fp16_int8_and_record(bundle):
    res = invoke("export", bundle, "--fp16", "--int8", "--calib-samples", 3)
    assert res.exit_code == 0, res.output
    out = bundle / "export"
    for name in ("model.onnx", "model.fp16.onnx", "model.int8.onnx", "export.json"):
        assert (out / name).is_file(), name
    assert "parity" in res.output and "model.int8.onnx" in res.output
    meta = json.loads((out / "export.json").read_text())
    assert meta["opset"] == 17 and meta["parity"]["passed"] and meta["fp16_parity"]["passed"]
    assert set(meta["artifacts"]) == {"model.onnx", "model.fp16.onnx", "model.int8.onnx"}
    q = meta["int8"]
    assert q["parity_vs_fp32"]["max_abs"] < 0.05 and q["quality_vs_fp32"]["psnr_mean_db"] > 35
    assert q["calibration"]["samples"] == 3 and q["quality_vs_fp32"]["split"] == "val"


def test_export_picks_the_newest_run(tmp_path, monkeypatch):
    old = make_bundle(tmp_path / "runs" / "a")
    new = make_bundle(tmp_path / "runs" / "deep" / "b", seed=1)
    (tmp_path / "runs" / "empty").mkdir()
    for p, t in ((old, 2_000_000_000), (new, 1_000_000_000)):  # the shallow one is newer
        for f in ("model.json", "model.safetensors"):
            os.utime(p / f, (t, t))
    monkeypatch.chdir(tmp_path)
    res = invoke("export", "--out", tmp_path / "x", "--opset", 13)
    assert res.exit_code == 0, res.output
    assert "using the newest run under ./runs: runs/a" in res.output
    meta = json.loads((tmp_path / "x" / "export.json").read_text())
    assert meta["opset"] == 13 and meta["source"]["path"].endswith("runs/a")


def test_export_errors(tmp_path, bundle, monkeypatch):
    from hbl_edge.export.onnx_export import ensure_onnx

    ensure_onnx(bundle)  # BUNDLE/export exists whichever test ran first
    monkeypatch.chdir(tmp_path)
    assert_user_error(invoke("export"), "no model bundle", "pass BUNDLE")
    assert_user_error(invoke("export", tmp_path / "nope"), "does not exist")
    assert_user_error(invoke("export", bundle / "export"), "is an export folder (already exported); add --engine")
    assert_user_error(invoke("export", bundle / "export", "--engine", "tensorrt-rtx", "--opset", 13),
                      "--opset apply to exporting a bundle")
    assert_user_error(invoke("export", bundle, "--engine", "cuda"), "unknown --engine")
    assert_user_error(invoke("export", bundle, "--shapes", "min=1x1"), "need --engine")
    assert_user_error(invoke("export", bundle, "--engine", "tensorrt-rtx", "--shapes", "min=1x1,opt=2x2"), "missing max")
    assert_user_error(invoke("export", bundle, "--opset", 9), "opset 9 is not supported")
    # parity failure: one error line (info log lines may precede it), files kept, exit 2
    res = invoke("export", bundle, "--out", tmp_path / "p", "--tolerance", -1)
    assert len(error_lines(res)) == 1 and "parity check failed" in res.output
    assert (tmp_path / "p" / "model.onnx").is_file()


def test_export_engine_library_missing(tmp_path, bundle, monkeypatch):
    from hbl_edge.export import engines

    monkeypatch.setitem(engines.ENGINE_KINDS, "tensorrt", "hbl_no_such_tensorrt")
    res = invoke("export", bundle, "--out", tmp_path / "e", "--engine", "tensorrt")
    assert len(error_lines(res)) == 1 and "tensorrt engines need the hbl_no_such_tensorrt module" in res.output


@needs_rtx
def test_export_builds_a_tensorrt_rtx_engine(tmp_path, bundle):
    out = tmp_path / "e"
    args = ["export", bundle, "--out", out, "--fp16", "--engine", "tensorrt-rtx", "--shapes", "min=1x1,opt=32x32,max=64x64",
            "--shapes", "min=64x64,opt=96x96,max=128x128", "--workspace-mb", 64, "--compute-capability", "SM86"]
    res = invoke(*args)
    assert res.exit_code == 0, res.output
    engines = sorted(out.glob("model.tensorrt-rtx.*.engine"))
    assert len(engines) == 1 and "built" in res.output
    rec = json.loads((out / "export.json").read_text())["engines"]
    assert rec[0]["precision"] == "fp16" and rec[0]["onnx"] == "model.fp16.onnx" and len(rec[0]["profiles"]) == 2
    assert "SM86" in rec[0]["device"]
    res = invoke(*args)  # the re-export writes identical ONNX bytes → cache hit
    assert res.exit_code == 0, res.output
    assert "cached" in res.output, res.output
    res = invoke(*args, "--force-rebuild")
    assert res.exit_code == 0 and "built" in res.output, res.output


def test_bench_cli_writes_json(tmp_path, bundle):
    path = tmp_path / "bench.json"
    res = invoke("bench", bundle, "--backend", "ort,torch,trt", "--resolution", "24x16", "--iters", 3,
                 "--warmup", 1, "--threads", 1, "--json", path)
    assert res.exit_code == 0, res.output
    report = json.loads(path.read_text())
    rows = {r["backend"]: r for r in report["rows"]}
    assert rows["ort"]["status"] == "ok" and rows["torch"]["status"] == "ok"
    assert rows["ort"]["stats"]["calls"] == 3 and len(rows["ort"]["times_s"]) == 3
    assert rows["ort"]["stats"]["min_ms"] == pytest.approx(min(rows["ort"]["times_s"]) * 1e3)
    assert report["settings"]["resolution"] == [24, 16] and report["machine"]["cpu"]
    if rows["trt"]["status"] != "ok":  # no TensorRT/GPU here: a row with the reason, not a crash
        assert rows["trt"]["reason"] and rows["trt"]["status"] in res.output
    assert (bundle / "export" / "model.onnx").is_file()  # ort exported it on the fly when missing


def test_bench_cli_errors(tmp_path, bundle):
    assert_user_error(invoke("bench", bundle, "--backend", "cuda"), "unknown backend")
    assert_user_error(invoke("bench", bundle, "--resolution", "720p"), "WIDTHxHEIGHT")
    assert_user_error(invoke("bench", tmp_path / "none"), "does not exist; pass a model bundle")
    (tmp_path / "empty").mkdir()
    assert_user_error(invoke("bench", tmp_path / "empty"), "no model.onnx here or in", "and no model bundle")


def test_enhance_backend_ort_equals_torch(tmp_path, monkeypatch):
    from hbl_edge.evaluate import model_method
    from hbl_edge.runtime import model as model_mod
    from hbl_edge.runtime.tiling import run_tiled

    b = make_bundle(tmp_path / "run", seed=3)
    img = np.random.default_rng(0).random((19, 23, 3)).astype(np.float32) * 0.3
    ort_method = model_method(b, backend="ort")
    ort_out = ort_method.fn(img)
    torch_out = model_method(b, backend="torch").fn(img)
    assert ort_out.shape == img.shape and np.abs(ort_out - torch_out).max() < 1e-3
    assert np.abs(ort_out - img).max() > 1e-2  # the model changes the image (not an identity that agrees trivially)
    # tiled output equals the tiling of the same runner by hand (feathered overlaps), and the untiled one closely
    big = np.random.default_rng(1).random((50, 70, 3)).astype(np.float32)
    tiled = model_method(b, backend="ort", tile=32).fn(big)
    from hbl_edge.runtime.ort_runner import OrtRunner

    ref = OrtRunner(b / "export" / "model.onnx")
    by_hand = np.clip(run_tiled(ref.run, np.ascontiguousarray(big.transpose(2, 0, 1)), tile=32, overlap=8).transpose(1, 2, 0), 0, 1)
    np.testing.assert_allclose(tiled, by_hand, atol=1e-6)
    whole = ort_method.fn(big)
    assert np.abs(tiled - whole).mean() < 0.02 and not np.array_equal(tiled, whole)
    # auto: with no engine library usable here, ort (before torch) runs a bundle that has an export
    monkeypatch.setattr(model_mod, "unavailable_reason", lambda name: "not installed: x" if name.startswith("trt") else None)
    assert model_mod.load_model(b).backend == "ort"
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray((img * 255).astype(np.uint8)).save(src / "a.png")
    outs = {}
    for backend in ("ort", "torch"):
        res = invoke("enhance", src, "--model", b, "--out", tmp_path / backend, "--backend", backend)
        assert res.exit_code == 0, res.output
        assert f"with {backend}" in res.output
        outs[backend] = np.asarray(Image.open(tmp_path / backend / "a.png"), dtype=np.int16)
    assert np.abs(outs["ort"] - outs["torch"]).max() <= 1  # 8-bit files: at most one level apart
    assert_user_error(invoke("enhance", src, "--model", b, "--backend", "cuda"), "unknown backend")


def test_enhance_every_input_unreadable_exits_2(tmp_path, bundle):
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.png").write_bytes(b"not a png")
    (src / "b.jpg").write_bytes(b"\xff\xd8 truncated")
    res = invoke("enhance", src, "--model", bundle, "--out", tmp_path / "out", "--backend", "ort")
    assert_user_error(res, "none of the 2 input image(s) could be read, nothing was written", "a.png", "b.jpg")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    # one readable image among them: exit 0, the others reported
    Image.fromarray(np.full((8, 9, 3), 40, np.uint8)).save(src / "c.png")
    res = invoke("enhance", src, "--model", bundle, "--out", tmp_path / "out", "--backend", "ort")
    assert res.exit_code == 0 and "wrote 1 image(s)" in res.output and "skipped 2 unreadable: a.png, b.jpg" in res.output
    assert (tmp_path / "out" / "c.png").is_file()
