"""Packaging: a torch-free core, the research side behind `train`, tensorrt-rtx only where it has wheels."""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python ≥ 3.11
from packaging.markers import default_environment  # noqa: E402
from packaging.requirements import Requirement  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
TRAINING_SIDE = {"torch", "kornia", "safetensors", "matplotlib", "scikit-image", "onnxscript", "onnxconverter-common"}


def names(reqs):
    return {Requirement(r).name for r in reqs}


def test_core_is_torch_free_and_train_has_the_research_side():
    core = names(PROJECT["dependencies"])
    assert core == {"numpy", "onnx", "onnxruntime", "typer", "rich", "pillow"}
    extras = PROJECT["optional-dependencies"]
    assert names(extras["train"]) == TRAINING_SIDE
    assert names(extras["video"]) == {"av", "opencv-python-headless"}


@pytest.mark.parametrize("system, machine, wanted", [
    ("Linux", "x86_64", True), ("Windows", "AMD64", True),
    ("Linux", "aarch64", False), ("Darwin", "arm64", False), ("Darwin", "x86_64", False),
])
def test_dev_installs_tensorrt_rtx_only_where_wheels_exist(system, machine, wanted):
    env = {**default_environment(), "platform_system": system, "platform_machine": machine}
    dev = [Requirement(r) for r in PROJECT["optional-dependencies"]["dev"]]
    rtx = [r for r in dev if r.name == "tensorrt-rtx"]
    assert len(rtx) == 1 and rtx[0].marker is not None and rtx[0].marker.evaluate(env) is wanted
    assert {"pytest", "pytest-timeout"} <= {r.name for r in dev if r.marker is None}


def test_makefile_installs_torch_first_then_everything():
    lines = [line.strip() for line in (REPO / "Makefile").read_text().splitlines()]
    torch_at = next(i for i, line in enumerate(lines) if "$(TORCH_SPEC)" in line and "pip install" in line)
    project_at = next(i for i, line in enumerate(lines) if "pip install" in line and "-e '.[" in line)
    assert torch_at < project_at and "-e '.[train,video,dev]'" in lines[project_at]
