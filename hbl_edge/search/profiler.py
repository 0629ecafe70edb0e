"""Latency profiler: measure (or estimate) a latency table of a search space on a device.

:func:`profile` measures, on the machine it runs on, every op of a space at every distinct
position of the network (see :func:`hbl_edge.search.latency.edge_positions`) and the network's
fixed parts, with the backend that will run the model:

- ``torch``: eager PyTorch on the CPU, or on CUDA (``torch.cuda.synchronize`` around each run);
- ``onnxruntime``: each op exported to a tiny ONNX (dynamic H, W like the deployed graph) and run
  by an ``InferenceSession`` through I/O binding (so no numpy copies are timed); the CPU provider
  on ``--device cpu``, the CUDA provider on GPUs;
- ``tensorrt``: each op built into a TensorRT engine (exact-shape profile) and run with
  ``execute_async_v3`` on device buffers, synchronised on the stream.

Timing: ``warmup`` untimed runs per op, then ``repeats`` timed runs per op collected in rounds
over all ops (so a burst of load from another process spreads over every op instead of
spoiling one), median. For onnxruntime and TensorRT the cost of one empty call (a 1-element
graph) is measured the same way and subtracted from every op, and counted once per network in
the ``io`` fixed part (which runs the deployed padding/crop/clamp graph with host copies).

HNU ops are measured BatchNorm-folded (as the exported network runs them); encoder/decoder ops
as they are. Fixed parts: ``io`` (pad to a multiple of 4, crop, clamp, one call), ``down1``,
``down2``, ``up1``/``up2`` (skip add + transposed conv), the ReLU and residual add of each
encoder/decoder pair, and per HNU the 6 ReLUs between branch ops and the merge
``ReLU(x+R) ⊘ max(σ(ReLU(x+I)), 0.01)``.

:func:`estimate_table` builds the same table from a device preset's published FP16 rate and
bandwidth (roofline: max(FLOPs/throughput, bytes/bandwidth) + launch overhead per kernel), with
``estimate: true`` and an ESTIMATE label.

``profile(..., calibrate=N)`` then measures N random genotypes end to end (seeded separately
from anything you evaluate on) and stores a least-squares fit measured ≈ scale·predicted + offset
in the table; :class:`~hbl_edge.search.latency.LatencyModel` applies it.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..runio import parse_resolution as _parse_resolution
from ..runtime.machine import cpu_model
from ..genotype import GenotypeLike, load_genotype
from ..ops import get_space, make_op
from ..runtime.runners import BackendError
from .devices import DEVICES, JETSON, DeviceSpec, detect_jetson, get_device, resolve_device
from .latency import (
    ESTIMATE_LABEL, LatencyModel, LatencyTable, Position, edge_positions, op_buildable, padded_size, random_genotype,
)

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnxruntime", "tensorrt")
_ALIASES = {"ort": "onnxruntime", "trt": "tensorrt"}
DTYPES = ("float32", "float16")
OPSET = 17
Progress = Callable[[str, int, int], None]


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


def _import_tensorrt() -> Any:
    try:
        import tensorrt as trt  # noqa: F401
    except ImportError:
        raise BackendError(
            "TensorRT is not installed here; install it (`pip install tensorrt` on a desktop, JetPack's "
            "python3-libnvinfer on a Jetson) or profile with --backend onnxruntime / torch"
        ) from None
    return trt


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
# What is measured
# ---------------------------------------------------------------------------------------------
class _Stub(nn.Module):
    """Stands in for the network inside the deployed I/O graph (pad → network → crop → clamp)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class _TorchIO(nn.Module):
    """Eager I/O: Network.forward's padding and crop, plus the clamp to [0, 1]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from ..network import pad_to_multiple

        y, h, w = pad_to_multiple(x)
        return y[..., :h, :w].clamp(0.0, 1.0)


class _Relu(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x)


class _Add(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


class _AddUp(nn.Module):
    """The skip add and transposed conv of Up1 / Up2."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(c_in, c_out, 2, stride=2, bias=False)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.up(a + b)


class _HnuMerge(nn.Module):
    """What an HNU does around its branches: residual adds, ReLUs, σ, floor, division."""

    def forward(self, x: torch.Tensor, br: torch.Tensor, bi: torch.Tensor) -> torch.Tensor:
        from ..network import MAP_FLOOR

        r = torch.relu(x + br)
        i = torch.relu(x + bi)
        return r / torch.clamp(torch.sigmoid(i), min=MAP_FLOOR)


@dataclass
class _Item:
    """One thing to time: a module and the shapes of its inputs."""

    module: nn.Module
    shapes: list[tuple[int, ...]]
    plain: bool = False  # timed like a deployed call (host arrays in and out), not through I/O binding
    folded: bool | None = None


def _op_module(op: str, pos: Position) -> tuple[nn.Module, bool | None]:
    """The module an op is at a position; HNU ops BatchNorm-folded as exported (None: not applicable)."""
    m = make_op(op, pos.c_in, pos.c_out)
    if pos.variant != "bn_folded":
        return m.eval(), None
    from ..network import BranchNorm, _fold_branch_op

    bn = BranchNorm(m, pos.c_out)
    with torch.no_grad():  # plausible running statistics, so the folded weights are ordinary numbers
        bn.bn.running_mean.uniform_(-0.1, 0.1)
        bn.bn.running_var.uniform_(0.5, 2.0)
    try:
        return _fold_branch_op(bn).eval(), True
    except TypeError:  # an op with no folding rule: the deployed net would run op + BatchNorm
        return bn.eval(), False


def _entry_items(space: str, channels: Sequence[int], resolution: Sequence[int]) -> dict[tuple, tuple[dict, _Item]]:
    sp = get_space(space)
    seen: dict[tuple, tuple[dict, _Item]] = {}
    for group, positions in edge_positions(channels, resolution).items():
        ops = sp.hnu if group == "hnu" else sp.fcm
        for pos in positions:
            for op in ops:
                key = (op, *pos.key)
                if key in seen or not op_buildable(op, pos.c_in, pos.c_out):
                    continue
                module, folded = _op_module(op, pos)
                entry = {
                    "op": op, "c_in": pos.c_in, "c_out": pos.c_out, "height": pos.height, "width": pos.width,
                    "variant": pos.variant,
                }
                seen[key] = (entry, _Item(module, [(1, pos.c_in, pos.height, pos.width)], folded=folded))
    return seen


def _fixed_items(channels: Sequence[int], resolution: Sequence[int], backend: str) -> list[tuple[dict, _Item]]:
    c1, c2 = (int(c) for c in channels)
    w, h = (int(v) for v in resolution)
    pw, ph = padded_size(resolution)
    full, half, quarter = (ph, pw), (ph // 2, pw // 2), (ph // 4, pw // 4)
    if backend == "torch":
        io = _TorchIO()
    else:
        from ..export.onnx_export import ExportGraph

        io = ExportGraph(_Stub())  # type: ignore[arg-type]
    spec = [
        ("io", "network", 1, io, [(1, 3, h, w)], True, "pad to ×4, crop, clamp; one call with host input/output"),
        ("down1", "network", 1, nn.Conv2d(c1, c2, 2, stride=2, bias=False), [(1, c1, *full)], False, "conv 2×2/2"),
        ("down2", "network", 1, nn.Conv2d(c2, c2, 2, stride=2, bias=False), [(1, c2, *half)], False, "conv 2×2/2"),
        ("up1", "network", 1, _AddUp(c2, c2), [(1, c2, *quarter)] * 2, False, "h + s2, convT 2×2/2"),
        ("up2", "network", 1, _AddUp(c2, c1), [(1, c2, *half)] * 2, False, "q + s1, convT 2×2/2"),
        ("pair_relu_full", "network", 4, _Relu(), [(1, c1, *full)], False, "ReLU inside a residual pair"),
        ("pair_add_full", "network", 4, _Add(), [(1, c1, *full)] * 2, False, "residual add of a pair"),
        ("pair_relu_half", "network", 4, _Relu(), [(1, c2, *half)], False, "ReLU inside a residual pair"),
        ("pair_add_half", "network", 4, _Add(), [(1, c2, *half)] * 2, False, "residual add of a pair"),
        ("hnu_relu", "unit", 6, _Relu(), [(1, c2, *quarter)], False, "ReLU between branch ops"),
        ("hnu_merge", "unit", 1, _HnuMerge(), [(1, c2, *quarter)] * 3, False, "ReLU(x+R) / max(σ(ReLU(x+I)), 0.01)"),
    ]
    return [
        ({"name": n, "per": per, "count": count, "what": what}, _Item(m.eval(), shapes, plain))
        for n, per, count, m, shapes, plain, what in spec
    ]


# ---------------------------------------------------------------------------------------------
# Harnesses: prepare(item) -> run(); sync(); the empty-call overhead
# ---------------------------------------------------------------------------------------------
def _inputs(shapes: Sequence[tuple[int, ...]], gen: torch.Generator) -> list[torch.Tensor]:
    return [torch.randn(*s, generator=gen) for s in shapes]


def _export_tiny(module: nn.Module, inputs: list[torch.Tensor], path: Path, dynamic: bool) -> list[str]:
    names = [f"x{i}" for i in range(len(inputs))]
    axes = {n: {2: "h", 3: "w"} for n in names} if dynamic else None
    if axes is not None:
        axes["y"] = {2: "h", 3: "w"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, tuple(inputs), str(path), dynamo=False, opset_version=OPSET, do_constant_folding=True,
            input_names=names, output_names=["y"], dynamic_axes=axes,
        )
    return names


class _TorchHarness:
    subtract_overhead = False

    def __init__(self, device: str, dtype: str, threads: int | None) -> None:
        self.device = torch.device(device)
        self.dtype = torch.float16 if dtype == "float16" else torch.float32
        self.threads = threads

    def versions(self) -> dict[str, str]:
        out = {"torch": torch.__version__, "threads": str(self.threads or torch.get_num_threads())}
        if self.device.type == "cuda":
            out["cuda"] = str(torch.version.cuda)
            out["cudnn"] = str(torch.backends.cudnn.version())
        return out

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def prepare(self, item: _Item, gen: torch.Generator) -> Callable[[], Any]:
        module = item.module.to(self.device, self.dtype).eval()
        xs = [x.to(self.device, self.dtype) for x in _inputs(item.shapes, gen)]

        def run() -> Any:
            with torch.inference_mode():
                return module(*xs)

        return run

    def close(self) -> None:
        pass


class _OrtHarness:
    subtract_overhead = True

    def __init__(self, device: str, dtype: str, threads: int | None, tmp: Path) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendError("onnxruntime is not installed here; `pip install onnxruntime` (or onnxruntime-gpu)") from None
        if dtype != "float32":
            raise ConfigError("the onnxruntime profiler measures float32 graphs; use --dtype float32 (or --backend tensorrt)")
        self.ort, self.tmp, self.threads, self.n = ort, tmp, threads, 0
        self.provider = "CUDAExecutionProvider" if device == "cuda" else "CPUExecutionProvider"
        if self.provider not in ort.get_available_providers():
            raise BackendError(f"this onnxruntime has no {self.provider}; install onnxruntime-gpu or profile with --device cpu")
        self.device = "cuda" if device == "cuda" else "cpu"

    def versions(self) -> dict[str, str]:
        return {"onnxruntime": self.ort.__version__, "provider": self.provider, "threads": str(self.threads or "default")}

    def session(self, path: Path) -> Any:
        ort = self.ort
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # as OrtRunner
        opts.log_severity_level = 3
        if self.threads is not None:
            opts.intra_op_num_threads = int(self.threads)
        return ort.InferenceSession(str(path), sess_options=opts, providers=[self.provider])

    def sync(self) -> None:
        pass  # run_with_iobinding / run return when the outputs are ready

    def prepare(self, item: _Item, gen: torch.Generator) -> Callable[[], Any]:
        xs = _inputs(item.shapes, gen)
        self.n += 1
        path = self.tmp / f"op{self.n}.onnx"
        names = _export_tiny(item.module.float().cpu().eval(), xs, path, dynamic=True)
        sess = self.session(path)
        arrays = [x.numpy() for x in xs]
        if item.plain:
            feed = dict(zip(names, arrays))
            return lambda: sess.run(None, feed)
        binding = sess.io_binding()
        values = [self.ort.OrtValue.ortvalue_from_numpy(a, self.device, 0) for a in arrays]
        for n, v in zip(names, values):
            binding.bind_ortvalue_input(n, v)
        binding.bind_output("y", self.device)

        def run() -> Any:
            sess.run_with_iobinding(binding)
            return values  # keeps the inputs alive with the closure

        return run

    def close(self) -> None:
        pass


class _TrtHarness:
    subtract_overhead = True

    def __init__(self, dtype: str, tmp: Path) -> None:
        trt = _import_tensorrt()
        from ..runtime.trt_runner import import_pycuda

        cuda = import_pycuda()
        self.trt, self.cuda, self.tmp, self.dtype, self.n = trt, cuda, tmp, dtype, 0
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.ctx = cuda.Device(0).retain_primary_context()
        self.ctx.push()
        self.stream = cuda.Stream()
        self._keep: list[Any] = []

    def versions(self) -> dict[str, str]:
        return {"tensorrt": self.trt.__version__, "precision": self.dtype}

    def sync(self) -> None:
        self.stream.synchronize()

    def build(self, onnx_path: Path, shapes: Sequence[tuple[int, ...]]) -> Any:
        trt = self.trt
        builder = trt.Builder(self.logger)
        flags = 0
        if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH") and int(trt.__version__.split(".")[0]) < 10:
            flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse(onnx_path.read_bytes()):
            raise BackendError(f"TensorRT cannot parse {onnx_path.name}: {parser.get_error(0)}")
        config = builder.create_builder_config()
        if self.dtype == "float16":
            if not hasattr(trt.BuilderFlag, "FP16"):
                raise ConfigError("this TensorRT is strongly typed (no FP16 flag); profile float32 or export FP16 ONNX")
            config.set_flag(trt.BuilderFlag.FP16)
        profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            t = network.get_input(i)
            if any(d < 0 for d in t.shape):
                s = tuple(shapes[i])
                profile.set_shape(t.name, s, s, s)
        config.add_optimization_profile(profile)
        blob = builder.build_serialized_network(network, config)
        if blob is None:
            raise BackendError(f"TensorRT could not build an engine for {onnx_path.name}")
        return self.runtime.deserialize_cuda_engine(blob)

    def _bind(self, engine: Any, arrays: list[np.ndarray], plain: bool) -> Callable[[], Any]:
        trt, cuda = self.trt, self.cuda
        context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        ins = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        copies_in, copies_out = [], []
        for n, a in zip(ins, arrays):
            context.set_input_shape(n, a.shape)
            host = cuda.pagelocked_empty(a.shape, np.float32)
            host[...] = a
            dev = cuda.mem_alloc(host.nbytes)
            cuda.memcpy_htod(dev, host)
            context.set_tensor_address(n, int(dev))
            copies_in.append((dev, host))
            self._keep += [host, dev]
        for n in outs:
            shape = tuple(context.get_tensor_shape(n))
            host = cuda.pagelocked_empty(shape, trt.nptype(engine.get_tensor_dtype(n)))
            dev = cuda.mem_alloc(max(host.nbytes, 1))
            context.set_tensor_address(n, int(dev))
            copies_out.append((dev, host))
            self._keep += [host, dev]
        self._keep += [engine, context]
        stream = self.stream

        def run() -> None:
            if plain:
                for dev, host in copies_in:
                    cuda.memcpy_htod_async(dev, host, stream)
            context.execute_async_v3(stream.handle)
            if plain:
                for dev, host in copies_out:
                    cuda.memcpy_dtoh_async(host, dev, stream)

        return run

    def prepare(self, item: _Item, gen: torch.Generator) -> Callable[[], Any]:
        xs = _inputs(item.shapes, gen)
        self.n += 1
        path = self.tmp / f"op{self.n}.onnx"
        _export_tiny(item.module.float().cpu().eval(), xs, path, dynamic=False)
        engine = self.build(path, item.shapes)
        return self._bind(engine, [x.numpy() for x in xs], item.plain)

    def prepare_onnx(self, path: Path, shape: tuple[int, ...]) -> Callable[[], Any]:
        engine = self.build(path, [shape])
        return self._bind(engine, [np.random.default_rng(0).random(shape, dtype=np.float32)], plain=True)

    def close(self) -> None:
        self._keep.clear()
        try:
            self.ctx.pop()
        except Exception:
            pass


def _harness(backend: str, torch_device: str, dtype: str, threads: int | None, tmp: Path) -> Any:
    if backend == "torch":
        return _TorchHarness(torch_device, dtype, threads)
    if backend == "onnxruntime":
        return _OrtHarness(torch_device, dtype, threads, tmp)
    return _TrtHarness(dtype, tmp)


def _time(
    fns: dict[Any, Callable[[], Any]], sync: Callable[[], None], warmup: int, repeats: int,
    progress: Progress | None = None,
) -> dict[Any, list[float]]:
    """Per key, ``repeats`` timed runs (ms), collected in rounds over all keys."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
        sync()
    samples: dict[Any, list[float]] = {k: [] for k in fns}
    rounds = max(1, min(repeats, 5))
    per_round = math.ceil(repeats / rounds)
    for r in range(rounds):
        for k, fn in fns.items():
            for _ in range(per_round):
                sync()
                t0 = time.perf_counter()
                fn()
                sync()
                samples[k].append((time.perf_counter() - t0) * 1e3)
        if progress:
            progress("timing", r + 1, rounds)
    return samples


def _stats(samples: list[float], overhead: float = 0.0) -> dict[str, float]:
    q = np.percentile(samples, [25, 50, 75])
    return {
        "ms": max(float(q[1]) - overhead, 0.0),
        "raw_ms": round(float(q[1]), 6),
        "iqr_ms": round(float(q[2] - q[0]), 6),
        "runs": len(samples),
    }


# ---------------------------------------------------------------------------------------------
# Machine description
# ---------------------------------------------------------------------------------------------
def machine_info(torch_device: str = "cpu", backend: str = "onnxruntime", device_tree: Any = None) -> dict[str, Any]:
    """What the numbers were measured on: CPU model and cores, GPU name, Jetson model."""
    from .devices import jetson_model_string

    info: dict[str, Any] = {
        "cpu": cpu_model(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "hostname": platform.node(),
    }
    if torch_device == "cuda":
        gpu = None
        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
        else:
            from ..runtime.trt_runner import cuda_device_identity

            ident = cuda_device_identity()
            gpu = ident["name"] if ident else None
        info["gpu"] = gpu
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
    resolution: str | Sequence[int] = (320, 180),
    space: str = "paper",
    channels: Sequence[int] = (16, 32),
    out: str | os.PathLike[str] | None = None,
    *,
    repeats: int = 20,
    warmup: int = 3,
    dtype: str = "float32",
    threads: int | None = None,
    units: int = 7,
    calibrate: int = 0,
    calibration_seed: int = 10_000,
    calibration_repeats: int | None = None,
    seed: int = 0,
    device_tree: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
) -> LatencyTable:
    """Measure the latency table of ``space`` on this machine and (optionally) write it to ``out``.

    Args:
        device: ``cpu``, ``cuda``, a ``jetson-*`` preset (must be the Jetson this runs on) or ``jetson``.
        backend: ``onnxruntime`` (alias ``ort``), ``torch`` or ``tensorrt`` (alias ``trt``).
        resolution: input (W, H) or ``"WxH"``; the network pads it to a multiple of 4.
        space, channels, units: what network the table is for (units only scales the per-unit
            fixed parts and the calibration networks).
        repeats, warmup: timed and untimed runs per op; the table keeps the median.
        dtype: ``float32``, or ``float16`` for torch on CUDA / TensorRT.
        threads: intra-op threads (onnxruntime, torch CPU); None = the backend's default.
        calibrate: measure this many random genotypes end to end (seeds from
            ``calibration_seed``) and store a linear calibration in the table (0: none).

    Raises:
        ConfigError, BackendError: a bad option, a backend that is not installed, or a device
            that is not this machine (one line, saying what to do).
    """
    backend = normalise_backend(backend)
    if backend == "tensorrt":
        _import_tensorrt()
    resolution = parse_resolution(resolution)
    sp = get_space(space)
    channels = _channels(channels)
    if repeats < 1 or warmup < 0:
        raise ConfigError(f"repeats must be ≥ 1 and warmup ≥ 0, got {repeats} and {warmup}")
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be ≥ 1, got {threads}")
    torch_device, preset = _target(device, backend, dtype, device_tree)

    entry_items = _entry_items(space, channels, resolution)
    fixed_items = _fixed_items(channels, resolution, backend)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    prev_threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="hbl-profile-") as tmp, _torch_threads(threads if backend == "torch" else None):
        h = _harness(backend, torch_device, dtype, threads, Path(tmp))
        try:
            fns: dict[Any, Callable[[], Any]] = {}
            items = [("entry", k, it) for k, (_, it) in entry_items.items()]
            items += [("fixed", i, it) for i, (_, it) in enumerate(fixed_items)]
            if h.subtract_overhead:
                items.append(("overhead", 0, _Item(_Relu(), [(1, 1, 1, 1)])))
            for n, (kind, k, it) in enumerate(items):
                fns[(kind, k)] = h.prepare(it, gen)
                if progress:
                    progress("preparing", n + 1, len(items))
            samples = _time(fns, h.sync, warmup, repeats, progress)
            versions = h.versions()
        finally:
            h.close()
    overhead = float(np.median(samples[("overhead", 0)])) if h.subtract_overhead else 0.0

    entries = []
    for k, (entry, it) in entry_items.items():
        row = dict(entry, **_stats(samples[("entry", k)], overhead))
        if it.folded is not None:
            row["folded"] = it.folded
        entries.append(row)
    fixed = []
    for i, (meta, it) in enumerate(fixed_items):
        fixed.append(dict(meta, **_stats(samples[("fixed", i)], 0.0 if it.plain else overhead)))

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
            "repeats": repeats, "warmup": warmup, "threads": threads, "seed": seed, "statistic": "median",
            "call_overhead_ms": overhead, "torch_threads": prev_threads,
            "timing": "per-op runs in rounds over all ops; median; empty-call overhead subtracted (counted once in io)"
            if h.subtract_overhead else "per-op runs in rounds over all ops; median",
        },
    )
    if calibrate:
        table.calibration = calibrate_table(
            table, calibrate, seed=calibration_seed, repeats=calibration_repeats or max(5, repeats // 2),
            warmup=warmup, threads=threads, device=torch_device, progress=progress,
        )
    if out is not None:
        table.save(out)
    return table


def _channels(channels: Sequence[int]) -> tuple[int, int]:
    try:
        c1, c2 = (int(c) for c in channels)
    except (TypeError, ValueError):
        raise ConfigError(f"channels must be two positive integers C1,C2, got {channels!r}") from None
    if c1 < 1 or c2 < 1:
        raise ConfigError(f"channels must be two positive integers C1,C2, got {channels!r}")
    return c1, c2


class _torch_threads:
    def __init__(self, n: int | None) -> None:
        self.n, self.prev = n, torch.get_num_threads()

    def __enter__(self) -> None:
        if self.n is not None:
            torch.set_num_threads(self.n)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.prev)


# ---------------------------------------------------------------------------------------------
# End-to-end measurement and calibration
# ---------------------------------------------------------------------------------------------
def measure_network(
    genotype: GenotypeLike,
    backend: str = "onnxruntime",
    resolution: str | Sequence[int] = (320, 180),
    *,
    repeats: int = 10,
    warmup: int = 3,
    threads: int | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    seed: int = 0,
    samples: list[float] | None = None,
) -> float:
    """Median end-to-end ms of a genotype's network at ``resolution`` on this machine.

    The network (random weights, seeded) runs as deployed: BatchNorm folded; for onnxruntime
    the whole graph exported with :func:`hbl_edge.export.export_onnx` (padding, crop and clamp
    in the graph) and run with ``session.run`` on a host array, like ``OrtRunner``; for torch
    eager ``fold_batchnorm(net)(x).clamp(0, 1)``; for TensorRT an engine of that ONNX on device
    buffers with the input/output copies. Pass a list as ``samples`` to get every timed run.
    """
    got = measure_networks([genotype], backend, resolution, repeats=repeats, warmup=warmup, threads=threads,
                           device=device, dtype=dtype, seed=seed, samples=True)
    if samples is not None:
        samples.extend(got[0])
    return float(statistics.median(got[0]))


def measure_networks(
    genotypes: Sequence[GenotypeLike],
    backend: str = "onnxruntime",
    resolution: str | Sequence[int] = (320, 180),
    *,
    repeats: int = 10,
    warmup: int = 3,
    threads: int | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    seed: int = 0,
    samples: bool = False,
    progress: Progress | None = None,
) -> list[Any]:
    """:func:`measure_network` of several genotypes, timed in rounds over all of them.

    Interleaving means a burst of load from another process hits every network alike. Returns
    the medians (ms), or every timed run per genotype when ``samples`` is true.
    """
    from ..network import Network, fold_batchnorm

    backend = normalise_backend(backend)
    if backend == "tensorrt":
        _import_tensorrt()
    w, h = parse_resolution(resolution)
    torch_device = "cpu" if device == "cpu" else "cuda"
    x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed))
    with tempfile.TemporaryDirectory(prefix="hbl-measure-") as tmp, _torch_threads(threads if backend == "torch" else None):
        hs = _harness(backend, torch_device, dtype, threads, Path(tmp))
        try:
            fns: dict[Any, Callable[[], Any]] = {}
            for i, genotype in enumerate(genotypes):
                torch.manual_seed(seed)
                net = Network(load_genotype(genotype)).eval()
                fns[i] = _network_fn(net, hs, backend, x, Path(tmp) / f"net{i}", fold_batchnorm)
                if progress:
                    progress("exporting", i + 1, len(genotypes))
            got = _time(fns, hs.sync, warmup, repeats, progress)
        finally:
            hs.close()
    if samples:
        return [got[i] for i in range(len(genotypes))]
    return [float(statistics.median(got[i])) for i in range(len(genotypes))]


def _network_fn(net: nn.Module, hs: Any, backend: str, x: torch.Tensor, where: Path, fold: Any) -> Callable[[], Any]:
    if backend == "torch":
        folded = fold(net).to(hs.device, hs.dtype).eval()
        xd = x.to(hs.device, hs.dtype)

        def fn() -> Any:
            with torch.inference_mode():
                return folded(xd).clamp(0.0, 1.0)

        return fn
    from ..export.onnx_export import export_onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = export_onnx(net, where, check=False)
    if backend == "onnxruntime":
        sess = hs.session(res.onnx_path)
        name = sess.get_inputs()[0].name
        arr = x.numpy()
        return lambda: sess.run(None, {name: arr})
    return hs.prepare_onnx(res.onnx_path, tuple(x.shape))


#: Below this many calibration networks, fit a ratio (scale only): a line through a few clustered
#: points extrapolates badly to the lighter networks a search derives (seen with 5 points: slope
#: 0.27, intercept 94 ms, predicting 131 ms for a 67 ms network).
MIN_LINEAR_POINTS = 10


def fit_calibration(predicted: Sequence[float], measured: Sequence[float]) -> dict[str, Any]:
    """Least squares: ``measured ≈ scale · predicted + offset`` from :data:`MIN_LINEAR_POINTS` points
    on, ``measured ≈ scale · predicted`` (ratio) from 2, ``predicted + offset`` from 1 point."""
    p = np.asarray(predicted, dtype=np.float64)
    m = np.asarray(measured, dtype=np.float64)
    if len(p) == 0:
        raise ConfigError("calibration needs at least one measured genotype")
    scale, offset, kind = 1.0, float(np.mean(m - p)), "offset"
    if len(p) >= MIN_LINEAR_POINTS and np.ptp(p) > 0:
        a, b = np.polyfit(p, m, 1)
        if a > 0:
            scale, offset, kind = float(a), float(b), "linear"
    elif len(p) >= 2 and float(p @ p) > 0:
        scale, offset, kind = float(p @ m / (p @ p)), 0.0, "ratio"
    resid = m - (scale * p + offset)
    return {"scale": scale, "offset_ms": offset, "kind": kind, "n": int(len(p)),
            "rmse_ms": float(np.sqrt(np.mean(resid**2)))}


def calibrate_table(
    table: LatencyTable,
    n: int,
    *,
    seed: int = 10_000,
    repeats: int = 10,
    warmup: int = 3,
    threads: int | None = None,
    device: str = "cpu",
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Measure ``n`` random genotypes (seeds ``seed..seed+n-1``) end to end and fit the calibration."""
    if n < 1:
        raise ConfigError(f"calibrate must be ≥ 1 genotypes, got {n}")
    table.calibration = None
    model = LatencyModel(table)
    genotypes = [random_genotype(table.space["name"], table.channels, table.units, seed=seed + i) for i in range(n)]
    measured = measure_networks(
        genotypes, table.backend["name"], table.resolution, repeats=repeats, warmup=warmup, threads=threads,
        device=device, dtype=table.dtype, progress=progress,
    )
    rows = [
        {"seed": seed + i, "predicted_raw_ms": model.predict_raw(g), "measured_ms": m}
        for i, (g, m) in enumerate(zip(genotypes, measured))
    ]
    cal = fit_calibration([r["predicted_raw_ms"] for r in rows], [r["measured_ms"] for r in rows])
    cal.update(seeds=[seed, seed + n - 1], fit="measured ≈ scale · (Σ op times + fixed) + offset_ms", rows=rows)
    return cal


# ---------------------------------------------------------------------------------------------
# Roofline estimate
# ---------------------------------------------------------------------------------------------
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
    resolution = parse_resolution(resolution)
    channels = _channels(channels)
    sp = get_space(space)
    torch.manual_seed(0)
    entries = []
    for entry, item in _entry_items(space, channels, resolution).values():
        entries.append(dict(entry, **_roofline_ms(item.module, item.shapes, spec)))
    fixed = []
    for meta, item in _fixed_items(channels, resolution, "torch"):
        module = _EstimateIO() if meta["name"] == "io" else item.module
        fixed.append(dict(meta, **_roofline_ms(module, item.shapes, spec)))
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


__all__ = [
    "BACKENDS", "calibrate_table", "cpu_model", "estimate_table", "fit_calibration", "machine_info",
    "measure_network", "measure_networks", "normalise_backend", "parse_resolution", "profile",
]
