"""Backend latency benchmark (``hbl-edge bench``): several backends side by side, in one run.

Procedure:

1. Every backend is prepared through :func:`hbl_edge.runtime.model.load_model` (engines built
   on the device from the export folder's ONNX, with a profile of exactly the benchmark's shape;
   a backend that is not installed here, cannot run this model folder — ``torch`` from an
   export folder alone — or fails to load becomes a row with the reason, not a crash).
2. Warm-up: ``warmup`` calls each, on the same input. First calls are where lazy work happens
   (onnxruntime's allocator arenas, ``torch.compile``'s compilation, TensorRT-RTX's JIT
   kernels); a backend that fails here (e.g. ``torch.compile`` with no C++ compiler) is
   reported as ``failed: <reason>`` and the others continue.
3. Timing: ``iters`` rounds; in each round every backend runs once, in an order rotated from
   round to round. Machine noise (other processes, frequency changes) therefore hits every
   backend alike, which is what makes the side-by-side ratios trustworthy on a shared machine.
4. Each call is timed with ``time.perf_counter`` around ``runner.run(batch)``, which returns a
   host numpy array: for CUDA backends (ONNX Runtime's CUDA provider, torch on CUDA, TensorRT)
   that includes the device→host copy, which waits for the GPU, so every time is synchronised.

Reported per backend: p50/p90/p99/mean/min latency in ms and throughput in images/s
(``batch × calls / total time``), plus what it ran on (CPU model, cores, GPU, library versions).

No torch at import time: torch is imported only when a torch backend is prepared.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import ConfigError
from ..runio import parse_resolution
from .machine import cpu_model
from .runners import BackendError, unavailable_reason

log = logging.getLogger(__name__)

#: Backend names the benchmark knows: the runner registry's plus torch compiled.
BENCH_BACKENDS = ("ort", "torch", "torch-compile", "trt", "trt-rtx")
DEFAULT_BACKENDS = ("ort", "torch")
BENCH_FORMAT = "hbl-bench/1"
RunFn = Callable[[np.ndarray], Any]
Clock = Callable[[], float]


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0–100) with linear interpolation between order statistics
    (numpy's default method): rank ``r = q/100·(n−1)``, value ``x[⌊r⌋] + (r−⌊r⌋)(x[⌈r⌉]−x[⌊r⌋])``."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {q}")
    xs = sorted(values)
    r = q / 100 * (len(xs) - 1)
    lo, hi = math.floor(r), math.ceil(r)
    return xs[lo] + (r - lo) * (xs[hi] - xs[lo])


def latency_stats(seconds: Sequence[float], batch: int) -> dict[str, float]:
    """Latency percentiles (ms) and throughput (images/s) of per-call times in seconds."""
    if not seconds:
        raise ValueError("no timings")
    ms = [s * 1e3 for s in seconds]
    total = sum(seconds)
    return {
        "p50_ms": percentile(ms, 50),
        "p90_ms": percentile(ms, 90),
        "p99_ms": percentile(ms, 99),
        "mean_ms": total * 1e3 / len(ms),
        "min_ms": min(ms),
        "max_ms": max(ms),
        "calls": len(ms),
        "images_per_s": batch * len(ms) / total if total > 0 else math.inf,
    }


# ---------------------------------------------------------------------------------------------
# What it ran on
# ---------------------------------------------------------------------------------------------
def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """CPU model, cores, GPU and library versions (read from package metadata: nothing imported)."""
    from .trt_runner import cuda_device_identity, device_label

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    libs = {}
    for dist in ("onnxruntime", "onnxruntime-gpu", "torch", "tensorrt", "tensorrt-rtx", "tensorrt_rtx", "pycuda", "numpy"):
        v = _version(dist)
        if v is not None:
            libs[dist.replace("_", "-")] = v
    from .. import __version__

    return {
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": usable,
        "gpu": device_label(cuda_device_identity()),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "hbl_edge": __version__,
        "versions": libs,
    }


# ---------------------------------------------------------------------------------------------
# Rows
# ---------------------------------------------------------------------------------------------
@dataclass
class BenchRow:
    """One backend's result: ``status`` is ``ok``, ``unavailable`` or ``failed`` (with ``reason``)."""

    backend: str
    status: str
    reason: str | None = None
    stats: dict[str, float] | None = None
    setup_s: float | None = None
    warmup_s: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    times_s: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BenchReport:
    rows: list[BenchRow]
    settings: dict[str, Any]
    machine: dict[str, Any]
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    def row(self, backend: str) -> BenchRow:
        return next(r for r in self.rows if r.backend == backend)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": BENCH_FORMAT,
            "created": self.created,
            "settings": self.settings,
            "machine": self.machine,
            "timing": "time.perf_counter around runner.run(batch), which returns a host array (CUDA backends: "
                      "includes the device→host copy, so the GPU is synchronised); backends interleaved per round",
            "rows": [r.to_dict() for r in self.rows],
        }


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


# ---------------------------------------------------------------------------------------------
# The measurement (pure: runners in, rows out)
# ---------------------------------------------------------------------------------------------
def measure(
    runs: dict[str, RunFn],
    batch: np.ndarray,
    *,
    warmup: int = 3,
    iters: int = 20,
    clock: Clock = time.perf_counter,
    rows: dict[str, BenchRow] | None = None,
) -> dict[str, BenchRow]:
    """Warm up, then time ``iters`` interleaved rounds of every run function on ``batch``.

    A function that raises (in warm-up or later) gets a ``failed`` row and leaves the rounds.
    """
    if warmup < 0 or iters < 1:
        raise ConfigError(f"need warm-up ≥ 0 and iterations ≥ 1, got {warmup} and {iters}")
    rows = rows if rows is not None else {}
    n = int(batch.shape[0])
    live: list[str] = []
    for name, run in runs.items():
        row = rows.setdefault(name, BenchRow(name, "ok"))
        t0 = clock()
        try:
            for _ in range(warmup):
                run(batch)
        except Exception as e:  # a backend that cannot run this input: report it, keep the others
            row.status, row.reason = "failed", f"warm-up: {_first_line(e)}"
            log.warning("%s failed during warm-up: %s", name, row.reason)
            continue
        row.warmup_s = clock() - t0
        live.append(name)
    times: dict[str, list[float]] = {name: [] for name in live}
    for i in range(iters):
        k = i % len(live) if live else 0
        for name in live[k:] + live[:k]:  # rotate so no backend always runs first
            if rows[name].status != "ok":
                continue
            t0 = clock()
            try:
                runs[name](batch)
            except Exception as e:
                rows[name].status, rows[name].reason = "failed", f"iteration {i}: {_first_line(e)}"
                continue
            times[name].append(clock() - t0)
    for name in live:
        row = rows[name]
        if row.status == "ok":
            row.times_s = times[name]
            row.stats = latency_stats(times[name], n)
    return rows


# ---------------------------------------------------------------------------------------------
# Preparing backends from a model folder
# ---------------------------------------------------------------------------------------------
def parse_backends(spec: str | Sequence[str]) -> list[str]:
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not names:
        raise ConfigError(f"no backend given; choose from {', '.join(BENCH_BACKENDS)}")
    bad = [n for n in names if n not in BENCH_BACKENDS]
    if bad:
        raise ConfigError(f"unknown backend {', '.join(map(repr, bad))}; choose from {', '.join(BENCH_BACKENDS)}")
    return list(dict.fromkeys(names))


def _engine_profile(width: int, height: int, batch: int) -> str:
    return f"min={width}x{height},opt={width}x{height},max={width}x{height},batch={batch}"


def prepare_runner(
    backend: str,
    model: str | os.PathLike[str],
    *,
    width: int,
    height: int,
    batch: int = 1,
    threads: int | None = None,
    fp16: bool = False,
) -> tuple[Any, dict[str, Any]]:
    """A :class:`~hbl_edge.runtime.model.LoadedModel` of ``backend`` for ``model`` and what it is.

    ``model`` is a bundle, its export/ folder or a copy of it; everything goes through
    :func:`hbl_edge.runtime.model.load_model` (``torch-compile`` is its torch backend with
    ``compile=True``; ``trt``/``trt-rtx`` build or reuse an engine whose profile is exactly this
    resolution and batch). Raises :class:`BackendError` when the backend cannot run here.
    """
    from .model import load_model

    registry_name = "torch" if backend == "torch-compile" else backend
    reason = unavailable_reason(registry_name)
    if reason is not None:
        raise BackendError(reason)
    options: dict[str, Any] = {"threads": threads}
    if registry_name == "torch":
        options["compile"] = backend == "torch-compile"
    else:
        options["fp16"] = fp16
    if registry_name in ("trt", "trt-rtx"):
        options["shapes"] = [_engine_profile(width, height, batch)]
    loaded = load_model(model, registry_name, **options)
    i = loaded.info
    if registry_name == "torch":
        detail = {"threads": i.get("threads"), "compile": backend == "torch-compile", "device": i.get("device", "cpu")}
    elif registry_name == "ort":
        detail = {"model": i["model"], "providers": i.get("providers", []), "threads": threads or "default"}
    else:
        detail = {"engine": i["engine"], "precision": i["precision"], "built": i["engine_built"]}
    return loaded, detail


def run_benchmark(
    bundle: str | os.PathLike[str],
    backends: str | Sequence[str] = DEFAULT_BACKENDS,
    *,
    resolution: tuple[int, int] = (1280, 720),
    batch: int = 1,
    warmup: int = 3,
    iters: int = 20,
    threads: int | None = None,
    seed: int = 0,
    fp16: bool = False,
    clock: Clock = time.perf_counter,
    progress: Callable[[str], None] | None = None,
) -> BenchReport:
    """Benchmark ``backends`` on a model (bundle, export/ folder or a copy) at ``resolution`` (W, H)
    side by side; see the module docstring."""
    from .model import resolve_model_path

    names = parse_backends(backends)
    resolve_model_path(bundle)  # a path with nothing to run fails here, in one line
    width, height = resolution
    if batch < 1 or width < 1 or height < 1:
        raise ConfigError(f"batch and resolution must be positive, got batch {batch}, {width}x{height}")
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {threads}")
    rng = np.random.default_rng(seed)
    x = rng.random((batch, 3, height, width), dtype=np.float32) * 0.5  # content does not change the compute
    rows: dict[str, BenchRow] = {}
    runs: dict[str, RunFn] = {}
    runners = []
    for name in names:
        if progress:
            progress(f"preparing {name}")
        t0 = time.perf_counter()
        try:
            runner, detail = prepare_runner(name, bundle, width=width, height=height, batch=batch, threads=threads,
                                            fp16=fp16)
        except BackendError as e:
            rows[name] = BenchRow(name, "unavailable", reason=str(e))
            continue
        except Exception as e:  # loading failed for a reason specific to this machine: report, go on
            if isinstance(e, ConfigError):
                raise
            rows[name] = BenchRow(name, "failed", reason=f"setup: {_first_line(e)}")
            continue
        rows[name] = BenchRow(name, "ok", setup_s=time.perf_counter() - t0, detail=detail)
        runs[name] = runner.runner.run  # the raw runner: what is timed is the backend, nothing of ours
        runners.append(runner)
    if progress:
        progress(f"warm-up ×{warmup}, then {iters} interleaved rounds")
    try:
        measure(runs, x, warmup=warmup, iters=iters, clock=clock, rows=rows)
    finally:
        for r in runners:
            r.close()
    settings = {"bundle": str(bundle), "backends": names, "resolution": [width, height], "batch": batch,
                "warmup": warmup, "iters": iters, "threads": threads, "fp16": fp16, "input": "uniform random in [0, 0.5]"}
    return BenchReport(rows=[rows[n] for n in names], settings=settings, machine=machine_info())


# ---------------------------------------------------------------------------------------------
# Presentation
# ---------------------------------------------------------------------------------------------
def machine_line(machine: dict[str, Any]) -> str:
    v = machine.get("versions", {})
    libs = ", ".join(f"{k} {val}" for k, val in v.items() if k != "numpy")
    return (f"{machine['cpu']} ({machine['cpu_cores_usable']}/{machine['cpu_cores']} cores), "
            f"GPU: {machine['gpu'] or 'none'}; {libs}")


def render_table(report: BenchReport):
    """A rich Table of the report (rich is imported here, not at module import)."""
    from rich.table import Table

    s = report.settings
    w, h = s["resolution"]
    table = Table(title=f"{Path(s['bundle']).name}: {w}×{h}, batch {s['batch']}, {s['iters']} rounds",
                  caption=machine_line(report.machine))
    for col in ("backend", "p50 ms", "p90 ms", "p99 ms", "images/s", "vs fastest", "note"):
        table.add_column(col, justify="left" if col in ("backend", "note") else "right")
    ok = [r for r in report.rows if r.stats]
    best = min((r.stats["p50_ms"] for r in ok), default=None)
    for r in report.rows:
        if r.stats:
            st = r.stats
            table.add_row(r.backend, f"{st['p50_ms']:.2f}", f"{st['p90_ms']:.2f}", f"{st['p99_ms']:.2f}",
                          f"{st['images_per_s']:.2f}", f"{st['p50_ms'] / best:.2f}×", _note(r))
        else:
            table.add_row(r.backend, "–", "–", "–", "–", "–", f"{r.status}: {r.reason}")
    return table


def _note(row: BenchRow) -> str:
    d = row.detail
    if "providers" in d:
        return ",".join(p.replace("ExecutionProvider", "") for p in d["providers"])
    if "compile" in d:
        return f"{d['threads']} threads" + (", compiled" if d["compile"] else "")
    if "precision" in d:
        return d["precision"]
    return ""


__all__ = [
    "BENCH_BACKENDS", "BenchReport", "BenchRow", "latency_stats", "machine_info", "measure", "parse_backends",
    "parse_resolution", "percentile", "prepare_runner", "render_table", "run_benchmark",
]
