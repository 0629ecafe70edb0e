"""Deployment artifacts: ONNX (FP32 + FP16) and TensorRT / TensorRT-RTX engines (DESIGN §8, §9).

- :func:`export_onnx` — a bundle (or a :class:`~hbl_edge.network.Network`) to ``model.onnx``
  (+ ``model.fp16.onnx``) with BatchNorm folded, padding and clamping inside the graph, dynamic
  batch/height/width, checked against PyTorch, recorded in ``export.json``.
- :func:`build_engine` — an ONNX file to a TensorRT or TensorRT-RTX engine in a cache keyed by
  ONNX sha256 + library/version + device + precision + shape profiles; a mismatch rebuilds.
  :func:`build_engine_for_export` does it for an ``export/`` folder (where the engine goes when
  the folder is read-only, the manifest record).
- :func:`read_manifest` — an ``export/`` folder's ``export.json`` (``hbl-export/2``; ``/1`` read).

The engine side imports neither torch nor anything that imports torch (a Jetson builds engines
from the ONNX with TensorRT alone), so the names below are loaded lazily.
"""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import HblError


class ExportError(HblError):
    """An export or engine build failed, or an artifact does not match what it should."""


_LAZY = {
    "export_onnx": "onnx_export",
    "ExportResult": "onnx_export",
    "ParityReport": "onnx_export",
    "check_parity": "onnx_export",
    "convert_fp16": "onnx_export",
    "export_module": "onnx_export",
    "ensure_onnx": "onnx_export",
    "quantize_int8": "quantize",
    "Int8Report": "quantize",
    "parity_images": "onnx_export",
    "DEFAULT_OPSET": "onnx_export",
    "FP32_TOLERANCE": "onnx_export",
    "FP16_TOLERANCE": "onnx_export",
    "build_engine": "engines",
    "build_serialized_engine": "engines",
    "engine_dir_for": "engines",
    "build_engine_for_export": "pipeline",
    "ensure_export": "pipeline",
    "export_bundle": "pipeline",
    "Manifest": "manifest",
    "read_manifest": "manifest",
    "EngineResult": "engines",
    "ShapeProfile": "engines",
    "parse_profile": "engines",
    "engine_cache_key": "engines",
    "ENGINE_KINDS": "engines",
    "file_sha256": "cache",
}

__all__ = ["ExportError", *_LAZY]


def __getattr__(name: str) -> Any:  # PEP 562: import torch only when the ONNX side is used
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
