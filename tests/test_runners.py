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
        with pytest.raises(BackendError, match="does not exist; pass an export/ folder holding model.onnx"):
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
        self.pinned = 0
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

    def pagelocked_empty(self, shape, dtype):
        self.pinned += 1
        return np.empty(shape, dtype)

    def memcpy_htod_async(self, dst, src, stream) -> None:
        raw = np.ascontiguousarray(src).view(np.uint8).ravel()
        self.memory[int(dst)][: raw.size] = raw

    def memcpy_dtoh_async(self, dst, src, stream) -> None:
        raw = dst.view(np.uint8).reshape(-1)
        raw[:] = self.memory[int(src)][: raw.size]


class FakeRuntimeCache:
    """TensorRT-RTX's runtime cache: here, the shapes whose kernels were 'compiled', as JSON."""

    def __init__(self) -> None:
        self.compiled: list[list[int]] = []
        self.loaded: list[bytes] = []
        self.serialized = 0

    def deserialize(self, blob: bytes) -> bool:
        self.loaded.append(bytes(blob))
        self.compiled = json.loads(bytes(blob))
        return True

    def serialize(self) -> bytes:
        self.serialized += 1
        return json.dumps(self.compiled).encode()


def make_fake_trt(cuda: FakeCuda, version: str = "10.3.0", rtx: bool = False) -> types.ModuleType:
    trt = types.ModuleType("tensorrt_rtx" if rtx else "tensorrt")
    trt.__version__ = version
    calls: list[tuple] = []
    trt.calls = calls
    trt.execute_hook = None
    trt.runtime_error = None  # an exception the Runtime factory raises (CUDA initialisation failure)
    trt.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")
    trt.nptype = lambda dt: np.float32

    class Logger:
        WARNING, VERBOSE = 2, 4

        def __init__(self, level: int) -> None:
            pass

    class Context:
        def __init__(self, cache: FakeRuntimeCache | None = None) -> None:
            self.shape = None
            self.addr: dict[str, int] = {}
            self.cache = cache

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
            if trt.execute_hook is not None:
                trt.execute_hook()
            if self.cache is not None and list(self.shape) not in self.cache.compiled:
                self.cache.compiled.append(list(self.shape))  # JIT: kernels for a new shape
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

        def create_execution_context(self, config=None):
            return Context(config.cache if config is not None else None)

    class RuntimeConfig:
        cache = None

        def create_runtime_cache(self):
            trt.caches.append(FakeRuntimeCache())
            return trt.caches[-1]

        def set_runtime_cache(self, cache):
            self.cache = cache

    trt.caches = []
    if rtx:
        Engine.create_runtime_config = lambda self: RuntimeConfig()

    class Runtime:
        def __init__(self, logger) -> None:
            if trt.runtime_error is not None:
                raise trt.runtime_error

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
        assert cuda.pinned == 2 and r.host_allocations == 2  # one page-locked buffer each way

        trt.calls.clear()  # a smaller frame: new shape, same device AND page-locked host buffers
        small = x[:, :, :10, :12]
        np.testing.assert_allclose(r.run(small), 1.0 - small, atol=1e-6)
        assert [c[0] for c in trt.calls] == ["shape", "address", "address", "execute"]
        assert cuda.allocs == 2 and cuda.pinned == 2
        np.testing.assert_allclose(r.run(x), 1.0 - x, atol=1e-6)  # back up to the first size: still no allocation
        assert cuda.allocs == 2 and cuda.pinned == 2

        trt.calls.clear()  # a frame only the second profile holds: switch profile, grow buffers
        y = np.random.default_rng(1).random((2, 3, 40, 50), dtype=np.float32)
        np.testing.assert_allclose(r.run(y), 1.0 - y, atol=1e-6)
        assert trt.calls[:2] == [("profile", 1), ("shape", "image", (2, 3, 40, 50))] and cuda.allocs == 4
        assert cuda.pinned == 4
        r.close()
        r.close()
        assert not cuda.memory

    def test_shape_outside_profiles_gives_the_advice_that_helps(self, fake_gpu):
        from hbl_edge.runtime.trt_runner import TrtRunner

        r = TrtRunner(fake_gpu[2])
        with pytest.raises(BackendError) as small:  # below min: tiling cannot help, a smaller min does
            r.run(np.zeros((1, 3, 4, 4), np.float32))
        msg = str(small.value)
        assert "1×3×4×4 (N×C×H×W) fits no profile" in msg and "smaller than the profiles' min" in msg
        assert "--shapes min=1x1" in msg and "--tile" not in msg
        with pytest.raises(BackendError) as big:  # beyond every max: tile within the largest max side
            r.run(np.zeros((1, 3, 200, 90), np.float32))
        assert "larger than every profile's max: tile it (--tile 128;" in str(big.value)
        with pytest.raises(BackendError, match="pass fewer images per call"):
            r.run(np.zeros((3, 3, 40, 40), np.float32))
        for e in (small, big):
            assert "\n" not in str(e.value)

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


class TestTrtRunnerLifecycle:
    def test_close_waits_for_the_inference_in_flight(self, fake_gpu):
        import threading

        from hbl_edge.runtime.trt_runner import TrtRunner

        cuda, trt, engine = fake_gpu
        r = TrtRunner(engine)
        entered, release = threading.Event(), threading.Event()
        trt.execute_hook = lambda: (entered.set(), release.wait(5))
        x = np.random.default_rng(0).random((1, 3, 16, 16), dtype=np.float32)
        result: dict = {}
        worker = threading.Thread(target=lambda: result.setdefault("out", r.run(x)))
        worker.start()
        assert entered.wait(5)
        closer = threading.Thread(target=r.close)
        closer.start()
        closer.join(0.3)
        assert closer.is_alive() and cuda.memory  # close is blocked on the lock; buffers still there
        release.set()
        worker.join(5)
        closer.join(5)
        assert not closer.is_alive() and not cuda.memory
        np.testing.assert_allclose(result["out"], 1.0 - x, atol=1e-6)  # the run finished on live buffers

    def test_cuda_initialisation_failure_is_one_line(self, fake_gpu):
        from hbl_edge.runtime.trt_runner import TrtRunner

        cuda, trt, engine = fake_gpu
        trt.runtime_error = TypeError("pybind11::init(): factory function returned nullptr\nmore")
        with pytest.raises(BackendError) as e:
            TrtRunner(engine)
        msg = str(e.value)
        assert msg.startswith("tensorrt 10.3.0 could not initialise CUDA (pybind11::init(): factory function returned nullptr)")
        assert "nvidia-smi" in msg and "\n" not in msg and cuda.pushes == 0  # context popped on the way out

    def test_rtx_runtime_cache_is_reused_and_saved(self, monkeypatch, tmp_path):
        from hbl_edge.runtime.trt_runner import TrtRtxRunner

        cuda = FakeCuda()
        pycuda = types.ModuleType("pycuda")
        pycuda.driver = cuda
        rtx = make_fake_trt(cuda, version="1.7.1.116", rtx=True)
        monkeypatch.setitem(sys.modules, "pycuda", pycuda)
        monkeypatch.setitem(sys.modules, "pycuda.driver", cuda)
        monkeypatch.setitem(sys.modules, "tensorrt_rtx", rtx)
        engine = tmp_path / "model.tensorrt-rtx.0123456789abcdef.engine"
        engine.write_bytes(b"engine")
        cache_file = tmp_path / "rt.cache"
        x = np.zeros((1, 3, 16, 16), np.float32)

        r = TrtRtxRunner(engine, runtime_cache=cache_file)
        assert rtx.caches[0].loaded == []  # no file yet: a fresh cache
        r.run(x)  # first run of a shape: kernels compiled, cache saved right away (no close needed)
        assert json.loads(cache_file.read_bytes()) == [[1, 3, 16, 16]]
        r.run(x)
        assert rtx.caches[0].serialized == 1  # same shape: nothing new to save
        r.run(np.zeros((1, 3, 8, 12), np.float32))
        assert json.loads(cache_file.read_bytes()) == [[1, 3, 16, 16], [1, 3, 8, 12]]
        r.close()
        assert rtx.caches[0].serialized == 3  # and once more on close

        again = TrtRtxRunner(engine, runtime_cache=cache_file)  # the next process starts with the kernels
        assert json.loads(rtx.caches[1].loaded[0]) == [[1, 3, 16, 16], [1, 3, 8, 12]]
        again.run(x)
        assert rtx.caches[1].serialized == 1 and json.loads(cache_file.read_bytes()) == [[1, 3, 16, 16], [1, 3, 8, 12]]
        again.close()
