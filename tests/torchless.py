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


def torchless_env(folder: str | os.PathLike[str], env: dict[str, str] | None = None, *, preamble: str = "") -> dict[str, str]:
    """An environment whose Python refuses :data:`BLOCKED`; ``folder`` receives the sitecustomize.

    ``preamble``: more code for the sitecustomize (e.g. to take an encoder out of PyAV, as on a
    device whose FFmpeg lacks it).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(_SITECUSTOMIZE.format(blocked=BLOCKED) + preamble)
    out = dict(os.environ if env is None else env)
    # The blocker first, then this checkout (so the code under test is imported, not an install).
    out["PYTHONPATH"] = os.pathsep.join([str(folder), str(REPO)] + [p for p in out.get("PYTHONPATH", "").split(os.pathsep) if p])
    return out


def tiny_export(root: str | os.PathLike[str], *, task: str = "lowlight", fp16: bool = False, seed: int = 0):
    """A tiny bundle, its ``export/`` and a COPY of that folder elsewhere (what a device receives).

    Returns ``(bundle, bundle/export, copy)``. Made with torch in the test process (a 4/8-channel,
    one-unit network: about a second); the copy is what the torch-free commands get.
    """
    import shutil

    import numpy as np
    import torch

    from hbl_edge.bundle import save_bundle
    from hbl_edge.export import export_onnx
    from hbl_edge.genotype import Genotype
    from hbl_edge.network import Network

    root = Path(root)
    genotype = Genotype(encoder=["conv_3x3"] * 9, decoder=["conv_3x3"] * 9, hnu=[["conv_1x1"] * 8], channels=(4, 8), units=1)
    torch.manual_seed(seed)
    bundle = save_bundle(root / "run", Network(genotype).eval(), task=task, loss={"l1": 1.0})
    images = [("r", np.random.default_rng(seed).random((1, 3, 5, 7), dtype=np.float32))]
    export_onnx(bundle, bundle / "export", fp16=fp16, images=images)
    copy = root / "device" / "hbl-model"
    shutil.copytree(bundle / "export", copy)
    return bundle, bundle / "export", copy


def run_torchless(args: Sequence[str], folder: str | os.PathLike[str], *, cwd: str | os.PathLike[str] | None = None,
                  timeout: float = 180, env: dict[str, str] | None = None, preamble: str = "") -> subprocess.CompletedProcess:
    """``python -m hbl_edge.cli ARGS`` (or ``python ARGS[1:]`` when ARGS[0] is ``"python"``) with torch blocked."""
    argv = [sys.executable, *args[1:]] if args and args[0] == "python" else [sys.executable, "-m", "hbl_edge.cli", *args]
    return subprocess.run(argv, cwd=cwd, env=torchless_env(folder, env, preamble=preamble), capture_output=True, text=True,
                          timeout=timeout)


__all__ = ["BLOCKED", "run_torchless", "tiny_export", "torchless_env"]
