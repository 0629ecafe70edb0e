"""Timing harnesses of the latency profiler: how one small graph is timed on each backend.

Every graph is timed the way a deployed model runs: **consecutive runs of one graph after a
warm-up**, never interleaved run by run with other graphs. Rounds over all graphs (the second
in reverse order) spread a burst of load from another process over every graph instead of
letting it spoil one; inside a round a graph's runs follow each other, as frames do.

**One live session at a time.** An onnxruntime ``InferenceSession`` owns a pool of intra-op
threads that spin (busy-wait) for a while after each run. With several sessions alive, the
previous graph's spinning workers take a core from the next graph: on a 2-core machine that
made calibration timings 19–33 % slower than consecutive timings of the same networks. Each
block therefore opens its session, warms up, times, and closes it (the pool's threads are
joined) before the next graph's session exists. Spinning itself is kept as the deployed runner
has it (``allow_spinning``, recorded in the table), because it changes the time of every run.

Harnesses (``prepare(graph) -> Block``, ``sync()``, ``versions()``, ``close()``):

- :class:`TorchHarness`: eager PyTorch on the CPU or CUDA (``torch.cuda.synchronize``);
- :class:`OrtHarness`: the graph exported to a tiny ONNX (dynamic H, W like the deployed
  graph), run through I/O binding so no numpy copies are timed;
- TensorRT: :mod:`hbl_edge.search.timing_trt` (kept apart: it needs a GPU to run).

:func:`time_blocks` does the timing, :func:`block_stats` the statistics, and
:func:`load_snapshot` records how busy the machine was.
"""

from __future__ import annotations

import gc
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Hashable, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..runtime.runners import BackendError

OPSET = 17
Progress = Callable[[str, int, int], None]
#: Relative IQR (IQR / median) above which a timed graph counts as noisy and is timed again.
NOISY_SPREAD = 0.15
#: The clock every timed run reads (seconds); tests replace it with a fake one.
clock: Callable[[], float] = time.perf_counter


# ---------------------------------------------------------------------------------------------
# What is timed
# ---------------------------------------------------------------------------------------------
@dataclass
class Graph:
    """One thing to time: a module and the shapes of its inputs.

    ``plain``: timed like a deployed call (host arrays in and out), not through I/O binding.
    """

    module: nn.Module
    shapes: list[tuple[int, ...]]
    plain: bool = False


@dataclass
class Block:
    """A prepared graph: ``open()`` gives the run function (creating any session), ``close()`` frees it."""

    open: Callable[[], Callable[[], Any]]
    close: Callable[[], None] = lambda: None


def inputs(shapes: Sequence[tuple[int, ...]], gen: torch.Generator) -> list[torch.Tensor]:
    return [torch.randn(*s, generator=gen) for s in shapes]


# ---------------------------------------------------------------------------------------------
# Machine load
# ---------------------------------------------------------------------------------------------
def load_snapshot() -> dict[str, Any]:
    """Load average and CPU pressure now (``/proc/pressure/cpu`` "some" line where the kernel has it).

    Timings taken on a shared machine mean little without this beside them.
    """
    snap: dict[str, Any] = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        snap["loadavg"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        snap["loadavg"] = None
    try:
        for line in Path("/proc/pressure/cpu").read_text().splitlines():
            if line.startswith("some"):
                snap["cpu_pressure_some"] = {k: float(v) for k, v in (p.split("=") for p in line.split()[1:]) if k != "total"}
    except (OSError, ValueError):
        pass
    try:
        snap["cpus_usable"] = len(os.sched_getaffinity(0))
    except AttributeError:
        snap["cpus_usable"] = os.cpu_count()
    return snap


# ---------------------------------------------------------------------------------------------
# Harnesses
# ---------------------------------------------------------------------------------------------
def export_tiny(module: nn.Module, xs: list[torch.Tensor], path: Path, dynamic: bool) -> list[str]:
    """Export ``module`` to ONNX with inputs x0, x1, … and output y (H, W dynamic when asked)."""
    names = [f"x{i}" for i in range(len(xs))]
    axes = {n: {2: "h", 3: "w"} for n in names} if dynamic else None
    if axes is not None:
        axes["y"] = {2: "h", 3: "w"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, tuple(xs), str(path), dynamo=False, opset_version=OPSET, do_constant_folding=True,
            input_names=names, output_names=["y"], dynamic_axes=axes,
        )
    return names


class TorchHarness:
    """Eager PyTorch: ``module(*inputs)`` under ``inference_mode``."""

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

    def prepare(self, graph: Graph, gen: torch.Generator) -> Block:
        module = graph.module.to(self.device, self.dtype).eval()
        xs = [x.to(self.device, self.dtype) for x in inputs(graph.shapes, gen)]

        def run() -> Any:
            with torch.inference_mode():
                return module(*xs)

        return Block(open=lambda: run)

    def close(self) -> None:
        pass


def ort_session_options(ort: Any, threads: int | None, allow_spinning: bool | None) -> Any:
    """Session options as :class:`hbl_edge.runtime.ort_runner.OrtRunner` sets them."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if threads is not None:
        opts.intra_op_num_threads = int(threads)
    if allow_spinning is not None:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
    return opts


class OrtHarness:
    """onnxruntime: each graph exported once; a session per timed block, closed after it."""

    subtract_overhead = True

    def __init__(self, device: str, dtype: str, threads: int | None, tmp: Path, allow_spinning: bool | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendError("onnxruntime is not installed here; `pip install onnxruntime` (or onnxruntime-gpu)") from None
        if dtype != "float32":
            raise ConfigError("the onnxruntime profiler measures float32 graphs; use --dtype float32 (or --backend tensorrt)")
        self.ort, self.tmp, self.threads, self.allow_spinning, self.n = ort, tmp, threads, allow_spinning, 0
        self.provider = "CUDAExecutionProvider" if device == "cuda" else "CPUExecutionProvider"
        if self.provider not in ort.get_available_providers():
            raise BackendError(f"this onnxruntime has no {self.provider}; install onnxruntime-gpu or profile with --device cpu")
        self.device = "cuda" if device == "cuda" else "cpu"

    def versions(self) -> dict[str, str]:
        return {
            "onnxruntime": self.ort.__version__, "provider": self.provider, "threads": str(self.threads or "default"),
            "allow_spinning": "default" if self.allow_spinning is None else str(int(self.allow_spinning)),
        }

    def session(self, path: Path) -> Any:
        opts = ort_session_options(self.ort, self.threads, self.allow_spinning)
        return self.ort.InferenceSession(str(path), sess_options=opts, providers=[self.provider])

    def sync(self) -> None:
        pass  # run_with_iobinding / run return when the outputs are ready

    def prepare(self, graph: Graph, gen: torch.Generator) -> Block:
        xs = inputs(graph.shapes, gen)
        self.n += 1
        path = self.tmp / f"g{self.n}.onnx"
        names = export_tiny(graph.module.float().cpu().eval(), xs, path, dynamic=True)
        arrays = [x.numpy() for x in xs]
        state: dict[str, Any] = {}

        def open_() -> Callable[[], Any]:
            sess = self.session(path)
            state["sess"] = sess
            if graph.plain:
                feed = dict(zip(names, arrays))
                return lambda: sess.run(None, feed)
            binding = sess.io_binding()
            values = [self.ort.OrtValue.ortvalue_from_numpy(a, self.device, 0) for a in arrays]
            for n, v in zip(names, values):
                binding.bind_ortvalue_input(n, v)
            binding.bind_output("y", self.device)
            state["keep"] = (binding, values)

            def run() -> Any:
                sess.run_with_iobinding(binding)

            return run

        def close_() -> None:
            state.clear()  # the last reference to the session: its thread pool is joined here
            gc.collect()

        return Block(open=open_, close=close_)

    def close(self) -> None:
        pass


class torch_threads:
    """Set torch's intra-op threads inside a ``with`` block (None: leave them)."""

    def __init__(self, n: int | None) -> None:
        self.n, self.prev = n, torch.get_num_threads()

    def __enter__(self) -> None:
        if self.n is not None:
            torch.set_num_threads(self.n)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.prev)


def make_harness(backend: str, torch_device: str, dtype: str, threads: int | None, tmp: Path,
                 allow_spinning: bool | None = None) -> Any:
    if backend == "torch":
        return TorchHarness(torch_device, dtype, threads)
    if backend == "onnxruntime":
        return OrtHarness(torch_device, dtype, threads, tmp, allow_spinning)
    from .timing_trt import TrtHarness

    return TrtHarness(dtype, tmp)


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------
@dataclass
class Samples:
    """Every timed run of one graph (ms), per round."""

    rounds: list[list[float]] = field(default_factory=list)

    @property
    def all(self) -> list[float]:
        return [v for r in self.rounds for v in r]


def time_block(block: Block, sync: Callable[[], None], warmup: int, repeats: int) -> list[float]:
    """Open the block, ``warmup`` untimed then ``repeats`` timed consecutive runs (ms), close it."""
    run = block.open()
    out: list[float] = []
    try:
        for _ in range(warmup):
            run()
        sync()
        for _ in range(repeats):
            t0 = clock()
            run()
            sync()
            out.append((clock() - t0) * 1e3)
    finally:
        del run  # with the block's own reference gone too, close() frees the session and its threads
        block.close()
    return out


def time_blocks(
    blocks: dict[Hashable, Block], sync: Callable[[], None], *, warmup: int, repeats: int, rounds: int = 2,
    progress: Progress | None = None, phase: str = "timing",
) -> dict[Hashable, Samples]:
    """Per key, ``rounds`` × ``repeats`` consecutive timed runs; rounds alternate the order of keys."""
    keys = list(blocks)
    out = {k: Samples() for k in keys}
    total, done = rounds * len(keys), 0
    for r in range(rounds):
        for k in (keys if r % 2 == 0 else keys[::-1]):
            out[k].rounds.append(time_block(blocks[k], sync, warmup, repeats))
            done += 1
            if progress:
                progress(phase, done, total)
    return out


def relative_spread(samples: Sequence[float]) -> float:
    """IQR / median of timed runs (0 when the median is 0)."""
    q25, q50, q75 = np.percentile(samples, [25, 50, 75])
    return float((q75 - q25) / q50) if q50 > 0 else 0.0


def retime_noisy(
    blocks: dict[Hashable, Block], got: dict[Hashable, Samples], sync: Callable[[], None], *, warmup: int,
    repeats: int, retries: int = 2, threshold: float = NOISY_SPREAD, progress: Progress | None = None,
) -> set[Hashable]:
    """Time again (one more round each, up to ``retries``) the graphs whose spread exceeds ``threshold``.

    A new round is added to the graph's samples, so its median then rests on more runs. Returns
    the keys still above the threshold afterwards (the caller flags them).
    """
    def noisy() -> list[Hashable]:
        return [k for k in blocks if relative_spread(got[k].all) > threshold]

    for attempt in range(retries):
        todo = noisy()
        if not todo:
            return set()
        for i, k in enumerate(todo):
            got[k].rounds.append(time_block(blocks[k], sync, warmup, repeats))
            if progress:
                progress(f"re-timing noisy graphs ({attempt + 1})", i + 1, len(todo))
    return set(noisy())


def block_stats(samples: Sequence[float]) -> dict[str, float]:
    q = np.percentile(samples, [25, 50, 75])
    return {
        "median_ms": float(q[1]),
        "iqr_ms": round(float(q[2] - q[0]), 6),
        "spread": round(relative_spread(samples), 4),
        "runs": len(samples),
    }


def median(samples: Sequence[float]) -> float:
    return float(np.median(samples)) if len(samples) else math.nan


__all__ = [
    "Block", "Graph", "NOISY_SPREAD", "OrtHarness", "Samples", "TorchHarness", "block_stats", "export_tiny",
    "load_snapshot", "make_harness", "median", "ort_session_options", "relative_spread", "retime_noisy",
    "time_block", "time_blocks", "torch_threads",
]
