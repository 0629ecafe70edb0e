"""TensorRT and TensorRT-RTX runner: a serialized engine run through pycuda (no torch).

Named-tensor API only (TensorRT ≥ 8.5; the binding-index API is gone in TensorRT 10):
``set_input_shape`` when the batch shape changes, ``set_tensor_address`` for the input and
output buffers, ``execute_async_v3`` on a CUDA stream. Host buffers are page-locked so the
copies are asynchronous DMA. Host and device buffers only grow: a new shape reuses them when it
fits (a video that changes resolution, the last, smaller tiles of an image), so a stream
allocates once per largest size.

``tensorrt`` (desktop pip wheels, JetPack's python3-libnvinfer on a Jetson) and
``tensorrt_rtx`` share this code; where they differ (TensorRT-RTX's JIT runtime cache) the
difference is feature-detected on the module, not assumed from its name.

The CUDA context is the device's primary context (the one the CUDA runtime, and so TensorRT,
uses), pushed around every call so a runner may be created in one thread and used in another.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..runio import atomic_path
from .runners import BackendError, check_batch

log = logging.getLogger(__name__)

_INSTALL_HINTS = {
    "tensorrt": "install it with `pip install tensorrt` on a desktop; on a Jetson it comes with JetPack "
                "(python3-libnvinfer), use a venv created with --system-site-packages",
    "tensorrt_rtx": "install it with `pip install tensorrt-rtx`",
}
_LIBRARY_NAMES = {"tensorrt": "tensorrt", "tensorrt_rtx": "tensorrt-rtx"}


def import_tensorrt(module: str = "tensorrt") -> Any:
    """``tensorrt`` or ``tensorrt_rtx``, or a :class:`BackendError` saying how to install it."""
    if module not in _INSTALL_HINTS:
        raise BackendError(f"unknown TensorRT module {module!r}; use one of {', '.join(_INSTALL_HINTS)}")
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise BackendError(f"{module} is not importable here ({e}); {_INSTALL_HINTS[module]}") from None


def import_pycuda() -> Any:
    """``pycuda.driver``, initialised, or a :class:`BackendError` saying what is missing."""
    try:
        import pycuda.driver as cuda
    except ImportError:
        raise BackendError(
            "pycuda is not installed; `pip install pycuda` (it compiles against the CUDA toolkit: "
            "put nvcc on PATH first, on a Jetson /usr/local/cuda/bin)"
        ) from None
    try:
        cuda.init()
    except Exception as e:  # pycuda.driver.Error: no driver / no device
        raise BackendError(f"CUDA is not usable here ({e}); TensorRT engines need an NVIDIA GPU and driver") from None
    return cuda


def cuda_device_identity(device_id: int = 0) -> dict[str, str] | None:
    """``{"name", "compute_capability"}`` of CUDA device ``device_id``, or None when none is visible.

    Asks pycuda first, then ``nvidia-smi`` (absent on Jetsons, where pycuda is the way).
    """
    try:
        import pycuda.driver as cuda

        cuda.init()
        if cuda.Device.count() > device_id:
            dev = cuda.Device(device_id)
            major, minor = dev.compute_capability()
            return {"name": dev.name(), "compute_capability": f"{major}.{minor}"}
        return None
    except Exception:  # pycuda absent or no driver: try nvidia-smi
        pass
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run(
            [smi, "--query-gpu=name,compute_cap", "--format=csv,noheader", f"--id={device_id}"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    if not out or "," not in out:
        return None
    name, cc = (s.strip() for s in out.splitlines()[0].rsplit(",", 1))
    return {"name": name, "compute_capability": cc}


def device_label(identity: dict[str, str] | None) -> str | None:
    """``"NVIDIA GeForce RTX 4090 (sm_89)"`` — the device part of an engine cache key."""
    if identity is None:
        return None
    return f"{identity['name']} (sm_{identity['compute_capability'].replace('.', '')})"


def read_engine_sidecar(engine_path: Path) -> dict[str, Any] | None:
    """The build record written beside an engine by :func:`hbl_edge.export.build_engine`."""
    try:
        meta = json.loads(engine_path.with_suffix(".json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return meta if isinstance(meta, dict) else None


def check_engine_sidecar(engine_path: Path, trt: Any, module: str, device_id: int = 0) -> None:
    """Refuse, with the fix in the message, an engine recorded as built for another library/GPU.

    Engines are not portable between TensorRT versions or GPUs (DESIGN §9). Without a sidecar
    the check is left to TensorRT's own deserialisation, which fails on a mismatch.
    """
    meta = read_engine_sidecar(engine_path)
    if meta is None:
        log.debug("%s has no build record beside it; relying on TensorRT's own checks", engine_path.name)
        return
    built = meta.get("key_ingredients", {})
    fix = "rebuild it from the ONNX on this machine (`hbl-edge export EXPORT_DIR --engine ...`)"
    library = _LIBRARY_NAMES[module]
    if built.get("library") not in (None, library):
        raise BackendError(f"{engine_path.name} is a {built.get('library')} engine, not {library}; use the matching backend")
    if built.get("library_version") not in (None, trt.__version__):
        raise BackendError(
            f"{engine_path.name} was built with {library} {built.get('library_version')}, this is "
            f"{trt.__version__}; {fix}"
        )
    here = device_label(cuda_device_identity(device_id))
    recorded = meta.get("device_identity")
    if module == "tensorrt" and here is not None and recorded not in (None, here):
        raise BackendError(f"{engine_path.name} was built on {recorded}, this GPU is {here}; {fix}")


def _dims(shape: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in shape)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


_CUDA_HINT = ("check that the NVIDIA driver is loaded (`nvidia-smi`; on a Jetson `tegrastats`) and that this process "
              "sees the GPU (CUDA_VISIBLE_DEVICES, a container started with --gpus all or --runtime nvidia)")


def create_runtime(trt: Any, logger: Any, module: str) -> Any:
    """``trt.Runtime(logger)``, with CUDA initialisation failures as a one-line :class:`BackendError`.

    When CUDA cannot be initialised TensorRT logs why and its binding's factory returns a null
    pointer, which pybind11 raises as a bare ``TypeError``; some versions return None.
    """
    try:
        runtime = trt.Runtime(logger)
    except TypeError as e:
        raise BackendError(f"{module} {trt.__version__} could not initialise CUDA ({_first_line(e)}); {_CUDA_HINT}") from None
    if runtime is None:
        raise BackendError(f"{module} {trt.__version__} could not create a runtime (no usable GPU/driver); {_CUDA_HINT}")
    return runtime


def runtime_cache_path(engine_path: str | os.PathLike[str], folder: str | os.PathLike[str] | None = None,
                       device_id: int = 0) -> Path:
    """Where the TensorRT-RTX runtime cache of an engine lives: ``<engine stem>.runtime.<gpu>.cache``.

    The cache holds kernels compiled for one GPU and driver, so the GPU is part of the name
    (several GPUs in one machine keep their own); ``folder`` defaults to the engine's folder.
    """
    engine_path = Path(engine_path)
    label = device_label(cuda_device_identity(device_id)) or f"device{device_id}"
    tag = hashlib.sha256(label.encode()).hexdigest()[:8]
    return Path(folder or engine_path.parent) / f"{engine_path.stem}.runtime.{tag}.cache"


class TrtRunner:
    """``run(batch) -> batch`` with a serialized TensorRT engine.

    Args:
        engine_path: an engine built by :func:`hbl_edge.export.build_engine` (or trtexec).
        module: ``"tensorrt"`` or ``"tensorrt_rtx"``.
        device_id: CUDA device.
        runtime_cache: TensorRT-RTX only: file for the JIT runtime cache, loaded when present and
            saved after the first inference of every new input shape (when kernels were just
            compiled) and on :meth:`close`, so the next process starts with them.
        check_sidecar: refuse engines whose build record names another library version or GPU.
    """

    name = "trt"

    def __init__(
        self,
        engine_path: str | os.PathLike[str],
        *,
        module: str = "tensorrt",
        device_id: int = 0,
        runtime_cache: str | os.PathLike[str] | None = None,
        check_sidecar: bool = True,
        verbose: bool = False,
    ) -> None:
        trt = import_tensorrt(module)
        path = Path(engine_path)
        if not path.is_file():
            raise BackendError(f"engine {str(path)!r} does not exist; build one with `hbl-edge export EXPORT_DIR --engine ...`")
        cuda = import_pycuda()
        if cuda.Device.count() <= device_id:
            raise BackendError(f"CUDA device {device_id} does not exist here ({cuda.Device.count()} visible)")
        if check_sidecar:
            check_engine_sidecar(path, trt, module, device_id)
        self.trt, self._cuda, self.path, self.module = trt, cuda, path, module
        self._lock = threading.Lock()
        self._ctx = cuda.Device(device_id).retain_primary_context()
        self._runtime_cache_path = Path(runtime_cache) if runtime_cache else None
        self._runtime_cache = None
        self._runtime_cache_dirty = False
        self._d_in = self._d_out = None
        self._capacity = {"in": 0, "out": 0}
        self._host: dict[str, Any] = {"in": None, "out": None}  # page-locked, grow-only (bytes)
        self.host_allocations = 0  # page-locked allocations so far (grow-only: one per new maximum)
        self._shape: tuple[int, ...] | None = None
        self._profile: int | None = None
        self._ctx.push()
        try:
            self._logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
            self._runtime = create_runtime(trt, self._logger, module)
            self.engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
            if self.engine is None:
                raise BackendError(
                    f"{path.name}: {module} {trt.__version__} cannot deserialise this engine (built for another "
                    "TensorRT version or GPU?); rebuild it from the ONNX on this machine"
                )
            self._find_io()
            self.context = self._create_context()
            if self.context is None:
                raise BackendError(f"{path.name}: could not create an execution context (out of GPU memory?)")
            self._stream = cuda.Stream()
        except BaseException:
            self._ctx.pop()
            self._ctx.detach()
            self._ctx = None
            raise
        self._ctx.pop()

    # -- setup ------------------------------------------------------------------------------
    def _find_io(self) -> None:
        trt, engine = self.trt, self.engine
        if not hasattr(engine, "num_io_tensors"):
            raise BackendError(
                f"{self.path.name}: {self.module} {trt.__version__} has no named-tensor API (TensorRT ≥ 8.5 needed; "
                "on a Jetson: JetPack ≥ 5.1)"
            )
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise BackendError(
                f"{self.path.name}: expected one input and one output tensor, got inputs {inputs}, outputs {outputs}"
            )
        self.input_name, self.output_name = inputs[0], outputs[0]
        self._in_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self.input_name)))
        self._out_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self.output_name)))
        #: (min, opt, max) input shapes of every optimisation profile.
        self.profiles: list[tuple[tuple[int, ...], ...]] = [
            tuple(_dims(s) for s in engine.get_tensor_profile_shape(self.input_name, k))
            for k in range(engine.num_optimization_profiles)
        ]

    def _create_context(self) -> Any:
        engine = self.engine
        config = None
        if self._runtime_cache_path is not None and hasattr(engine, "create_runtime_config"):
            config = engine.create_runtime_config()
        if config is not None and hasattr(config, "create_runtime_cache"):
            # TensorRT-RTX compiles kernels just in time on first use; its runtime cache keeps them.
            cache = config.create_runtime_cache()
            if self._runtime_cache_path.is_file():
                if cache.deserialize(self._runtime_cache_path.read_bytes()):
                    log.info("runtime cache loaded from %s", self._runtime_cache_path)
                else:
                    log.info("runtime cache %s does not fit this GPU/driver/version; starting a new one",
                             self._runtime_cache_path)
            config.set_runtime_cache(cache)
            self._runtime_cache = cache
            return engine.create_execution_context(config)
        if self._runtime_cache_path is not None:
            log.info("%s %s has no runtime cache; ignoring %s", self.module, self.trt.__version__, self._runtime_cache_path)
        return engine.create_execution_context()

    def select_profile(self, shape: tuple[int, ...]) -> int:
        """Index of the first optimisation profile whose [min, max] holds ``shape``."""
        for k, (lo, _, hi) in enumerate(self.profiles):
            if len(lo) == len(shape) and all(a <= s <= b for a, s, b in zip(lo, shape, hi)):
                return k
        raise BackendError(self._outside_message(shape))

    def _outside_message(self, shape: tuple[int, ...]) -> str:
        """Why ``shape`` fits no profile, and the fix that helps for that reason."""
        def wh(s: tuple[int, ...]) -> str:
            return f"{s[3]}x{s[2]}"

        ranges = ", ".join(f"{wh(lo)}…{wh(hi)} (batch {lo[0]}–{hi[0]})" for lo, _, hi in self.profiles)
        head = f"input {shape[0]}×{shape[1]}×{shape[2]}×{shape[3]} (N×C×H×W) fits no profile of {self.path.name} ({ranges}); "
        rebuild = "`hbl-edge export EXPORT_DIR --engine ... --shapes min=1x1,opt=WxH,max=WxH`"
        if all(shape[0] > hi[0] for _, _, hi in self.profiles):
            return head + f"pass fewer images per call, or rebuild the engine with a larger batch (add ,batch=N to {rebuild})"
        larger = all(shape[2] > hi[2] or shape[3] > hi[3] for _, _, hi in self.profiles)
        if larger:
            side = max(min(hi[2], hi[3]) for _, _, hi in self.profiles)
            return head + (f"it is larger than every profile's max: tile it (--tile {min(side, 1024)}; "
                           f"hbl-edge enhance and stream tile automatically), or rebuild with a larger max ({rebuild})")
        # Below a profile's min: tiling cannot help (tiles are smaller still); the graph pads any
        # size itself, so a min of 1x1 is always valid.
        return head + f"it is smaller than the profiles' min: rebuild the engine with a smaller min ({rebuild})"

    def _prepare(self, shape: tuple[int, ...]) -> None:
        """Bind buffers for a new input shape (the only place shapes and addresses are set)."""
        cuda, ctx = self._cuda, self.context
        k = self.select_profile(shape)
        if k != self._profile:
            if not ctx.set_optimization_profile_async(k, self._stream.handle):
                raise BackendError(f"{self.path.name}: could not select optimisation profile {k}")
            self._profile = k
        if not ctx.set_input_shape(self.input_name, shape):
            raise BackendError(f"{self.path.name}: TensorRT rejected input shape {shape}")
        out_shape = _dims(ctx.get_tensor_shape(self.output_name))
        if any(d < 0 for d in out_shape):
            raise BackendError(f"{self.path.name}: output shape {out_shape} left unresolved for input {shape}")
        self._h_in = self._host_view("in", shape, self._in_dtype)
        self._h_out = self._host_view("out", out_shape, self._out_dtype)
        self._d_in = self._device_buffer("in", self._d_in, self._h_in.nbytes)
        self._d_out = self._device_buffer("out", self._d_out, self._h_out.nbytes)
        ctx.set_tensor_address(self.input_name, int(self._d_in))
        ctx.set_tensor_address(self.output_name, int(self._d_out))
        self._shape = shape
        # TensorRT-RTX compiles kernels for a new shape on its first run: save them after it.
        self._runtime_cache_dirty = self._runtime_cache is not None

    def _host_view(self, which: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A ``shape`` view into a grow-only page-locked buffer (allocating only past its size).

        Page-locked allocations are slow (they pin pages in the kernel) and fragment a small
        device's memory, so a stream whose resolution changes must not reallocate per change.
        """
        nbytes = int(np.prod(shape)) * dtype.itemsize
        buf = self._host[which]
        if buf is None or buf.nbytes < nbytes:
            buf = self._cuda.pagelocked_empty(max(nbytes, 1), np.uint8)
            self._host[which] = buf
            self.host_allocations += 1
        return buf[:nbytes].view(dtype).reshape(shape)

    def _device_buffer(self, which: str, current: Any, nbytes: int) -> Any:
        if current is not None and self._capacity[which] >= nbytes:
            return current  # grow-only: shrinking a video's resolution never reallocates
        if current is not None:
            current.free()
        self._capacity[which] = nbytes
        return self._cuda.mem_alloc(nbytes)

    # -- inference ------------------------------------------------------------------------
    def run(self, batch: np.ndarray) -> np.ndarray:
        x = check_batch(batch)
        cuda = self._cuda
        with self._lock:
            self._ctx.push()
            try:
                if x.shape != self._shape:
                    self._prepare(x.shape)
                np.copyto(self._h_in, x, casting="same_kind")
                cuda.memcpy_htod_async(self._d_in, self._h_in, self._stream)
                if not self.context.execute_async_v3(self._stream.handle):
                    raise BackendError(f"{self.path.name}: TensorRT execution failed (see the TensorRT log above)")
                cuda.memcpy_dtoh_async(self._h_out, self._d_out, self._stream)
                self._stream.synchronize()
                # Copy out: the page-locked buffer is reused by the next call.
                out = self._h_out.astype(np.float32, copy=True)
                if self._runtime_cache_dirty:
                    self._runtime_cache_dirty = False
                    self._save_runtime_cache()
                return out
            finally:
                self._ctx.pop()

    __call__ = run

    def close(self) -> None:
        """Save the runtime cache (TensorRT-RTX) and free GPU buffers. Safe to call twice.

        Takes the runner's lock, so a close from another thread (a stream shutting down) waits
        for the inference in flight instead of freeing its buffers under it.
        """
        lock = getattr(self, "_lock", None)
        if lock is None:
            return
        with lock:
            if getattr(self, "_ctx", None) is None:
                return
            self._ctx.push()
            try:
                try:
                    self._save_runtime_cache()
                except OSError as e:  # an unwritable cache only costs JIT time next start
                    log.warning("could not save the runtime cache to %s (%s)", self._runtime_cache_path, e)
                for buf in (self._d_in, self._d_out):
                    if buf is not None:
                        buf.free()
                self._d_in = self._d_out = None
                self._host = {"in": None, "out": None}
                self._shape = None
                self.context = None
                self.engine = None
            finally:
                self._ctx.pop()
                self._ctx.detach()
                self._ctx = None

    def _save_runtime_cache(self) -> None:
        if self._runtime_cache is None or self._runtime_cache_path is None:
            return
        blob = bytes(self._runtime_cache.serialize())
        with atomic_path(self._runtime_cache_path) as tmp:
            tmp.write_bytes(blob)
        log.info("runtime cache saved to %s (%d bytes)", self._runtime_cache_path, len(blob))

    def __enter__(self) -> "TrtRunner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name, "engine": str(self.path), "library": self.module,
            "version": self.trt.__version__, "profiles": self.profiles,
        }


class TrtRtxRunner(TrtRunner):
    """The same runner on TensorRT-RTX (module ``tensorrt_rtx``)."""

    name = "trt-rtx"

    def __init__(self, engine_path: str | os.PathLike[str], **options: Any) -> None:
        options.setdefault("module", "tensorrt_rtx")
        super().__init__(engine_path, **options)


__all__ = [
    "TrtRunner", "TrtRtxRunner", "check_engine_sidecar", "create_runtime", "cuda_device_identity", "device_label",
    "import_pycuda", "import_tensorrt", "read_engine_sidecar", "runtime_cache_path",
]
