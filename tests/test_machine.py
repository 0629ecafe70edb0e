"""What a measurement ran on and how loaded the machine was (hbl_edge.runtime.machine), library
versions (hbl_edge.versions), and the one table of engine libraries: each in one place."""

from __future__ import annotations

import ast
import json
import os
from importlib.metadata import version
from pathlib import Path

import pytest

from hbl_edge.runtime import engine_kinds
from hbl_edge.runtime.machine import load_line, machine_load
from hbl_edge.versions import library_versions

PACKAGE = Path(__file__).resolve().parents[1] / "hbl_edge"
BENCH = PACKAGE.parent / "bench"

PSI = """some avg10=12.50 avg60=30.25 avg300=7.00 total=123456
full avg10=0.00 avg60=1.50 avg300=0.25 total=42
"""


def test_machine_load_reads_pressure_and_load_average(tmp_path, monkeypatch):
    psi = tmp_path / "cpu"
    psi.write_text(PSI)
    monkeypatch.setattr(os, "getloadavg", lambda: (3.14159, 2.5, 1.0))
    load = machine_load(psi)
    assert load["loadavg"] == [3.14, 2.5, 1.0] and load["cpu_cores"] == os.cpu_count()
    assert load["cpu_pressure"] == {"some": {"avg10": 12.5, "avg60": 30.25, "avg300": 7.0},
                                    "full": {"avg10": 0.0, "avg60": 1.5, "avg300": 0.25}}
    assert load_line(load) == f"load average 3.14/2.50/1.00 on {os.cpu_count()} cores, CPU pressure (some, 10 s) 12.5 %"
    no_psi = machine_load(tmp_path / "absent")
    assert no_psi["cpu_pressure"] is None and load_line(no_psi).endswith(" cores")
    json.dumps(load)  # goes into result JSON as is


def test_library_versions_from_metadata():
    got = library_versions({"numpy": "numpy", "ort": ("hbl-no-such-dist", "onnxruntime"), "gone": "hbl-no-such-dist"})
    assert got == {"numpy": version("numpy"), "ort": version("onnxruntime"), "gone": "absent"}
    assert library_versions({"gone": "hbl-no-such-dist"}, absent=None) == {}


def test_run_records_and_engine_records_share_the_versions():
    import torch

    from hbl_edge.export.engines import _versions
    from hbl_edge.runio import versions

    v = versions()
    assert v["torch"] == torch.__version__ and v["numpy"] == version("numpy")
    fake_trt = type("trt", (), {"__version__": "10.3.0"})
    e = _versions(fake_trt)
    assert e["engine_library"] == "10.3.0" and e["hbl_edge"] == v["hbl_edge"] and e["python"] == v["python"]


def test_engine_library_names_agree_everywhere():
    from hbl_edge.export.engines import BACKEND_ENGINE_KINDS, ENGINE_KINDS
    from hbl_edge.runtime import trt_runner
    from hbl_edge.runtime.runners import get_backend

    assert ENGINE_KINDS == {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx"}
    assert BACKEND_ENGINE_KINDS == {"trt": "tensorrt", "trt-rtx": "tensorrt-rtx"}
    assert trt_runner._LIBRARY_NAMES == {"tensorrt": "tensorrt", "tensorrt_rtx": "tensorrt-rtx"}
    for lib in engine_kinds.ENGINES:  # each runner backend needs its engine library's module
        assert lib.module in get_backend(lib.backend).modules


def test_both_sidecar_readers_are_one_parse(tmp_path):
    from hbl_edge.export.cache import CACHE_FORMAT, read_sidecar
    from hbl_edge.runtime.trt_runner import read_engine_sidecar

    engine = tmp_path / "model.tensorrt.abc.engine"
    engine.with_suffix(".json").write_text(json.dumps({"format": CACHE_FORMAT, "key": "abc"}))
    assert read_sidecar(engine) == read_engine_sidecar(engine) == {"format": CACHE_FORMAT, "key": "abc"}
    engine.with_suffix(".json").write_text(json.dumps({"key": "abc"}))  # not a cache record: runners still read it
    assert read_sidecar(engine) is None and read_engine_sidecar(engine) == {"key": "abc"}
    engine.with_suffix(".json").write_text('{"format": "hbl-eng')  # truncated
    assert read_sidecar(engine) is None and read_engine_sidecar(engine) is None


def _sources(root: Path):
    for p in sorted(root.rglob("*.py")):
        yield p, p.read_text()


@pytest.mark.parametrize("name,home", [
    ("machine_info", {"runtime/machine.py", "search/profiler.py"}),  # the profiler's adds the Jetson model
    ("machine_load", {"runtime/machine.py"}),
    ("cpu_model", {"runtime/machine.py"}),
    ("distribution_version", {"versions.py"}),
    ("read_engine_sidecar", {"runtime/trt_runner.py"}),
])
def test_defined_in_one_place(name, home):
    found = {str(p.relative_to(PACKAGE)) for p, src in _sources(PACKAGE)
             for node in ast.walk(ast.parse(src)) if isinstance(node, ast.FunctionDef) and node.name == name}
    assert found == home


def test_no_hand_rolled_version_or_load_collection():
    """Versions come from hbl_edge.versions, load from machine_load, not from copies."""
    for p, src in [*_sources(PACKAGE), *_sources(BENCH)]:
        rel = p.relative_to(PACKAGE.parent)
        if str(rel) not in ("hbl_edge/versions.py",):
            assert "importlib.metadata" not in src, rel
        if str(rel) != "hbl_edge/runtime/machine.py":
            assert "/proc/pressure/cpu\")" not in src and "getloadavg()" not in src, rel
        assert "other jobs" not in src, rel  # no fixed "shared machine, other jobs running" notes
    for p in sorted(PACKAGE.rglob("*.py")):
        if p.name != "engine_kinds.py":
            assert '"tensorrt_rtx": "' not in p.read_text() and "\"tensorrt-rtx\": \"" not in p.read_text(), p
