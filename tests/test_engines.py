"""Engine builds and the engine cache (hbl_edge.export.engines / cache).

Profile parsing and cache keys are pure Python. TensorRT-RTX builds engines on the CPU, so a
real build runs wherever ``tensorrt_rtx`` is installed (skipped cleanly elsewhere). TensorRT
(and running any engine) needs an NVIDIA GPU: those tests skip unless ``tensorrt`` (or
``tensorrt_rtx``), ``pycuda`` and a CUDA device are all there.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from hbl_edge.errors import ConfigError
from hbl_edge.export import ExportError
from hbl_edge.export.cache import EngineCache, describe_mismatch, engine_cache_key
from hbl_edge.export.engines import DEFAULT_PROFILE, ShapeProfile, build_engine, fp16_sibling, parse_profile
from hbl_edge.genotype import Genotype
from hbl_edge.network import Network

TINY = Genotype(
    encoder=["conv_3x3"] * 9, decoder=["conv_3x3"] * 9,
    hnu=[["conv_3x3", "skip_connect", "resconv_3x3", "denseblocks_1x1"] * 2], channels=(4, 8), units=1,
)
PROFILE = "min=8x8,opt=64x48,max=256x256,batch=1:1:2"


def _importable(name: str) -> bool:
    from importlib.util import find_spec

    return find_spec(name) is not None


# Not the `gpu` marker: conftest ties that to torch.cuda, and a Jetson may run TensorRT with a
# CPU-only torch (or none). These skip themselves unless the library, pycuda and a GPU are here.
needs_tensorrt = pytest.mark.skipif(not _importable("tensorrt"), reason="tensorrt is not installed")
needs_tensorrt_rtx = pytest.mark.skipif(not _importable("tensorrt_rtx"), reason="tensorrt_rtx is not installed")


class TestProfiles:
    def test_parse(self):
        p = parse_profile("min=64x32,opt=640x480,max=1920x1080")
        assert p.min == (1, 3, 32, 64) and p.opt == (1, 3, 480, 640) and p.max == (1, 3, 1080, 1920)
        assert str(p) == "min=64x32,opt=640x480,max=1920x1080"
        assert parse_profile(str(p)) == p and parse_profile(p) is p
        b = parse_profile(PROFILE)
        assert (b.min[0], b.opt[0], b.max[0]) == (1, 1, 2) and str(b) == PROFILE
        assert parse_profile("min=8x8,opt=8x8,max=8x8,batch=4").max[0] == 4
        assert b.contains((2, 3, 100, 30)) and not b.contains((3, 3, 100, 30))
        assert parse_profile(DEFAULT_PROFILE).opt == (1, 3, 720, 1280)

    @pytest.mark.parametrize(
        "spec, message",
        [
            ("64x64", "expected 'min=WxH,opt=WxH,max=WxH'"),
            ("min=64x64,opt=64x64", "missing max"),
            ("min=64,opt=64x64,max=64x64", "use WIDTHxHEIGHT"),
            ("min=64x64,opt=32x32,max=128x128", "height must satisfy min ≤ opt ≤ max"),
            ("min=8x8,opt=8x8,max=8x8,batch=2:1", "use N or MIN:OPT:MAX"),
            ("min=0x8,opt=8x8,max=8x8", "every side ≥ 1"),
        ],
    )
    def test_bad(self, spec, message):
        with pytest.raises(ConfigError, match=message):
            parse_profile(spec)

    def test_shape_profile_validates(self):
        with pytest.raises(ConfigError, match="N×3×H×W"):
            ShapeProfile((1, 1, 8, 8), (1, 1, 8, 8), (1, 1, 8, 8))


class TestCacheKey:
    BASE = {
        "onnx_sha256": "ab" * 32, "library": "tensorrt", "library_version": "10.3.0",
        "device": "Orin (sm_87)", "precision": "fp16", "profiles": [PROFILE],
    }

    def test_key_is_stable_and_sensitive(self):
        key = engine_cache_key(self.BASE)
        assert key == engine_cache_key(dict(reversed(list(self.BASE.items())))) and len(key) == 16
        for field, other in [("onnx_sha256", "cd" * 32), ("library_version", "10.3.1"), ("device", "Thor (sm_110)"),
                             ("precision", "fp32"), ("profiles", [DEFAULT_PROFILE]), ("library", "tensorrt-rtx")]:
            assert engine_cache_key({**self.BASE, field: other}) != key, field

    def test_lookup_never_returns_a_mismatch(self, tmp_path, caplog):
        cache = EngineCache(tmp_path, "model.tensorrt")
        path = cache.store(self.BASE, b"plan", {"build_seconds": 1.0})
        assert cache.lookup(self.BASE) == path
        caplog.set_level(logging.INFO, logger="hbl_edge")
        assert cache.lookup({**self.BASE, "library_version": "10.7.0"}) is None
        assert "no cached engine matches" in caplog.text and "library_version: 10.3.0 → 10.7.0" in caplog.text
        # A sidecar that disagrees with the file name (edited, copied) is not trusted either.
        meta = json.loads(path.with_suffix(".json").read_text())
        meta["key_ingredients"]["device"] = "something else"
        path.with_suffix(".json").write_text(json.dumps(meta))
        assert cache.lookup(self.BASE) is None

    def test_describe_mismatch(self):
        text = describe_mismatch(self.BASE, {**self.BASE, "precision": "fp32"})
        assert text == "precision: fp16 → fp32"


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory):
    from hbl_edge.export import export_onnx, parity_images

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("engine-onnx")
    result = export_onnx(Network(TINY).eval(), out, fp16=True, images=parity_images(0, [(1, 6, 9)]))
    return result.onnx_path, result.fp16_path


def test_missing_library_is_a_clear_error(monkeypatch, onnx_files):
    import sys

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(ExportError, match=r"tensorrt engines need the tensorrt module.*pip install tensorrt"):
        build_engine(onnx_files[0], kind="tensorrt")
    with pytest.raises(ConfigError, match="unknown engine kind 'openvino'"):
        build_engine(onnx_files[0], kind="openvino")


@needs_tensorrt_rtx
class TestTensorRTRtx:
    """Real TensorRT-RTX builds on the CPU (no GPU needed)."""

    def test_build_then_cache_hit_then_rebuild_on_mismatch(self, onnx_files, tmp_path, caplog):
        caplog.set_level(logging.INFO, logger="hbl_edge")
        onnx_path, _ = onnx_files
        first = build_engine(onnx_path, tmp_path, kind="tensorrt-rtx", shapes=[PROFILE], workspace_mb=64)
        assert first.built and first.path.is_file() and first.path.stat().st_size > 1000
        meta = json.loads(first.path.with_suffix(".json").read_text())
        ingredients = meta["key_ingredients"]
        assert ingredients["library"] == "tensorrt-rtx" and ingredients["precision"] == "fp32"
        assert ingredients["profiles"] == [PROFILE]
        assert ingredients["device"].endswith("targets=default")  # "cpu-build; …" without a GPU
        assert meta["strongly_typed"] is True and meta["input"] == "image" and meta["output"] == "enhanced"
        assert meta["timing_cache"]["effective"] is False  # a no-op in TensorRT-RTX; recorded as such
        assert first.key == meta["key"] == engine_cache_key(ingredients)

        again = build_engine(onnx_path, tmp_path, kind="tensorrt-rtx", shapes=[PROFILE], workspace_mb=64)
        assert not again.built and again.path == first.path

        caplog.clear()
        other = build_engine(onnx_path, tmp_path, kind="tensorrt-rtx", shapes=[PROFILE, "min=1x1,opt=8x8,max=16x16"])
        assert other.built and other.path != first.path and first.path.exists()
        assert "no cached engine matches" in caplog.text and "profiles:" in caplog.text

    def test_fp16_uses_the_fp16_onnx(self, onnx_files, tmp_path):
        onnx_path, fp16_path = onnx_files
        assert fp16_sibling(onnx_path) == fp16_path
        r = build_engine(onnx_path, tmp_path, kind="tensorrt-rtx", fp16=True, shapes=[PROFILE])
        assert r.built and r.precision == "fp16" and r.onnx_path == fp16_path

    def test_fp16_without_fp16_onnx(self, onnx_files, tmp_path):
        lonely = tmp_path / "model.onnx"
        lonely.write_bytes(onnx_files[0].read_bytes())
        with pytest.raises(ExportError, match="strongly typed.*run `hbl-edge export --fp16` first"):
            build_engine(lonely, tmp_path, kind="tensorrt-rtx", fp16=True)

    def test_compute_capability_targets(self, onnx_files, tmp_path):
        r = build_engine(onnx_files[0], tmp_path, kind="tensorrt-rtx", shapes=[PROFILE], compute_capabilities=["sm86"])
        assert r.device.endswith("targets=SM86") and r.meta["compute_capabilities"] == ["SM86"]
        with pytest.raises(ConfigError, match="unknown compute capability 'SM99'"):
            build_engine(onnx_files[0], tmp_path, kind="tensorrt-rtx", compute_capabilities=["SM99"], force=True)

    def test_unparsable_onnx(self, tmp_path):
        bad = tmp_path / "bad.onnx"
        bad.write_bytes(b"\x08\x07garbage")
        with pytest.raises(ExportError, match="bad.onnx: not a readable ONNX file"):
            build_engine(bad, tmp_path, kind="tensorrt-rtx")


def _gpu_with(module: str) -> None:
    pytest.importorskip(module)
    pytest.importorskip("pycuda.driver")
    from hbl_edge.runtime.trt_runner import cuda_device_identity

    if cuda_device_identity() is None:
        pytest.skip("no CUDA device visible")


@needs_tensorrt
def test_tensorrt_build_timing_cache_and_run(onnx_files, tmp_path):
    """TensorRT 10/11 on a GPU: timing cache written then reused; engine output ≈ ONNX Runtime."""
    _gpu_with("tensorrt")
    from hbl_edge.runtime.ort_runner import OrtRunner
    from hbl_edge.runtime.trt_runner import TrtRunner

    tc = tmp_path / "timing.cache"
    first = build_engine(onnx_files[0], tmp_path, kind="tensorrt", shapes=[PROFILE], timing_cache=tc)
    assert tc.is_file() and first.meta["timing_cache"]["loaded"] is False
    second = build_engine(onnx_files[0], tmp_path, kind="tensorrt", shapes=[PROFILE], timing_cache=tc, force=True)
    assert second.meta["timing_cache"]["loaded"] is True
    x = np.random.default_rng(0).random((2, 3, 37, 61), dtype=np.float32)
    with TrtRunner(second.path) as r:
        assert np.abs(r.run(x) - OrtRunner(onnx_files[0]).run(x)).max() < 1e-3


@needs_tensorrt_rtx
def test_tensorrt_rtx_run(onnx_files, tmp_path):
    """TensorRT-RTX on an RTX GPU: the engine built here runs and matches ONNX Runtime."""
    _gpu_with("tensorrt_rtx")
    from hbl_edge.runtime.ort_runner import OrtRunner
    from hbl_edge.runtime.trt_runner import TrtRtxRunner

    r = build_engine(onnx_files[0], tmp_path, kind="tensorrt-rtx", shapes=[PROFILE])
    x = np.random.default_rng(0).random((1, 3, 37, 61), dtype=np.float32)
    with TrtRtxRunner(r.path, runtime_cache=tmp_path / "runtime.cache") as runner:
        assert np.abs(runner.run(x) - OrtRunner(onnx_files[0]).run(x)).max() < 1e-3
    assert (tmp_path / "runtime.cache").is_file()
