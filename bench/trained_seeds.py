"""Groups of trained networks, one per seed, scored on a test folder: the table of an ablation.

Each member is a bundle written by ``hbl-edge train --out RUN`` with ``hbl-edge eval -m RUN
--out RUN/eval`` beside it (the PEERS.md procedure). Per member: the genotype and loss it
trained with, its validation PSNR (the training folder's carve-out for that seed), the test
PSNR / SSIM and the test PSNR per subset (the image names' prefix before ``_``: ``euvp``,
``euvpimnet``, ``lsui`` for the underwater pairs). Per group: mean ± sample std over seeds.

    python bench/trained_seeds.py \\
        --group "hand-set, λ*=runs/x/handL_s0,runs/x/handL_s1,runs/x/handL_s2" \\
        --group "hand-set, L1=runs/x/handl1_s0,..." --out bench/results/underwater_loss_ops.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from result_paths import rel  # noqa: E402


def member(run: Path) -> dict[str, Any]:
    bundle = json.loads((run / "model.json").read_text())
    report = json.loads((run / "eval" / "eval.json").read_text())
    subsets: dict[str, list[float]] = defaultdict(list)
    for r in report["per_image"]:
        subsets[r["name"].split("_")[0]].append(r["psnr"])
    from hbl_edge.genotype import Genotype

    g = Genotype.from_dict(bundle["genotype"])
    return {"run": rel(run), "seed": bundle["provenance"]["config"]["seed"], "genotype": g.summary(),
            "loss": bundle["loss"]["terms"], "steps": bundle["provenance"].get("steps"),
            "synthetic_mix": bundle["provenance"]["config"].get("synthetic_mix", 0.0),
            "val_psnr": bundle["metrics"]["val_psnr"], "test_psnr": report["mean"]["psnr"],
            "test_ssim": report["mean"]["ssim"], "images": len(report["per_image"]), "test_data": report["data"],
            "subsets": {k: statistics.fmean(v) for k, v in sorted(subsets.items())}}


def summary(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def group(name: str, runs: list[Path]) -> dict[str, Any]:
    members = [member(r) for r in runs]
    subsets = sorted({k for m in members for k in m["subsets"]})
    return {"name": name, "members": members,
            "test_psnr": summary([m["test_psnr"] for m in members]),
            "test_ssim": summary([m["test_ssim"] for m in members]),
            "val_psnr": summary([m["val_psnr"] for m in members]),
            "subsets": {k: statistics.fmean(m["subsets"][k] for m in members if k in m["subsets"]) for k in subsets}}


def parse_group(text: str) -> tuple[str, list[Path]]:
    name, sep, runs = text.rpartition("=")
    if not sep or not name or not runs:
        raise SystemExit(f"--group takes NAME=RUN,RUN,..., got {text!r}")
    return name, [Path(r) for r in runs.split(",") if r]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--group", action="append", required=True, help="NAME=RUN,RUN,... (one trained bundle per seed)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    missing = [r for g in args.group for r in parse_group(g)[1] if not (r / "eval" / "eval.json").exists()]
    if missing:
        raise SystemExit(f"no eval/eval.json under {', '.join(map(str, missing))}: run hbl-edge eval -m RUN --out RUN/eval")
    groups = [group(*parse_group(g)) for g in args.group]
    for g in groups:
        t, s, v = g["test_psnr"], g["test_ssim"], g["val_psnr"]
        per = " / ".join(f"{m['test_psnr']:.2f}" for m in g["members"])
        sub = " ".join(f"{k} {x:.2f}" for k, x in g["subsets"].items())
        print(f"{g['name']}: {per} = {t['mean']:.2f} ± {t['std']:.2f} / {s['mean']:.3f} | val {v['mean']:.2f} | {sub}")
    if args.out:
        args.out.write_text(json.dumps({"groups": groups}, indent=2, ensure_ascii=False) + "\n")
        print(f"wrote {rel(args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
