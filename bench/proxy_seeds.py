"""How much of the macro sweep's choice is the seed? (proxy replicates of a recorded sweep)

The macro sweep (``hbl-edge search --macro edge``) trains each candidate's derived network
``--macro-train-steps`` steps with the search's seed and ranks the candidates by validation
PSNR on whole frames of that seed's carve-out (docs/search.md). This script takes a finished
sweep (``RUN/search/macro.json`` and the genotypes under ``RUN/search/macro/``), trains the
same genotypes again with the search's own stage-T recipe (``driver._train_config``: λ*, crop,
batch, lr) for other seeds and step counts, and reports, per step count:

- the Spearman ρ of the candidate ranking between every pair of seeds (a seed changes the
  initialisation, the batches *and* the validation carve-out, as it does in the search);
- each seed's winner and the winner of the mean over seeds;
- the mean spread of one candidate across seeds against the gap between the best two means.

Only validation PSNRs are used; no test folder is read. Runs are resumable (a bundle under
``--work`` is read, not trained again) and can be split over lanes that run side by side:

    python bench/proxy_seeds.py runs/uw_b5 --steps 300,600 --seeds 0,1,2 --lane 0/2 &
    python bench/proxy_seeds.py runs/uw_b5 --steps 300,600 --seeds 0,1,2 --lane 1/2 &
    wait; python bench/proxy_seeds.py runs/uw_b5 --steps 300,600 --seeds 0,1,2 \\
        --out bench/results/proxy_seeds_underwater.json
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "bench"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from macro_proxy import spearman  # noqa: E402
from result_paths import rel  # noqa: E402


def proxy_score(run: Path, name: str, steps: int, seed: int, work: Path, threads: int | None) -> dict:
    """Validation PSNR/SSIM of one candidate's genotype trained ``steps`` steps with ``seed``."""
    from hbl_edge.search.config import SearchConfig
    from hbl_edge.search.driver import _train_config, macro_candidate_dir
    from hbl_edge.train import train

    home = macro_candidate_dir(run, name)
    bundle = work / home.name / f"t{steps}_s{seed}"
    if not (bundle / "model.json").exists():
        cfg = SearchConfig.from_dict(json.loads((run / "config.json").read_text()))
        cfg = dataclasses.replace(cfg, seed=seed)
        tcfg = _train_config(cfg, run, home / "genotype.json", bundle, steps, val_crop=None)
        train(dataclasses.replace(tcfg, threads=threads))
    m = json.loads((bundle / "model.json").read_text())["metrics"]
    return {"val_psnr": m["val_psnr"], "val_ssim": m["val_ssim"], "train_s": m.get("train_seconds_this_session"),
            "run": rel(bundle)}


def summarise(psnr: dict[str, dict[int, float]], seeds: list[int]) -> dict:
    """Seed-to-seed agreement of one step count's ranking (``psnr[candidate][seed]``)."""
    names = sorted(psnr)
    pairs = {f"{a}-{b}": spearman([psnr[n][a] for n in names], [psnr[n][b] for n in names])
             for a, b in itertools.combinations(seeds, 2)}
    means = {n: statistics.fmean(psnr[n][s] for s in seeds) for n in names}
    ranked = sorted(names, key=means.get, reverse=True)
    spread = statistics.fmean(statistics.stdev([psnr[n][s] for s in seeds]) for n in names) if len(seeds) > 1 else None
    return {"spearman_pairs": pairs, "spearman_mean": statistics.fmean(pairs.values()) if pairs else None,
            "winner_per_seed": {str(s): max(names, key=lambda n: psnr[n][s]) for s in seeds},
            "winner_of_mean": ranked[0], "mean_psnr": means, "ranking": ranked,
            "gap_best_two_db": means[ranked[0]] - means[ranked[1]], "mean_seed_std_db": spread}


def main(argv: list[str] | None = None) -> int:
    from hbl_edge.runio import versions, write_json
    from hbl_edge.runtime.machine import machine_load

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="a finished --macro edge search run")
    ap.add_argument("--steps", default="300,600", help="proxy step counts to compare")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", type=Path, default=None, help="where the replicate bundles go (default RUN/proxy_seeds)")
    ap.add_argument("--lane", default=None, help="i/n: train only every n-th job starting at i (no summary)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    steps = [int(v) for v in args.steps.split(",")]
    seeds = [int(v) for v in args.seeds.split(",")]
    work = args.work or args.run / "proxy_seeds"
    sweep = json.loads((args.run / "search" / "macro.json").read_text())
    names = [r["name"] for r in sweep["candidates"] if r.get("feasible") and "proxy_val_psnr" in r]
    if len(names) < 3:
        print(f"{args.run}: fewer than 3 trained candidates in its sweep; nothing to rank", file=sys.stderr)
        return 2
    jobs = list(itertools.product(steps, seeds, names))
    lane = tuple(int(v) for v in args.lane.split("/")) if args.lane else (0, 1)
    load = {"before": machine_load()}
    rows: dict[str, dict] = {}
    by_name = {r["name"]: r for r in sweep["candidates"]}
    search_seed = json.loads((args.run / "config.json").read_text()).get("seed", 0)
    for k, (t, s, n) in enumerate(jobs):
        if t == sweep.get("train_steps") and s == search_seed:  # the sweep's own score: read, not retrained
            rec = by_name[n]
            r = {"val_psnr": rec["proxy_val_psnr"], "val_ssim": rec["proxy_val_ssim"], "train_s": rec["proxy_seconds"],
                 "run": rel(rec["proxy_run"]), "recorded": True}
        elif k % lane[1] != lane[0]:
            continue
        else:
            r = proxy_score(args.run, n, t, s, work, args.threads)
        rows.setdefault(n, {})[f"t{t}_s{s}"] = r
        print(f"{n}: {t} steps, seed {s}: {r['val_psnr']:.2f} dB / {r['val_ssim']:.3f}", flush=True)
    load["after"] = machine_load()
    if args.lane:
        return 0
    recorded = {r["name"]: r["proxy_val_psnr"] for r in sweep["candidates"] if r["name"] in names}
    res = {"script": "bench/proxy_seeds.py", "run": rel(args.run), "steps": steps, "seeds": seeds,
           "candidates": names, "recorded_choice": sweep.get("chosen_name"), "recorded_proxy_psnr": recorded,
           "runs": rows, "load": load, "versions": versions(), "by_steps": {}}
    for t in steps:
        summ = summarise({n: {s: rows[n][f"t{t}_s{s}"]["val_psnr"] for s in seeds} for n in names}, seeds)
        res["by_steps"][str(t)] = summ
        print(f"{t} steps: seed-to-seed Spearman ρ {summ['spearman_mean']:.2f} "
              f"({', '.join(f'{k} {v:.2f}' for k, v in summ['spearman_pairs'].items())}); "
              f"winners per seed {summ['winner_per_seed']}; winner of the mean {summ['winner_of_mean']} "
              f"(+{summ['gap_best_two_db']:.2f} dB over the next; one candidate's seed std "
              f"{summ['mean_seed_std_db']:.2f} dB)")
    if len(steps) > 1:
        a, b = (res["by_steps"][str(t)]["mean_psnr"] for t in steps[:2])
        res["spearman_means_across_steps"] = spearman([a[n] for n in names], [b[n] for n in names])
        print(f"Spearman ρ of the seed means, {steps[0]} vs {steps[1]} steps: {res['spearman_means_across_steps']:.2f}")
    if args.out:
        write_json(args.out, res)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
