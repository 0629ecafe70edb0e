"""Whole-network latency as deployment runs it: what a latency prediction is checked against.

A network is built from its genotype (random weights, seeded), exported with
:func:`hbl_edge.export.export_onnx` (BatchNorm folded; padding, crop and clamp in the graph)
and run by the deploy runner itself, :class:`hbl_edge.runtime.ort_runner.OrtRunner`, frame
after frame on a host array:

- a fresh runner per network and round, closed (its threads joined) before the next opens,
  so no other session's spinning workers share the cores;
- ``warmup`` untimed runs, then ``repeats`` consecutive timed ``runner.run(x)`` calls;
- ``rounds`` rounds over the networks, every other one in reverse order, so a burst of load
  from another process is shared instead of spoiling one network;
- the median of all timed runs.

This is the method behind the calibration of a latency table and the "measured" latency of a
search's derived network. It shares nothing with the profiler's per-op harness
(:mod:`hbl_edge.search.timing`). ``backend="torch"`` runs the folded network eagerly
(``inference_mode``), ``backend="tensorrt"`` an engine of the same ONNX (GPU only).
"""

from __future__ import annotations

import gc
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..genotype import GenotypeLike, load_genotype
from ..runio import parse_resolution

Progress = Callable[[str, int, int], None]
#: The clock every timed run reads (seconds); tests replace it with a fake one.
clock: Callable[[], float] = time.perf_counter


def export_network(genotype: GenotypeLike, where: Path, seed: int = 0) -> Path:
    """``where/model.onnx`` of the genotype's network (random weights from ``seed``), as deployed."""
    from ..export.onnx_export import export_onnx
    from ..network import Network

    torch.manual_seed(seed)
    net = Network.from_genotype(load_genotype(genotype)).eval()  # an edge genotype builds its EdgeNetwork
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return export_onnx(net, where, check=False).onnx_path


def _ort_opener(path: Path, device: str, threads: int | None, allow_spinning: bool | None) -> Callable[[], Any]:
    from ..runtime.ort_runner import OrtRunner

    providers = ["CUDAExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    return lambda: OrtRunner(path, providers=providers, threads=threads, allow_spinning=allow_spinning)


class _TorchRunner:
    def __init__(self, genotype: GenotypeLike, device: str, seed: int) -> None:
        from ..network import Network, fold_batchnorm

        torch.manual_seed(seed)
        self.net = fold_batchnorm(Network.from_genotype(load_genotype(genotype)).eval()).to(device)
        self.device = torch.device(device)

    def run(self, x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.net(torch.from_numpy(x).to(self.device)).clamp(0.0, 1.0).cpu().numpy()

    def close(self) -> None:
        pass


def _consecutive(runner: Any, x: np.ndarray, warmup: int, repeats: int) -> list[float]:
    try:
        for _ in range(warmup):
            runner.run(x)
        out = []
        for _ in range(repeats):
            t0 = clock()
            runner.run(x)  # returns a host array: waits for the device where there is one
            out.append((clock() - t0) * 1e3)
        return out
    finally:
        runner.close()


def measure_networks(
    genotypes: Sequence[GenotypeLike],
    backend: str = "onnxruntime",
    resolution: str | Sequence[int] = (640, 360),
    *,
    repeats: int = 15,
    warmup: int = 3,
    rounds: int = 2,
    threads: int | None = None,
    allow_spinning: bool | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    seed: int = 0,
    samples: bool = False,
    progress: Progress | None = None,
) -> list[Any]:
    """Median ms of each genotype's network run as deployed (see the module docstring).

    Returns the medians, or with ``samples`` every timed run per genotype (round after round).
    ``threads`` and ``allow_spinning`` are the deployed runner's (None: onnxruntime's defaults).
    """
    from .profiler import normalise_backend

    backend = normalise_backend(backend)
    w, h = parse_resolution(resolution, minimum=4)
    _check_counts(repeats, warmup, rounds)
    x = np.random.default_rng(seed).random((1, 3, h, w), dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix="hbl-deployed-") as tmp:
        openers: list[Callable[[], Any]] = []
        trt = None
        if backend == "tensorrt":
            from .timing_trt import TrtHarness

            trt = TrtHarness(dtype, Path(tmp))
        for i, g in enumerate(genotypes):
            if backend == "torch":
                openers.append(lambda g=g: _TorchRunner(g, "cuda" if device == "cuda" else "cpu", seed))
            else:
                path = export_network(g, Path(tmp) / f"net{i}", seed)
                if backend == "onnxruntime":
                    openers.append(_ort_opener(path, device, threads, allow_spinning))
                else:
                    openers.append(_trt_opener(trt, path, (1, 3, h, w)))
            if progress:
                progress("exporting networks", i + 1, len(genotypes))
        from .timing import torch_threads

        with torch_threads(threads if backend == "torch" else None):
            got = _rounds(openers, x, warmup, repeats, rounds, progress)
        if trt is not None:
            trt.close()
    return got if samples else [float(statistics.median(g)) for g in got]


def _rounds(openers: Sequence[Callable[[], Any]], x: np.ndarray, warmup: int, repeats: int, rounds: int,
            progress: Progress | None) -> list[list[float]]:
    """Every timed run (ms) per opener: ``rounds`` rounds, every other one in reverse order."""
    got: list[list[float]] = [[] for _ in openers]
    order = list(range(len(openers)))
    for r in range(rounds):
        for n, i in enumerate(order if r % 2 == 0 else order[::-1]):
            got[i].extend(_consecutive(openers[i](), x, warmup, repeats))
            gc.collect()
            if progress:
                progress("timing networks", r * len(order) + n + 1, rounds * len(order))
    return got


def _check_counts(repeats: int, warmup: int, rounds: int) -> None:
    if repeats < 1 or warmup < 0 or rounds < 1:
        from ..errors import ConfigError

        raise ConfigError(f"repeats and rounds must be ≥ 1 and warmup ≥ 0, got {repeats}, {rounds}, {warmup}")


def measure_onnx(
    paths: Sequence[str | Path],
    resolution: str | Sequence[int] = (640, 360),
    *,
    repeats: int = 15,
    warmup: int = 3,
    rounds: int = 2,
    threads: int | None = None,
    allow_spinning: bool | None = None,
    device: str = "cpu",
    seed: int = 0,
    progress: Progress | None = None,
) -> list[list[float]]:
    """Every timed run (ms) of each ONNX file, by the method of :func:`measure_networks`.

    For graphs that are no genotype's (a peer's re-implemented architecture, an exported
    bundle): the same deployed runner (:class:`~hbl_edge.runtime.ort_runner.OrtRunner` with
    ``threads`` and ``allow_spinning``), fresh per round, the same consecutive runs and
    alternating round order, on the same seeded random 1×3×H×W input. So a peer timed here and
    a derived network measured by the search are measured alike.
    """
    w, h = parse_resolution(resolution, minimum=4)
    _check_counts(repeats, warmup, rounds)
    x = np.random.default_rng(seed).random((1, 3, h, w), dtype=np.float32)
    openers = [_ort_opener(Path(p), device, threads, allow_spinning) for p in paths]
    return _rounds(openers, x, warmup, repeats, rounds, progress)


def _trt_opener(harness: Any, path: Path, shape: tuple[int, ...]) -> Callable[[], Any]:
    """An engine of the ONNX on device buffers with the host copies (built once, reused each round)."""
    run = harness.prepare_onnx(path, shape)

    class _Runner:
        def run(self, x: np.ndarray) -> None:
            run()
            harness.sync()

        def close(self) -> None:
            pass

    return _Runner


def measure_network(
    genotype: GenotypeLike, backend: str = "onnxruntime", resolution: str | Sequence[int] = (640, 360), *,
    samples: list[float] | None = None, **kw: Any,
) -> float:
    """:func:`measure_networks` of one genotype; pass a list as ``samples`` to get every timed run."""
    flat = measure_networks([genotype], backend, resolution, samples=True, **kw)[0]
    if samples is not None:
        samples.extend(flat)
    return float(statistics.median(flat))


__all__ = ["export_network", "measure_network", "measure_networks", "measure_onnx"]
