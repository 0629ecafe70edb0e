"""``--model PATH`` for the deploy commands: a bundle, its ``export/`` folder, or a copy of it.

:func:`load_model` is the one place the deploy side (stream, enhance, bench, the Enhancer API)
turns a path and a backend name into a ready runner. Torch-free: an ``export/`` folder (ONNX +
manifest) is enough for every backend but ``torch``.

FIRST VERSION (interface only): resolves the ONNX and reads ``export.json``; runs ``ort``. The
deploy-path work completes it (manifest, engines built on the device, torch fallback, auto order).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BundleError
from .runners import Runner, create_runner


@dataclass
class LoadedModel:
    """A runner plus what it runs: ``info`` has at least task, backend and model (path)."""

    runner: Runner
    backend: str
    info: dict[str, Any] = field(default_factory=dict)

    def close(self) -> None:
        close = getattr(self.runner, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> "LoadedModel":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def find_export_dir(path: str | os.PathLike[str]) -> Path:
    """The folder holding ``model.onnx``: ``PATH`` itself or ``PATH/export``."""
    p = Path(path)
    for d in (p, p / "export"):
        if (d / "model.onnx").is_file():
            return d
    raise BundleError(f"{p}: no model.onnx here or in {p / 'export'}; pass a bundle exported with "
                      "`hbl-edge export`, or its export/ folder")


def load_model(path: str | os.PathLike[str], backend: str = "auto", *, threads: int | None = None,
               fp16: bool = False) -> LoadedModel:
    """A ready runner for the model at ``path`` (see the module docstring)."""
    export_dir = find_export_dir(path)
    meta_path = export_dir / "export.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    onnx = export_dir / ("model.fp16.onnx" if fp16 and (export_dir / "model.fp16.onnx").is_file() else "model.onnx")
    runner = create_runner("ort", onnx, threads=threads)
    task = (meta.get("source") or {}).get("task") or meta.get("task")
    return LoadedModel(runner, "ort", {"task": task, "backend": "ort", "model": str(onnx)})


__all__ = ["LoadedModel", "find_export_dir", "load_model"]
