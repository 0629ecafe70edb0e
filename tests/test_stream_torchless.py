"""Every module under ``hbl_edge/runtime/`` imports on a device without torch (tests/torchless.py).

The module list comes from the files on disk (a new module is checked without editing this test).
All are imported in one subprocess in which importing torch, torchvision or kornia fails; after
each import the test records which training-side modules (or torch-only libraries) had appeared
in ``sys.modules``, so a module that drags in the training side is named. The torch runner is the
one module allowed to need torch: its import must fail with the blocker's ImportError (which also
proves that the blocker is active in that process).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from torchless import REPO, torchless_env

RUNTIME = REPO / "hbl_edge" / "runtime"
#: Imports torch by design (DESIGN.md: "no torch, except inside the torch runner").
NEEDS_TORCH = {"hbl_edge.runtime.torch_runner"}
#: The training side and libraries only it uses: none of them may be imported by the runtime.
TRAINING_SIDE = ("hbl_edge.network", "hbl_edge.bundle", "hbl_edge.data", "hbl_edge.metrics", "hbl_edge.evaluate",
                 "hbl_edge.train", "hbl_edge.search", "hbl_edge.supernet", "hbl_edge.losses",
                 "hbl_edge.export.onnx_export")
TORCH_ONLY = ("torch", "torchvision", "kornia", "safetensors", "matplotlib", "skimage")

_PROBE = r"""
import importlib, json, sys
modules, training, torch_only = json.loads(sys.argv[1])
result = {"failed": {}, "pulled": {}}
for name in modules:
    before = set(sys.modules)
    try:
        importlib.import_module(name)
    except Exception as e:
        result["failed"][name] = f"{type(e).__name__}: {e}"
    new = sorted(m for m in set(sys.modules) - before
                 if m.split(".")[0] in torch_only or any(m == t or m.startswith(t + ".") for t in training))
    if new:
        result["pulled"][name] = new[:8]  # the first few name the culprit; torch brings hundreds
print(json.dumps(result))
"""


def runtime_modules() -> list[str]:
    names = []
    for path in sorted(RUNTIME.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_the_module_list_is_complete():
    names = runtime_modules()
    # The package, its video subpackage and the modules the stream command is made of are all there.
    for must in ("hbl_edge.runtime", "hbl_edge.runtime.video", "hbl_edge.runtime.pipeline", "hbl_edge.runtime.enhancer",
                 "hbl_edge.runtime.video.rtsp_sink", "hbl_edge.runtime.torch_runner"):
        assert must in names
    assert len(names) == len(list(RUNTIME.rglob("*.py"))) == len(set(names))


def test_every_runtime_module_imports_without_torch(tmp_path):
    names = runtime_modules()
    proc = subprocess.run([sys.executable, "-c", _PROBE, json.dumps([names, TRAINING_SIDE, TORCH_ONLY])],
                          env=torchless_env(tmp_path / "blocker"), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    failed = dict(result["failed"])
    for name in NEEDS_TORCH:
        assert "blocked by tests/torchless.py" in failed.pop(name, ""), result  # it needs torch, and torch is blocked
    assert failed == {}, failed
    assert result["pulled"] == {}, result["pulled"]
