"""A macro search of an edge network under SCI's measured latency, on real training data (issue 8 §5).

Three phases, because they need different machine manners:

    # 1. timing (the lock, priority): SCI and the peers at 600x400 through ONNX Runtime (2
    #    threads), then the macro grid's inner latency tables and full-resolution parts, cached
    #    in the run directory; the budget is SCI's median from this run
    flock /tmp/hbl-timing.lock nice -n -10 python bench/edge_macro_search.py prep --out runs/macro_lol
    # 2. the search (nice, background): stages L and A with --macro edge at that budget; the
    #    derived network is measured as deployed and repaired to the budget
    nice -n 15 python bench/edge_macro_search.py search --out runs/macro_lol
    # (and how well the edge latency model predicts: random edge genotypes of the grid, timed as deployed)
    flock /tmp/hbl-timing.lock nice -n -10 python bench/edge_macro_search.py accuracy --out runs/macro_lol
    # 3. train the derived genotype with bench/edge_quality.py's recipe and time it beside the
    #    peers in one run (bench/edge_quality.py train / time)

Train on ``real/lowlight/train`` only; the test set is never seen by the search.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "bench"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

RESOLUTION = (600, 400)
#: bench/edge_quality.py's phase-1 low-light bundles (trained on real/lowlight/train), timed beside SCI
PHASE1 = ("edge-lol-s8", "edge-lol-s8-r1", "edge-lol-s4", "edge-lol-s4-paper")
GRID = dict(macro_scales=(4, 8), macro_widths=((8, 16),), macro_units=(1, 2), macro_refine=((),))


def _cfg(out: Path, budget: float, threads: int):
    from edge_quality import shared_data

    from hbl_edge.search.config import SearchConfig, quick_overrides

    q = quick_overrides()
    return SearchConfig(
        task="lowlight", data=str(shared_data() / "lowlight/train"), out=str(out), stages="L,A", space="edge",
        units=2, channels=(8, 16), device="cpu", backend="onnxruntime", latency_budget=budget, resolution=RESOLUTION,
        latency_threads=2, macro="edge", macro_steps=8, steps_l=q["steps_l"], steps_a=30, crop=128,
        critic_steps=q["critic_steps"], w_lr=q["w_lr"], upper_lr=q["upper_lr"], ckpt_every=10, threads=threads,
        **GRID,
    )


def cmd_prep(args: argparse.Namespace) -> None:
    import peers  # bench/peers.py

    from hbl_edge.runio import write_json
    from hbl_edge.search.driver import _edge_models
    from hbl_edge.search.macro import floor_genotype

    t0 = time.time()
    ours = [b for b in args.bundle if (Path(b) / "model.json").exists()]
    timing = peers.run(ours, resolutions=(RESOLUTION,), threads=2, repeats=15, baselines=())
    sci = timing["latency"]["sci"][f"{RESOLUTION[0]}x{RESOLUTION[1]}"]["median_ms"]
    cfg = _cfg(args.out, sci, threads=2)
    load_before = peers.machine_load()
    models = _edge_models(cfg, Path(args.out))
    write_json(Path(args.out) / "prep.json", {
        "sci_ms": sci, "peers": timing, "resolution": list(RESOLUTION), "grid": {k: list(v) for k, v in GRID.items()},
        "tables_load": {"before": load_before, "after": peers.machine_load()}, "wall_s": round(time.time() - t0, 1),
        "floors_ms": {c.name: m.predict(floor_genotype(c, "lowlight", "edge", m)) for c, m in models.items()},
    })
    print(f"SCI {sci:.1f} ms at {RESOLUTION[0]}x{RESOLUTION[1]}; tables in {args.out}/latency")


def cmd_search(args: argparse.Namespace) -> None:
    import logging

    from hbl_edge.search.driver import run_search

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    stages = args.stages or ("A" if (Path(args.out) / "loss.json").exists() else "L,A")
    if "A" in stages:
        prep = json.loads((Path(args.out) / "prep.json").read_text())
        budget = args.budget or prep["sci_ms"]
    else:
        budget = args.budget or 1.0  # stage L does not use it
    cfg = _cfg(args.out, budget, threads=args.threads)
    cfg.stages = stages
    t0 = time.time()
    res = run_search(cfg, resume=args.resume)
    print(json.dumps({"completed": res.completed, "seconds": round(time.time() - t0, 1),
                      "latency": res.report.get("A", {}).get("latency")}, indent=1, default=str))


def cmd_accuracy(args: argparse.Namespace) -> None:
    """Predicted (edge latency model) vs measured (deployed, independent) ms of random edge genotypes."""
    import dataclasses
    import random
    import statistics

    import peers

    from hbl_edge.runio import write_json
    from hbl_edge.search.deployed import measure_networks
    from hbl_edge.search.driver import _edge_models
    from hbl_edge.search.latency import random_genotype

    ours = [b for b in args.bundle if (Path(b) / "model.json").exists()]
    timing = peers.run(ours, resolutions=(RESOLUTION,), threads=2, repeats=15, baselines=()) if ours else None
    cfg = _cfg(args.out, 1e9, threads=2)
    models = _edge_models(cfg, Path(args.out))  # the cached tables of the prep run
    rng = random.Random(args.seed)
    genos, preds, raws, names = [], [], [], []
    for cand, model in models.items():
        for _ in range(args.per_candidate):
            core = random_genotype("edge", cand.channels, cand.units, seed=rng)
            g = dataclasses.replace(core, macro=cand.macro("lowlight"), format=None)
            genos.append(g)
            preds.append(model.predict(g))
            raws.append(model.predict_raw(g))
            names.append(cand.name)
    load_before = peers.machine_load()
    measured = measure_networks(genos, "onnxruntime", RESOLUTION, repeats=15, warmup=3, rounds=2, threads=2)
    rows = [{"candidate": n, "genotype": g.summary(), "predicted_ms": p, "predicted_raw_ms": r, "measured_ms": m,
             "error_pct": 100.0 * (p - m) / m, "raw_error_pct": 100.0 * (r - m) / m}
            for n, g, p, r, m in zip(names, genos, preds, raws, measured)]

    def stats(key: str) -> dict[str, float]:
        e = [r[key] for r in rows]
        a = [abs(v) for v in e]
        return {"mean_abs_error_pct": statistics.fmean(a), "median_abs_error_pct": statistics.median(a),
                "max_abs_error_pct": max(a), "rms_error_pct": statistics.fmean(v * v for v in a) ** 0.5,
                "mean_signed_error_pct": statistics.fmean(e), "within_10pct": sum(v <= 10 for v in a),
                "within_20pct": sum(v <= 20 for v in a), "n": len(a)}

    result = {"format": "hbl-bench-edge-latency-accuracy/2", "resolution": list(RESOLUTION), "threads": 2,
              "method": "prediction: whole-network correction of (inner table at 1/s, calibrated) + (shell − empty), "
                        "fitted on edge calibration networks (raw: without it); measurement: hbl_edge.search.deployed "
                        "(export, BN folded, own session, 3 warm-up + 15 consecutive runs, 2 rounds), on genotypes "
                        "drawn at random, none of them a calibration network",
              "rows": rows, **stats("error_pct"), "raw": stats("raw_error_pct"),
              "corrections": {c.name: m.whole and {k: m.whole[k] for k in ("kind", "scales", "offset_ms", "n", "loo")}
                              for c, m in models.items()},
              "load": {"before": load_before, "after": peers.machine_load()},
              "peers_and_bundles": timing}
    write_json(args.json, result)
    for r in rows:
        print(f"{r['candidate']:24s} predicted {r['predicted_ms']:6.1f} ms (raw {r['predicted_raw_ms']:6.1f}) "
              f"measured {r['measured_ms']:6.1f} ms ({r['error_pct']:+.0f} %, raw {r['raw_error_pct']:+.0f} %)")
    for label, st in (("corrected", result), ("raw", result["raw"])):
        print(f"{label}: {st['within_10pct']}/{st['n']} within ±10 %, {st['within_20pct']}/{st['n']} within ±20 %, "
              f"median |error| {st['median_abs_error_pct']:.1f} %, mean signed {st['mean_signed_error_pct']:+.1f} %, "
              f"max {st['max_abs_error_pct']:.1f} %")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prep")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--bundle", action="append", default=[f"runs/eq/lowlight_l1/{n}" for n in PHASE1],
                   help="trained bundles timed beside the peers in the same run (default: the phase-1 low-light ones)")
    s = sub.add_parser("search")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--budget", type=float, default=None, help="ms (default: SCI's from the prep run)")
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--stages", default=None, help="L (no budget needed: can run before prep), A, or L,A (default)")
    s.add_argument("--resume", action="store_true")
    a = sub.add_parser("accuracy")
    a.add_argument("--out", type=Path, required=True, help="the run directory of a prep run (its cached tables)")
    a.add_argument("--json", type=Path, default=ROOT / "bench/results/edge_latency_accuracy.json")
    a.add_argument("--per-candidate", type=int, default=2)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--bundle", action="append",
                   default=["runs/final/searched-s8-l1", "runs/final/searched-s8", "runs/eq/lowlight_l1/edge-lol-s8"],
                   help="trained bundles timed beside the peers first, in the same run")
    args = ap.parse_args(argv)
    {"prep": cmd_prep, "search": cmd_search, "accuracy": cmd_accuracy}[args.cmd](args)


if __name__ == "__main__":
    main()
