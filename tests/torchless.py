"""Run a command as on a Jetson: torch, torchvision and kornia cannot be imported.

A ``sitecustomize.py`` placed first on ``PYTHONPATH`` installs a meta-path finder that refuses
those packages, so any import of them (direct or through a dependency) fails exactly as it would
on a device without them. Used by the deploy-path tests (``enhance``, ``bench``, ``export
--engine``, ``stream`` from a copied ``export/`` folder).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

BLOCKED = ("torch", "torchvision", "kornia")

_SITECUSTOMIZE = '''\
import importlib.abc, sys
_BLOCKED = {blocked!r}
class _Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in _BLOCKED:
            raise ImportError(f"{{name}} is not installed on this device (blocked by tests/torchless.py)")
        return None
sys.meta_path.insert(0, _Refuse())
'''

REPO = Path(__file__).resolve().parents[1]


def torchless_env(folder: str | os.PathLike[str], env: dict[str, str] | None = None) -> dict[str, str]:
    """An environment whose Python refuses :data:`BLOCKED`; ``folder`` receives the sitecustomize."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(_SITECUSTOMIZE.format(blocked=BLOCKED))
    out = dict(os.environ if env is None else env)
    # The blocker first, then this checkout (so the code under test is imported, not an install).
    out["PYTHONPATH"] = os.pathsep.join([str(folder), str(REPO)] + [p for p in out.get("PYTHONPATH", "").split(os.pathsep) if p])
    return out


def run_torchless(args: Sequence[str], folder: str | os.PathLike[str], *, cwd: str | os.PathLike[str] | None = None,
                  timeout: float = 180, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m hbl_edge.cli ARGS`` (or ``python ARGS[1:]`` when ARGS[0] is ``"python"``) with torch blocked."""
    argv = [sys.executable, *args[1:]] if args and args[0] == "python" else [sys.executable, "-m", "hbl_edge.cli", *args]
    return subprocess.run(argv, cwd=cwd, env=torchless_env(folder, env), capture_output=True, text=True, timeout=timeout)


__all__ = ["BLOCKED", "run_torchless", "torchless_env"]
