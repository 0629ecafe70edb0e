"""Device registry for the latency-aware search (DESIGN §6).

Each preset carries the handful of published figures a roofline needs: dense FP16 throughput,
memory bandwidth and a per-kernel launch overhead. They feed :func:`hbl_edge.search.profiler.
estimate_table` when no measured latency table exists, and every number built from them is
labelled as an estimate. A measured table (``hbl-edge profile`` on the target) always wins.

Figures (approximations; check the datasheet of your module and power mode):

=================  =====================================================  ===========  ========
preset             GPU (NVIDIA module datasheet)                          FP16 dense   memory
=================  =====================================================  ===========  ========
jetson-orin-nano   1024 CUDA cores, 32 tensor cores, 625 MHz; 40 INT8     ≈ 10 TFLOPS  68 GB/s
                   sparse TOPS (8 GB module)
jetson-orin-nx     1024 CUDA cores, 32 tensor cores, 918 MHz; 100 INT8    ≈ 15 TFLOPS  102 GB/s
                   sparse TOPS of which ≈ 60 from the GPU (16 GB module)
jetson-agx-orin    2048 CUDA cores, 64 tensor cores, 1.3 GHz; 275 INT8    ≈ 42 TFLOPS  204.8 GB/s
                   sparse TOPS of which ≈ 170 from the GPU (64 GB module)
jetson-xavier-nx   384 CUDA cores, 48 Volta tensor cores, 1.1 GHz;        ≈ 6.8 TFLOPS 59.7 GB/s
                   21 INT8 TOPS (GPU + DLA)
=================  =====================================================  ===========  ========

The Orin FP16 figures are the GPU's sparse INT8 TOPS ÷ 4 (dense is half of sparse, FP16 is
half of INT8 on Ampere tensor cores), which equals tensor cores × clock × 256 FP16 FMA × 2.
Xavier NX: 48 tensor cores × 1.1 GHz × 64 FMA × 2. "Super" (JetPack 6.2) power modes raise the
Orin Nano/NX clocks (Orin Nano 8 GB: 67 TOPS, 102 GB/s); pass ``--latency-table`` measured in the
mode you deploy in rather than trusting these numbers. ``cpu`` and ``cuda`` are generic
placeholders (a desktop CPU with AVX2 FMA, a mid-range desktop GPU): profile them.

Launch overheads are typical CUDA kernel-launch costs under TensorRT's enqueue (a few µs on
desktop GPUs, more on Jetson's ARM cores), not datasheet figures. The efficiency factors say
how much of the peak small-channel (16/32) convolutions and elementwise kernels reach; they
are assumptions, not measurements.

``jetson`` means "the Jetson this command runs on": :func:`detect_jetson` reads
``/proc/device-tree/model`` (and ``compatible``) and maps it to a preset. Elsewhere it needs a
latency table measured on a Jetson (``--latency-table``).
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..registry import Registry

#: Where the Linux kernel exposes the board's device tree (injectable for tests).
DEVICE_TREE = Path("/proc/device-tree")


@dataclass(frozen=True)
class DeviceSpec:
    """Published (approximate) figures of one target, for a roofline estimate."""

    name: str
    description: str
    kind: str  # "cpu", "cuda" or "jetson"
    fp16_tflops: float  # dense FP16 throughput (tensor cores where present)
    bandwidth_gbs: float  # DRAM bandwidth
    launch_us: float  # per-kernel launch / dispatch overhead
    compute_efficiency: float = 0.35  # share of the peak small-channel convs reach (assumption)
    memory_efficiency: float = 0.6  # share of the peak bandwidth streaming kernels reach (assumption)
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


DEVICES: Registry[DeviceSpec] = Registry("device", ConfigError, "or `jetson`: detect the Jetson this runs on")


def register_device(spec: DeviceSpec) -> DeviceSpec:
    return DEVICES.add(spec.name, spec)


_DS = "NVIDIA Jetson {} module datasheet / product page (approximate; varies with power mode)"

register_device(DeviceSpec(
    "cpu", "generic desktop CPU (8 cores × 3 GHz × 32 FP32 FLOP/cycle AVX2 FMA, dual-channel DDR4)", "cpu",
    fp16_tflops=0.77, bandwidth_gbs=40.0, launch_us=2.0, compute_efficiency=0.3, memory_efficiency=0.5,
    source="placeholder: CPUs compute in FP32; profile your CPU with `hbl-edge profile --device cpu`",
))
register_device(DeviceSpec(
    "cuda", "generic desktop GPU (RTX 3060-class: ≈ 51 FP16 dense tensor TFLOPS, 360 GB/s)", "cuda",
    fp16_tflops=51.0, bandwidth_gbs=360.0, launch_us=3.0,
    source="placeholder (GeForce RTX 3060 whitepaper class figures); profile your GPU",
))
register_device(DeviceSpec(
    "jetson-orin-nano", "Jetson Orin Nano 8GB (1024-core Ampere, 32 tensor cores, 625 MHz)", "jetson",
    fp16_tflops=10.0, bandwidth_gbs=68.0, launch_us=8.0, source=_DS.format("Orin Nano") + ": 40 sparse INT8 TOPS, 68 GB/s",
))
register_device(DeviceSpec(
    "jetson-orin-nx", "Jetson Orin NX 16GB (1024-core Ampere, 32 tensor cores, 918 MHz)", "jetson",
    fp16_tflops=15.0, bandwidth_gbs=102.4, launch_us=7.0,
    source=_DS.format("Orin NX") + ": 100 sparse INT8 TOPS (≈ 60 GPU + DLAs), 102.4 GB/s",
))
register_device(DeviceSpec(
    "jetson-agx-orin", "Jetson AGX Orin 64GB (2048-core Ampere, 64 tensor cores, 1.3 GHz)", "jetson",
    fp16_tflops=42.5, bandwidth_gbs=204.8, launch_us=6.0,
    source=_DS.format("AGX Orin") + ": 275 sparse INT8 TOPS (≈ 170 GPU + DLAs), 204.8 GB/s",
))
register_device(DeviceSpec(
    "jetson-xavier-nx", "Jetson Xavier NX (384-core Volta, 48 tensor cores, 1.1 GHz)", "jetson",
    fp16_tflops=6.8, bandwidth_gbs=59.7, launch_us=10.0,
    source=_DS.format("Xavier NX") + ": 21 INT8 TOPS (GPU + DLA), 59.7 GB/s",
))

#: The pseudo-device that means "the Jetson this runs on".
JETSON = "jetson"


def device_names() -> list[str]:
    return [*DEVICES, JETSON]


# Ordered: the first match wins, so the more specific names come first.
_MODEL_PATTERNS: tuple[tuple[str, str], ...] = (
    ("orin nano", "jetson-orin-nano"),
    ("orin nx", "jetson-orin-nx"),
    ("agx orin", "jetson-agx-orin"),
    ("xavier nx", "jetson-xavier-nx"),
)
# Module part numbers in /proc/device-tree/compatible (carrier+module strings, e.g. "nvidia,p3767-0005").
_COMPATIBLE_PATTERNS: tuple[tuple[str, str], ...] = (
    ("p3767-0003", "jetson-orin-nano"), ("p3767-0004", "jetson-orin-nano"), ("p3767-0005", "jetson-orin-nano"),
    ("p3767-0000", "jetson-orin-nx"), ("p3767-0001", "jetson-orin-nx"),
    ("p3701", "jetson-agx-orin"),
    ("p3668", "jetson-xavier-nx"),
)


def _read_dt(path: Path) -> str:
    try:
        return path.read_bytes().replace(b"\x00", b" ").decode("utf-8", "replace").strip()
    except OSError:
        return ""


def detect_jetson(device_tree: str | os.PathLike[str] | None = None) -> str | None:
    """The preset of the Jetson this runs on, or None when it is not a (known) Jetson.

    Reads ``<device_tree>/model`` (e.g. "NVIDIA Jetson Orin Nano Developer Kit"), then the
    module part numbers in ``<device_tree>/compatible``.
    """
    root = Path(device_tree) if device_tree is not None else DEVICE_TREE
    model = _read_dt(root / "model").lower()
    for pattern, preset in _MODEL_PATTERNS:
        if pattern in model:
            return preset
    compatible = _read_dt(root / "compatible").lower()
    for pattern, preset in _COMPATIBLE_PATTERNS:
        if pattern in compatible:
            return preset
    return None


def jetson_model_string(device_tree: str | os.PathLike[str] | None = None) -> str:
    root = Path(device_tree) if device_tree is not None else DEVICE_TREE
    return _read_dt(root / "model")


def get_device(name: str) -> DeviceSpec:
    """A registered preset (not ``jetson``; see :func:`resolve_device`)."""
    return DEVICES.get(name)


def resolve_device(
    name: str,
    latency_table: str | os.PathLike[str] | None = None,
    device_tree: str | os.PathLike[str] | None = None,
) -> DeviceSpec | None:
    """The preset for ``name``; ``jetson`` is detected from the device tree.

    Returns None for ``jetson`` off a Jetson when a latency table is given (the table is the
    whole truth then). Raises a one-line :class:`ConfigError` for an unknown name, or for
    ``jetson`` off a Jetson without a table.
    """
    if name != JETSON:
        return get_device(name)
    preset = detect_jetson(device_tree)
    if preset is not None:
        return DEVICES[preset]
    if latency_table is not None:
        return None
    model = jetson_model_string(device_tree)
    seen = f"this machine is {model!r}" if model else f"this machine ({platform.machine()}) has no Jetson device tree"
    raise ConfigError(
        f"--device jetson: {seen}; run `hbl-edge profile --device jetson` on the Jetson and pass its table "
        f"with --latency-table, or name a preset ({', '.join(n for n in DEVICES if n.startswith('jetson-'))}) "
        "for a roofline estimate"
    )


__all__ = [
    "DEVICES", "DEVICE_TREE", "DeviceSpec", "JETSON", "detect_jetson", "device_names", "get_device",
    "jetson_model_string", "register_device", "resolve_device",
]
