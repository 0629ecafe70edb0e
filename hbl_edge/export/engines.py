"""TensorRT / TensorRT-RTX engine builds from the exported ONNX, through an engine cache.

Build engines on the machine that runs them (DESIGN §9): an engine is tied to the TensorRT
version and the GPU. :func:`build_engine` first looks in the cache (see
:mod:`hbl_edge.export.cache`); on a miss — new ONNX, other library version, other GPU, other
precision or shape profiles — it builds from the ONNX and says in one log line why.

Precision, by library:

- TensorRT 10.x (weakly typed): FP16 is a builder flag on the FP32 ONNX.
- TensorRT 11.x and TensorRT-RTX (strongly typed, no precision flags): the ONNX's types are the
  engine's types, so an FP16 engine is built from ``model.fp16.onnx`` (``hbl-edge export --fp16``).
  Detected by the absence of ``BuilderFlag.FP16``, not by version number.

TensorRT-RTX builds without a GPU (ahead-of-time, for the compute capabilities asked for; the
device-specific kernels are compiled just in time on the target, and cached there by the
runner's runtime cache). Its timing cache API is a no-op (deprecated since TensorRT-RTX 1.2):
the file is still written and read through the same code path, and the build record says it is
not effective.

TensorRT 8.x (JetPack 5) is handled too: its ``create_network(0)`` makes an implicit-batch
network, which cannot parse our ONNX, so the explicit-batch flag is set there
(:func:`create_network`). :func:`build_serialized_engine` is the same build path for callers
that need a bare engine (the latency profiler's per-op engines).

Torch-free: this module runs on a Jetson with TensorRT, onnx and numpy.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import ConfigError
from ..runtime.trt_runner import cuda_device_identity, device_label
from . import ExportError
from .cache import EngineCache, engine_cache_key, file_sha256, read_sidecar, write_bytes_atomic

log = logging.getLogger(__name__)

#: Engine kinds → Python module.
ENGINE_KINDS = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx"}
#: Runner backend names (``--backend``) → engine kinds (``--engine``): the one map of the two.
BACKEND_ENGINE_KINDS = {"trt": "tensorrt", "trt-rtx": "tensorrt-rtx"}
#: The profile used when none is given. The minimum is 1×1 because the graph pads any input to
#: its multiple of 4 itself: small inputs (a thumbnail, the last column of tiles) are valid.
DEFAULT_PROFILE = "min=1x1,opt=1280x720,max=1920x1080"
DEFAULT_WORKSPACE_MB = 1024
#: What TensorRT-RTX records as the device when it builds on a machine without a GPU.
CPU_BUILD = "cpu-build"

_INSTALL = {
    "tensorrt": "`pip install tensorrt` (desktop) or JetPack's python3-libnvinfer (Jetson)",
    "tensorrt-rtx": "`pip install tensorrt-rtx`",
}


# ---------------------------------------------------------------------------------------------
# Shape profiles
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShapeProfile:
    """One optimisation profile of the input: N×3×H×W at min, opt and max."""

    min: tuple[int, int, int, int]
    opt: tuple[int, int, int, int]
    max: tuple[int, int, int, int]

    def __post_init__(self) -> None:
        for name, shape in (("min", self.min), ("opt", self.opt), ("max", self.max)):
            if len(shape) != 4 or shape[1] != 3 or any(int(d) < 1 for d in shape):
                raise ConfigError(f"profile {name} shape {shape} must be N×3×H×W with every side ≥ 1")
        for i, axis in ((0, "batch"), (2, "height"), (3, "width")):
            if not self.min[i] <= self.opt[i] <= self.max[i]:
                raise ConfigError(
                    f"profile {self}: {axis} must satisfy min ≤ opt ≤ max, got {self.min[i]}, {self.opt[i]}, {self.max[i]}"
                )

    def __str__(self) -> str:
        def wh(s: tuple[int, ...]) -> str:
            return f"{s[3]}x{s[2]}"

        text = f"min={wh(self.min)},opt={wh(self.opt)},max={wh(self.max)}"
        if (self.min[0], self.opt[0], self.max[0]) != (1, 1, 1):
            text += f",batch={self.min[0]}:{self.opt[0]}:{self.max[0]}"
        return text

    def contains(self, shape: Sequence[int]) -> bool:
        return len(shape) == 4 and all(a <= s <= b for a, s, b in zip(self.min, shape, self.max))


_WH = re.compile(r"^(\d+)x(\d+)$")


def parse_profile(spec: str | ShapeProfile) -> ShapeProfile:
    """``"min=WxH,opt=WxH,max=WxH[,batch=N|min:opt:max]"`` → :class:`ShapeProfile` (W before H).

    >>> str(parse_profile("min=64x64,opt=640x480,max=1920x1080"))
    'min=64x64,opt=640x480,max=1920x1080'
    """
    if isinstance(spec, ShapeProfile):
        return spec
    fields: dict[str, str] = {}
    for part in str(spec).replace(" ", "").split(","):
        key, sep, value = part.partition("=")
        if not sep or key not in ("min", "opt", "max", "batch") or key in fields:
            raise ConfigError(
                f"bad shape profile {spec!r}: expected 'min=WxH,opt=WxH,max=WxH' (optionally ',batch=N' or "
                f"',batch=MIN:OPT:MAX'), e.g. {DEFAULT_PROFILE!r}"
            )
        fields[key] = value
    missing = [k for k in ("min", "opt", "max") if k not in fields]
    if missing:
        raise ConfigError(f"bad shape profile {spec!r}: missing {', '.join(missing)} (e.g. {DEFAULT_PROFILE!r})")
    batch_text = fields.get("batch", "1")
    batches = batch_text.split(":")
    if len(batches) == 1:
        batches = batches * 3
    if len(batches) != 3 or not all(b.isdigit() for b in batches):
        raise ConfigError(f"bad batch {batch_text!r} in shape profile {spec!r}: use N or MIN:OPT:MAX")
    shapes = []
    for key, n in zip(("min", "opt", "max"), batches):
        m = _WH.match(fields[key])
        if not m:
            raise ConfigError(f"bad {key}={fields[key]!r} in shape profile {spec!r}: use WIDTHxHEIGHT, e.g. 640x480")
        w, h = int(m.group(1)), int(m.group(2))
        shapes.append((int(n), 3, h, w))
    return ShapeProfile(*shapes)


# ---------------------------------------------------------------------------------------------
# Build
# ---------------------------------------------------------------------------------------------
@dataclass
class EngineResult:
    """A cached or freshly built engine and the record written beside it."""

    path: Path
    key: str
    kind: str
    library_version: str
    precision: str
    device: str
    profiles: list[str]
    built: bool
    onnx_path: Path
    build_seconds: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)


def import_engine_library(kind: str) -> Any:
    if kind not in ENGINE_KINDS:
        raise ConfigError(f"unknown engine kind {kind!r}; use one of {', '.join(ENGINE_KINDS)}")
    import importlib

    try:
        return importlib.import_module(ENGINE_KINDS[kind])
    except ImportError as e:
        raise ExportError(f"{kind} engines need the {ENGINE_KINDS[kind]} module ({e}); install it with {_INSTALL[kind]}") from None


def is_strongly_typed(trt: Any) -> bool:
    """TensorRT 11 and TensorRT-RTX: no precision builder flags; the ONNX's types decide."""
    return not hasattr(trt.BuilderFlag, "FP16")


def library_major(trt: Any) -> int:
    """The major version of a TensorRT module (``"8.5.2.2"`` → 8); 0 when unreadable."""
    m = re.match(r"(\d+)", str(getattr(trt, "__version__", "")))
    return int(m.group(1)) if m else 0


def explicit_batch_flags(trt: Any) -> int:
    """The ``create_network`` flags for an explicit-batch network on this library.

    TensorRT 8.x: ``create_network(0)`` is an implicit-batch network, on which the ONNX parser
    refuses our graph (dynamic batch); ``1 << EXPLICIT_BATCH`` is required. TensorRT 10+:
    explicit batch is the only mode and the flag is deprecated (ignored). TensorRT-RTX has no
    such flag at all.
    """
    flag_enum = getattr(trt, "NetworkDefinitionCreationFlag", None)
    explicit = getattr(flag_enum, "EXPLICIT_BATCH", None) if flag_enum is not None else None
    if explicit is None or library_major(trt) >= 10:
        return 0
    return 1 << int(explicit)


def create_network(trt: Any, builder: Any) -> Any:
    """An explicit-batch network definition on every supported TensorRT version (see above)."""
    return builder.create_network(explicit_batch_flags(trt))


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def cuda_init_hint() -> str:
    return ("check that the NVIDIA driver is loaded (`nvidia-smi`; on a Jetson `tegrastats`) and that this process "
            "sees the GPU (CUDA_VISIBLE_DEVICES, a container started with --gpus all or --runtime nvidia)")


def create_builder(trt: Any, logger: Any, kind: str) -> Any:
    """``trt.Builder(logger)``, with CUDA initialisation failures as one-line :class:`ExportError`\\ s.

    When CUDA cannot be initialised, TensorRT logs the reason and its Python binding's factory
    returns a null pointer, which pybind11 turns into a bare ``TypeError`` (a traceback for the
    user); some versions return None instead.
    """
    try:
        builder = trt.Builder(logger)
    except TypeError as e:
        raise ExportError(
            f"{kind} {trt.__version__} could not create a builder: CUDA did not initialise ({_first_line(e)}); "
            f"{cuda_init_hint()}"
        ) from None
    if builder is None:
        raise ExportError(f"{kind} {trt.__version__} could not create a builder (no usable GPU/driver); {cuda_init_hint()}")
    return builder


def onnx_precision(path: Path) -> str:
    """``"fp16"`` when the ONNX computes in float16 (our FP16 export), else ``"fp32"``."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf DecodeError and friends
        raise ExportError(f"{path}: not a readable ONNX file ({type(e).__name__}); copy or export it again") from None
    props = {p.key: p.value for p in model.metadata_props}
    if "hbl_edge.precision" in props:
        return props["hbl_edge.precision"]
    return "fp16" if any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer) else "fp32"


def fp16_sibling(path: Path) -> Path:
    """``model.onnx`` → ``model.fp16.onnx`` (the file ``hbl-edge export --fp16`` writes)."""
    return path.with_name(f"{path.stem}.fp16{path.suffix}")


def int8_sibling(path: Path) -> Path:
    """``model.onnx`` → ``model.int8.onnx`` (the file ``hbl-edge export --int8`` writes)."""
    return path.with_name(f"{path.stem}.int8{path.suffix}")


def _choose_onnx(onnx_path: Path, fp16: bool, strongly_typed: bool, kind: str, int8: bool = False) -> tuple[Path, str]:
    """The ONNX to parse and the engine precision."""
    precision = onnx_precision(onnx_path)
    if int8 or precision == "int8":
        # Explicit quantisation: the Q/DQ graph decides what runs in INT8 (every TensorRT version).
        if precision == "int8":
            return onnx_path, "int8"
        sibling = int8_sibling(onnx_path)
        if sibling.is_file() and onnx_precision(sibling) == "int8":
            log.info("building the INT8 engine from the Q/DQ model %s", sibling.name)
            return sibling, "int8"
        raise ExportError(
            f"an INT8 engine needs the Q/DQ model {sibling}, which does not exist; make it with "
            "`hbl-edge export BUNDLE --int8` where the bundle and torch are, and copy it beside model.onnx"
        )
    if not fp16 or precision == "fp16":
        return onnx_path, precision if not fp16 else "fp16"
    if not strongly_typed:
        return onnx_path, "fp16"  # TensorRT 10: FP16 builder flag on the FP32 graph
    sibling = fp16_sibling(onnx_path)
    if sibling.is_file() and onnx_precision(sibling) == "fp16":
        log.info("%s is strongly typed (no FP16 flag): building from %s", kind, sibling.name)
        return sibling, "fp16"
    raise ExportError(
        f"{kind} is strongly typed (no FP16 builder flag): an FP16 engine needs an FP16 ONNX, and "
        f"{sibling} does not exist; make it with `hbl-edge export BUNDLE --fp16` where the bundle and torch are "
        "and copy it beside model.onnx, or build without --fp16"
    )


def _device(kind: str, compute_capabilities: Sequence[str] | None) -> tuple[str, dict[str, Any]]:
    identity = cuda_device_identity()
    label = device_label(identity)
    if kind == "tensorrt-rtx":
        targets = sorted(c.upper() for c in compute_capabilities) if compute_capabilities else ["default"]
        host = label or CPU_BUILD
        return f"{host}; targets={'+'.join(targets)}", {"build_host": host, "targets": targets, "gpu": identity}
    if label is None:
        # TensorRT itself will fail without a GPU; pycuda/nvidia-smi may just be absent (Jetson).
        log.warning("cannot identify the CUDA device (install pycuda); the engine cache key uses 'unknown-gpu'")
        label = "unknown-gpu"
    return label, {"gpu": identity}


def _default_timing_cache(out_dir: Path, kind: str, version: str, device: str) -> Path:
    tag = hashlib.sha256(f"{kind}|{version}|{device}".encode()).hexdigest()[:10]
    return out_dir / f"timing.{kind}.{version}.{tag}.cache"


# ---------------------------------------------------------------------------------------------
# Where engines go
# ---------------------------------------------------------------------------------------------
#: Environment variable naming the engine cache root used when an export folder is read-only.
CACHE_ENV = "HBL_EDGE_CACHE_DIR"


def is_writable(folder: str | os.PathLike[str]) -> bool:
    """Whether a file can be created in ``folder`` (tried for real: permissions, read-only mounts)."""
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".hbl-write-test.")
    except OSError:
        return False
    os.close(fd)
    os.unlink(tmp)
    return True


def user_cache_root() -> Path:
    """``$HBL_EDGE_CACHE_DIR``, else ``$XDG_CACHE_HOME/hbl-edge``, else ``~/.cache/hbl-edge``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "hbl-edge"


def engine_dir_for(export_dir: str | os.PathLike[str], override: str | os.PathLike[str] | None = None) -> tuple[Path, list[Path]]:
    """Where engines of an export folder are written, and the read-only places also looked in.

    The export folder itself when it is writable (engines sit beside their ONNX, as DESIGN §8
    says); else ``<user cache>/engines/<sha256 of model.onnx, 16 hex>/`` — keyed by the model so
    two read-only folders never share a cache entry — with the export folder still searched
    first for an engine built earlier (or shipped with it). ``override`` (``--out``) wins.
    """
    export_dir = Path(export_dir)
    if override is not None:
        out = Path(override)
        return out, ([export_dir] if out.resolve() != export_dir.resolve() else [])
    if is_writable(export_dir):
        return export_dir, []
    onnx = export_dir / "model.onnx"
    tag = file_sha256(onnx)[:16] if onnx.is_file() else hashlib.sha256(str(export_dir.resolve()).encode()).hexdigest()[:16]
    return user_cache_root() / "engines" / tag, [export_dir]


# ---------------------------------------------------------------------------------------------
# The build path
# ---------------------------------------------------------------------------------------------
def build_engine(
    onnx_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
    *,
    kind: str = "tensorrt",
    shapes: Sequence[str | ShapeProfile] | None = None,
    fp16: bool = False,
    int8: bool = False,
    workspace_mb: int = DEFAULT_WORKSPACE_MB,
    timing_cache: str | os.PathLike[str] | None = None,
    compute_capabilities: Sequence[str] | None = None,
    force: bool = False,
    verbose: bool = False,
    search: Sequence[str | os.PathLike[str]] = (),
) -> EngineResult:
    """The engine for ``onnx_path`` from the cache in ``out_dir``, built when missing or mismatched.

    Args:
        onnx_path: the FP32 ``model.onnx`` (for strongly typed libraries with ``fp16=True``, its
            ``model.fp16.onnx`` sibling is used) or an FP16 ONNX directly.
        out_dir: the engine cache folder (default: the ONNX's folder).
        kind: ``"tensorrt"`` or ``"tensorrt-rtx"``.
        shapes: optimisation profiles, ``"min=WxH,opt=WxH,max=WxH[,batch=…]"`` each (several
            allowed; the runner picks the first that holds the input). Default
            :data:`DEFAULT_PROFILE`.
        fp16: FP16 engine (TensorRT 10: builder flag; strongly typed: the FP16 ONNX).
        int8: INT8 engine from the Q/DQ ``model.int8.onnx`` sibling (TensorRT 10: INT8 builder
            flag; strongly typed: as the graph says). Takes precedence over ``fp16``.
        workspace_mb: builder workspace limit.
        timing_cache: timing cache file, loaded when present and saved after the build (default:
            ``timing.<kind>.<version>.<device hash>.cache`` in ``out_dir``).
        compute_capabilities: TensorRT-RTX only: target architectures, e.g. ``["SM86", "SM89"]``
            (default: the library's default targets).
        force: rebuild even when the cache holds a matching engine.
        search: further (possibly read-only) folders looked in, before ``out_dir``, for an
            engine with exactly these ingredients (see :func:`engine_dir_for`).

    Raises:
        ExportError: the library is missing, the ONNX does not parse, or the build fails.
        ConfigError: a bad profile string, kind or option.
    """
    src = Path(onnx_path)
    if not src.is_file():
        raise ExportError(
            f"ONNX model {str(src)!r} does not exist; pass an export/ folder holding model.onnx (written by "
            "`hbl-edge export BUNDLE` where the bundle is)"
        )
    if workspace_mb < 1:
        raise ConfigError(f"workspace must be at least 1 MB, got {workspace_mb}")
    if compute_capabilities and kind != "tensorrt-rtx":
        raise ConfigError("compute capabilities can be chosen for TensorRT-RTX builds only (TensorRT builds for this GPU)")
    profiles = [parse_profile(s) for s in (shapes or [DEFAULT_PROFILE])]
    trt = import_engine_library(kind)
    strongly_typed = is_strongly_typed(trt)
    onnx_file, precision = _choose_onnx(src, fp16, strongly_typed, kind, int8=int8)
    device, device_meta = _device(kind, compute_capabilities)
    out = Path(out_dir) if out_dir is not None else src.parent
    ingredients = {
        "onnx_sha256": file_sha256(onnx_file),
        "library": kind,
        "library_version": trt.__version__,
        "device": device,
        "precision": precision,
        "profiles": [str(p) for p in profiles],
    }
    stem = f"{src.stem}.{kind}"
    cache = EngineCache(out, stem=stem)
    if not force:
        for folder in [*map(Path, search), out]:
            hit = EngineCache(folder, stem=stem).lookup(ingredients)
            if hit is not None:
                meta = read_sidecar(hit) or {}
                log.info("using cached engine %s", hit)
                return EngineResult(
                    path=hit, key=engine_cache_key(ingredients), kind=kind, library_version=trt.__version__,
                    precision=precision, device=device, profiles=ingredients["profiles"], built=False,
                    onnx_path=onnx_file, meta=meta,
                )
    tc_path = Path(timing_cache) if timing_cache else _default_timing_cache(out, kind, trt.__version__, device)
    log.info(
        "building %s %s engine from %s (%s, %s, workspace %d MB)%s", kind, trt.__version__, onnx_file.name,
        precision, "; ".join(ingredients["profiles"]), workspace_mb,
        "" if kind == "tensorrt-rtx" else " — this can take minutes",
    )
    t0 = time.perf_counter()
    engine, build_info = _build(
        trt, onnx_file, [_input_profile(p) for p in profiles], precision=precision, strongly_typed=strongly_typed,
        workspace_mb=workspace_mb, timing_cache=tc_path, compute_capabilities=compute_capabilities, verbose=verbose,
        kind=kind,
    )
    seconds = time.perf_counter() - t0
    meta = {
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "build_seconds": round(seconds, 3),
        "onnx_path": str(onnx_file),
        "device_identity": device_label(device_meta.get("gpu")),
        "device_detail": device_meta,
        "strongly_typed": strongly_typed,
        "workspace_mb": workspace_mb,
        **build_info,
        "versions": _versions(trt),
    }
    try:
        path = cache.store(ingredients, engine, meta)
    except OSError as e:
        raise ExportError(f"cannot write the engine into {out} ({e}); pass a writable folder with --out") from None
    log.info("wrote %s (%.1f MB) in %.1f s", path, len(engine) / 2**20, seconds)
    return EngineResult(
        path=path, key=engine_cache_key(ingredients), kind=kind,
        library_version=trt.__version__, precision=precision, device=device, profiles=ingredients["profiles"],
        built=True, onnx_path=onnx_file, build_seconds=seconds, meta=read_sidecar(path) or meta,
    )


#: One optimisation profile as the builder takes it: input index → (min, opt, max) shapes.
InputProfile = Mapping[int, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]


def _input_profile(p: ShapeProfile) -> InputProfile:
    return {0: (p.min, p.opt, p.max)}


def build_serialized_engine(
    onnx_path: str | os.PathLike[str],
    input_shapes: Sequence[Sequence[int]],
    *,
    kind: str = "tensorrt",
    fp16: bool = False,
    workspace_mb: int = DEFAULT_WORKSPACE_MB,
    timing_cache: str | os.PathLike[str] | None = None,
    logger: Any = None,
    verbose: bool = False,
) -> bytes:
    """A serialized engine for an ONNX of fixed input shapes, with no cache: the latency
    profiler's per-op engines (one input shape per graph input, min = opt = max).

    The same build path as :func:`build_engine` (explicit-batch network on TensorRT 8, CUDA
    initialisation and parser errors as one line), so a graph that builds here builds there.

    Args:
        onnx_path: an ONNX with one or more inputs.
        input_shapes: the exact shape of each graph input, in input order (only inputs with
            dynamic dimensions get a profile; static ones need none).
        fp16: FP16 builder flag (weakly typed TensorRT only; strongly typed libraries raise
            ConfigError: they take their precision from the ONNX).
        timing_cache: loaded when present, saved after the build (TensorRT only).
        logger: a ``trt.Logger`` to share with the caller's runtime (default: a new one).
    """
    trt = import_engine_library(kind)
    strongly_typed = is_strongly_typed(trt)
    if fp16 and strongly_typed:
        raise ConfigError(f"{kind} {trt.__version__} is strongly typed (no FP16 builder flag): export the graph in FP16 instead")
    shapes = {i: (tuple(s), tuple(s), tuple(s)) for i, s in enumerate(input_shapes)}
    tc = Path(timing_cache) if timing_cache else None
    blob, _ = _build(
        trt, Path(onnx_path), [shapes], precision="fp16" if fp16 else "fp32", strongly_typed=strongly_typed,
        workspace_mb=workspace_mb, timing_cache=tc, compute_capabilities=None, verbose=verbose, kind=kind, logger=logger,
    )
    return blob


def _set_workspace(trt: Any, config: Any, workspace_mb: int) -> None:
    if hasattr(config, "set_memory_pool_limit") and hasattr(trt, "MemoryPoolType"):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    else:  # TensorRT < 8.4
        config.max_workspace_size = workspace_mb << 20


def _build(
    trt: Any,
    onnx_file: Path,
    profiles: Sequence[InputProfile],
    *,
    precision: str,
    strongly_typed: bool,
    workspace_mb: int,
    timing_cache: Path | None,
    compute_capabilities: Sequence[str] | None,
    verbose: bool,
    kind: str,
    logger: Any = None,
) -> tuple[bytes, dict[str, Any]]:
    """Parse ``onnx_file`` and build it: the one build path (build_engine, build_serialized_engine)."""
    if logger is None:
        logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = create_builder(trt, logger, kind)
    network = create_network(trt, builder)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_file)):
        errors = [str(parser.get_error(i).desc()) for i in range(parser.num_errors)]
        raise ExportError(f"{kind} cannot parse {onnx_file.name}: {'; '.join(errors) or 'unknown parser error'}")
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    if network.num_outputs < 1:
        raise ExportError(f"{onnx_file.name}: the graph has no output")

    config = builder.create_builder_config()
    _set_workspace(trt, config, workspace_mb)
    if precision == "fp16" and not strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8" and not strongly_typed:
        # TensorRT 10 (weakly typed) runs Q/DQ layers in INT8 only with the INT8 flag set.
        config.set_flag(trt.BuilderFlag.INT8)
    for p in profiles:
        profile = builder.create_optimization_profile()
        dynamic = 0
        for i, (lo, opt, hi) in p.items():
            if i >= len(inputs):
                raise ExportError(f"{onnx_file.name}: a profile names input {i}, the graph has {len(inputs)}")
            if any(int(d) < 0 for d in inputs[i].shape):  # static inputs take no profile
                profile.set_shape(inputs[i].name, lo, opt, hi)
                dynamic += 1
        if dynamic and config.add_optimization_profile(profile) < 0:  # an all-static graph needs none
            raise ExportError(f"{kind} rejected the shape profile {dict(p)}")
    if compute_capabilities:
        config.num_compute_capabilities = len(compute_capabilities)
        for i, cc in enumerate(compute_capabilities):
            value = getattr(trt.ComputeCapability, cc.upper(), None)
            if value is None:
                known = [n for n in dir(trt.ComputeCapability) if n.startswith("SM")]
                raise ConfigError(f"unknown compute capability {cc!r}; {kind} {trt.__version__} knows {', '.join(known)}")
            config.set_compute_capability(value, i)

    if timing_cache is None:
        cache_info = {"path": None, "loaded": False, "bytes": 0, "effective": False, "note": "no timing cache asked for"}
    elif uses_timing_cache(trt, kind):
        cache_info = _attach_timing_cache(config, timing_cache)
    else:
        log.info("%s %s: timing caches are no-ops (kernels are compiled just in time on the target and kept "
                 "in the runner's runtime cache); not using %s", kind, trt.__version__, timing_cache.name)
        cache_info = {"path": None, "loaded": False, "bytes": 0, "effective": False,
                      "note": f"{kind} ignores timing caches; the trt-rtx runner's runtime cache plays that role"}
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"{kind} failed to build an engine from {onnx_file.name}; rerun with verbose logging")
    if cache_info["effective"]:
        blob = bytes(config.get_timing_cache().serialize())
        write_bytes_atomic(timing_cache, blob)
        cache_info["bytes"] = len(blob)
        log.info("timing cache saved to %s (%d bytes)", timing_cache, len(blob))
    info = {
        "input": inputs[0].name if inputs else None,
        "output": network.get_output(0).name,
        "timing_cache": cache_info,
        "compute_capabilities": [c.upper() for c in compute_capabilities] if compute_capabilities else None,
        "network_flags": explicit_batch_flags(trt),
    }
    return bytes(serialized), info


def uses_timing_cache(trt: Any, kind: str) -> bool:
    """TensorRT uses timing caches; TensorRT-RTX keeps the API as a deprecated no-op (since 1.2)."""
    return kind != "tensorrt-rtx"


def _attach_timing_cache(config: Any, path: Path) -> dict[str, Any]:
    """Load ``path`` into the builder config when it exists and fits; else start an empty cache."""
    blob = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(blob)
    loaded = bool(blob)
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        log.info("timing cache %s does not fit this GPU/TensorRT version; starting a new one", path)
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
        loaded = False
    elif loaded:
        log.info("timing cache loaded from %s (%d bytes)", path, len(blob))
    return {"path": str(path), "loaded": loaded, "bytes": len(blob), "effective": True}


def _versions(trt: Any) -> dict[str, str]:
    import platform

    from .. import __version__

    out = {"hbl_edge": __version__, "python": platform.python_version(), "engine_library": trt.__version__}
    for mod in ("onnx", "numpy"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:
            out[mod] = "absent"
    return out


__all__ = [
    "BACKEND_ENGINE_KINDS", "CACHE_ENV", "DEFAULT_PROFILE", "ENGINE_KINDS", "EngineResult", "ShapeProfile",
    "build_engine", "build_serialized_engine", "create_builder", "create_network", "engine_dir_for",
    "explicit_batch_flags", "fp16_sibling", "int8_sibling", "is_writable", "parse_profile", "user_cache_root",
]
