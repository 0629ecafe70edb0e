"""What the edge network's full-resolution parts cost with each refinement op (ONNX Runtime).

The refinement branch of an edge network (DESIGN §10) runs at full resolution on 3 channels,
where ONNX Runtime's CPU Conv spends more on its layout reorders than on the arithmetic. This
times the full-resolution part of one macro (default: s = 8, retinex, 1-channel L, guided
upsampling) with the refinement off and with each single refinement op, exactly as the macro
search prices them (:func:`hbl_edge.search.edge_latency.measure_parts`: shell networks exported
as deployed, timed with the deployed runner, fresh runner per round, rounds alternately
reversed, medians), all in one run, so the differences are side by side:

    flock /tmp/hbl-timing.lock nice -n -10 python bench/refine_ops.py \\
        --resolution 600x400,1280x720 --out bench/results/refine_ops.json

Prints, per resolution, each macro's part and its extra cost over the refinement-off part;
writes them with the machine's load before and after.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_OPS = ("conv_3x3", "sepconv_3x3", "conv_1x1", "mix_1x1", "boxmix_3x3", "boxmix_5x5")


def main(argv: list[str] | None = None) -> None:
    from hbl_edge.genotype import Macro
    from hbl_edge.runio import versions, write_json
    from hbl_edge.runtime.machine import load_line, machine_info, machine_load
    from hbl_edge.search.edge_latency import macro_key, measure_parts

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--resolution", default="600x400", help="comma list of WxH")
    ap.add_argument("--scale", type=int, default=8)
    ap.add_argument("--ops", default=",".join(DEFAULT_OPS), help="comma list of refinement ops")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)

    base = Macro(scale=args.scale, model="retinex", map_channels=1, upsample="guided", floor=0.01)
    macros = {"none": base} | {op: dataclasses.replace(base, refine=(op,)) for op in args.ops.split(",")}
    load = {"before": machine_load()}
    results = {}
    for res in args.resolution.split(","):
        w, h = (int(v) for v in res.lower().split("x"))
        parts = measure_parts(list(macros.values()), (w, h), threads=args.threads, repeats=args.repeats,
                              rounds=args.rounds)
        off = parts[macro_key(base)]["ms"]
        rows = {}
        print(f"{w}x{h}, s = {args.scale}: full-resolution part (shell − empty), ms")
        for name, m in macros.items():
            p = parts[macro_key(m)]
            rows[name] = {"part_ms": round(p["ms"], 3), "refinement_ms": round(p["ms"] - off, 3),
                          "shell_ms": round(p["shell_ms"], 3), "empty_ms": round(p["empty_ms"], 3)}
            extra = "" if name == "none" else f"   refinement +{p['ms'] - off:5.2f}"
            print(f"  {name:12s} {p['ms']:6.2f}{extra}")
        results[f"{w}x{h}"] = rows
    load["after"] = machine_load()
    print(f"load: before {load_line(load['before'])}; after {load_line(load['after'])}")
    write_json(args.out, {
        "what": "full-resolution part of an edge network (shell minus empty network, measure_parts) per refinement op",
        "macro": base.to_dict(), "threads": args.threads, "repeats": args.repeats, "rounds": args.rounds,
        "results": results, "load": load, "machine": machine_info(), "versions": versions(),
    })


if __name__ == "__main__":
    main()
