"""The engine libraries, in one table: ``--engine`` kind ↔ Python module ↔ ``--backend`` name.

``hbl-edge export --engine tensorrt-rtx`` builds what ``--backend trt-rtx`` runs, imported as
``tensorrt_rtx``. Every map between these names (the engine builder's, the runners', the build
record checks') is derived from :data:`ENGINES` here, so adding a library is one row.
Torch-free and import-free (the deploy side uses it).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EngineLibrary:
    kind: str  #: ``--engine`` value, and the ``library`` recorded in an engine's build record
    module: str  #: the Python module to import
    backend: str  #: the runner backend (``--backend``) that runs its engines
    install: str  #: how to get the module, for one-line errors


ENGINES: tuple[EngineLibrary, ...] = (
    EngineLibrary("tensorrt", "tensorrt", "trt",
                  "`pip install tensorrt` on a desktop; on a Jetson it comes with JetPack (python3-libnvinfer), "
                  "use a venv created with --system-site-packages"),
    EngineLibrary("tensorrt-rtx", "tensorrt_rtx", "trt-rtx", "`pip install tensorrt-rtx`"),
)

#: engine kind → Python module
KIND_MODULES = {e.kind: e.module for e in ENGINES}
#: Python module → engine kind (the ``library`` an engine's build record names)
MODULE_KINDS = {e.module: e.kind for e in ENGINES}
#: runner backend → engine kind
BACKEND_KINDS = {e.backend: e.kind for e in ENGINES}
#: engine kind → install hint
KIND_INSTALL = {e.kind: e.install for e in ENGINES}

__all__ = ["BACKEND_KINDS", "ENGINES", "EngineLibrary", "KIND_INSTALL", "KIND_MODULES", "MODULE_KINDS"]
