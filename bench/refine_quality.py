"""What each refinement branch buys on real low light: one edge shape, the branch varied, seeds.

The edge network's refinement branch (DESIGN §10 step 5) is where its LOL dB and SSIM come from
(docs/benchmarks.md), and at full resolution it is the costliest part (``bench/refine_ops.py``).
This trains one hand-set edge genotype (s = 8, 16/32 × 1, conv_3x3 on every inner edge, guided
upsampling, 1-channel L) with each refinement (``--refine none,conv_3x3,boxmix_3x3,…``) and
each seed, with the stage-T recipe of a macro search (2000 steps, crops of 256, batch 4, cosine
lr 1e-3, exposure calibration) and the loss the searches' stage L found on low light (λ ≈ 1 on
l1, l2, color), and scores every bundle on a paired test folder (reported, never used to
choose):

    nice -n 5 python bench/refine_quality.py --data ../shared/data/real/lowlight/train \\
        --test-data LOL15 --refine none,conv_3x3,mix_1x1,boxmix_3x3 --seeds 0 \\
        --out bench/results/refine_quality.json [--work runs/refine_quality] [--only-seeds 1,2]

Resumable: a run whose bundle exists under ``--work`` (``<refine>-s<seed>``) is read, not trained
again; ``--merge A.json B.json`` combines result files of lanes run side by side.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from result_paths import rel  # noqa: E402

LOSS = "l1=1,l2=1,color=1"


def genotype(refine: tuple[str, ...]):
    from hbl_edge.genotype import edge_genotype

    return edge_genotype(scale=8, model="retinex", map_channels=1, channels=(16, 32), units=1, refine=refine)


def parse_refine(text: str) -> dict[str, tuple[str, ...]]:
    return {name: () if name == "none" else tuple(name.split("+")) for name in text.split(",") if name.strip()}


def run_one(label: str, refine: tuple[str, ...], seed: int, args) -> dict:
    from hbl_edge.evaluate import evaluate, model_method
    from hbl_edge.train import TrainConfig, train

    run = args.work / f"{label}-s{seed}"
    if not (run / "model.json").exists():
        run.mkdir(parents=True, exist_ok=True)
        gpath = genotype(refine).save(run.parent / f"{label}.json")
        train(TrainConfig(task="lowlight", genotype=str(gpath), loss=LOSS, data=args.data, out=str(run),
                          steps=args.steps, crop=256, seed=seed, threads=args.threads))
    metrics = json.loads((run / "model.json").read_text())["metrics"]
    row = {"seed": seed, "run": rel(run), "val_psnr": metrics["val_psnr"], "val_ssim": metrics["val_ssim"],
           "exposure_gain": metrics.get("exposure_gain")}
    if args.test_data:
        rep = evaluate(model_method(str(run), threads=args.threads), args.test_data, "lowlight")
        row.update(test_psnr=rep["mean"]["psnr"], test_ssim=rep["mean"]["ssim"], test_images=rep["images"])
    return row


def summarise(rows: list[dict]) -> dict:
    out = {"n": len(rows)}
    for k in ("val_psnr", "test_psnr", "test_ssim"):
        vals = [r[k] for r in rows if r.get(k) is not None]
        if vals:
            out[k + "_mean"] = statistics.fmean(vals)
            out[k + "_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return out


def main(argv: list[str] | None = None) -> None:
    from hbl_edge.runio import versions, write_json
    from hbl_edge.runtime.machine import machine_load

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="training folder (its carve-out is the validation split)")
    ap.add_argument("--test-data", default=None, help="paired test folder (reported only)")
    ap.add_argument("--refine", default="none,conv_3x3,boxmix_3x3", help="comma list: none or ops joined by +")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", type=Path, default=ROOT / "runs/refine_quality")
    ap.add_argument("--merge", nargs="*", type=Path, default=None, help="merge these result files into --out")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)

    if args.merge:
        parts = [json.loads(f.read_text()) for f in args.merge]
        res = parts[0]
        rows: dict[str, list] = {}
        for p in parts:
            for label, r in p["runs"].items():
                rows.setdefault(label, [])
                rows[label] += [x for x in r["seeds"] if x["seed"] not in {y["seed"] for y in rows[label]}]
        res["merged_from"] = [{"file": rel(f), "args": p["args"], "load": p["load"]} for f, p in zip(args.merge, parts)]
        res["args"] = {"out": rel(args.out), "merge": [rel(f) for f in args.merge]}
        res.pop("load", None)  # each lane's load is in merged_from
    else:
        if not args.data:
            ap.error("--data is required (unless --merge)")
        load = {"before": machine_load()}
        rows = {}
        for label, refine in parse_refine(args.refine).items():
            rows[label] = []
            for seed in (int(s) for s in args.seeds.split(",")):
                r = run_one(label, refine, seed, args)
                rows[label].append(r)
                print(f"{label} seed {seed}: val {r['val_psnr']:.2f} dB"
                      + (f"; test {r['test_psnr']:.2f} / {r['test_ssim']:.3f}" if "test_psnr" in r else ""), flush=True)
        load["after"] = machine_load()
        res = {"script": "bench/refine_quality.py", "genotype": genotype(()).summary(), "loss": LOSS,
               "steps": args.steps, "crop": 256,
               "args": {k: rel(v) if k in ("data", "test_data", "work", "out") and v else str(v)
                        for k, v in vars(args).items()},
               "load": load, "versions": versions()}
    res["runs"] = {label: {"seeds": sorted(r, key=lambda x: x["seed"]), **summarise(r)} for label, r in rows.items()}
    for label, r in res["runs"].items():
        if "test_psnr_mean" in r:
            print(f"{label}: {r['n']} seed(s), test {r['test_psnr_mean']:.2f} ± {r['test_psnr_std']:.2f} / "
                  f"{r['test_ssim_mean']:.3f}")
    write_json(args.out, res)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
