"""Latency of the fast peers and of our edge networks through one ONNX Runtime path (issue 8 §5).

The peers of ``shared/PEERS.md`` were timed in PyTorch (their code) once; ours run through ONNX
Runtime. To compare like with like, this script re-builds each fast peer's published inference
architecture as a torch module (random weights: timing only, nothing here is scored), exports it
with the same tracer and dynamic H/W as our models, and times everything with the same runner
(``hbl_edge.runtime.runners.create_runner("ort", …, threads=2)``):

============  ==========  ====================================================================
peer          task        inference architecture (parameters)
============  ==========  ====================================================================
sci           lowlight    SCI (Ma et al., CVPR 2022), illumination net "medium": conv 3×3 3→3 +
                          ReLU; one residual block conv 3×3 3→3 + BN + ReLU; conv 3×3 3→3 +
                          sigmoid; L = clamp(out + y, 1e-4, 1); x = clamp(y ⊘ L, 0, 1)  (258)
zerodce++     lowlight    Zero-DCE++ (Li et al., TPAMI 2021): bilinear ↓12, 7 depthwise-separable
                          3×3 convs (32 wide, skip concats 3+4, 2+5, 1+6), tanh, bilinear ↑ to
                          the input size, 8 curve iterations x ← x + r (x² − x)  (10,561)
aodnet        dehaze      AOD-Net (Li et al., ICCV 2017): 5 full-resolution convs 1×1, 3×3, 5×5,
                          7×7, 3×3 with concats, K; J = ReLU(K·y − K + 1)  (1,761)
physicalnn    underwater  PhysicalNN (Chen et al., TCSVT 2020): A-net (2 convs 3×3, PReLU, global
                          average, 2 convs 1×1) and t-net (4 convs 3×3 6→8→8→8→3, dilations 1, 2,
                          5, 1, PReLU) on [A, y]; J = clamp((y − A)·t + A)  (2,027)
============  ==========  ====================================================================

Every exported graph ends with a clamp to [0, 1], like ours. Timing: per resolution, each model
gets its own session (``threads`` intra-op threads), ``warmup`` runs, then ``repeats`` rounds in
which every model runs once, in an order rotated per round (so a burst of load from another
process hits all alike); the median and the inter-quartile range of each model's runs are
reported. The classical baselines (``gamma``, ``dcp``, ``grayworld``: numpy, float32 input) are
timed for reference only: they are no latency target (their time is an implementation detail).
Machine load (``hbl_edge.runtime.machine.machine_load``) is recorded before and after.

    flock /tmp/hbl-timing.lock nice -n -10 python bench/peers.py --out bench/results/peers.json
    … --genotype edge-lol-s8 --genotype my/genotype.json --bundle runs/x   # our models beside them
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_RESOLUTIONS = ((600, 400), (1280, 720))
DEFAULT_BASELINES = ("gamma", "dcp", "grayworld")


# ---------------------------------------------------------------------------------------------
# The peers' inference architectures (built from the papers' descriptions; random weights)
# ---------------------------------------------------------------------------------------------
def _conv(c_in: int, c_out: int, k: int, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, k, padding=dilation * (k // 2), dilation=dilation)


class SCI(nn.Module):
    """SCI's inference path: the illumination estimator (1 block of 3 channels) and y ⊘ L."""

    task = "lowlight"

    def __init__(self, channels: int = 3, blocks: int = 1) -> None:
        super().__init__()
        self.inc = _conv(3, channels, 3)
        self.blocks = nn.ModuleList(
            nn.Sequential(_conv(channels, channels, 3), nn.BatchNorm2d(channels), nn.ReLU()) for _ in range(blocks)
        )
        self.outc = _conv(channels, 3, 3)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        f = torch.relu(self.inc(y))
        for block in self.blocks:
            f = f + block(f)
        illumination = torch.clamp(torch.sigmoid(self.outc(f)) + y, 1e-4, 1.0)
        return torch.clamp(y / illumination, 0.0, 1.0)


class _DepthwiseSeparable(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(c_in, c_in, 3, padding=1, groups=c_in)
        self.pointwise = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class ZeroDCEPP(nn.Module):
    """Zero-DCE++: curve parameters estimated at 1/12 scale, 8 curve iterations at full scale."""

    task = "lowlight"

    def __init__(self, width: int = 32, scale: int = 12, iterations: int = 8) -> None:
        super().__init__()
        self.scale, self.iterations = scale, iterations
        n = width
        self.e1, self.e2, self.e3, self.e4 = (_DepthwiseSeparable(a, b) for a, b in ((3, n), (n, n), (n, n), (n, n)))
        self.e5, self.e6 = _DepthwiseSeparable(2 * n, n), _DepthwiseSeparable(2 * n, n)
        self.e7 = _DepthwiseSeparable(2 * n, 3)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        small = F.interpolate(y, scale_factor=1.0 / self.scale, mode="bilinear", align_corners=False)
        x1 = torch.relu(self.e1(small))
        x2 = torch.relu(self.e2(x1))
        x3 = torch.relu(self.e3(x2))
        x4 = torch.relu(self.e4(x3))
        x5 = torch.relu(self.e5(torch.cat([x3, x4], 1)))
        x6 = torch.relu(self.e6(torch.cat([x2, x5], 1)))
        r = torch.tanh(self.e7(torch.cat([x1, x6], 1)))
        r = F.interpolate(r, size=y.shape[-2:], mode="bilinear", align_corners=False)
        x = y
        for _ in range(self.iterations):
            x = x + r * (x * x - x)
        return x.clamp(0.0, 1.0)


class AODNet(nn.Module):
    """AOD-Net: K(y) from five full-resolution convs; J = ReLU(K·y − K + 1)."""

    task = "dehaze"

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = _conv(3, 3, 1), _conv(3, 3, 3)
        self.c3, self.c4 = _conv(6, 3, 5), _conv(6, 3, 7)
        self.c5 = _conv(12, 3, 3)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        x1 = torch.relu(self.c1(y))
        x2 = torch.relu(self.c2(x1))
        x3 = torch.relu(self.c3(torch.cat([x1, x2], 1)))
        x4 = torch.relu(self.c4(torch.cat([x2, x3], 1)))
        k = torch.relu(self.c5(torch.cat([x1, x2, x3, x4], 1)))
        return torch.relu(k * y - k + 1.0).clamp(0.0, 1.0)


class PhysicalNN(nn.Module):
    """PhysicalNN: background light A (global) and transmission t; J = (y − A)·t + A."""

    task = "underwater"

    def __init__(self) -> None:
        super().__init__()
        self.a_net = nn.Sequential(
            _conv(3, 3, 3), nn.PReLU(), _conv(3, 3, 3), nn.PReLU(), nn.AdaptiveAvgPool2d(1),
            _conv(3, 3, 1), nn.PReLU(), _conv(3, 3, 1), nn.PReLU(),
        )
        self.t_net = nn.Sequential(
            _conv(6, 8, 3), nn.PReLU(), _conv(8, 8, 3, 2), nn.PReLU(), _conv(8, 8, 3, 5), nn.PReLU(),
            _conv(8, 3, 3), nn.PReLU(),
        )

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        a = self.a_net(y)
        t = self.t_net(torch.cat([y * 0 + a, y], 1))
        return ((y - a) * t + a).clamp(0.0, 1.0)


#: name → (module factory, parameters of the published model, PEERS.md name)
PEERS: dict[str, tuple[Callable[[], nn.Module], int, str]] = {
    "sci": (SCI, 258, "SCI (medium)"),
    "zerodce++": (ZeroDCEPP, 10_561, "Zero-DCE++ (net at 1/12 scale)"),
    "aodnet": (AODNet, 1_761, "AOD-Net"),
    "physicalnn": (PhysicalNN, 2_027, "PhysicalNN"),
}


def peer_module(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    module = PEERS[name][0]().eval()
    with torch.no_grad():  # random but non-degenerate BatchNorm statistics
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return module


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------
def export_peer(module: nn.Module, path: Path, opset: int = 17) -> Path:
    """The same tracer and dynamic axes as hbl_edge.export (N, H, W dynamic)."""
    example = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    dims = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(), (example,), str(path), dynamo=False, export_params=True, do_constant_folding=True,
            opset_version=opset, input_names=["image"], output_names=["enhanced"],
            dynamic_axes={"image": dims, "enhanced": dims},
        )
    return path


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


def time_baselines(names=DEFAULT_BASELINES, resolutions=DEFAULT_RESOLUTIONS, *, warmup: int = 2, repeats: int = 9,
                   seed: int = 0) -> dict[str, dict[str, Any]]:
    """{baseline: {"WxH": stats}} of the numpy baselines on a float32 random image."""
    from hbl_edge.baselines import get_baseline

    out: dict[str, dict[str, Any]] = {n: {} for n in names}
    rng = np.random.default_rng(seed)
    for w, h in resolutions:
        img = rng.random((h, w, 3), dtype=np.float32)
        fns = {n: get_baseline(n).fn for n in names}
        for n in names:
            for _ in range(warmup):
                fns[n](img)
        samples: dict[str, list[float]] = {n: [] for n in names}
        for _ in range(repeats):
            for n in names:
                t0 = time.perf_counter()
                fns[n](img)
                samples[n].append((time.perf_counter() - t0) * 1e3)
        for n in names:
            out[n][f"{w}x{h}"] = _stats(samples[n])
    return out


def run(ours: list[str], *, resolutions=DEFAULT_RESOLUTIONS, threads: int = 2, warmup: int = 3, repeats: int = 15,
        baselines=DEFAULT_BASELINES, labels: dict[str, str] | None = None) -> dict[str, Any]:
    """Export the peers and ``ours`` (genotypes or bundles), time them side by side, time the baselines."""
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
            if n_params != PEERS[name][1]:
                raise RuntimeError(f"{name}: {n_params} parameters, the published model has {PEERS[name][1]}")
            models[name] = export_peer(module, Path(tmp) / f"{name}.onnx")
            info[name] = {"kind": "peer (re-implemented, random weights)", "task": module.task,
                          "parameters": n_params, "peers_md": PEERS[name][2]}
        for i, spec in enumerate(ours):
            label = labels.get(spec, spec)
            models[label], info[label] = export_ours(spec, Path(tmp) / f"ours{i}")
            info[label]["spec"] = spec
        latency = time_onnx(models, resolutions, threads=threads, warmup=warmup, repeats=repeats)
    base = time_baselines(baselines, resolutions) if baselines else {}
    return {
        "format": "hbl-bench-peers/1",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "procedure": (f"ONNX Runtime CPU via create_runner('ort', threads={threads}); {warmup} warm-up runs, then "
                      f"{repeats} interleaved rounds (order rotated per round); median and IQR per model; batch 1, "
                      "random float32 input. Baselines: numpy, float32 input, 2 warm-ups + 9 runs, reference only "
                      "(no latency target)."),
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
    lines = [f"| model | kind | params | " + " | ".join(f"ms {r}" for r in res) + " |",
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
    ap.add_argument("--resolutions", default="600x400,1280x720")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--no-baselines", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    from hbl_edge.runio import parse_resolution, write_json

    resolutions = tuple(parse_resolution(r) for r in args.resolutions.split(","))
    result = run(args.genotype + args.bundle, resolutions=resolutions, threads=args.threads, warmup=args.warmup,
                 repeats=args.repeats, baselines=() if args.no_baselines else DEFAULT_BASELINES)
    print(table(result))
    print(f"load before {result['load_before']['loadavg']}, after {result['load_after']['loadavg']}")
    if args.out:
        write_json(args.out, result)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
