"""``hbl-edge export`` as one library call: ONNX (+FP16, +INT8) and optionally an engine.

:func:`export_bundle` checks every option before the slow steps, runs them in order and records
what was built in ``export.json``; the CLI only prints the :class:`ExportSummary`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError
from ..runio import write_json

ENGINE_KINDS = ("tensorrt", "tensorrt-rtx")


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
    if engine is not None and engine not in ENGINE_KINDS:
        raise ConfigError(f"unknown --engine {engine!r}; use {' or '.join(ENGINE_KINDS)}")
    if (shapes or compute_capabilities or timing_cache or force_rebuild) and engine is None:
        raise ConfigError("--shapes, --compute-capability, --timing-cache and --force-rebuild need --engine")
    if engine is not None:  # profile syntax errors before the (slow) export
        from .engines import parse_profile

        for spec in shapes or []:
            parse_profile(spec)

    from .onnx_export import export_onnx

    out_dir = Path(out) if out is not None else Path(bundle) / "export"
    summary = ExportSummary(out_dir, export_onnx(bundle, out_dir, opset=opset, fp16=fp16, tolerance=tolerance))
    if int8:
        from .quantize import quantize_int8, record_int8

        summary.int8 = quantize_int8(summary.onnx.onnx_path, task=meta["task"], data=calib_data, samples=calib_samples)
        record_int8(summary.onnx.meta_path, summary.int8)
    if engine is not None:
        from .engines import build_engine

        summary.engine = build_engine(
            summary.onnx.onnx_path, out_dir, kind=engine, shapes=list(shapes) if shapes else None, fp16=fp16,
            int8=int8, workspace_mb=workspace_mb, timing_cache=timing_cache,
            compute_capabilities=list(compute_capabilities) if compute_capabilities else None, force=force_rebuild,
        )
        record_engine(summary.onnx.meta_path, summary.engine)
    return summary


def record_engine(meta_path: str | os.PathLike[str], r: Any) -> None:
    """Add (or replace) an engine's entry in ``export.json``."""
    record = json.loads(Path(meta_path).read_text())
    engines = [e for e in record.get("engines", []) if e.get("path") != r.path.name]
    engines.append({
        "path": r.path.name, "key": r.key, "kind": r.kind, "library_version": r.library_version,
        "precision": r.precision, "device": r.device, "profiles": r.profiles, "onnx": r.onnx_path.name,
        "built": r.built, "build_seconds": round(r.build_seconds, 3),
    })
    record["engines"] = engines
    write_json(meta_path, record)
