"""Does a short training rank macro candidates as the full training does? (the sweep's proxy)

The macro sweep (``hbl-edge search --macro edge``) scores each candidate by its derived
network's validation PSNR after ``--macro-train-steps`` stage-T steps (docs/search.md). This
checks that rule: one op assignment (default: the ``--quick`` search's genotype on real LOL,
``bench/results/macro_proxy_genotype.json``) put into several macro shapes, each trained with
the stage-T recipe for a short and a full step count (``hbl-edge train`` defaults: L1 for an
edge network, batch 4, cosine lr 1e-3, exposure calibration; validation centre crops of 256 of
the training folder's carve-out), and the two validation rankings compared (Spearman's ρ). The
full runs are also scored on a test folder (``--test-data``: reported, never used to choose).

    nice -n 5 python bench/macro_proxy.py --data ../shared/data/real/lowlight/train \\
        --test-data LOL15 --out bench/results/macro_proxy.json [--steps 300,2000] [--work DIR]

Runs are resumable: a label whose bundle exists under ``--work`` is read, not trained again.
Two lanes can run side by side (``--only c0,c2``, each with its own ``--out``; ``--merge``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from result_paths import rel  # noqa: E402

#: label -> macro shape (scale, widths, units, refinement) applied to the base genotype's ops.
CANDIDATES = {
    "c0": dict(scale=8, channels=(8, 16), units=1),
    "c1": dict(scale=8, channels=(16, 32), units=1),
    "c2": dict(scale=8, channels=(16, 32), units=1, refine=("conv_3x3",)),
    "c3": dict(scale=4, channels=(8, 16), units=1),
    "c4": dict(scale=4, channels=(8, 16), units=2),
    "c5": dict(scale=4, channels=(16, 32), units=2),
}


def variant(base, scale: int, channels: tuple[int, int], units: int, refine: tuple[str, ...] = ()):
    """The base genotype's ops in another macro shape (HNU op lists repeated or cut to ``units``)."""
    hnu = tuple((list(base.hnu) * units)[:units])
    macro = dataclasses.replace(base.macro, scale=scale, refine=tuple(refine))
    return dataclasses.replace(base, channels=tuple(channels), units=units, hnu=hnu, macro=macro, format=None)


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation (no ties expected among PSNRs)."""
    import numpy as np

    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def train_one(genotype_path: Path, run: Path, data: str, steps: int, seed: int, threads: int) -> dict:
    from hbl_edge.train import TrainConfig, train

    if not (run / "model.json").exists():
        cfg = TrainConfig(task="lowlight", genotype=str(genotype_path), data=data, out=str(run), steps=steps, crop=256,
                          val_every=100_000, ckpt_every=100_000, seed=seed, threads=threads)
        train(cfg)
    meta = json.loads((run / "model.json").read_text())
    m = meta["metrics"]
    return {"val_psnr": m["val_psnr"], "val_ssim": m["val_ssim"], "train_s": m.get("train_seconds_this_session"),
            "exposure_gain": m.get("exposure_gain"), "run": rel(run)}


def main(argv: list[str] | None = None) -> None:
    from hbl_edge.evaluate import evaluate, model_method
    from hbl_edge.genotype import load_genotype
    from hbl_edge.runio import write_json, versions
    from hbl_edge.runtime.machine import machine_load

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="training folder (its carve-out is the validation split)")
    ap.add_argument("--test-data", default=None, help="paired test folder for the full runs (reported only)")
    ap.add_argument("--genotype", default=str(ROOT / "bench/results/macro_proxy_genotype.json"))
    ap.add_argument("--steps", default="300,2000", help="short,full")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", type=Path, default=ROOT / "runs/macro_proxy")
    ap.add_argument("--only", default=None, help="comma list of candidate labels")
    ap.add_argument("--merge", nargs="*", type=Path, default=None, help="merge these result files into --out")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    short, full = (int(v) for v in args.steps.split(","))

    if args.merge:
        runs: dict = {}
        for f in args.merge:
            runs.update(json.loads(f.read_text())["runs"])
        res = json.loads(args.merge[0].read_text())
    else:
        base = load_genotype(args.genotype)
        labels = args.only.split(",") if args.only else list(CANDIDATES)
        args.work.mkdir(parents=True, exist_ok=True)
        runs = {}
        load = {"before": machine_load()}
        for label in labels:
            shape = CANDIDATES[label]
            gpath = args.work / f"{label}.json"
            variant(base, **shape).save(gpath)
            row = {"shape": {k: list(v) if isinstance(v, tuple) else v for k, v in shape.items()},
                   "genotype": load_genotype(gpath).summary()}
            for steps in (short, full):
                row[str(steps)] = train_one(gpath, args.work / "runs" / f"{label}-{steps}", args.data, steps,
                                            args.seed, args.threads)
            if args.test_data:
                rep = evaluate(model_method(str(ROOT / row[str(full)]["run"]), threads=args.threads), args.test_data,
                               "lowlight")
                row["test_full"] = {"psnr": rep["mean"]["psnr"], "ssim": rep["mean"]["ssim"], "images": rep["images"]}
            runs[label] = row
            print(f"{label} {row['genotype']}: val {row[str(short)]['val_psnr']:.2f} dB at {short} steps, "
                  f"{row[str(full)]['val_psnr']:.2f} at {full}"
                  + (f"; test {row['test_full']['psnr']:.2f} / {row['test_full']['ssim']:.3f}" if "test_full" in row else ""),
                  flush=True)
        load["after"] = machine_load()
        res = {"script": "bench/macro_proxy.py", "args": {k: rel(v) if isinstance(v, (str, Path)) and k in
                                                            ("data", "test_data", "genotype", "work", "out") else str(v)
                                                            for k, v in vars(args).items()},
               "steps": [short, full], "seed": args.seed, "load": load, "versions": versions()}
    res["runs"] = runs
    labels = sorted(runs)
    if len(labels) >= 3:
        a = [runs[k][str(short)]["val_psnr"] for k in labels]
        b = [runs[k][str(full)]["val_psnr"] for k in labels]
        res["spearman_val"] = spearman(a, b)
        res["proxy_first"] = labels[a.index(max(a))]
        res["full_first"] = labels[b.index(max(b))]
        print(f"Spearman ρ (val at {short} vs {full} steps) = {res['spearman_val']:.2f}; proxy picks "
              f"{res['proxy_first']}, the full training's best is {res['full_first']}")
    write_json(args.out, res)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
