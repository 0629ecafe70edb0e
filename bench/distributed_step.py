"""Search-step time with 1 and 2 processes (torch.distributed, gloo) on this CPU (issue 9 §1).

One stage-A step as ``hbl-edge search`` runs it (second order, the default supernet 16/32 × 7,
crop 64, the six weight-free terms, no latency term), in three set-ups that all use the same
cores:

- ``1p-2t-b4``: one process, 2 torch threads, batch 4;
- ``1p-1t-b4``: one process, 1 thread, batch 4 (half the cores: the baseline of the others);
- ``2p-1t-b2``: two processes under torchrun (gloo), 1 thread each, batch 2 each (global 4:
  the same optimisation step as ``1p-2t-b4``, data parallel);
- ``1p-2t-b2``: one process, 2 threads, batch 2 (what one process does per step with the
  per-process batch of ``2p-1t-b2``).

Each launch builds everything, runs ``--warmup`` untimed steps and ``--steps`` timed ones;
the set-ups are launched in turn for ``--rounds`` rounds (start rotated), so a drift in the
machine's load hits all of them. Reported: the median seconds per step over all timed steps,
and images per second of the global batch.

    flock /tmp/hbl-timing.lock nice -n -10 python bench/distributed_step.py --out bench/results/distributed_step.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SETUPS: dict[str, dict[str, int]] = {
    "1p-2t-b4": {"procs": 1, "threads": 2, "batch": 4},
    "1p-1t-b4": {"procs": 1, "threads": 1, "batch": 4},
    "2p-1t-b2": {"procs": 2, "threads": 1, "batch": 2},
    "1p-2t-b2": {"procs": 1, "threads": 2, "batch": 2},
}


def load_now() -> dict[str, Any]:
    out: dict[str, Any] = {"loadavg": list(os.getloadavg())}
    try:
        out["cpu_pressure"] = Path("/proc/pressure/cpu").read_text().strip().splitlines()
    except OSError:
        pass
    return out


def worker(args: argparse.Namespace) -> None:
    import torch

    from hbl_edge.data import TrainSampler, open_dataset
    from hbl_edge.distributed import init_from_env
    from hbl_edge.losses import build_loss
    from hbl_edge.search.config import DEFAULT_TERMS, SearchConfig
    from hbl_edge.search.stages import BilevelState, bilevel_step, make_optimizers, place, place_batch
    from hbl_edge.search.supernet import Supernet

    torch.set_num_threads(args.threads)
    dist = init_from_env()
    cfg = SearchConfig()
    torch.manual_seed(0)
    net = Supernet("paper", (16, 32), 7, seed=1)
    net = place(net, dist).train()  # as the search runs it
    criterion = build_loss(",".join(f"{t}=1" for t in DEFAULT_TERMS))
    share = dict(rank=dist.rank, world_size=dist.world_size)
    lo = TrainSampler(open_dataset("embedded", "lowlight", "train"), "lowlight", crop=64, batch_size=args.batch, seed=1, **share)
    up = TrainSampler(open_dataset("embedded", "lowlight", "val"), "lowlight", crop=64, batch_size=args.batch, seed=2, **share)
    n = args.warmup + args.steps
    batches = [(place_batch(lo.batch(i), dist), place_batch(up.batch(i), dist)) for i in range(n)]
    upper = list(net.arch_parameters())
    w_opt, u_opt = make_optimizers(cfg, net, upper)
    state = BilevelState(net, upper, w_opt, u_opt)
    times = []
    for i, (lb, ub) in enumerate(batches):
        dist.barrier()
        t0 = time.perf_counter()
        bilevel_step(state, order="second", lower_batch=lb, upper_batch=ub, lower_loss=criterion,
                     upper_objective=lambda p, t: criterion(p, t)[0], clip=cfg.w_clip, dist=dist)
        dist.barrier()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    if dist.is_main:
        print("RESULT " + json.dumps({"times_s": times, "world_size": dist.world_size, "backend": dist.backend}), flush=True)
    dist.shutdown()


def launch(setup: str, args: argparse.Namespace) -> dict[str, Any]:
    s = SETUPS[setup]
    env = {**os.environ, "OMP_NUM_THREADS": str(s["threads"]), "PYTHONPATH": str(ROOT)}
    env.pop("RANK", None)
    base = [__file__, "--worker", "--threads", str(s["threads"]), "--batch", str(s["batch"]),
            "--warmup", str(args.warmup), "--steps", str(args.steps)]
    if s["procs"] > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={s['procs']}", *base]
    else:
        cmd = [sys.executable, *base]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=3600)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"{setup} failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(line[len("RESULT "):])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--setups", default=",".join(SETUPS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "distributed_step.json")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    setups = [s for s in args.setups.split(",") if s]
    start = load_now()
    print(f"load at start {start['loadavg']}", flush=True)
    times: dict[str, list[float]] = {s: [] for s in setups}
    for r in range(args.rounds):
        for s in setups[r % len(setups):] + setups[:r % len(setups)]:
            res = launch(s, args)
            times[s] += res["times_s"]
            print(f"  round {r + 1}: {s} {statistics.median(res['times_s']):.2f} s/step", flush=True)
    results = {}
    for s in setups:
        cfg = SETUPS[s]
        med = statistics.median(times[s])
        results[s] = {**cfg, "global_batch": cfg["procs"] * cfg["batch"], "s_per_step_median": med,
                      "images_per_s": cfg["procs"] * cfg["batch"] / med, "times_s": times[s]}
    doc = {"benchmark": "distributed_step",
           "what": "seconds per stage-A second-order search step, 1 vs 2 processes (gloo) on this CPU",
           "setup": {"supernet": "16/32 x 7 HNUs, paper space, channels-last", "crop": 64, "loss": "six weight-free terms",
                     "rounds": args.rounds, "warmup": args.warmup, "steps": args.steps,
                     "timing": "barrier before and after each step; median over all timed steps of all rounds"},
           "machine": {"logical_cpus": os.cpu_count()}, "load": {"start": start, "end": load_now()},
           "results": results, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    for s, r in results.items():
        print(f"{s}: {r['s_per_step_median']:.2f} s/step, {r['images_per_s']:.2f} images/s (global batch {r['global_batch']})")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
