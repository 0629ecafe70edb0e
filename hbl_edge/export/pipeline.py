"""``hbl-edge export`` as library calls: ONNX (+FP16, +INT8) and optionally an engine.

- :func:`export_bundle` (training machine, torch): checks every option before the slow steps,
  runs them in order and records what was built in ``export.json``.
- :func:`build_engine_for_export` (device, no torch): an engine from an ``export/`` folder (or a
  copy of one) alone; the one place ONNX → engine is set up for ``export --engine``,
  ``enhance``, ``bench`` and ``stream`` (through :func:`hbl_edge.runtime.model.load_model`).
- :func:`ensure_export`: on a machine with torch, bring a bundle's ``export/`` up to date before
  a deploy command runs it.

This module imports neither torch nor the training side at import time; only
:func:`export_bundle` and :func:`ensure_export` (on a bundle, with torch present) do, inside.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError
from .engines import ENGINE_KINDS as _ENGINE_MODULES
from .manifest import record_engine as _record_engine

log = logging.getLogger(__name__)

#: ``--engine`` values.
ENGINE_KINDS = tuple(_ENGINE_MODULES)


@dataclass
class ExportSummary:
    out_dir: Path
    onnx: Any  # ExportResult
    int8: Any | None = None  # Int8Report
    engine: Any | None = None  # EngineResult

    @property
    def written(self) -> list[Path]:
        paths = [self.onnx.onnx_path] + [p for p in (self.onnx.fp16_path,) if p]
        return paths + ([self.int8.path] if self.int8 else [])


def _check_engine_options(engine: str | None, shapes: Sequence[str] | None, compute_capabilities, timing_cache,
                          force_rebuild: bool) -> None:
    if engine is not None and engine not in ENGINE_KINDS:
        raise ConfigError(f"unknown --engine {engine!r}; use {' or '.join(ENGINE_KINDS)}")
    if (shapes or compute_capabilities or timing_cache or force_rebuild) and engine is None:
        raise ConfigError("--shapes, --compute-capability, --timing-cache and --force-rebuild need --engine")
    if engine is not None:  # profile syntax errors before any slow step
        from .engines import parse_profile

        for spec in shapes or []:
            parse_profile(spec)


def export_bundle(
    bundle: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    opset: int = 17,
    tolerance: float = 1e-4,
    fp16: bool = False,
    int8: bool = False,
    calib_data: str = "embedded",
    calib_samples: int = 32,
    engine: str | None = None,
    shapes: Sequence[str] | None = None,
    workspace_mb: int = 1024,
    timing_cache: str | os.PathLike[str] | None = None,
    compute_capabilities: Sequence[str] | None = None,
    force_rebuild: bool = False,
) -> ExportSummary:
    """Export ``bundle`` into ``out`` (default ``BUNDLE/export``); see ``hbl-edge export --help``."""
    from ..bundle import read_meta

    meta = read_meta(bundle)  # a bad bundle fails here, before anything is written
    _check_engine_options(engine, shapes, compute_capabilities, timing_cache, force_rebuild)

    from .onnx_export import export_onnx

    out_dir = Path(out) if out is not None else Path(bundle) / "export"
    summary = ExportSummary(out_dir, export_onnx(bundle, out_dir, opset=opset, fp16=fp16, tolerance=tolerance))
    if int8:
        from .quantize import quantize_int8, record_int8

        summary.int8 = quantize_int8(summary.onnx.onnx_path, task=meta["task"], data=calib_data, samples=calib_samples)
        record_int8(summary.onnx.meta_path, summary.int8)
    if engine is not None:
        summary.engine = build_engine_for_export(
            out_dir, out_dir, kind=engine, shapes=shapes, fp16=fp16, int8=int8, workspace_mb=workspace_mb,
            timing_cache=timing_cache, compute_capabilities=compute_capabilities, force=force_rebuild,
        )
    return summary


def build_engine_for_export(
    export_dir: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    kind: str = "tensorrt",
    shapes: Sequence[str] | None = None,
    fp16: bool = False,
    int8: bool = False,
    workspace_mb: int = 1024,
    timing_cache: str | os.PathLike[str] | None = None,
    compute_capabilities: Sequence[str] | None = None,
    force: bool = False,
) -> Any:
    """The engine (built, or reused from the keyed cache) for the ONNX in ``export_dir``.

    Engines are written to ``out`` when given, else beside the ONNX when the folder is
    writable, else to the user cache (:func:`hbl_edge.export.engines.engine_dir_for`); the
    export folder is searched for a matching engine in every case. A fresh build is recorded in
    the folder's ``export.json`` when that file is writable. Returns an
    :class:`~hbl_edge.export.engines.EngineResult`. No torch, no bundle.
    """
    from .engines import build_engine, engine_dir_for

    _check_engine_options(kind, shapes, compute_capabilities, timing_cache, force)
    export_dir = Path(export_dir)
    engine_dir, search = engine_dir_for(export_dir, out)
    result = build_engine(
        export_dir / "model.onnx", engine_dir, kind=kind, shapes=list(shapes) if shapes else None, fp16=fp16, int8=int8,
        workspace_mb=workspace_mb, timing_cache=timing_cache,
        compute_capabilities=list(compute_capabilities) if compute_capabilities else None, force=force, search=search,
    )
    _record_engine(export_dir, result)  # also a cache hit: a re-export rewrote export.json without it
    return result


def record_engine(meta_path: str | os.PathLike[str], r: Any) -> None:
    """Add (or replace) an engine's entry in the ``export.json`` at ``meta_path``."""
    _record_engine(Path(meta_path).parent, r)


def _torch_present() -> bool:
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


def ensure_export(path: str | os.PathLike[str]) -> Path | None:
    """On a machine with torch, (re-)export a bundle's ``export/`` when missing or stale; else nothing.

    ``path`` is any ``--model`` path. For a bundle (or its own ``export/`` folder) with torch
    importable, :func:`hbl_edge.export.onnx_export.ensure_onnx` exports ``BUNDLE/export`` when
    ``model.onnx`` is missing or was exported from other weights, and the ONNX path is returned.
    For an export folder alone, or without torch, nothing happens (None): the deploy side then
    runs what the folder holds, or says what is missing.
    """
    from ..runtime.model import resolve_model_path

    source = resolve_model_path(path)
    if source.bundle_dir is None or not _torch_present():
        return None
    if source.export_dir is not None and source.export_dir != source.bundle_dir / "export":
        return None  # an export folder elsewhere is the user's choice: run it as it is
    from .onnx_export import ensure_onnx

    return ensure_onnx(source.bundle_dir)


__all__ = ["ENGINE_KINDS", "ExportSummary", "build_engine_for_export", "ensure_export", "export_bundle", "record_engine"]
