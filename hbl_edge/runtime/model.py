"""``--model PATH`` for the deploy commands: a bundle, its ``export/`` folder, or a copy of it.

:func:`load_model` is the one place a path and a backend name become a ready runner, for
``enhance``, ``bench``, ``stream``, ``eval``, ``export --engine`` and the Python API: it finds the
ONNX, reads the manifest (:mod:`hbl_edge.export.manifest`), picks the backend, builds or reuses
the engine (TensorRT / TensorRT-RTX) and sets up the runner. Torch-free: an ``export/`` folder
(ONNX + ``export.json``) is enough for every backend but ``torch``, which needs the bundle.

Resolution of ``PATH`` (:func:`resolve_model_path`):

==========================================  =========================  ========================
PATH holds                                  export folder              bundle (torch backend)
==========================================  =========================  ========================
model.onnx (a copied export/ folder)        PATH                       PATH/.. if it is a bundle
model.json + model.safetensors (a bundle)   PATH/export if it has one  PATH
neither                                     one-line error             one-line error
==========================================  =========================  ========================

Backends: ``auto`` is the first of :data:`AUTO_ORDER` (trt, trt-rtx, ort, torch) that can run
this model here: its library is importable, the GPU is visible (engine backends), and the
artifact it needs is there (ONNX for trt/trt-rtx/ort, the bundle for torch).

Engines are built on the device from the ONNX, into the export folder when it is writable,
else into ``$HBL_EDGE_CACHE_DIR`` / ``~/.cache/hbl-edge/engines/<model hash>/`` (an engine
already in the export folder is reused either way), keyed by ONNX sha256, library version,
GPU, precision and profiles (:mod:`hbl_edge.export.cache`). TensorRT-RTX's runtime cache of
just-in-time kernels is kept beside the engine (writable folder) and reused by the next run.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BundleError, ConfigError
from ..export.manifest import MANIFEST_NAME, ONNX_NAME, Manifest, read_manifest
from .runners import BackendError, Runner, create_runner, unavailable_reason
from .tiling import DEFAULT_TILE, run_image

log = logging.getLogger(__name__)

#: ``--backend auto`` takes the first of these that can run the model here (fastest first on a
#: GPU machine: TensorRT engines, TensorRT-RTX engines, ONNX Runtime, PyTorch eager).
AUTO_ORDER = ("trt", "trt-rtx", "ort", "torch")
BACKEND_CHOICES = ("auto", *AUTO_ORDER)
BUNDLE_FILES = ("model.json", "model.safetensors")

#: (min, opt, max) N×3×H×W shapes of one engine optimisation profile.
Profile = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]


# ---------------------------------------------------------------------------------------------
# Where the model is
# ---------------------------------------------------------------------------------------------
def _is_bundle(folder: Path) -> bool:
    return all((folder / name).is_file() for name in BUNDLE_FILES)


@dataclass(frozen=True)
class ModelSource:
    """What a ``--model`` path resolved to: an export folder, a bundle, or both."""

    path: Path
    export_dir: Path | None
    bundle_dir: Path | None

    @property
    def kind(self) -> str:
        """``"bundle"`` when PATH is a bundle, else ``"export"`` (an export folder, maybe a copy)."""
        return "bundle" if self.bundle_dir == self.path else "export"


def resolve_model_path(path: str | os.PathLike[str]) -> ModelSource:
    """Find the export folder and the bundle behind ``path`` (see the module docstring).

    A file inside either (``model.json``, ``model.safetensors``, ``export.json``, ``model.onnx``)
    stands for its folder.

    Raises:
        BundleError: nothing to run there (one line naming what is missing).
    """
    p = Path(path)
    if p.is_file() and (p.name in (*BUNDLE_FILES, MANIFEST_NAME) or p.suffix == ".onnx"):
        p = p.parent
    if not p.exists():
        raise BundleError(f"{p} does not exist; pass a model bundle (run directory), its export/ folder, "
                          "or a copy of that folder")
    if not p.is_dir():
        raise BundleError(f"{p}: not a model folder; pass a model bundle (run directory), its export/ folder, "
                          "or a copy of that folder")
    if (p / ONNX_NAME).is_file():
        export_dir: Path | None = p
    elif (p / "export" / ONNX_NAME).is_file():
        export_dir = p / "export"
    else:
        export_dir = None
    if _is_bundle(p):
        bundle_dir: Path | None = p
    elif export_dir == p and _is_bundle(p.parent):
        bundle_dir = p.parent
    else:
        bundle_dir = None
    if export_dir is None and bundle_dir is None:
        if (p / MANIFEST_NAME).is_file():
            raise BundleError(f"{p}: {MANIFEST_NAME} but no {ONNX_NAME} here; copy the whole export/ folder")
        if (p / "model.json").is_file():
            raise BundleError(f"{p}: model.json found but model.safetensors is missing; the bundle is incomplete")
        raise BundleError(f"{p}: no {ONNX_NAME} here or in {p / 'export'}, and no model bundle "
                          "(model.json + model.safetensors); pass a bundle, its export/ folder, or a copy of that folder")
    return ModelSource(p, export_dir, bundle_dir)


# ---------------------------------------------------------------------------------------------
# Which backend
# ---------------------------------------------------------------------------------------------
def backend_reason(name: str, source: ModelSource) -> str | None:
    """Why backend ``name`` cannot run ``source`` here (one clause), or None when it can."""
    if name not in AUTO_ORDER:
        raise ConfigError(f"unknown backend {name!r}; choose from {', '.join(BACKEND_CHOICES)}")
    if name == "torch":
        if source.bundle_dir is None:
            return (f"it needs the model bundle (model.json + model.safetensors) and {source.path} is an export "
                    "folder only")
    elif source.export_dir is None:
        return (f"it needs {ONNX_NAME} and {source.path} has no export/ folder yet (export it where torch is "
                "installed: `hbl-edge export BUNDLE`)")
    reason = unavailable_reason(name)
    return None if reason is None else reason


def runnable_backends(source: ModelSource) -> list[str]:
    """The backends of :data:`AUTO_ORDER` that can run ``source`` here, in that order."""
    return [b for b in AUTO_ORDER if backend_reason(b, source) is None]


def choose_backend(source: ModelSource, backend: str = "auto") -> str:
    """``auto`` → the first runnable of :data:`AUTO_ORDER`; a named backend is checked.

    Raises:
        ConfigError: an unknown name.
        BackendError: the backend (or, for auto, every backend) cannot run the model here.
    """
    if backend not in BACKEND_CHOICES:
        raise ConfigError(f"unknown backend {backend!r}; choose from {', '.join(BACKEND_CHOICES)}")
    if backend == "auto":
        reasons = {}
        for b in AUTO_ORDER:
            reasons[b] = backend_reason(b, source)
            if reasons[b] is None:
                return b
        raise BackendError(f"no backend can run {source.path} here: "
                           + "; ".join(f"{b}: {r}" for b, r in reasons.items()))
    reason = backend_reason(backend, source)
    if reason is not None:
        others = [b for b in AUTO_ORDER if b != backend and backend_reason(b, source) is None]
        raise BackendError(f"backend {backend!r} cannot run {source.path} here: {reason}; "
                           f"backends that can: {', '.join(others) or 'none'}")
    return backend


# ---------------------------------------------------------------------------------------------
# The loaded model
# ---------------------------------------------------------------------------------------------
@dataclass
class LoadedModel:
    """A runner plus what it runs. ``info`` has at least ``task``, ``backend`` and ``model``.

    ``run(batch)`` takes N×3×H×W float32 in [0, 1] (split into engine-sized batches when N is
    above an engine's maximum); :meth:`enhance` takes one H×W×3 image (uint8 or float) and
    returns the same type, tiled when it is beyond an engine's profiles. Close it (or use it as
    a context manager): closing saves the TensorRT-RTX runtime cache and frees GPU memory.
    """

    runner: Runner
    backend: str
    info: dict[str, Any] = field(default_factory=dict)
    source: ModelSource | None = None
    manifest: Manifest | None = None
    closed: bool = field(default=False, init=False)

    # -- shapes ---------------------------------------------------------------------------
    @property
    def profiles(self) -> list[Profile] | None:
        """The engine's optimisation profiles (min, opt, max N×3×H×W), or None: any size runs."""
        profiles = getattr(self.runner, "profiles", None)
        return list(profiles) if profiles else None

    def supports(self, width: int, height: int, batch: int = 1) -> bool:
        """Whether a ``batch``×3×``height``×``width`` input runs in one piece (no tiling).

        ONNX Runtime and torch run any size ≥ 1×1; an engine runs what one of its profiles
        holds. A video pipeline asks this when the source's resolution changes.
        """
        if width < 1 or height < 1 or batch < 1:
            return False
        profiles = self.profiles
        if profiles is None:
            return True
        shape = (batch, 3, height, width)
        return any(all(a <= s <= b for a, s, b in zip(lo, shape, hi)) for lo, _, hi in profiles)

    def max_size(self) -> tuple[int, int] | None:
        """(width, height) of the largest profile maximum (by area), or None when unbounded."""
        profiles = self.profiles
        if profiles is None:
            return None
        hi = max((p[2] for p in profiles), key=lambda s: s[2] * s[3])
        return int(hi[3]), int(hi[2])

    def _max_batch(self) -> int | None:
        profiles = self.profiles
        return None if profiles is None else max(int(p[2][0]) for p in profiles)

    def _tile_side(self, height: int, width: int) -> int | None:
        """A square tile that every profile's range can hold for an image beyond the engine's max.

        None when tiling cannot help (the image is not larger than the max on any side: it is
        below a profile's min, which smaller tiles would not fix).
        """
        profiles = self.profiles
        if profiles is None or not all(height > hi[2] or width > hi[3] for _, _, hi in profiles):
            return None
        side = max(min(int(hi[2]), int(hi[3])) for _, _, hi in profiles)
        side = min(side, DEFAULT_TILE)
        return side if side >= 8 else None

    # -- inference ------------------------------------------------------------------------
    def run(self, batch: np.ndarray) -> np.ndarray:
        """N×3×H×W float32 in [0, 1] → the enhanced batch (chunked to an engine's max batch)."""
        x = np.asarray(batch)
        limit = self._max_batch()
        if limit is None or x.ndim != 4 or x.shape[0] <= limit:
            return self.runner.run(x)
        return np.concatenate([self.runner.run(x[i:i + limit]) for i in range(0, x.shape[0], limit)])

    __call__ = run

    def enhance(self, image: np.ndarray, *, tile: int | None = None, overlap: int | None = None) -> np.ndarray:
        """Enhance one H×W×3 RGB image: uint8 in → uint8 out, float in [0, 1] → same float dtype out.

        Tiled (overlapping, feathered; :mod:`hbl_edge.runtime.tiling`) when ``tile`` is given,
        when the image is beyond every profile of an engine, or above 4 MP.
        """
        img = np.asarray(image)
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"expected an H×W×3 RGB image, got shape {tuple(img.shape)}")
        if img.dtype == np.uint8:
            x = img.astype(np.float32) * np.float32(1.0 / 255.0)
        elif np.issubdtype(img.dtype, np.floating):
            x = img.astype(np.float32, copy=False)
        else:
            raise ValueError(f"expected a uint8 or float image, got dtype {img.dtype}")
        h, w = img.shape[:2]
        if tile is None:
            tile = self._tile_side(h, w)
        out = run_image(self.runner.run, x, tile=tile, overlap=overlap)
        if img.dtype == np.uint8:
            return np.round(out * 255.0).astype(np.uint8)
        return out.astype(img.dtype, copy=False)

    # -- lifetime -------------------------------------------------------------------------
    def close(self) -> None:
        """Close the runner (saves the TensorRT-RTX runtime cache, frees GPU memory). Idempotent."""
        if self.closed:
            return
        self.closed = True
        close = getattr(self.runner, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> "LoadedModel":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------
def find_export_dir(path: str | os.PathLike[str]) -> Path:
    """The folder holding ``model.onnx``: ``PATH`` itself or ``PATH/export`` (one-line error if neither)."""
    source = resolve_model_path(path)
    if source.export_dir is None:
        raise BundleError(f"{source.path}: no {ONNX_NAME} here or in {source.path / 'export'}; export the bundle "
                          "where torch is installed (`hbl-edge export BUNDLE`) and pass its export/ folder")
    return source.export_dir


def _precision(fp16: bool, int8: bool) -> str:
    if fp16 and int8:
        raise ConfigError("choose one of fp16 and int8")
    return "int8" if int8 else ("fp16" if fp16 else "fp32")


def _onnx_for_ort(manifest: Manifest, precision: str) -> Path:
    onnx = manifest.onnx(precision)
    if not onnx.is_file():
        flag = {"fp16": "--fp16", "int8": "--int8"}[precision]
        raise BackendError(f"{manifest.folder} has no {onnx.name} (it was exported without {flag}); run without "
                           f"{flag}, or export with {flag} where the bundle and torch are and copy {onnx.name} here")
    return onnx


def _check_weights(source: ModelSource, manifest: Manifest) -> None:
    """Warn when a bundle's export/ was made from other weights than the bundle's (stale export)."""
    if source.bundle_dir is None or manifest.weights_sha256 is None:
        return
    from ..export.cache import file_sha256

    if file_sha256(source.bundle_dir / "model.safetensors") != manifest.weights_sha256:
        log.warning("%s was exported from other weights than %s; it runs the old model until it is exported again "
                    "(`hbl-edge export %s` where torch is installed)", manifest.folder,
                    source.bundle_dir / "model.safetensors", source.bundle_dir)


def _bundle_task(bundle_dir: Path) -> str | None:
    try:
        return json.loads((bundle_dir / "model.json").read_text()).get("task")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


def load_model(
    path: str | os.PathLike[str],
    backend: str = "auto",
    *,
    threads: int | None = None,
    fp16: bool = False,
    int8: bool = False,
    shapes: list[str] | None = None,
    engine_dir: str | os.PathLike[str] | None = None,
    runtime_cache: str | os.PathLike[str] | bool | None = None,
    device_id: int = 0,
    device: str = "cpu",
    compile: bool = False,
    workspace_mb: int = 1024,
    allow_spinning: bool | None = None,
    **runner_options: Any,
) -> LoadedModel:
    """A ready :class:`LoadedModel` for the model at ``path`` (see the module docstring).

    Args:
        path: a bundle directory, its ``export/`` folder, or a copy of that folder.
        backend: ``auto``, ``trt``, ``trt-rtx``, ``ort`` or ``torch``.
        threads: CPU threads (onnxruntime intra-op threads; torch threads).
        fp16: ``ort`` runs ``model.fp16.onnx``; engines are FP16 (TensorRT 10: builder flag on
            the FP32 ONNX; strongly typed libraries: ``model.fp16.onnx``).
        int8: ``ort`` runs ``model.int8.onnx``; engines are built from it.
        shapes: engine profiles ``"min=WxH,opt=WxH,max=WxH[,batch=…]"`` (default
            :data:`hbl_edge.export.engines.DEFAULT_PROFILE`: 1×1 to 1920×1080).
        engine_dir: where engines (and the runtime cache) go; default: see the module docstring.
        runtime_cache: TensorRT-RTX runtime cache file; None: beside the engine, keyed by GPU;
            False: none.
        device_id: CUDA device (engines, onnxruntime's CUDA provider).
        device, compile: the torch backend's device and ``torch.compile``.
        workspace_mb: engine builder workspace.
        allow_spinning: ``ort`` only (ignored by the other backends, so it may be given with
            ``auto``): whether idle ONNX Runtime intra-op threads busy-wait for work
            (``session.intra_op.allow_spinning``; None: onnxruntime's default, on). Off leaves the
            cores to other threads between runs (a video pipeline's decode and encode).
        runner_options: passed to the runner (e.g. ``providers=`` for ``ort``).

    Raises:
        BundleError: nothing runnable at ``path``, or a file differs from its manifest record.
        BackendError: the backend cannot run here (one line naming the backends that can).
        ConfigError: an unknown backend or contradictory options.
    """
    source = resolve_model_path(path)
    name = choose_backend(source, backend)
    precision = _precision(fp16, int8)
    manifest = read_manifest(source.export_dir) if source.export_dir is not None else None
    info: dict[str, Any] = {"task": None, "backend": name, "model": None, "precision": precision,
                            "export_dir": str(source.export_dir) if source.export_dir else None,
                            "bundle_dir": str(source.bundle_dir) if source.bundle_dir else None}
    if manifest is not None:
        info.update(manifest.summary())
    if name == "torch":
        if precision != "fp32":
            raise ConfigError(f"the torch backend runs FP32 only; drop --{precision}, or use ort/trt/trt-rtx")
        runner = create_runner("torch", source.bundle_dir, device=device, compile=compile, threads=threads)
        info.update(model=str(source.bundle_dir), device=str(device), compile=compile,
                    task=info.get("task") or _bundle_task(source.bundle_dir))
        if hasattr(runner, "threads"):
            info["threads"] = runner.threads
        return LoadedModel(runner, name, info, source, manifest)
    assert manifest is not None and source.export_dir is not None  # choose_backend checked it
    _check_weights(source, manifest)
    if name == "ort":
        onnx = _onnx_for_ort(manifest, precision)
        manifest.verify(onnx)
        runner = create_runner("ort", onnx, threads=threads, device_id=device_id, allow_spinning=allow_spinning,
                               **runner_options)
        info.update(model=str(onnx), providers=list(getattr(runner, "providers", [])), threads=threads,
                    allow_spinning=allow_spinning)
        return LoadedModel(runner, name, info, source, manifest)
    return _load_engine(name, source, manifest, info, precision=precision, shapes=shapes, engine_dir=engine_dir,
                        runtime_cache=runtime_cache, device_id=device_id, workspace_mb=workspace_mb,
                        runner_options=runner_options)


def _load_engine(name: str, source: ModelSource, manifest: Manifest, info: dict[str, Any], *, precision: str,
                 shapes: list[str] | None, engine_dir: Any, runtime_cache: Any, device_id: int, workspace_mb: int,
                 runner_options: dict[str, Any]) -> LoadedModel:
    from ..export.engines import BACKEND_ENGINE_KINDS, engine_dir_for
    from ..export.pipeline import build_engine_for_export
    from .trt_runner import runtime_cache_path

    assert source.export_dir is not None
    manifest.verify(manifest.onnx("fp32"))
    for p in ("fp16", "int8"):
        if precision == p and manifest.onnx(p).is_file():
            manifest.verify(manifest.onnx(p))
    result = build_engine_for_export(source.export_dir, engine_dir, kind=BACKEND_ENGINE_KINDS[name], shapes=shapes,
                                     fp16=precision == "fp16", int8=precision == "int8", workspace_mb=workspace_mb)
    options = dict(runner_options)
    rc: Path | None = None
    if name == "trt-rtx" and runtime_cache is not False:
        if runtime_cache in (None, True):
            writable_dir, _ = engine_dir_for(source.export_dir, engine_dir)
            rc = runtime_cache_path(result.path, writable_dir, device_id)
        else:
            rc = Path(runtime_cache)
        options["runtime_cache"] = rc
    runner = create_runner(name, result.path, device_id=device_id, **options)
    info.update(model=str(result.path), engine=str(result.path), engine_built=result.built,
                precision=result.precision, profiles=result.profiles, runtime_cache=str(rc) if rc else None)
    return LoadedModel(runner, name, info, source, manifest)


__all__ = [
    "AUTO_ORDER", "BACKEND_CHOICES", "LoadedModel", "ModelSource", "backend_reason", "choose_backend",
    "find_export_dir", "load_model", "resolve_model_path", "runnable_backends",
]
