"""Runner registry: one interface, several inference backends.

A runner turns an N×3×H×W float32 batch in [0, 1] into the enhanced batch, same shape, in
[0, 1]. Backends are registered by name and created by one factory, :func:`create_runner`:

========  ==================  ==========================================================
name      artifact            what runs it
========  ==================  ==========================================================
ort       model.onnx          onnxruntime (CUDA execution provider first when present)
torch     bundle directory    PyTorch, BatchNorm folded (:class:`TorchRunner`)
trt       TensorRT engine     TensorRT 10.x + pycuda, named-tensor API
trt-rtx   TensorRT-RTX engine TensorRT-RTX + pycuda, same runner code
========  ==================  ==========================================================

Importing this module (or ``ort_runner`` / ``trt_runner``) never imports torch: factories are
``"module:attribute"`` strings resolved when a runner is created, so a Jetson with TensorRT,
pycuda and numpy only can use every backend but ``torch``.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..errors import HblError


class BackendError(HblError):
    """A backend is missing, cannot run here, or cannot run the given artifact or input."""


@runtime_checkable
class Runner(Protocol):
    """``run(batch N×3×H×W float32 in [0, 1]) -> N×3×H×W float32 in [0, 1]``."""

    name: str

    def run(self, batch: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Backend:
    """A registered backend: what it loads, what it needs, and where its runner lives."""

    name: str
    artifact: str  # "onnx", "bundle" or "engine"
    description: str
    modules: tuple[str, ...]  # Python modules it needs (checked without importing them)
    needs_cuda: bool
    factory: str  # "package.module:callable(artifact_path, **options) -> Runner"


BACKENDS: dict[str, Backend] = {}


def register_backend(backend: Backend) -> Backend:
    if backend.name in BACKENDS:
        raise ValueError(f"backend {backend.name!r} registered twice")
    BACKENDS[backend.name] = backend
    return backend


register_backend(Backend(
    "ort", "onnx", "onnxruntime (CUDA execution provider when available, else CPU)",
    ("onnxruntime",), False, "hbl_edge.runtime.ort_runner:OrtRunner",
))
register_backend(Backend(
    "torch", "bundle", "PyTorch eager (BatchNorm folded)",
    ("torch",), False, "hbl_edge.runtime.runners:_torch_runner",
))
register_backend(Backend(
    "trt", "engine", "TensorRT engine via pycuda (named-tensor API)",
    ("tensorrt", "pycuda"), True, "hbl_edge.runtime.trt_runner:TrtRunner",
))
register_backend(Backend(
    "trt-rtx", "engine", "TensorRT-RTX engine via pycuda",
    ("tensorrt_rtx", "pycuda"), True, "hbl_edge.runtime.trt_runner:TrtRtxRunner",
))


def get_backend(name: str) -> Backend:
    try:
        return BACKENDS[name]
    except KeyError:
        raise BackendError(f"unknown backend {name!r}; known backends: {', '.join(BACKENDS)}") from None


def _module_present(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def unavailable_reason(name: str) -> str | None:
    """Why backend ``name`` cannot run here (one line), or None when it can."""
    backend = get_backend(name)
    missing = [m for m in backend.modules if not _module_present(m)]
    if missing:
        return f"not installed: {', '.join(missing)}"
    if backend.needs_cuda:
        from .trt_runner import cuda_device_identity  # pycuda / nvidia-smi; never torch

        if cuda_device_identity() is None:
            return "no CUDA device visible"
    return None


def backend_status() -> dict[str, str]:
    """``{name: "available" | reason}`` for every registered backend."""
    return {name: (unavailable_reason(name) or "available") for name in BACKENDS}


def available_backends() -> list[str]:
    """Names of the backends that can run on this machine, in registry order."""
    return [name for name in BACKENDS if unavailable_reason(name) is None]


def _resolve(factory: str) -> Any:
    module, _, attr = factory.partition(":")
    return getattr(importlib.import_module(module), attr)


def create_runner(backend: str, artifact: str | Path, **options: Any) -> Runner:
    """A runner of ``backend`` for ``artifact`` (ONNX file, bundle directory or engine file).

    Options go to the backend's runner, e.g. ``threads=`` for ``ort``, ``device=``, ``compile=``
    and ``threads=`` for ``torch``, ``device_id=`` and ``runtime_cache=`` for ``trt``/``trt-rtx``.
    Most callers want :func:`hbl_edge.runtime.model.load_model`, which also finds the artifact
    (ONNX, engine, bundle) for a model folder.
    """
    spec = get_backend(backend)
    missing = [m for m in spec.modules if not _module_present(m)]
    if missing:
        raise BackendError(
            f"backend {backend!r} needs {', '.join(missing)}, which is not installed here; "
            f"available backends: {', '.join(available_backends()) or 'none'}"
        )
    return _resolve(spec.factory)(artifact, **options)


def _torch_runner(bundle: str | Path, device: str = "cpu", compile: bool = False, threads: int | None = None) -> Runner:
    """The torch backend loads a model bundle (weights unfolded) and folds it in TorchRunner."""
    import torch  # torch enters here and only here (with the bundle below)

    from ..bundle import load_bundle
    from .torch_runner import TorchRunner

    if threads is not None:
        if threads < 1:
            raise BackendError(f"threads must be ≥ 1, got {threads}")
        torch.set_num_threads(int(threads))
    runner = TorchRunner(load_bundle(bundle, device=device).model, device=device, compile=compile)
    runner.threads = torch.get_num_threads()  # type: ignore[attr-defined]
    if not hasattr(runner, "close"):
        runner.close = lambda: None  # type: ignore[attr-defined]
    return runner


def check_batch(batch: np.ndarray) -> np.ndarray:
    """The batch as C-contiguous float32 N×3×H×W, or a ValueError saying what is wrong."""
    x = np.asarray(batch)
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected an N×3×H×W image batch, got shape {tuple(x.shape)}")
    if min(x.shape) < 1:
        raise ValueError(f"empty image batch of shape {tuple(x.shape)}")
    return np.ascontiguousarray(x, dtype=np.float32)


__all__ = [
    "Backend", "BackendError", "BACKENDS", "Runner", "available_backends", "backend_status",
    "check_batch", "create_runner", "get_backend", "register_backend", "unavailable_reason",
]
