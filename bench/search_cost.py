"""Search cost per step: first vs second vs exact order (issue 3 §6, first bullet).

What one "step" is: one stage-A bilevel step exactly as ``hbl-edge search`` runs it,
:func:`hbl_edge.search.stages.bilevel_step` = the upper step (hypergradient of the upper
objective w.r.t. α through one virtual SGD step of the weights, then Adam on α) followed by
the lower step (SGD with momentum and clipping on the weights). For reference, ``lower`` is
the plain lower step alone (forward, backward, clip, SGD), i.e. what ordinary training of the
supernet would cost per step.

Setup (fixed, so orders are comparable): the ``paper`` space, CPU, float32, lower loss = the
six weight-free default terms (l1 l2 color ssim tv laplacian) at weight 1, upper objective the
same loss on val crops (no latency term: it is a tiny differentiable sum over α and would not
change the picture), SGD lr 5e-4 / momentum 0.9 / clip 5, Adam lr 5e-4 on α. Batches come from
the embedded lowlight train (lower) and val (upper) splits; they are drawn before timing, so
data loading is *not* in the step time.

Timing: every order has its own copy of the same initial supernet and optimisers; after
``--warmup`` untimed steps each, ``--steps`` timed rounds run with the orders interleaved
(round r runs them in a rotated order) so that drifts in the machine's load hit every order
alike. Median and IQR (25th–75th percentile) of wall-clock seconds per step, and each order's
ratio to ``first`` computed per round (paired) and then medianed.

Peak memory: a fresh subprocess per (configuration, order) builds the supernet, loss and
batches, resets the kernel's resident-set high-water mark (``/proc/self/clear_refs`` ← 5), runs a
few steps of that order only, and reports VmHWM − VmRSS-after-setup: the memory the steps add on
top of the resident supernet (torch's native allocations included). The earlier method
(``ru_maxrss`` minus a baseline process) read 0: setup's own peak hid the steps'.

Usage::

    python bench/search_cost.py                      # full + quick supernet, crop 64 (+ 128 for quick)
    python bench/search_cost.py --configs quick64     # one configuration
    python bench/search_cost.py --steps 7 --out bench/results/search_cost.json
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hbl_edge.data import TrainSampler, open_dataset  # noqa: E402
from hbl_edge.losses import build_loss  # noqa: E402
from hbl_edge.search.config import DEFAULT_TERMS, SearchConfig  # noqa: E402
from hbl_edge.search.stages import BilevelState, bilevel_step, make_optimizers  # noqa: E402
from hbl_edge.search.supernet import Supernet  # noqa: E402

CONFIGS: dict[str, dict[str, Any]] = {
    "full64": dict(channels=(16, 32), units=7, crop=64, batch=2, label="full 16/32 x7, crop 64"),
    "quick64": dict(channels=(8, 16), units=3, crop=64, batch=2, label="quick 8/16 x3, crop 64"),
    "quick128": dict(channels=(8, 16), units=3, crop=128, batch=2, label="quick 8/16 x3, crop 128"),
}
ORDERS = ("lower", "first", "second", "exact")
TASK = "lowlight"


# ------------------------------------------------------------------------------------------
# one step of each kind
# ------------------------------------------------------------------------------------------
class Runner:
    """A supernet, its optimisers and fixed batches; ``step(kind, i)`` runs one step."""

    def __init__(self, cfg: dict[str, Any], seed: int = 0, n_batches: int = 4,
                 template: Supernet | None = None) -> None:
        torch.manual_seed(seed)
        self.net = copy.deepcopy(template) if template is not None else \
            Supernet("paper", cfg["channels"], cfg["units"], seed=seed + 1)
        self.net.train()
        scfg = SearchConfig()
        self.criterion = build_loss(",".join(f"{t}=1" for t in DEFAULT_TERMS))
        upper_vars = list(self.net.arch_parameters())
        w_opt, u_opt = make_optimizers(scfg, self.net, upper_vars)
        self.state = BilevelState(self.net, upper_vars, w_opt, u_opt)
        self.clip = scfg.w_clip
        train_src = open_dataset("embedded", TASK, "train", seed=seed)
        val_src = open_dataset("embedded", TASK, "val", seed=seed)
        lo = TrainSampler(train_src, TASK, crop=cfg["crop"], batch_size=cfg["batch"], seed=seed + 1)
        up = TrainSampler(val_src, TASK, crop=cfg["crop"], batch_size=cfg["batch"], seed=seed + 7920)
        self.lower_batches = [lo.batch(i) for i in range(n_batches)]
        self.upper_batches = [up.batch(i) for i in range(n_batches)]

    def objective(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.criterion(pred, target)[0]

    def step(self, kind: str, i: int) -> None:
        k = i % len(self.lower_batches)
        if kind == "lower":
            st = self.state
            params = self.net.weight_parameters()
            st.w_opt.zero_grad(set_to_none=True)
            x, y = self.lower_batches[k]
            loss = self.criterion(self.net(x), y)[0]
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, self.clip)
            st.w_opt.step()
            st.step += 1
            return
        bilevel_step(self.state, order=kind, lower_batch=self.lower_batches[k],
                     upper_batch=self.upper_batches[k], lower_loss=self.criterion,
                     upper_objective=self.objective, clip=self.clip)


def _quantiles(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    q = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) >= 2 else [xs[0]] * 3
    return {"median": statistics.median(xs), "q25": q[0], "q75": q[2], "iqr": q[2] - q[0],
            "min": xs[0], "max": xs[-1], "n": len(xs)}


def time_config(name: str, orders: list[str], warmup: int, steps: int) -> dict[str, Any]:
    cfg = CONFIGS[name]
    base = Runner(cfg)
    runners = {o: Runner(cfg, template=base.net) for o in orders}  # same initial weights and α
    del base
    for o in orders:
        for i in range(warmup):
            runners[o].step(o, i)
    times: dict[str, list[float]] = {o: [] for o in orders}
    for r in range(steps):
        rot = orders[r % len(orders):] + orders[:r % len(orders)]
        for o in rot:
            t0 = time.perf_counter()
            runners[o].step(o, warmup + r)
            times[o].append(time.perf_counter() - t0)
        print(f"  [{name}] round {r + 1}/{steps}: " +
              ", ".join(f"{o} {times[o][-1]:.3f}s" for o in orders), flush=True)
    out: dict[str, Any] = {"times_s": times, "stats": {o: _quantiles(times[o]) for o in orders}}
    if "first" in orders:
        out["ratio_to_first"] = {o: _quantiles([a / b for a, b in zip(times[o], times["first"])])
                                 for o in orders}
    if "lower" in orders:
        out["ratio_to_lower"] = {o: _quantiles([a / b for a, b in zip(times[o], times["lower"])])
                                 for o in orders}
    return out


# ------------------------------------------------------------------------------------------
# peak memory: one subprocess per (configuration, order)
# ------------------------------------------------------------------------------------------
def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def mem_child(name: str, kind: str, steps: int) -> None:
    runner = Runner(CONFIGS[name])
    gc.collect()
    # Reset the high-water mark after setup (Linux: writing 5 to clear_refs resets VmHWM), so the
    # peak below is what the steps add on top of the resident supernet, loss and batches.
    Path("/proc/self/clear_refs").write_text("5")
    setup_kib = _status_kib("VmRSS")
    if kind != "baseline":
        for i in range(steps):
            runner.step(kind, i)
    peak_kib = _status_kib("VmHWM")
    print(json.dumps({"peak_kib": peak_kib, "setup_kib": setup_kib, "step_peak_mib": (peak_kib - setup_kib) / 1024}))


def measure_memory(name: str, orders: list[str], steps: int, threads: int) -> dict[str, Any]:
    res: dict[str, Any] = {}
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    for kind in ["baseline", *orders]:
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, __file__, "--mem-child", name, kind, "--mem-steps", str(steps)],
            capture_output=True, text=True, env=env, cwd=ROOT)
        if proc.returncode != 0:
            res[kind] = {"error": proc.stderr.strip().splitlines()[-1:] or ["?"], "rc": proc.returncode}
            continue
        rec = json.loads(proc.stdout.strip().splitlines()[-1])
        rec["wall_s"] = time.perf_counter() - t0
        res[kind] = rec
        print(f"  [{name}] memory {kind}: peak {rec['peak_kib'] / 1024:.1f} MiB", flush=True)
    return res


# ------------------------------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {"cpu_model": cpu, "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch_interop_threads": torch.get_num_interop_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(), "loadavg_start": load}


def _load() -> dict[str, Any]:
    out: dict[str, Any] = {"loadavg": list(os.getloadavg())}
    try:
        out["cpu_pressure"] = Path("/proc/pressure/cpu").read_text().strip().splitlines()
    except OSError:
        pass
    return out


def n_params(cfg: dict[str, Any]) -> dict[str, int]:
    net = Supernet("paper", cfg["channels"], cfg["units"], seed=1)
    return {"weights": sum(p.numel() for p in net.weight_parameters()),
            "alpha": sum(p.numel() for p in net.arch_parameters())}


def table(results: dict[str, Any]) -> str:
    rows = ["| configuration | step | time/step median (s) | IQR (s) | ÷ first (paired median) | ÷ lower | peak mem over baseline (MiB) |",
            "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        for o in r["orders"]:
            s = r["timing"]["stats"][o]
            rf = r["timing"].get("ratio_to_first", {}).get(o, {}).get("median")
            rl = r["timing"].get("ratio_to_lower", {}).get(o, {}).get("median")
            m = r["memory"].get(o, {}).get("step_peak_mib")
            rows.append(f"| {r['label']} | {o} | {s['median']:.3f} | {s['q25']:.3f}–{s['q75']:.3f} | "
                        f"{'' if rf is None else f'{rf:.2f}'} | {'' if rl is None else f'{rl:.2f}'} | "
                        f"{'' if m is None else f'{m:.0f}'} |")
        base = r["memory"].get("baseline", {}).get("peak_kib")
        if base is not None:
            rows.append(f"| {r['label']} | (baseline: build only) | | | | | {base / 1024:.0f} absolute |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="full64,quick64,quick128")
    ap.add_argument("--orders", default="lower,first,second,exact",
                    help="steps to time; per configuration, --no-exact drops exact")
    ap.add_argument("--no-exact", default="", help="configurations timed without exact (comma list)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--mem-steps", type=int, default=3, help="steps run by each memory subprocess")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--merge", action="store_true",
                    help="keep the other configurations already in --out (replace only those run now)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "search_cost.json"))
    ap.add_argument("--mem-child", nargs=2, metavar=("CONFIG", "KIND"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.mem_child:
        mem_child(*args.mem_child, args.mem_steps)
        return 0

    info = machine_info()
    load_start = _load()
    print(f"machine: {info['cpu_model']}, {info['logical_cpus']} CPUs, torch {info['torch']} "
          f"({info['torch_threads']} threads), load {info['loadavg_start']}", flush=True)
    results: dict[str, Any] = {}
    no_exact = {c for c in args.no_exact.split(",") if c}
    for name in [c for c in args.configs.split(",") if c]:
        cfg = CONFIGS[name]
        orders = [o for o in args.orders.split(",") if o and not (o == "exact" and name in no_exact)]
        print(f"== {cfg['label']}: orders {orders}", flush=True)
        t0 = time.perf_counter()
        timing = time_config(name, orders, args.warmup, args.steps)
        memory = {} if args.skip_memory else measure_memory(name, orders, args.mem_steps, info["torch_threads"])
        results[name] = {"label": cfg["label"], "channels": list(cfg["channels"]), "units": cfg["units"],
                         "crop": cfg["crop"], "batch": cfg["batch"], "params": n_params(cfg),
                         "orders": orders, "timing": timing, "memory": memory,
                         "wall_s": time.perf_counter() - t0}
        print(table({name: results[name]}), flush=True)
    try:
        info["loadavg_end"] = os.getloadavg()
    except OSError:
        pass
    doc = {
        "benchmark": "search_cost",
        "what": "wall-clock seconds and peak RSS per stage-A bilevel step (upper hypergradient + "
                "lower SGD step), by hypergradient order; 'lower' = plain lower step alone",
        "setup": {"space": "paper", "dtype": "float32", "device": "cpu",
                  "loss": "l1=1,l2=1,color=1,ssim=1,tv=1,laplacian=1 (lower and upper), no latency term",
                  "w_opt": "SGD lr 5e-4 momentum 0.9 clip 5", "u_opt": "Adam lr 5e-4 betas 0.5/0.999 wd 1e-4",
                  "data": "embedded lowlight train (lower) / val (upper) crops, drawn before timing",
                  "warmup": args.warmup, "timed_steps": args.steps,
                  "interleaving": "rounds; each round runs every order once, rotated start",
                  "memory_method": "fresh subprocess per (config, order): VmHWM reset after setup "
                                   "(/proc/self/clear_refs = 5), then VmHWM after mem_steps steps minus "
                                   "VmRSS after setup",
                  "mem_steps": args.mem_steps},
        "machine": info,
        "load": {"start": load_start, "end": _load()},  # measured, not assumed: loadavg and CPU pressure
        "results": results,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.merge and out.exists():
        old = json.loads(out.read_text())
        doc["results"] = {**{k: v for k, v in old.get("results", {}).items() if k not in results}, **results}
        doc["runs"] = [*old.get("runs", [old.get("setup", {}) | {"configs": list(old.get("results", {}))}]),
                       doc["setup"] | {"configs": list(results)}]
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print("\n" + table(doc["results"]))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
