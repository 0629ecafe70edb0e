"""Search quality of the stage-A variants that make a step cheaper (issue 9 §2).

Arms (everything else identical):

- ``candidate-bn``: one BatchNorm per HNU candidate op (DARTS; hbl-edge before issue 9),
  lower step after the upper step (alternating);
- ``edge-bn``: one BatchNorm per HNU edge, after the mixture (the reference code), which lets
  the linear candidates run as one mixed-kernel convolution; alternating;
- ``edge-bn-simultaneous``: as ``edge-bn`` with the lower step reusing the virtual step's
  gradient (one forward/backward pass fewer per second-order step).

For each arm and seed: stage A (second order, no latency term) on the TRAIN data from a fixed
loss (the task's default λ, written as loss.json), the derived genotype trained from scratch
(stage T, same budget for all), tested on the held-out test split. Reported per arm: test
PSNR/SSIM (mean over seeds), stage-A seconds per step, the genotypes, how many edges two arms'
genotypes share at the same seed (and two seeds within one arm: the search's own spread), and
the parameter-free ops per unit.

Data: ``embedded`` (train/val/test regions of the embedded photos), or ``--data real-lowlight``
(``<shared>/data/real/lowlight/train`` for the search and training, ``.../paired`` as the
test set), the shared folder found as ``<repo>/../shared``, ``/work/shared`` or
``$HBL_SHARED_DATA``.

    nice -n 15 python bench/search_variants.py --data embedded --seeds 0,1,2 \\
        --out bench/results/search_variants_embedded.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ARMS: dict[str, dict[str, str]] = {
    "candidate-bn": {"hnu_norm": "candidate", "lower_step": "alternating"},
    "edge-bn": {"hnu_norm": "edge", "lower_step": "alternating"},
    "edge-bn-simultaneous": {"hnu_norm": "edge", "lower_step": "simultaneous"},
}


def shared_real_data() -> Path | None:
    for base in (ROOT.parent / "shared" / "data" / "real", Path("/work/shared/data/real"),
                 Path(os.environ["HBL_SHARED_DATA"]) if os.environ.get("HBL_SHARED_DATA") else None):
        if base is not None and base.is_dir():
            return base
    return None


def agreement(a: dict[str, Any], b: dict[str, Any]) -> float:
    """Fraction of edges (encoder, decoder, every HNU edge) on which two genotypes agree."""
    pairs = list(zip(a["encoder"], b["encoder"])) + list(zip(a["decoder"], b["decoder"]))
    pairs += [(x, y) for ua, ub in zip(a["hnu"], b["hnu"]) for x, y in zip(ua, ub)]
    return sum(x == y for x, y in pairs) / len(pairs)


def run_one(arm: str, seed: int, args: argparse.Namespace, data: str, test_data: str | None) -> dict[str, Any]:
    import torch

    from hbl_edge.losses import LossSpec
    from hbl_edge.search.config import SearchConfig, quick_overrides
    from hbl_edge.search.driver import run_search
    from hbl_edge.tasks import get_task

    out = Path(args.work) / arm / f"seed{seed}"
    done = out / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    if out.exists():
        import shutil

        shutil.rmtree(out)
    out.mkdir(parents=True)
    LossSpec(dict(get_task(args.task).default_loss)).save(out / "loss.json")
    cfg = SearchConfig(task=args.task, data=data, test_data=test_data, out=str(out), stages="A,T", seed=seed,
                       threads=args.threads, **ARMS[arm])
    for k, v in quick_overrides().items():
        setattr(cfg, k, v)
    cfg.steps_a, cfg.steps_t, cfg.ckpt_every = args.steps_a, args.steps_t, 10_000
    t0 = time.perf_counter()
    res = run_search(cfg)
    wall = time.perf_counter() - t0
    records = [json.loads(line) for line in (out / "search" / "log.jsonl").read_text().splitlines()]
    a_sec = [r["seconds"] for r in records if r["stage"] == "A"]
    genotype = json.loads((out / "genotype.json").read_text())
    evals = json.loads((out / "eval.json").read_text())["mean"] if (out / "eval.json").exists() else None
    report = json.loads((out / "search" / "report.json").read_text())
    row = {"arm": arm, "seed": seed, "test": evals, "val": res.report["T"]["val"],
           "stage_a_seconds_per_step_median": statistics.median(a_sec), "wall_s": wall,
           "genotype": genotype, "parameter_free_per_unit": report["derivation"]["parameter_free_derived"],
           "torch_threads": torch.get_num_threads()}
    done.write_text(json.dumps(row, indent=1))
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="lowlight")
    ap.add_argument("--data", default="embedded", help="embedded | real-lowlight")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps-a", type=int, default=150)
    ap.add_argument("--steps-t", type=int, default=800)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", default=None, help="run directories (default runs/bench_search_variants/<data>)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    args.work = args.work or str(ROOT / "runs" / "bench_search_variants" / args.data)
    if args.data == "embedded":
        data, test_data = "embedded", None
    elif args.data == "real-lowlight":
        base = shared_real_data()
        if base is None:
            print("no shared data folder (<repo>/../shared/data/real, /work/shared/data/real, $HBL_SHARED_DATA)")
            return 2
        data, test_data = str(base / "lowlight" / "train"), str(base / "lowlight" / "paired")
    else:
        ap.error("--data is embedded or real-lowlight")
    arms = [a for a in args.arms.split(",") if a]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    load0 = os.getloadavg()
    rows = []
    for seed in seeds:  # seeds outermost: a killed run still has every arm of the first seeds
        for arm in arms:
            print(f"== {arm} seed {seed}", flush=True)
            rows.append(run_one(arm, seed, args, data, test_data))
            r = rows[-1]
            t = r["test"] or {}
            print(f"   test PSNR {t.get('psnr', float('nan')):.2f} SSIM {t.get('ssim', float('nan')):.3f}; "
                  f"A {r['stage_a_seconds_per_step_median']:.2f} s/step", flush=True)
    summary: dict[str, Any] = {}
    for arm in arms:
        mine = [r for r in rows if r["arm"] == arm]
        tests = [r["test"] for r in mine if r["test"]]
        within = [agreement(a["genotype"], b["genotype"]) for i, a in enumerate(mine) for b in mine[i + 1:]]
        summary[arm] = {
            "test_psnr_mean": statistics.fmean(t["psnr"] for t in tests) if tests else None,
            "test_psnr_per_seed": [t["psnr"] for t in tests],
            "test_ssim_mean": statistics.fmean(t["ssim"] for t in tests) if tests else None,
            "val_psnr_per_seed": [r["val"]["val_psnr"] for r in mine],
            "stage_a_s_per_step": statistics.median(r["stage_a_seconds_per_step_median"] for r in mine),
            "parameter_free_per_unit": [r["parameter_free_per_unit"] for r in mine],
            "agreement_between_seeds": within,
        }
    cross = {}
    for i, a in enumerate(arms):
        for b in arms[i + 1:]:
            cross[f"{a} vs {b}"] = [agreement(ra["genotype"], rb["genotype"])
                                    for ra in rows if ra["arm"] == a for rb in rows if rb["arm"] == b and rb["seed"] == ra["seed"]]
    doc = {"benchmark": "search_variants", "task": args.task, "data": args.data,
           "settings": {"steps_a": args.steps_a, "steps_t": args.steps_t, "threads": args.threads, "seeds": seeds,
                        "supernet": "quick_overrides() (8/16 x 3 HNUs, crop 48, batch 2), second order, no latency term",
                        "loss": "the task's default λ (fixed; no stage L)"},
           "arms": {a: ARMS[a] for a in arms}, "summary": summary, "agreement_same_seed": cross, "runs": rows,
           "load": {"start": load0, "end": os.getloadavg()}, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    print(json.dumps(cross, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
