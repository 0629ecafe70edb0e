"""TensorRT timing harness of the latency profiler (needs an NVIDIA GPU, TensorRT and pycuda).

Kept in one module, apart from the CPU harnesses in :mod:`hbl_edge.search.timing`. Engines are
built by :func:`hbl_edge.export.engines.build_serialized_engine`, the same build path as
``hbl-edge export --engine`` (explicit-batch network on TensorRT 8.x, parser and CUDA errors as
one line), so a graph the profiler times is built exactly as the deployed model is. Each graph
becomes an engine with an exact-shape profile, run with ``execute_async_v3`` on device buffers
and synchronised on the stream. Written against TensorRT 10's named-tensor API; this
repository's CI has no GPU, so treat its first run on a Jetson as a test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

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
    kind = "tensorrt"  # the engine library (:data:`hbl_edge.export.engines.ENGINE_KINDS`)

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

    def serialize(self, onnx_path: Path, shapes: Sequence[tuple[int, ...]]) -> bytes:
        """A serialized engine for ``onnx_path`` at exactly ``shapes``, built by the shared build path."""
        from ..export import engines

        return engines.build_serialized_engine(
            onnx_path, shapes, kind=self.kind, fp16=self.dtype == "float16", logger=self.logger,
        )

    def build(self, onnx_path: Path, shapes: Sequence[tuple[int, ...]]) -> Any:
        engine = self.runtime.deserialize_cuda_engine(self.serialize(onnx_path, shapes))
        if engine is None:
            raise BackendError(f"TensorRT could not load the engine it built for {onnx_path.name}")
        return engine

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
