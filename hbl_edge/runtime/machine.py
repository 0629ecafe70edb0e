"""What a measurement ran on, and how loaded the machine was: the one place for both.

Shared by ``hbl-edge bench``, the latency profiler, the engine build records, the demo and the
scripts in ``bench/``. Torch-free and import-free: library versions are read from package
metadata, so describing the machine never imports (or initialises) a backend.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

from ..versions import base_versions, library_versions

#: Libraries whose versions change a latency; ``machine_info`` records those installed.
MEASURED_LIBRARIES = {
    "onnxruntime": "onnxruntime", "onnxruntime-gpu": "onnxruntime-gpu", "torch": "torch", "tensorrt": "tensorrt",
    "tensorrt-rtx": ("tensorrt-rtx", "tensorrt_rtx"), "pycuda": "pycuda", "numpy": "numpy",
}


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (x86 "model name", Arm "Hardware"/"CPU model")."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model", "processor\t: arm")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """CPU model, cores, GPU and library versions (read from package metadata: nothing imported)."""
    from .trt_runner import cuda_device_identity, device_label

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    return {
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": usable,
        "gpu": device_label(cuda_device_identity()),
        "platform": platform.platform(),
        **base_versions(),
        "versions": library_versions(MEASURED_LIBRARIES, absent=None),
    }


def _pressure(path: Path) -> dict[str, dict[str, float]] | None:
    """``/proc/pressure/cpu`` as ``{"some": {"avg10": …, "avg60": …, "avg300": …}, "full": …}`` (percent)."""
    try:
        text = path.read_text()
    except OSError:
        return None
    out: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        fields = dict(f.split("=", 1) for f in rest.split() if "=" in f)
        try:
            out[kind] = {k: float(fields[k]) for k in ("avg10", "avg60", "avg300")}
        except (KeyError, ValueError):
            continue
    return out or None


def machine_load(pressure_file: str | os.PathLike[str] = "/proc/pressure/cpu") -> dict[str, Any]:
    """The machine's measured load now: what a timing's JSON records instead of a fixed note.

    ``loadavg``: the 1/5/15-minute load averages (runnable processes; compare with
    ``cpu_cores``); ``cpu_pressure``: Linux PSI, the share of time (percent, over 10/60/300 s)
    in which some (or all) runnable tasks waited for a CPU, or None where the kernel has no PSI.
    Record it before and after a measurement.
    """
    try:
        loadavg: list[float] | None = [round(v, 2) for v in os.getloadavg()]
    except OSError:  # not available on this platform
        loadavg = None
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "loadavg": loadavg,
        "cpu_cores": os.cpu_count(),
        "cpu_pressure": _pressure(Path(pressure_file)),
    }


def load_line(load: dict[str, Any]) -> str:
    """``"load average 3.10/2.80/2.50 on 2 cores, CPU pressure (some, 10 s) 41.2 %"`` for logs and docs."""
    la = load.get("loadavg")
    text = "load average " + ("/".join(f"{v:.2f}" for v in la) if la else "unknown") + f" on {load.get('cpu_cores')} cores"
    some = (load.get("cpu_pressure") or {}).get("some")
    return text + (f", CPU pressure (some, 10 s) {some['avg10']:.1f} %" if some else "")


__all__ = ["MEASURED_LIBRARIES", "cpu_model", "load_line", "machine_info", "machine_load"]
