"""Roofline latency estimate from a device preset's published figures (no measurement).

Without a measured table, :func:`estimate_table` counts the kernels each op launches (its eager
forward on meta tensors: FLOPs of convolutions, elements of elementwise ops, FP16 bytes in and
out) and sums, per kernel,

    max(FLOPs / (peak · compute_efficiency), bytes / (bandwidth · memory_efficiency)) + launch

The table has ``estimate: true`` and an ESTIMATE label, which every report built from it
carries. It models no fusion (TensorRT fuses bias/ReLU/add into convolutions), so it
overestimates elementwise-heavy parts: use it to rank ops, never to promise a frame rate.
"""

from __future__ import annotations

import os
import time
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import get_space
from ..runio import parse_resolution
from .devices import DeviceSpec, resolve_device
from .latency import ESTIMATE_LABEL, LatencyTable, Position, parse_channels
from .op_graphs import entry_graphs, fixed_graphs, op_module

_FREE = {
    "view", "_unsafe_view", "reshape", "expand", "t", "transpose", "permute", "slice", "select", "detach",
    "alias", "as_strided", "unsqueeze", "squeeze", "empty", "lift_fresh", "lift_fresh_copy", "_to_copy",
    "clone", "empty_like", "zeros_like", "sym_size", "sym_numel", "sym_stride", "arange", "scalar_tensor",
}


class _CountKernels:
    """Counts kernels, FLOPs and bytes (at 2 bytes/element, FP16) of a forward on meta tensors."""

    def __init__(self) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        outer = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
                out = func(*args, **(kwargs or {}))
                outer._record(func, args, out)
                return out

        self.mode = Mode()
        self.kernels: list[tuple[float, float]] = []  # (flops, bytes)

    def _record(self, func: Any, args: Any, out: Any) -> None:
        name = func.overloadpacket.__name__
        if name in _FREE:
            return
        tensors_in = [a for a in _flat(args) if isinstance(a, torch.Tensor)]
        tensors_out = [o for o in _flat(out) if isinstance(o, torch.Tensor)]
        elems = sum(t.numel() for t in tensors_in) + sum(t.numel() for t in tensors_out)
        out_elems = sum(t.numel() for t in tensors_out)
        flops = float(out_elems)
        if name == "convolution":
            x, wt = args[0], args[1]
            transposed = bool(args[6])  # grouped convs: wt.shape[1] is already C/groups
            k = wt.shape[2] * wt.shape[3]
            if transposed:  # weight [C_in, C_out/g, kh, kw]
                flops = 2.0 * x.numel() * wt.shape[1] * k
            else:  # weight [C_out, C_in/g, kh, kw]
                flops = 2.0 * out_elems * wt.shape[1] * k
        self.kernels.append((flops, 2.0 * elems))


def _flat(x: Any) -> list[Any]:
    if isinstance(x, (list, tuple)):
        return [y for v in x for y in _flat(v)]
    return [x]


def _roofline_ms(module: nn.Module, shapes: Sequence[tuple[int, ...]], spec: DeviceSpec) -> dict[str, float]:
    counter = _CountKernels()
    m = module.to("meta").eval()
    xs = [torch.empty(*s, device="meta") for s in shapes]
    with torch.no_grad(), counter.mode:
        m(*xs)
    peak = spec.fp16_tflops * 1e12 * spec.compute_efficiency
    bw = spec.bandwidth_gbs * 1e9 * spec.memory_efficiency
    ms = sum(max(f / peak, b / bw) * 1e3 + spec.launch_us * 1e-3 for f, b in counter.kernels)
    return {
        "ms": ms, "flops": sum(f for f, _ in counter.kernels), "bytes": sum(b for _, b in counter.kernels),
        "kernels": len(counter.kernels),
    }


class _EstimateIO(nn.Module):
    """Pad, crop and clamp, as counted for the estimate (host↔device copies are not modelled)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        y = F.pad(x, (0, (-w) % 4, 0, (-h) % 4), mode="replicate")
        return y[..., :h, :w].clamp(0.0, 1.0)


def estimate_table(
    device: str,
    resolution: str | Sequence[int] = (1280, 720),
    space: str = "paper",
    channels: Sequence[int] = (16, 32),
    *,
    units: int = 7,
    out: str | os.PathLike[str] | None = None,
    device_tree: str | os.PathLike[str] | None = None,
) -> LatencyTable:
    """A roofline latency table from ``device``'s published FP16 throughput and bandwidth.

    Per kernel: max(FLOPs / (peak · compute_efficiency), bytes / (bandwidth · memory_efficiency))
    + launch overhead, summed over the kernels an op launches (counted from its eager forward,
    FP16 bytes, no fusion). The table has ``estimate: true`` and an ESTIMATE label: use it to rank
    ops when no measured table exists, never as a measurement.
    """
    spec = resolve_device(device, device_tree=device_tree)
    assert spec is not None
    resolution = parse_resolution(resolution, minimum=4)
    channels = parse_channels(channels)
    sp = get_space(space)
    torch.manual_seed(0)
    entries = []
    for eg in entry_graphs(space, channels, resolution).values():
        pos = Position("", 0, eg.entry["c_in"], eg.entry["c_out"], eg.entry["height"], eg.entry["width"], eg.entry["variant"])
        module, _ = op_module(eg.entry["op"], pos)  # the op alone: the roofline counts its ReLUs as fixed parts
        entries.append(dict(eg.entry, **_roofline_ms(module, [(1, pos.c_in, pos.height, pos.width)], spec)))
    fixed = []
    for fg in fixed_graphs(channels, resolution, "torch", relus=True):
        module = _EstimateIO() if fg.meta["name"] == "io" else fg.graph.module
        fixed.append(dict(fg.meta, **_roofline_ms(module, fg.graph.shapes, spec)))
    return _finish_estimate(spec, resolution, sp, channels, entries, fixed, units, out)


def _finish_estimate(spec, resolution, sp, channels, entries, fixed, units, out) -> LatencyTable:  # noqa: ANN001
    table = LatencyTable(
        device={"name": spec.description, "preset": spec.name, "spec": spec.to_dict()},
        backend={"name": "roofline", "versions": {"torch": torch.__version__}},
        resolution=resolution,
        space={"name": sp.name, "fcm": list(sp.fcm), "hnu": list(sp.hnu)},
        channels=channels,
        entries=entries,
        fixed=fixed,
        dtype="float16",
        units=units,
        estimate=True,
        label=f"{ESTIMATE_LABEL} for {spec.name} at {resolution[0]}x{resolution[1]}",
        date=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        settings={"model": "per kernel max(FLOPs/(peak·eff), bytes/(bw·eff)) + launch; FP16 bytes; no fusion"},
    )
    if out is not None:
        table.save(out)
    return table


__all__ = ["estimate_table"]
