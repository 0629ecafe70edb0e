"""Engine builds and the engine cache (hbl_edge.export.engines / cache).

Profile parsing and cache keys are pure Python. TensorRT-RTX builds engines on the CPU, so a
real build runs wherever ``tensorrt_rtx`` is installed (skipped cleanly elsewhere). TensorRT
(and running any engine) needs an NVIDIA GPU: those tests skip unless ``tensorrt`` (or
``tensorrt_rtx``), ``pycuda`` and a CUDA device are all there.
"""

from __future__ import annotations

import json
import logging
import sys
import types

import numpy as np
import pytest
import torch

from hbl_edge.errors import ConfigError
from hbl_edge.export import ExportError
from hbl_edge.export.cache import EngineCache, describe_mismatch, engine_cache_key
from hbl_edge.export.engines import (
    DEFAULT_PROFILE,
    ShapeProfile,
    build_engine,
    build_serialized_engine,
    engine_dir_for,
    explicit_batch_flags,
    fp16_sibling,
    parse_profile,
)
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
needs_tensorrt_rtx = pytest.mark.skipif(
    not _importable("tensorrt_rtx"),
    reason="tensorrt_rtx is not installed (wheels exist for x86-64 Linux and Windows only; the dev extra installs it there)",
)


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
        assert parse_profile(DEFAULT_PROFILE).min == (1, 3, 1, 1)  # the graph pads small inputs itself

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
        with pytest.raises(ExportError, match=r"strongly typed.*`hbl-edge export BUNDLE --fp16` where the bundle and torch are"):
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


# ---------------------------------------------------------------------------------------------
# The build path against fake TensorRT modules (TensorRT 8 / 10 / RTX differences)
# ---------------------------------------------------------------------------------------------
def make_fake_builder_trt(version: str, *, explicit_flag: bool = True, fp16_flag: bool = True, builder_error=None):
    """Just enough of a TensorRT module to build: records what the build path asks for.

    Like the real TensorRT 8.x, the ONNX parser refuses an implicit-batch network (flags 0).
    """
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    rec: dict = {"flags": [], "shapes": [], "flags_set": [], "workspace": None}
    trt.rec = rec
    names = {"EXPLICIT_BATCH": 0} if explicit_flag else {}
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(**names)
    trt.BuilderFlag = types.SimpleNamespace(**({"FP16": "fp16", "INT8": "int8"} if fp16_flag else {}))
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")

    class Logger:
        WARNING, VERBOSE = 2, 4

        def __init__(self, level):
            pass

    class Tensor:
        def __init__(self, name, shape):
            self.name, self.shape = name, shape

    class Network:
        def __init__(self, flags):
            self.flags = flags
            self.inputs = [Tensor("a", (-1, 3, -1, -1)), Tensor("b", (1, 3, 4, 4))]
            self.num_inputs, self.num_outputs = 2, 1

        def get_input(self, i):
            return self.inputs[i]

        def get_output(self, i):
            return Tensor("out", (-1, 3, -1, -1))

    class Error:
        def desc(self):
            return "Network must have the explicit batch flag"

    class OnnxParser:
        def __init__(self, network, logger):
            self.network, self.num_errors = network, 0

        def parse_from_file(self, path):
            major = int(version.split(".")[0])
            if major < 10 and not self.network.flags:
                self.num_errors = 1  # what TensorRT 8 does with create_network(0) and our ONNX
                return False
            return True

        def get_error(self, i):
            return Error()

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            rec["shapes"].append((name, tuple(lo), tuple(opt), tuple(hi)))

    class Config:
        def set_memory_pool_limit(self, pool, size):
            rec["workspace"] = (pool, size)

        def set_flag(self, flag):
            rec["flags_set"].append(flag)

        def add_optimization_profile(self, profile):
            return 0

        def create_timing_cache(self, blob):
            return types.SimpleNamespace(serialize=lambda: b"timings")

        def set_timing_cache(self, cache, ignore_mismatch):
            self.tc = cache
            return True

        def get_timing_cache(self):
            return self.tc

    class Builder:
        def __init__(self, logger):
            if builder_error is not None:
                raise builder_error

        def create_network(self, flags):
            rec["flags"].append(flags)
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            return b"serialized-plan"

    trt.Logger, trt.Builder, trt.OnnxParser = Logger, Builder, OnnxParser
    return trt


class TestBuildPathFakes:
    def test_tensorrt_8_gets_an_explicit_batch_network(self, monkeypatch, tmp_path):
        trt8 = make_fake_builder_trt("8.5.2.2")
        monkeypatch.setitem(sys.modules, "tensorrt", trt8)
        assert explicit_batch_flags(trt8) == 1  # 1 << EXPLICIT_BATCH (= 0)
        blob = build_serialized_engine(tmp_path / "op.onnx", [(2, 3, 8, 8), (1, 3, 4, 4)], fp16=True)
        assert blob == b"serialized-plan" and trt8.rec["flags"] == [1]
        # only the dynamic input gets a profile, min = opt = max; FP16 by flag (weakly typed)
        assert trt8.rec["shapes"] == [("a", (2, 3, 8, 8), (2, 3, 8, 8), (2, 3, 8, 8))]
        assert trt8.rec["flags_set"] == ["fp16"] and trt8.rec["workspace"] == ("workspace", 1024 << 20)

    def test_the_old_create_network_0_fails_on_tensorrt_8(self, monkeypatch, tmp_path):
        """Guards the fake itself: with flags 0 its parser refuses, as TensorRT 8's does."""
        from hbl_edge.export import engines

        trt8 = make_fake_builder_trt("8.5.2.2")
        monkeypatch.setitem(sys.modules, "tensorrt", trt8)
        monkeypatch.setattr(engines, "explicit_batch_flags", lambda trt: 0)
        with pytest.raises(ExportError, match="tensorrt cannot parse op.onnx: Network must have the explicit batch flag"):
            build_serialized_engine(tmp_path / "op.onnx", [(1, 3, 8, 8), (1, 3, 4, 4)])

    def test_tensorrt_10_and_rtx_get_no_flag(self, monkeypatch, tmp_path):
        trt10 = make_fake_builder_trt("10.3.0")
        monkeypatch.setitem(sys.modules, "tensorrt", trt10)
        build_serialized_engine(tmp_path / "op.onnx", [(1, 3, 8, 8), (1, 3, 4, 4)])
        assert trt10.rec["flags"] == [0]
        rtx = make_fake_builder_trt("1.7.1.116", explicit_flag=False, fp16_flag=False)
        assert explicit_batch_flags(rtx) == 0
        monkeypatch.setitem(sys.modules, "tensorrt", rtx)
        with pytest.raises(ConfigError, match="strongly typed"):
            build_serialized_engine(tmp_path / "op.onnx", [(1, 3, 8, 8)], fp16=True)

    def test_build_engine_uses_the_same_path_on_tensorrt_8(self, monkeypatch, onnx_files, tmp_path):
        trt8 = make_fake_builder_trt("8.5.2.2")
        monkeypatch.setitem(sys.modules, "tensorrt", trt8)
        r = build_engine(onnx_files[0], tmp_path, kind="tensorrt", shapes=[PROFILE])
        assert r.built and r.path.read_bytes() == b"serialized-plan" and trt8.rec["flags"] == [1]
        assert r.meta["network_flags"] == 1 and r.library_version == "8.5.2.2"
        assert trt8.rec["shapes"][0] == ("a", (1, 3, 8, 8), (1, 3, 48, 64), (2, 3, 256, 256))
        assert r.meta["timing_cache"]["effective"] and (tmp_path / r.meta["timing_cache"]["path"]).read_bytes() == b"timings"

    def test_cuda_initialisation_failure_is_one_line(self, monkeypatch, onnx_files, tmp_path):
        broken = make_fake_builder_trt("10.3.0", builder_error=TypeError("pybind11::init(): factory function returned nullptr"))
        monkeypatch.setitem(sys.modules, "tensorrt", broken)
        with pytest.raises(ExportError) as e:
            build_engine(onnx_files[0], tmp_path, kind="tensorrt")
        msg = str(e.value)
        assert msg.startswith("tensorrt 10.3.0 could not create a builder: CUDA did not initialise (pybind11::init()")
        assert "nvidia-smi" in msg and "\n" not in msg


class TestEngineDir:
    def test_writable_export_folder_holds_its_engines(self, tmp_path):
        (tmp_path / "model.onnx").write_bytes(b"x")
        assert engine_dir_for(tmp_path) == (tmp_path, [])
        assert engine_dir_for(tmp_path, tmp_path / "elsewhere") == (tmp_path / "elsewhere", [tmp_path])

    def test_read_only_folder_uses_the_user_cache_keyed_by_model(self, tmp_path, monkeypatch):
        from hbl_edge.export import engines
        from hbl_edge.export.cache import file_sha256

        ro = tmp_path / "ro"
        ro.mkdir()
        (ro / "model.onnx").write_bytes(b"some model")
        monkeypatch.setattr(engines, "is_writable", lambda folder: False)
        monkeypatch.setenv("HBL_EDGE_CACHE_DIR", str(tmp_path / "cache"))
        out, search = engine_dir_for(ro)
        assert out == tmp_path / "cache" / "engines" / file_sha256(ro / "model.onnx")[:16] and search == [ro]
        monkeypatch.delenv("HBL_EDGE_CACHE_DIR")
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
        assert engine_dir_for(ro)[0].parent == tmp_path / "xdg" / "hbl-edge" / "engines"

    def test_is_writable_probes_for_real(self, tmp_path):
        assert engines_is_writable(tmp_path) and not engines_is_writable(tmp_path / "missing")


def engines_is_writable(folder):
    from hbl_edge.export.engines import is_writable

    return is_writable(folder)


@needs_tensorrt_rtx
def test_profiler_entry_point_builds_a_real_engine(tmp_path):
    """build_serialized_engine (the latency profiler's) builds a fixed-shape graph with TensorRT-RTX."""
    import onnx
    from onnx import TensorProto, helper

    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 3, 3], np.random.default_rng(0).random(108).astype(np.float32))
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])
    graph = helper.make_graph([node], "op", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16])], [w])
    path = tmp_path / "op.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    blob = build_serialized_engine(path, [(1, 3, 16, 16)], kind="tensorrt-rtx", workspace_mb=64)
    assert isinstance(blob, bytes) and len(blob) > 1000


@needs_tensorrt_rtx
def test_engine_in_a_read_only_export_folder_is_reused(onnx_files, tmp_path, monkeypatch):
    """Built once beside the ONNX; with the folder read-only, the lookup still finds it there."""
    import shutil

    from hbl_edge.export import engines
    from hbl_edge.export.pipeline import build_engine_for_export

    folder = tmp_path / "export"
    folder.mkdir()
    shutil.copy(onnx_files[0], folder / "model.onnx")
    first = build_engine_for_export(folder, kind="tensorrt-rtx", shapes=[PROFILE], workspace_mb=64)
    assert first.built and first.path.parent == folder
    monkeypatch.setattr(engines, "is_writable", lambda f: False)
    monkeypatch.setenv("HBL_EDGE_CACHE_DIR", str(tmp_path / "cache"))
    again = build_engine_for_export(folder, kind="tensorrt-rtx", shapes=[PROFILE], workspace_mb=64)
    assert not again.built and again.path == first.path
    other = build_engine_for_export(folder, kind="tensorrt-rtx", shapes=["min=1x1,opt=8x8,max=16x16"], workspace_mb=64)
    assert other.built and other.path.parent.parent == tmp_path / "cache" / "engines"
