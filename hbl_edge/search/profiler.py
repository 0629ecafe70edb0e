"""Latency profiler: measure the latency table of a search space on this machine.

:func:`profile` orchestrates the pieces:

1. what is timed (:mod:`hbl_edge.search.op_graphs`): every op of the space at every distinct
   position of the network, in context (the marginal cost of one ``op → ReLU`` block in a chain
   at the position's size), and the network's fixed parts;
2. how it is timed (:mod:`hbl_edge.search.timing`, :mod:`hbl_edge.search.timing_trt`): per
   graph a block of consecutive runs after a warm-up, in a session that is the only one alive,
   in ``rounds`` rounds over all graphs (every other one reversed); graphs whose runs spread by
   more than 15 % (IQR / median) are timed again, and flagged ``noisy`` when they still do;
3. the whole-network model (:mod:`hbl_edge.search.calibration`): with ``calibrate=N``, N
   calibration networks spanning the space's range are measured as deployed
   (:mod:`hbl_edge.search.deployed`) and the model's scales and per-network offset fitted.

Backends: ``torch`` (eager, CPU or CUDA), ``onnxruntime`` (CPU provider on ``--device cpu``,
CUDA provider on GPUs), ``tensorrt`` (an engine per graph). The deployed runner's settings,
intra-op ``threads`` and ``allow_spinning``, are used for every graph and recorded in the table:
a prediction holds for a runner with those settings. Without a measured table,
:func:`~hbl_edge.search.roofline.estimate_table` gives a labelled roofline estimate.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any, Hashable, Sequence

import numpy as np
import torch

from ..errors import ConfigError
from ..ops import get_space
from ..runio import parse_resolution as _parse_resolution
from .calibration import calibrate_table, fit_calibration, fit_network_model
from .deployed import measure_network, measure_networks
from .devices import DEVICES, JETSON, detect_jetson, get_device
from .latency import LatencyTable, parse_channels
from .op_graphs import CHAIN, empty_call, entry_graphs, fixed_graphs
from .roofline import estimate_table
from .timing import (
    NOISY_SPREAD, Block, Progress, block_stats, load_snapshot, make_harness, median, retime_noisy, time_blocks,
    torch_threads,
)
from .timing_trt import import_tensorrt

BACKENDS = ("torch", "onnxruntime", "tensorrt")
_ALIASES = {"ort": "onnxruntime", "trt": "tensorrt"}
DTYPES = ("float32", "float16")


# ---------------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------------
def parse_resolution(spec: str | Sequence[int]) -> tuple[int, int]:
    """(W, H) with both sides ≥ 4 (the network pads to a multiple of 4)."""
    return _parse_resolution(spec, minimum=4)


def normalise_backend(backend: str) -> str:
    name = _ALIASES.get(backend, backend)
    if name not in BACKENDS:
        raise ConfigError(f"unknown profiling backend {backend!r}; use one of {', '.join(BACKENDS)}")
    return name


def _target(device: str, backend: str, dtype: str, device_tree: str | os.PathLike[str] | None) -> tuple[str, str | None]:
    """Check that ``device`` is this machine; returns (torch device, preset name or None)."""
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    if device == "cpu":
        if backend == "tensorrt":
            raise ConfigError("the tensorrt backend runs on NVIDIA GPUs; use --device cuda or a Jetson, or --backend onnxruntime")
        if dtype != "float32":
            raise ConfigError("CPU profiling measures float32 (CPUs do not run these convs in float16); use --dtype float32")
        return "cpu", "cpu"
    if device == JETSON or device.startswith("jetson-"):
        here = detect_jetson(device_tree)
        if device != JETSON:
            get_device(device)  # unknown preset → ConfigError
        if here is None or (device != JETSON and here != device):
            seen = f"this is a {here}" if here else "this machine is not a Jetson"
            raise ConfigError(
                f"`profile` measures the machine it runs on and {seen}; run it on the {device} itself, "
                "or use the roofline estimate (estimate_table / --estimate)"
            )
        preset: str | None = here
    elif device == "cuda":
        preset = "cuda"
    else:
        raise ConfigError(f"unknown device {device!r}; known devices: cpu, cuda, {', '.join(d for d in DEVICES if d.startswith('jetson-'))}, jetson")
    if backend == "torch" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device} with the torch backend needs a CUDA build of PyTorch and a visible GPU")
    return "cuda", preset


# ---------------------------------------------------------------------------------------------
# Machine description
# ---------------------------------------------------------------------------------------------
def machine_info(torch_device: str = "cpu", backend: str = "onnxruntime", device_tree: Any = None) -> dict[str, Any]:
    """What the numbers were measured on: :func:`hbl_edge.runtime.benchmark.machine_info` (CPU,
    cores, GPU, library versions) plus the Jetson model and a short ``name`` for labels."""
    from ..runtime.benchmark import machine_info as runtime_machine_info
    from .devices import jetson_model_string

    info: dict[str, Any] = runtime_machine_info()
    info["cpu_count"] = info.get("cpu_cores")
    if torch_device == "cuda" and not info.get("gpu") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    jm = jetson_model_string(device_tree)
    if jm:
        info["jetson_model"] = jm
    info["name"] = info.get("gpu") or info["cpu"]
    return info


# ---------------------------------------------------------------------------------------------
# profile
# ---------------------------------------------------------------------------------------------
def profile(
    device: str = "cpu",
    backend: str = "onnxruntime",
    resolution: str | Sequence[int] = (640, 360),
    space: str = "paper",
    channels: Sequence[int] = (16, 32),
    out: str | os.PathLike[str] | None = None,
    *,
    repeats: int = 15,
    warmup: int = 3,
    rounds: int = 2,
    chain: int = CHAIN,
    dtype: str = "float32",
    threads: int | None = None,
    allow_spinning: bool | None = None,
    units: int = 7,
    calibrate: int = 0,
    calibration_seed: int = 10_000,
    calibration_repeats: int | None = None,
    retries: int = 2,
    seed: int = 0,
    device_tree: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
) -> LatencyTable:
    """Measure the latency table of ``space`` on this machine and (optionally) write it to ``out``.

    Args:
        device: ``cpu``, ``cuda``, a ``jetson-*`` preset (must be the Jetson this runs on) or ``jetson``.
        backend: ``onnxruntime`` (alias ``ort``), ``torch`` or ``tensorrt`` (alias ``trt``).
        resolution: input (W, H) or ``"WxH"``; the network pads it to a multiple of 4.
        space, channels, units: what network the table is for (units scales the per-unit fixed
            parts and shapes the calibration networks).
        repeats, warmup, rounds: timed and untimed consecutive runs per graph and round; rounds
            over all graphs. The table keeps medians.
        chain: blocks in the long chain an op's in-context cost is taken from.
        dtype: ``float32``, or ``float16`` for torch on CUDA / TensorRT.
        threads: intra-op threads of the deployed runner (onnxruntime, torch CPU); None = the
            backend's default, which is what ``OrtRunner`` uses unless told otherwise.
        allow_spinning: onnxruntime's ``session.intra_op.allow_spinning`` of the deployed runner
            (None: onnxruntime's default, on).
        calibrate: fit the whole-network model on this many calibration networks (0: none).
        retries: extra rounds for graphs whose runs spread by more than 15 %.

    Raises:
        ConfigError, BackendError: a bad option, a backend that is not installed, or a device
            that is not this machine (one line, saying what to do).
    """
    backend = normalise_backend(backend)
    if backend == "tensorrt":
        import_tensorrt()
    resolution = parse_resolution(resolution)
    sp = get_space(space)
    channels = parse_channels(channels)
    if repeats < 1 or warmup < 0 or rounds < 1:
        raise ConfigError(f"repeats and rounds must be ≥ 1 and warmup ≥ 0, got {repeats}, {rounds} and {warmup}")
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be ≥ 1, got {threads}")
    if chain < 2:
        raise ConfigError(f"chain must be ≥ 2 blocks, got {chain}")
    torch_device, preset = _target(device, backend, dtype, device_tree)

    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    entries_g = entry_graphs(space, channels, resolution, chain)
    fixed_g = fixed_graphs(channels, resolution, backend)
    load_before = load_snapshot()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hbl-profile-") as tmp, torch_threads(threads if backend == "torch" else None):
        h = make_harness(backend, torch_device, dtype, threads, Path(tmp), allow_spinning)
        try:
            plan: list[tuple[Hashable, Any]] = []
            for k, eg in entries_g.items():
                plan += [(("entry", k, name), g) for name, g in eg.graphs.items()]
            plan += [(("fixed", i, ""), fg.graph) for i, fg in enumerate(fixed_g)]
            if h.subtract_overhead:
                plan.append((("overhead", 0, ""), empty_call()))
            blocks: dict[Hashable, Block] = {}
            for n, (key, graph) in enumerate(plan):
                blocks[key] = h.prepare(graph, gen)
                if progress:
                    progress("preparing", n + 1, len(plan))
            got = time_blocks(blocks, h.sync, warmup=warmup, repeats=repeats, rounds=rounds, progress=progress)
            noisy = retime_noisy(blocks, got, h.sync, warmup=warmup, repeats=repeats, retries=retries, progress=progress)
            versions = h.versions()
        finally:
            h.close()
    seconds = time.perf_counter() - t0
    overhead = median(got[("overhead", 0, "")].all) if h.subtract_overhead else 0.0

    entries = []
    for k, eg in entries_g.items():
        row = dict(eg.entry, method=eg.method)
        keys = [("entry", k, name) for name in eg.graphs]
        if eg.chain:
            s1, sk = (block_stats(got[key].all) for key in keys)
            row["ms"] = max((sk["median_ms"] - s1["median_ms"]) / (eg.chain - 1), 0.0)
            row["chain_ms"] = [round(s1["median_ms"], 6), round(sk["median_ms"], 6)]
            # the IQR of a difference of two medians, scaled like the difference
            row["iqr_ms"] = round(float(np.hypot(s1["iqr_ms"], sk["iqr_ms"])) / (eg.chain - 1), 6)
            row["spread"] = max(s1["spread"], sk["spread"])
            row["runs"] = s1["runs"] + sk["runs"]
        else:
            st = block_stats(got[keys[0]].all)
            row.update(ms=max(st["median_ms"] - overhead, 0.0), raw_ms=round(st["median_ms"], 6), iqr_ms=st["iqr_ms"],
                       spread=st["spread"], runs=st["runs"])
        if any(key in noisy for key in keys):
            row["noisy"] = True
        if eg.folded is not None:
            row["folded"] = eg.folded
        entries.append(row)
    fixed = []
    for i, fg in enumerate(fixed_g):
        st = block_stats(got[("fixed", i, "")].all)
        sub = overhead if fg.subtract_overhead else 0.0
        row = dict(fg.meta, ms=max(st["median_ms"] - sub, 0.0), raw_ms=round(st["median_ms"], 6), iqr_ms=st["iqr_ms"],
                   spread=st["spread"], runs=st["runs"])
        if ("fixed", i, "") in noisy:
            row["noisy"] = True
        fixed.append(row)

    table = LatencyTable(
        device={**machine_info(torch_device, backend, device_tree), "preset": preset, "requested": device},
        backend={"name": backend, "versions": versions},
        resolution=resolution,
        space={"name": sp.name, "fcm": list(sp.fcm), "hnu": list(sp.hnu)},
        channels=channels,
        entries=entries,
        fixed=fixed,
        dtype=dtype,
        units=units,
        estimate=False,
        date=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        settings={
            "repeats": repeats, "warmup": warmup, "rounds": rounds, "chain": chain, "retries": retries,
            "threads": threads, "allow_spinning": allow_spinning, "seed": seed, "statistic": "median",
            "call_overhead_ms": overhead, "noisy_spread": NOISY_SPREAD,
            "noisy": sum(bool(r.get("noisy")) for r in entries + fixed), "seconds": round(seconds, 1),
            "timing": "per graph: warm-up then consecutive runs in the only live session; rounds over all graphs "
                      "(alternate reversed); median",
            "ops": f"C→C ops: marginal cost of one (op → ReLU) block, (T_{chain} − T_1)/({chain} − 1); head and tail "
                   "timed alone" + (", less the empty-call overhead" if h.subtract_overhead else ""),
            "load": {"before": load_before, "after": load_snapshot()},
        },
    )
    if calibrate:
        table.calibration = calibrate_table(
            table, calibrate, seed=calibration_seed, repeats=calibration_repeats or repeats, warmup=warmup,
            rounds=rounds, threads=threads, allow_spinning=allow_spinning, device=torch_device, progress=progress,
        )
    if out is not None:
        table.save(out)
    return table


__all__ = [
    "BACKENDS", "calibrate_table", "estimate_table", "fit_calibration", "fit_network_model", "machine_info",
    "measure_network", "measure_networks", "normalise_backend", "parse_resolution", "profile",
]
