"""How decided is stage A's α? The spread of the architecture logits a search run saved.

DARTS derives each edge's op by the argmax of softmax(α_e). When α has barely moved from its
near-uniform initialisation, that argmax is decided by hundredths of a logit, and whatever
pushes every edge the same way (the latency term's gradient) decides it. This script reads the
α each run saved (``RUN/search/alpha.pt``) and the derived genotype, and reports per run:

- per edge group (encoder/decoder, HNU): the logit range max − min on each edge (median and
  max over the edges), and the softmax margin between an edge's best and second-best op;
- the derived genotype's op counts (and the argmax of α beside it when the run selected ops by
  another rule), and the run's α learning rate and warm-up (config.json).

    python bench/alpha_spread.py runs/uw_w5 runs/uw_lr5e3 --out bench/results/alpha_spread_underwater.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "bench"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from result_paths import rel  # noqa: E402


def edge_rows(alpha) -> list:
    """Every edge's logits, as a list of 1-D tensors (the last axis of each saved α is the op)."""
    return [row for a in alpha for row in a.reshape(-1, a.shape[-1])]


def spread(rows) -> dict:
    import torch

    ranges = [float(r.max() - r.min()) for r in rows]
    margins = []
    for r in rows:
        top = torch.softmax(r, -1).topk(2).values
        margins.append(float(top[0] - top[1]))
    return {"edges": len(rows), "ops": int(rows[0].numel()),
            "logit_range_median": statistics.median(ranges), "logit_range_max": max(ranges),
            "softmax_margin_median": statistics.median(margins), "softmax_margin_min": min(margins)}


def summarise(run: Path) -> dict:
    import torch

    from hbl_edge.genotype import load_genotype

    alpha = torch.load(run / "search" / "alpha.pt", weights_only=True)["alpha"]
    cfg = json.loads((run / "config.json").read_text())
    fcm = [t for t in alpha if t.dim() == 2]  # encoder, decoder: (edges, ops)
    hnu = [t for t in alpha if t.dim() == 3]  # (units, edges, ops)
    g = load_genotype(run / "genotype.json")
    counts: dict[str, int] = {}
    for op in [*g.encoder, *g.decoder, *(o for unit in g.hnu for o in unit)]:
        counts[op] = counts.get(op, 0) + 1
    derivation = json.loads((run / "search" / "report.json").read_text()).get("derivation", {})
    return {"run": rel(run), "selection": derivation.get("selection", "argmax"),
            "argmax_genotype": derivation.get("argmax_genotype", g.summary()), "arch_lr": cfg.get("arch_lr") or cfg.get("upper_lr"), "arch_warmup": cfg.get("arch_warmup", 0.0),
            "steps_a": cfg.get("steps_a"), "latency_form": cfg.get("latency_form"),
            "encoder_decoder": spread(edge_rows(fcm)), "hnu": spread(edge_rows(hnu)),
            "genotype": g.summary(), "op_counts": dict(sorted(counts.items(), key=lambda kv: -kv[1]))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    rows = [summarise(r) for r in args.runs]
    for r in rows:
        fd, hn = r["encoder_decoder"], r["hnu"]
        print(f"{r['run']}: lr {r['arch_lr']:g}, warm-up {r['arch_warmup']:g}, {r['selection']} | enc/dec logit range median "
              f"{fd['logit_range_median']:.3f} (margin {fd['softmax_margin_median']:.4f}) | HNU "
              f"{hn['logit_range_median']:.3f} (margin {hn['softmax_margin_median']:.4f}) | {r['genotype'].split('| ')[-1]}")
    if args.out:
        args.out.write_text(json.dumps({"runs": rows}, indent=2) + "\n")
        print(f"wrote {rel(args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
