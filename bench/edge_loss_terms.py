"""Which loss terms an edge network trains well with (issue 8 §6): leave-one-out and leave-one-in.

One genotype (default: the s-8 edge network the macro search derived on real/lowlight/train,
``bench/results/edge_loss_terms_genotype.json``), trained by ``bench/edge_quality.py train`` with
the same recipe and seed under each loss, then scored on LOL-15 by the PEERS.md procedure. The
validation carve-out's PSNR of each run is kept beside the test score: a default chosen from
these runs must be supported by validation alone (the test set only confirms it).

    nice -n 5 python bench/edge_loss_terms.py --out bench/results/edge_loss_terms.json \\
        [--genotype G] [--steps 600] [--crop 256] [--only l1-only,uniform6]

Runs are resumable (each label's bundle is kept under --work); two can run side by side with
``--only`` and different ``--out`` files, merged with ``--merge``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "bench"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

SIX = ("l1", "l2", "color", "ssim", "tv", "laplacian")


def losses() -> dict[str, str]:
    """label -> loss spec: L1 alone, the six default terms uniform, each left out, each added to L1."""
    out = {"l1-only": "l1=1", "uniform6": ",".join(f"{t}=1" for t in SIX)}
    for t in SIX:
        out[f"no-{t}"] = ",".join(f"{u}=1" for u in SIX if u != t)
    for t in SIX[1:]:
        out[f"l1+{t}"] = f"l1=1,{t}=1"
    out["l1+ssim0.1"] = "l1=1,ssim=0.1"
    out["l1+l2+color"] = "l1=1,l2=1,color=1"
    return out


def table(result: dict) -> str:
    lines = ["| loss (λ) | LOL-15 PSNR / SSIM | val PSNR (carve-out) | train s |", "|---|---|---|---:|"]
    for label, r in sorted(result["runs"].items(), key=lambda kv: -kv[1]["headline"]["psnr"]):
        lines.append(f"| `{label}` ({r['recipe']['loss']}) | {r['headline']['psnr']:.2f} / {r['headline']['ssim']:.3f} | "
                     f"{r['val']['val_psnr']:.2f} | {r['train_s']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    import edge_quality  # bench/edge_quality.py

    from hbl_edge.runio import write_json

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--genotype", default=str(ROOT / "bench/results/edge_loss_terms_genotype.json"))
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="runs/edge_loss_terms")
    ap.add_argument("--only", default=None, help="comma list of labels (default: all)")
    ap.add_argument("--merge", type=Path, nargs="*", default=None, help="merge these result files into --out, run nothing")
    args = ap.parse_args(argv)
    if args.merge is not None:
        merged = None
        for f in args.merge:
            d = json.loads(Path(f).read_text())
            merged = merged or {k: v for k, v in d.items() if k != "runs"} | {"runs": {}}
            merged["runs"].update(d["runs"])
        write_json(args.out, merged)
        print(table(merged))
        return
    todo = losses()
    if args.only:
        todo = {k: todo[k] for k in args.only.split(",")}
    for label, spec in todo.items():
        edge_quality.main(["train", "--task", "lowlight", "--genotype", args.genotype, "--label", label,
                           "--steps", str(args.steps), "--crop", str(args.crop), "--loss", spec, "--seed", str(args.seed),
                           "--threads", "1", "--work", args.work, "--out", str(args.out)])
    print(table(json.loads(args.out.read_text())))


if __name__ == "__main__":
    main()
