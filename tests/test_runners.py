"""Runner registry and backends (hbl_edge.runtime.runners / ort_runner / trt_runner).

The TensorRT runner cannot execute without an NVIDIA GPU; here it is driven through small fake
``tensorrt`` and ``pycuda.driver`` modules that record the calls, which checks its use of the
named-tensor API (shape set once per shape change, addresses bound, buffers reused) and its
errors. A real run is in tests/test_engines.py, marked gpu.
"""

from __future__ import annotations

import json
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

from hbl_edge.bundle import save_bundle
from hbl_edge.export import export_onnx
from hbl_edge.genotype import Genotype
from hbl_edge.network import Network
from hbl_edge.runtime.ort_runner import OrtRunner
from hbl_edge.runtime.runners import (
    BACKENDS,
    BackendError,
    Runner,
    available_backends,
    backend_status,
    create_runner,
)

TINY = Genotype(
    encoder=["conv_3x3"] * 9, decoder=["conv_3x3"] * 9,
    hnu=[["conv_3x3", "skip_connect", "resconv_3x3", "denseblocks_1x1"] * 2], channels=(4, 8), units=1,
)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """A tiny bundle and its ONNX export (parity checked on two small images)."""
    from hbl_edge.export.onnx_export import parity_images

    root = tmp_path_factory.mktemp("runners")
    torch.manual_seed(0)
    net = Network(TINY).eval()
    bundle = save_bundle(root / "run", net, task="lowlight", loss={"l1": 1.0})
    result = export_onnx(bundle, root / "export", images=parity_images(0, [(1, 5, 7)]))
    return bundle, result.onnx_path


def test_runtime_imports_no_torch():
    code = (
        "import sys\n"
        "import hbl_edge.runtime.trt_runner, hbl_edge.runtime.ort_runner, hbl_edge.runtime.runners\n"
        "import hbl_edge.export.engines, hbl_edge.export.cache\n"
        "hbl_edge.runtime.runners.available_backends()\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


class TestRegistry:
    def test_backends_registered(self):
        assert list(BACKENDS) == ["ort", "torch", "trt", "trt-rtx"]
        assert {b.artifact for b in BACKENDS.values()} == {"onnx", "bundle", "engine"}

    def test_available_here(self):
        names = available_backends()
        assert "ort" in names and "torch" in names
        status = backend_status()
        for name, state in status.items():
            assert (state == "available") == (name in names)
            assert state == "available" or state.startswith(("not installed", "no CUDA"))

    def test_unknown_backend(self, artifacts):
        with pytest.raises(BackendError, match="unknown backend 'tensorflow'; known backends: ort, torch"):
            create_runner("tensorflow", artifacts[1])

    def test_missing_module_names_it(self, monkeypatch, artifacts):
        from hbl_edge.runtime import runners

        monkeypatch.setattr(runners, "_module_present", lambda name: name != "pycuda")
        with pytest.raises(BackendError, match="backend 'trt-rtx' needs pycuda"):
            create_runner("trt-rtx", "model.engine")

    def test_torch_and_ort_agree(self, artifacts):
        bundle, onnx_path = artifacts
        x = np.random.default_rng(0).random((2, 3, 11, 6), dtype=np.float32)
        ort_runner = create_runner("ort", onnx_path, threads=1)
        torch_runner = create_runner("torch", bundle)
        for r in (ort_runner, torch_runner):
            assert isinstance(r, Runner)
        assert np.abs(ort_runner.run(x) - torch_runner.run(x)).max() < 1e-4
        ort_runner.close()
        torch_runner.close()


class TestOrtRunner:
    def test_cpu_provider_and_threads(self, artifacts):
        r = OrtRunner(artifacts[1], threads=1, inter_op_threads=1)
        assert r.providers[-1] == "CPUExecutionProvider"
        out = r.run(np.zeros((1, 3, 4, 9), np.float64))  # any float dtype is accepted
        assert out.shape == (1, 3, 4, 9) and out.dtype == np.float32

    def test_bad_inputs(self, artifacts, tmp_path):
        r = OrtRunner(artifacts[1], threads=1)
        with pytest.raises(ValueError, match=r"expected an N×3×H×W image batch, got shape \(3, 8, 8\)"):
            r.run(np.zeros((3, 8, 8), np.float32))
        with pytest.raises(BackendError, match="does not exist; run `hbl-edge export` first"):
            OrtRunner(tmp_path / "missing.onnx")
        with pytest.raises(BackendError, match="has no NoSuchExecutionProvider"):
            OrtRunner(artifacts[1], providers=["NoSuchExecutionProvider"])
        with pytest.raises(BackendError, match="threads must be ≥ 1"):
            OrtRunner(artifacts[1], threads=0)
        bad = tmp_path / "bad.onnx"
        bad.write_bytes(b"not an onnx file")
        with pytest.raises(BackendError, match="onnxruntime cannot load this model"):
            OrtRunner(bad)


# ---------------------------------------------------------------------------------------------
# TensorRT runner against fake tensorrt / pycuda modules
# ---------------------------------------------------------------------------------------------
class FakeCuda(types.ModuleType):
    """Just enough of pycuda.driver: device memory is a dict from address to numpy array."""

    def __init__(self) -> None:
        super().__init__("pycuda.driver")
        self.memory: dict[int, np.ndarray] = {}
        self.allocs = 0
        self.pushes = 0
        self._next = 4096
        cuda = self

        class Alloc:
            def __init__(self, nbytes: int) -> None:
                self.addr = cuda._next
                cuda._next += nbytes + 256
                cuda.memory[self.addr] = np.zeros(nbytes, np.uint8)

            def __int__(self) -> int:
                return self.addr

            def free(self) -> None:
                cuda.memory.pop(self.addr)

        class Ctx:
            def push(self) -> None:
                cuda.pushes += 1

            def pop(self) -> None:
                cuda.pushes -= 1

            def detach(self) -> None:
                pass

        class Device:
            def __init__(self, i: int) -> None:
                self.i = i

            @staticmethod
            def count() -> int:
                return 1

            def name(self) -> str:
                return "Fake Orin"

            def compute_capability(self) -> tuple[int, int]:
                return (8, 7)

            def retain_primary_context(self) -> Ctx:
                return Ctx()

        class Stream:
            handle = 77

            def synchronize(self) -> None:
                pass

        self.Device, self.Stream, self._Alloc = Device, Stream, Alloc

    def init(self) -> None:
        pass

    def mem_alloc(self, nbytes: int):
        self.allocs += 1
        return self._Alloc(nbytes)

    @staticmethod
    def pagelocked_empty(shape, dtype):
        return np.empty(shape, dtype)

    def memcpy_htod_async(self, dst, src, stream) -> None:
        raw = np.ascontiguousarray(src).view(np.uint8).ravel()
        self.memory[int(dst)][: raw.size] = raw

    def memcpy_dtoh_async(self, dst, src, stream) -> None:
        raw = dst.view(np.uint8).reshape(-1)
        raw[:] = self.memory[int(src)][: raw.size]


def make_fake_trt(cuda: FakeCuda, version: str = "10.3.0") -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    calls: list[tuple] = []
    trt.calls = calls
    trt.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")
    trt.nptype = lambda dt: np.float32

    class Logger:
        WARNING, VERBOSE = 2, 4

        def __init__(self, level: int) -> None:
            pass

    class Context:
        def __init__(self) -> None:
            self.shape = None
            self.addr: dict[str, int] = {}

        def set_optimization_profile_async(self, k, stream):
            calls.append(("profile", k))
            return True

        def set_input_shape(self, name, shape):
            calls.append(("shape", name, tuple(shape)))
            self.shape = tuple(shape)
            return True

        def get_tensor_shape(self, name):
            return self.shape

        def set_tensor_address(self, name, addr):
            calls.append(("address", name))
            self.addr[name] = addr
            return True

        def execute_async_v3(self, stream):
            calls.append(("execute", stream))
            n = int(np.prod(self.shape)) * 4
            x = cuda.memory[self.addr["image"]][:n].view(np.float32)
            cuda.memory[self.addr["enhanced"]][:n] = (1.0 - x).astype(np.float32).view(np.uint8)
            return True

    class Engine:
        num_io_tensors = 2
        num_optimization_profiles = 2
        profiles = [((1, 3, 8, 8), (1, 3, 16, 16), (1, 3, 32, 32)), ((1, 3, 33, 33), (2, 3, 64, 64), (2, 3, 128, 128))]

        def get_tensor_name(self, i):
            return ["image", "enhanced"][i]

        def get_tensor_mode(self, name):
            return "in" if name == "image" else "out"

        def get_tensor_dtype(self, name):
            return "float"

        def get_tensor_profile_shape(self, name, k):
            return self.profiles[k]

        def create_execution_context(self):
            return Context()

    class Runtime:
        def __init__(self, logger) -> None:
            pass

        def deserialize_cuda_engine(self, blob):
            return Engine() if blob == b"engine" else None

    trt.Logger, trt.Runtime = Logger, Runtime
    return trt


@pytest.fixture
def fake_gpu(monkeypatch, tmp_path):
    cuda = FakeCuda()
    pycuda = types.ModuleType("pycuda")
    pycuda.driver = cuda
    trt = make_fake_trt(cuda)
    monkeypatch.setitem(sys.modules, "pycuda", pycuda)
    monkeypatch.setitem(sys.modules, "pycuda.driver", cuda)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    engine = tmp_path / "model.tensorrt.0123456789abcdef.engine"
    engine.write_bytes(b"engine")
    return cuda, trt, engine


class TestTrtRunnerFake:
    def test_named_tensor_calls_and_buffer_reuse(self, fake_gpu):
        from hbl_edge.runtime.trt_runner import TrtRunner

        cuda, trt, engine = fake_gpu
        r = TrtRunner(engine)
        x = np.random.default_rng(0).random((1, 3, 16, 20), dtype=np.float32)
        for _ in range(3):
            np.testing.assert_allclose(r.run(x), 1.0 - x, atol=1e-6)
        kinds = [c[0] for c in trt.calls]
        assert kinds == ["profile", "shape", "address", "address", "execute", "execute", "execute"]
        assert cuda.allocs == 2 and cuda.pushes == 0  # buffers kept, context popped after each call

        trt.calls.clear()  # a smaller frame: new shape, same device buffers
        r.run(x[:, :, :10, :12])
        assert [c[0] for c in trt.calls] == ["shape", "address", "address", "execute"] and cuda.allocs == 2

        trt.calls.clear()  # a frame only the second profile holds: switch profile, grow buffers
        y = np.random.default_rng(1).random((2, 3, 40, 50), dtype=np.float32)
        np.testing.assert_allclose(r.run(y), 1.0 - y, atol=1e-6)
        assert trt.calls[:2] == [("profile", 1), ("shape", "image", (2, 3, 40, 50))] and cuda.allocs == 4
        r.close()
        r.close()
        assert not cuda.memory

    def test_shape_outside_profiles(self, fake_gpu):
        from hbl_edge.runtime.trt_runner import TrtRunner

        r = TrtRunner(fake_gpu[2])
        with pytest.raises(BackendError, match=r"input shape 1x3x4x4 \(N×C×H×W\) is outside every profile.*rebuild"):
            r.run(np.zeros((1, 3, 4, 4), np.float32))

    def test_refuses_mismatched_engine(self, fake_gpu):
        from hbl_edge.runtime.trt_runner import TrtRunner

        _, _, engine = fake_gpu
        record = {"format": "hbl-engine/1", "key_ingredients": {"library": "tensorrt", "library_version": "10.0.1"}}
        engine.with_suffix(".json").write_text(json.dumps(record))
        with pytest.raises(BackendError, match="built with tensorrt 10.0.1, this is 10.3.0; rebuild it"):
            TrtRunner(engine)
        record["key_ingredients"]["library_version"] = "10.3.0"
        record["device_identity"] = "NVIDIA GeForce RTX 4090 (sm_89)"
        engine.with_suffix(".json").write_text(json.dumps(record))
        with pytest.raises(BackendError, match=r"built on NVIDIA GeForce RTX 4090 \(sm_89\), this GPU is Fake Orin \(sm_87\)"):
            TrtRunner(engine)
        record["device_identity"] = "Fake Orin (sm_87)"
        engine.with_suffix(".json").write_text(json.dumps(record))
        TrtRunner(engine).close()

    def test_undeserialisable_engine(self, fake_gpu, tmp_path):
        from hbl_edge.runtime.trt_runner import TrtRunner

        other = tmp_path / "other.engine"
        other.write_bytes(b"garbage")
        with pytest.raises(BackendError, match="cannot deserialise this engine"):
            TrtRunner(other)


def test_trt_runner_without_tensorrt(monkeypatch, tmp_path):
    from hbl_edge.runtime.trt_runner import TrtRunner

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` fail
    with pytest.raises(BackendError, match="tensorrt is not importable here.*pip install tensorrt"):
        TrtRunner(tmp_path / "model.engine")


def test_trt_rtx_runner_without_pycuda(monkeypatch, tmp_path):
    pytest.importorskip("tensorrt_rtx")
    from hbl_edge.runtime.trt_runner import TrtRtxRunner

    engine = tmp_path / "model.engine"
    engine.write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "pycuda", None)
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    with pytest.raises(BackendError, match="pycuda is not installed; `pip install pycuda`"):
        TrtRtxRunner(engine)
