"""Latency of the fast peers and of our edge networks through one ONNX Runtime path (issue 8 §5).

The peers of ``shared/PEERS.md`` were timed in PyTorch (their code) once; ours run through ONNX
Runtime. To compare like with like, this script takes each fast peer's published inference
architecture as re-built in :mod:`hbl_edge.peers` (sci, zerodce++, aodnet, physicalnn: its
docstring has the table; random weights: timing only, nothing here is scored), exports it with
the same tracer and dynamic H/W as our models, and times everything with the same runner
(``hbl_edge.runtime.runners.create_runner("ort", …, threads=2)``).

Every exported graph ends with a clamp to [0, 1], like ours. Timing: per resolution, each model
gets its own session (``threads`` intra-op threads), ``warmup`` runs, then ``repeats`` rounds in
which every model runs once, in an order rotated per round (so a burst of load from another
process hits all alike); the median and the inter-quartile range of each model's runs are
reported. The classical baselines (``gamma``, ``dcp``, ``grayworld``: numpy, float32 input) are
timed for reference only: they are no latency target (their time is an implementation detail).
Machine load (``hbl_edge.runtime.machine.machine_load``) is recorded before and after.

    flock /tmp/hbl-timing.lock nice -n -10 python bench/peers.py --out bench/results/peers.json
    … --genotype edge-lol-s8 --genotype my/genotype.json --bundle runs/x   # our models beside them
    … --onnx old=/tmp/a/model.onnx --onnx new=/tmp/b/model.onnx  # graphs exported elsewhere, as they are

``--onnx`` times a graph exported elsewhere (another version of the package, say) unchanged
beside the rest: an A/B of an export change with the peers as the yardstick.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_RESOLUTIONS = ((600, 400), (1280, 720))
DEFAULT_BASELINES = ("gamma", "dcp", "grayworld")

from hbl_edge.peers import PEERS, count_parameters, export_peer, peer_module  # noqa: E402  (re-exported)


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------
def export_ours(spec: str, where: Path) -> tuple[Path, dict[str, Any]]:
    """ONNX of one of our models through hbl_edge's export path: a genotype (random weights) or a bundle."""
    from hbl_edge.bundle import load_bundle
    from hbl_edge.export.onnx_export import export_onnx
    from hbl_edge.genotype import load_genotype
    from hbl_edge.network import Network, count_parameters as ours_params

    p = Path(spec)
    if (p / "model.json").is_file():
        net = load_bundle(p).model
        kind = "bundle"
    else:
        torch.manual_seed(0)
        net = Network.from_genotype(load_genotype(spec)).eval()
        kind = "genotype (random weights)"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = export_onnx(net, where, check=False)
    return res.onnx_path, {"kind": kind, "parameters": ours_params(net), "genotype": net.genotype.summary()}


def onnx_file_info(path: Path) -> dict[str, Any]:
    """What ``--onnx`` records of a graph exported elsewhere: its parameters (initializer elements), sha256, producer."""
    import onnx

    from hbl_edge.export.cache import file_sha256

    model = onnx.load(str(path))
    n_params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    meta = {p.key: p.value for p in model.metadata_props}
    return {"kind": "ONNX file", "parameters": n_params, "path": str(path),
            "sha256": file_sha256(path), "metadata": meta}


def parse_onnx_specs(specs: list[str]) -> dict[str, Path]:
    """``["old=/a/model.onnx", …]`` → {name: path}; a missing file or a spec without ``=`` is a one-line error."""
    out: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--onnx takes NAME=PATH (e.g. old=/tmp/a/model.onnx), got {spec!r}")
        if not Path(path).is_file():
            raise SystemExit(f"--onnx {name}: no file {path}; export the model first (hbl-edge export)")
        out[name] = Path(path)
    return out


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------
def machine_load() -> dict[str, Any]:
    """The package's one load record (load average, CPU pressure), kept under this name for callers."""
    from hbl_edge.runtime.machine import machine_load as measured

    return measured()


def _stats(samples: list[float]) -> dict[str, Any]:
    q = np.percentile(samples, [25, 50, 75])
    return {"median_ms": float(q[1]), "iqr_ms": float(q[2] - q[0]), "min_ms": float(min(samples)), "n": len(samples)}


def time_onnx(
    models: dict[str, Path], resolutions=DEFAULT_RESOLUTIONS, *, threads: int = 2, warmup: int = 3,
    repeats: int = 15, seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """{model: {"WxH": stats}}: interleaved rounds through ``create_runner("ort", …, threads)``."""
    from hbl_edge.runtime.runners import create_runner

    out: dict[str, dict[str, Any]] = {name: {} for name in models}
    rng = np.random.default_rng(seed)
    names = list(models)
    for w, h in resolutions:
        x = rng.random((1, 3, h, w), dtype=np.float32)
        runners = {n: create_runner("ort", models[n], threads=threads) for n in names}
        try:
            for n in names:
                for _ in range(warmup):
                    runners[n].run(x)
            samples: dict[str, list[float]] = {n: [] for n in names}
            for r in range(repeats):
                order = names[r % len(names):] + names[: r % len(names)]
                for n in order:
                    t0 = time.perf_counter()
                    runners[n].run(x)
                    samples[n].append((time.perf_counter() - t0) * 1e3)
        finally:
            for rn in runners.values():
                rn.close()
        for n in names:
            out[n][f"{w}x{h}"] = _stats(samples[n])
    return out


def time_onnx_deployed(
    models: dict[str, Path], resolutions=DEFAULT_RESOLUTIONS, *, threads: int = 2, warmup: int = 3,
    repeats: int = 15, rounds: int = 2, allow_spinning: bool | None = None,
) -> dict[str, dict[str, Any]]:
    """{model: {"WxH": stats}} by the search's deployed method (hbl_edge.search.deployed.measure_onnx):
    one live session at a time, fresh per round, consecutive runs, round order alternately reversed.

    Why this is the default: with every session alive and runs interleaved (:func:`time_onnx`),
    the previous session's spinning worker threads take a core from the next one on a small
    machine (docs/latency.md), which inflates every model's time by a different amount.
    """
    from hbl_edge.search.deployed import measure_onnx

    names = list(models)
    out: dict[str, dict[str, Any]] = {name: {} for name in names}
    for w, h in resolutions:
        runs = measure_onnx([models[n] for n in names], (w, h), repeats=repeats, warmup=warmup, rounds=rounds,
                            threads=threads, allow_spinning=allow_spinning)
        for n, samples in zip(names, runs):
            out[n][f"{w}x{h}"] = _stats(samples)
    return out


def time_baselines(names=DEFAULT_BASELINES, resolutions=DEFAULT_RESOLUTIONS, *, warmup: int = 2, repeats: int = 9,
                   seed: int = 0) -> dict[str, dict[str, Any]]:
    """{baseline: {"WxH": stats}} of the numpy baselines on a float32 random image (hbl_edge.baselines.time_baselines)."""
    from hbl_edge.baselines import time_baselines as timed

    out: dict[str, dict[str, Any]] = {n: {} for n in names}
    for w, h in resolutions:
        for n, samples in timed(names, (w, h), warmup=warmup, repeats=repeats, seed=seed).items():
            out[n][f"{w}x{h}"] = _stats(samples)
    return out


def run(ours: list[str], *, resolutions=DEFAULT_RESOLUTIONS, threads: int = 2, warmup: int = 3, repeats: int = 15,
        baselines=DEFAULT_BASELINES, labels: dict[str, str] | None = None, method: str = "deployed",
        onnx_files: dict[str, Path] | None = None) -> dict[str, Any]:
    """Export the peers and ``ours`` (genotypes or bundles), time them side by side with ``onnx_files``
    (graphs exported elsewhere, as they are), time the baselines."""
    import onnxruntime

    torch.set_num_threads(threads)
    load_before = machine_load()
    t_start = time.time()
    labels = labels or {}
    models: dict[str, Path] = {}
    info: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="hbl-peers-") as tmp:
        for name in PEERS:
            module = peer_module(name)
            n_params = count_parameters(module)
            peer = PEERS[name]
            if n_params != peer.parameters:
                raise RuntimeError(f"{name}: {n_params} parameters, the published model has {peer.parameters}")
            models[name] = export_peer(module, Path(tmp) / f"{name}.onnx")
            info[name] = {"kind": "peer (re-implemented, random weights)", "task": peer.task,
                          "parameters": n_params, "peers_md": peer.peers_md, "architecture": peer.architecture}
        for i, spec in enumerate(ours):
            label = labels.get(spec, spec)
            models[label], info[label] = export_ours(spec, Path(tmp) / f"ours{i}")
            info[label]["spec"] = spec
        for label, path in (onnx_files or {}).items():
            models[label], info[label] = path, onnx_file_info(path)
        if method == "deployed":
            latency = time_onnx_deployed(models, resolutions, threads=threads, warmup=warmup, repeats=repeats)
        else:
            latency = time_onnx(models, resolutions, threads=threads, warmup=warmup, repeats=repeats)
    base = time_baselines(baselines, resolutions) if baselines else {}
    return {
        "format": "hbl-bench-peers/1",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "method": method,
        "procedure": ((f"hbl_edge.search.deployed.measure_onnx: the deployed OrtRunner (threads={threads}), one live "
                       f"session at a time, fresh per round, {warmup} warm-up + {repeats} consecutive runs, 2 rounds "
                       "(the second reversed); median and IQR of all runs" if method == "deployed" else
                       f"ONNX Runtime CPU via create_runner('ort', threads={threads}); {warmup} warm-up runs, then "
                       f"{repeats} interleaved rounds (order rotated per round); median and IQR per model")
                      + "; batch 1, random float32 input. Baselines: numpy, float32 input, 2 warm-ups + 9 runs, "
                        "reference only (no latency target)."),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "python": platform.python_version(), "torch": torch.__version__,
                    "onnxruntime": onnxruntime.__version__, "threads": threads},
        "load_before": load_before,
        "load_after": machine_load(),
        "wall_s": round(time.time() - t_start, 1),
        "models": info,
        "latency": latency,
        "baselines": base,
    }


def table(result: dict[str, Any]) -> str:
    res = list(next(iter(result["latency"].values())).keys())
    lines = ["| model | kind | params | " + " | ".join(f"ms {r}" for r in res) + " |",
             "|---|---|---:|" + "---:|" * len(res)]
    for name, lat in result["latency"].items():
        i = result["models"][name]
        cells = " | ".join(f"{lat[r]['median_ms']:.1f} (±{lat[r]['iqr_ms'] / 2:.1f})" for r in res)
        lines.append(f"| {name} | {i['kind']} | {i['parameters']:,} | {cells} |")
    for name, lat in result.get("baselines", {}).items():
        cells = " | ".join(f"{lat[r]['median_ms']:.1f}" for r in res)
        lines.append(f"| {name} | classical (numpy, reference only) | 0 | {cells} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--genotype", action="append", default=[], help="one of our genotypes (name or JSON), repeatable")
    ap.add_argument("--bundle", action="append", default=[], help="one of our trained bundles, repeatable")
    ap.add_argument("--onnx", action="append", default=[], metavar="NAME=PATH",
                    help="a graph exported elsewhere, timed as it is, repeatable")
    ap.add_argument("--resolutions", default="600x400,1280x720")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--no-baselines", action="store_true")
    ap.add_argument("--method", choices=("deployed", "interleaved"), default="deployed",
                    help="deployed: the search's method (one session at a time, consecutive runs); interleaved: all "
                         "sessions alive, runs rotated (the earlier results)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    from hbl_edge.runio import parse_resolution, write_json

    resolutions = tuple(parse_resolution(r) for r in args.resolutions.split(","))
    onnx_files = parse_onnx_specs(args.onnx)
    result = run(args.genotype + args.bundle, resolutions=resolutions, threads=args.threads, warmup=args.warmup,
                 repeats=args.repeats, baselines=() if args.no_baselines else DEFAULT_BASELINES, method=args.method,
                 onnx_files=onnx_files)
    print(table(result))
    print(f"load before {result['load_before']['loadavg']}, after {result['load_after']['loadavg']}")
    if args.out:
        write_json(args.out, result)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
