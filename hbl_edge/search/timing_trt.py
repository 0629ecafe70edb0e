"""TensorRT timing harness of the latency profiler (needs an NVIDIA GPU, TensorRT and pycuda).

Kept in one module, apart from the CPU harnesses in :mod:`hbl_edge.search.timing`: the engine
build below is the profiler's own copy and is to be replaced by the shared engine-build function
of :mod:`hbl_edge.export.engines` (which must then keep what this one does: an explicit-batch
network on TensorRT 8.x, where ``create_network(0)`` makes an implicit-batch one that cannot
parse our ONNX). Each graph becomes an engine with an exact-shape profile, run with
``execute_async_v3`` on device buffers and synchronised on the stream. Written against
TensorRT 10's named-tensor API; this repository's CI has no GPU, so treat its first run on a
Jetson as a test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..errors import ConfigError
from ..runtime.runners import BackendError
from .timing import Block, Graph, export_tiny, inputs


def import_tensorrt() -> Any:
    try:
        import tensorrt as trt  # noqa: F401
    except ImportError:
        raise BackendError(
            "TensorRT is not installed here; install it (`pip install tensorrt` on a desktop, JetPack's "
            "python3-libnvinfer on a Jetson) or profile with --backend onnxruntime / torch"
        ) from None
    return trt


class TrtHarness:
    subtract_overhead = True

    def __init__(self, dtype: str, tmp: Path) -> None:
        trt = import_tensorrt()
        from ..runtime.trt_runner import import_pycuda

        cuda = import_pycuda()
        self.trt, self.cuda, self.tmp, self.dtype, self.n = trt, cuda, tmp, dtype, 0
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.ctx = cuda.Device(0).retain_primary_context()
        self.ctx.push()
        self.stream = cuda.Stream()
        self._keep: list[Any] = []

    def versions(self) -> dict[str, str]:
        return {"tensorrt": self.trt.__version__, "precision": self.dtype}

    def sync(self) -> None:
        self.stream.synchronize()

    def build(self, onnx_path: Path, shapes: Sequence[tuple[int, ...]]) -> Any:
        trt = self.trt
        builder = trt.Builder(self.logger)
        flags = 0
        if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH") and int(trt.__version__.split(".")[0]) < 10:
            flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse(onnx_path.read_bytes()):
            raise BackendError(f"TensorRT cannot parse {onnx_path.name}: {parser.get_error(0)}")
        config = builder.create_builder_config()
        if self.dtype == "float16":
            if not hasattr(trt.BuilderFlag, "FP16"):
                raise ConfigError("this TensorRT is strongly typed (no FP16 flag); profile float32 or export FP16 ONNX")
            config.set_flag(trt.BuilderFlag.FP16)
        profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            t = network.get_input(i)
            if any(d < 0 for d in t.shape):
                s = tuple(shapes[i])
                profile.set_shape(t.name, s, s, s)
        config.add_optimization_profile(profile)
        blob = builder.build_serialized_network(network, config)
        if blob is None:
            raise BackendError(f"TensorRT could not build an engine for {onnx_path.name}")
        return self.runtime.deserialize_cuda_engine(blob)

    def _bind(self, engine: Any, arrays: list[np.ndarray], plain: bool) -> Callable[[], Any]:
        trt, cuda = self.trt, self.cuda
        context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        ins = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        copies_in, copies_out = [], []
        for n, a in zip(ins, arrays):
            context.set_input_shape(n, a.shape)
            host = cuda.pagelocked_empty(a.shape, np.float32)
            host[...] = a
            dev = cuda.mem_alloc(host.nbytes)
            cuda.memcpy_htod(dev, host)
            context.set_tensor_address(n, int(dev))
            copies_in.append((dev, host))
            self._keep += [host, dev]
        for n in outs:
            shape = tuple(context.get_tensor_shape(n))
            host = cuda.pagelocked_empty(shape, trt.nptype(engine.get_tensor_dtype(n)))
            dev = cuda.mem_alloc(max(host.nbytes, 1))
            context.set_tensor_address(n, int(dev))
            copies_out.append((dev, host))
            self._keep += [host, dev]
        self._keep += [engine, context]
        stream = self.stream

        def run() -> None:
            if plain:
                for dev, host in copies_in:
                    cuda.memcpy_htod_async(dev, host, stream)
            context.execute_async_v3(stream.handle)
            if plain:
                for dev, host in copies_out:
                    cuda.memcpy_dtoh_async(host, dev, stream)

        return run

    def prepare(self, item: Graph, gen: torch.Generator) -> Block:
        xs = inputs(item.shapes, gen)
        self.n += 1
        path = self.tmp / f"op{self.n}.onnx"
        export_tiny(item.module.float().cpu().eval(), xs, path, dynamic=False)
        engine = self.build(path, item.shapes)
        run = self._bind(engine, [x.numpy() for x in xs], item.plain)
        return Block(open=lambda: run)  # engines hold no spinning host threads: one context, kept

    def prepare_onnx(self, path: Path, shape: tuple[int, ...]) -> Callable[[], Any]:
        engine = self.build(path, [shape])
        return self._bind(engine, [np.random.default_rng(0).random(shape, dtype=np.float32)], plain=True)

    def close(self) -> None:
        self._keep.clear()
        try:
            self.ctx.pop()
        except Exception:
            pass
