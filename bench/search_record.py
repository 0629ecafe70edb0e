"""The record of a finished `hbl-edge search` run, for docs/benchmarks.md: what it chose and why.

A search run directory holds everything (config.json, search/macro.json, search/report.json,
eval.json, search/log.jsonl); this gathers the parts a benchmark row quotes into one JSON with
repository-relative paths, and prints them:

- the command's settings and versions (config.json);
- the loss check (``search/loss_check.json``: stage L's λ* against L1 on the sweep's winner);
- the macro sweep: every candidate's floor, feasibility, short-search score, derived network's
  predicted ms and its trained proxy's validation PSNR / SSIM;
- the latency promise: the argmax network's predicted and measured ms, every repair round and
  change, the machine load around the measurement;
- wall time per stage (the sum of the steps' seconds in log.jsonl; the sweep and profiling are
  not steps, so the run's whole wall time is given separately when known);
- the test score (eval.json, the PEERS.md procedure) and, with ``--seed-eval``, the same
  network trained with other seeds (``hbl-edge train --seed N`` + ``hbl-edge eval``): mean ± std.

    python bench/search_record.py runs/zd_search --seed-eval runs/zd_seed1/eval runs/zd_seed2/eval \\
        --out bench/results/search_lowlight_zerodce.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from result_paths import rel  # noqa: E402


def _read(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def sweep_rows(macro: dict | None) -> list[dict[str, Any]]:
    """One row per candidate of the macro sweep, the fields a table quotes."""
    rows = []
    for r in (macro or {}).get("candidates", []):
        rows.append({
            "name": r["name"], "feasible": r.get("feasible"), "floor_predicted_ms": r.get("floor_predicted_ms"),
            "score": r.get("score"), "derived_predicted_ms": r.get("derived_predicted_ms"),
            "proxy_val_psnr": r.get("proxy_val_psnr"), "proxy_val_ssim": r.get("proxy_val_ssim"),
            "seconds": (r.get("seconds") or 0.0) + (r.get("proxy_seconds") or 0.0) or None,
            "why": r.get("why"),
        })
    return rows


def stage_seconds(log_path: Path) -> dict[str, float]:
    """Sum of each stage's step seconds in search/log.jsonl."""
    out: dict[str, float] = {}
    if not log_path.exists():
        return out
    for line in log_path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if "stage" in rec and isinstance(rec.get("seconds"), (int, float)):
            out[rec["stage"]] = out.get(rec["stage"], 0.0) + float(rec["seconds"])
    return out


def score(eval_json: dict) -> dict[str, float]:
    m = eval_json["mean"]
    return {"psnr": m["psnr"], "ssim": m["ssim"]}


def seeds_summary(scores: list[dict[str, float]]) -> dict[str, Any]:
    ps = [s["psnr"] for s in scores]
    ss = [s["ssim"] for s in scores]
    return {"n": len(scores), "psnr": ps, "ssim": ss, "psnr_mean": statistics.fmean(ps),
            "psnr_std": statistics.stdev(ps) if len(ps) > 1 else 0.0, "ssim_mean": statistics.fmean(ss)}


def record(run: Path, seed_evals: list[Path], wall_min: float | None = None) -> dict[str, Any]:
    config = _read(run / "config.json")
    if config is None:
        raise SystemExit(f"{run} holds no search run (no config.json)")
    report = _read(run / "search" / "report.json") or {}
    latency = report.get("latency") or {}
    repair = latency.get("repair") or {}
    ev = _read(run / "eval.json")
    scores = [score(ev)] if ev else []
    for d in seed_evals:
        e = _read(Path(d) / "eval.json") if Path(d).is_dir() else _read(Path(d))
        if e is None:
            raise SystemExit(f"--seed-eval {d}: no eval.json there (run `hbl-edge eval --out {d}` first)")
        scores.append(score(e))
    macro = _read(run / "search" / "macro.json")
    return {
        "run": rel(run),
        "settings": {k: rel(v) if isinstance(v, str) and os.path.isabs(v) else v
                     for k, v in config.items() if k != "versions"},
        "versions": config.get("versions"),
        "wall_minutes": wall_min,
        "stage_step_seconds": stage_seconds(run / "search" / "log.jsonl"),
        "loss": (_read(run / "loss.json") or {}).get("terms"),
        "loss_check": _read(run / "search" / "loss_check.json"),  # λ* against L1 on the winner, when it ran
        "sweep": {"chosen": (macro or {}).get("chosen_name"), "rule": (macro or {}).get("rule"),
                  "train_steps": (macro or {}).get("train_steps"), "candidates": sweep_rows(macro)},
        "latency": {
            "budget_ms": latency.get("budget_ms"), "argmax": latency.get("argmax"),
            "rounds": repair.get("rounds"), "changes": repair.get("changes"),
            "final_predicted_ms": latency.get("predicted_ms"), "final_measured_ms": latency.get("measured_ms"),
            "machine_load": latency.get("machine_load"),
        },
        "genotype": report.get("genotype"),
        # the whole genotype.json: the record alone rebuilds and retrains the network once the
        # run directory is gone (write it to a file and pass --genotype)
        "genotype_json": _read(run / "genotype.json"),
        "test": {"data": rel(ev["data"]) if ev else None, "images": len(ev["per_image"]) if ev else 0,
                 "seed0": scores[0] if scores else None, "seeds": seeds_summary(scores) if scores else None},
    }


def print_record(rec: dict[str, Any]) -> None:
    print(f"run {rec['run']}: chose {rec['sweep']['chosen']}  loss {rec['loss']}")
    if rec.get("loss_check"):
        print("  loss check: " + ", ".join(f"{r['loss']} {r['val_psnr']:.2f} dB" for r in rec["loss_check"]["losses"])
              + f" → {rec['loss_check']['chosen']}")
    for r in rec["sweep"]["candidates"]:
        if not r["feasible"]:
            print(f"  {r['name']:<30} pruned (floor {r['floor_predicted_ms']:.1f} ms)")
            continue
        proxy = "-" if r["proxy_val_psnr"] is None else f"{r['proxy_val_psnr']:.2f} / {r['proxy_val_ssim']:.3f}"
        print(f"  {r['name']:<30} derived {r['derived_predicted_ms']:.1f} ms predicted, proxy val {proxy}")
    lat = rec["latency"]
    for rnd in lat["rounds"] or []:
        meas = "-" if rnd["measured_ms"] is None else f"{rnd['measured_ms']:.2f}"
        print(f"  round {rnd['round']}: predicted {rnd['predicted_ms']:.2f} ms, measured {meas} ms "
              f"(budget {lat['budget_ms']}): {rnd['genotype']}")
    print(f"  {len(lat['changes'] or [])} change(s); final: {rec['genotype']}")
    s = rec["test"]["seeds"]
    if s:
        print(f"  test ({rec['test']['data']}, {rec['test']['images']} images): "
              + ", ".join(f"{p:.2f} / {q:.3f}" for p, q in zip(s["psnr"], s["ssim"]))
              + f"  → {s['psnr_mean']:.2f} ± {s['psnr_std']:.2f} dB / {s['ssim_mean']:.3f} over {s['n']} seed(s)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path, help="a search run directory (--out of hbl-edge search)")
    ap.add_argument("--seed-eval", type=Path, nargs="*", default=[],
                    help="eval folders (or eval.json files) of the same genotype trained with other seeds")
    ap.add_argument("--wall-minutes", type=float, default=None, help="the run's wall time, as timed outside it")
    ap.add_argument("--out", type=Path, default=None, help="write the record here (JSON)")
    args = ap.parse_args(argv)
    rec = record(args.run, args.seed_eval, args.wall_minutes)
    print_record(rec)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rec, indent=1) + "\n")
        print(f"wrote {rel(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
