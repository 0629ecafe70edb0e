"""ONNX Runtime vs torch eager vs torch compiled on this machine, for two genotypes at two sizes.

    .venv/bin/python bench/backends.py [--iters 10] [--warmup 2] [--out bench/results/backends.json]

Genotypes: the paper's LOL architecture (``hbl-lol-2022``: C = 16/32, 7 HNUs) and a small
hand-picked one (C = 8/16, 3 HNUs, 1×1 / 3×3 convolutions and skips) standing in for a searched
small genotype (hbl-edge has no searched genotype yet). Weights are random with BatchNorm
statistics calibrated on random inputs (latency does not depend on the weight values; the
calibration keeps activations in a normal range). Bundles live in a temporary folder.

For each (genotype, resolution), ``hbl_edge.runtime.benchmark.run_benchmark`` warms every
backend up, then times them in interleaved rounds, so a shared machine's noise hits all three
alike: compare the ratios. Prints rich tables and a Markdown table for docs/deployment.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console

from hbl_edge.bundle import save_bundle
from hbl_edge.export.pipeline import ensure_export
from hbl_edge.genotype import NAMED_GENOTYPES, Genotype, load_genotype
from hbl_edge.network import Network, count_parameters
from hbl_edge.runio import write_json
from hbl_edge.runtime.benchmark import machine_line, render_table, run_benchmark

S = "skip_connect"
SMALL = Genotype(
    encoder=["conv_3x3", "conv_1x1", "conv_3x3", "conv_1x1", "conv_1x1", "conv_3x3", "conv_1x1", "conv_1x1", "conv_1x1"],
    decoder=["conv_1x1", "conv_1x1", "conv_3x3", "conv_1x1", "conv_1x1", "conv_3x3", "conv_1x1", "conv_1x1", "conv_3x3"],
    hnu=[["conv_1x1", "conv_3x3", S, S, "conv_1x1", S, S, S]] * 3,
    channels=(8, 16), units=3,
)
GENOTYPES = {"hbl-lol-2022": NAMED_GENOTYPES["hbl-lol-2022"], "small (8/16, 3 HNUs)": SMALL}
RESOLUTIONS = [(640, 360), (1280, 720)]
BACKENDS = ["ort", "torch", "torch-compile"]


def make_bundle(genotype: Genotype, out: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    net = Network(genotype)
    for m in net.modules():  # cumulative averages over the calibration passes
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None
    net.train()
    with torch.no_grad():
        for _ in range(4):
            net(torch.rand(2, 3, 64, 64) * 0.4)
    return save_bundle(out, net.eval(), task="lowlight", loss={"l1": 1.0},
                       provenance={"note": "random weights, BatchNorm calibrated; for latency only"})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--searched", type=Path, default=None,
                    help="a searched genotype.json to measure instead of the hand-picked small one")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "backends.json")
    args = ap.parse_args(argv)
    genotypes = dict(GENOTYPES)
    if args.searched is not None:
        searched = load_genotype(args.searched)
        del genotypes["small (8/16, 3 HNUs)"]
        c1, c2 = searched.channels
        genotypes[f"searched ({c1}/{c2}, {searched.units} HNUs, {args.searched})"] = searched
    console = Console()
    results, t0 = [], time.time()
    with tempfile.TemporaryDirectory(prefix="hbl-bench-") as tmp:
        for label, genotype in genotypes.items():
            bundle = make_bundle(genotype, Path(tmp) / label.split()[0])
            ensure_export(bundle)  # the benchmark runs BUNDLE/export (load_model); it no longer exports itself
            params = count_parameters(Network(genotype))
            for w, h in RESOLUTIONS:
                console.print(f"[bold]{label}[/] ({params:,} parameters) at {w}×{h} …")
                report = run_benchmark(bundle, args.backends, resolution=(w, h), warmup=args.warmup,
                                       iters=args.iters, threads=args.threads)
                report.settings["bundle"] = label
                console.print(render_table(report))
                d = report.to_dict()
                d["genotype"], d["parameters"] = label, params
                results.append(d)
    machine = results[0]["machine"] if results else {}
    out = {"format": "hbl-bench-suite/1", "machine": machine, "seconds": round(time.time() - t0, 1),
           "note": "2-core machine shared with other jobs while measuring: absolute times are noisy, "
                   "the interleaved ratios are the result", "runs": results}
    write_json(args.out, out)
    console.print(f"wrote {args.out}")
    print(markdown(out))
    return 0


def markdown(suite: dict) -> str:
    lines = [f"Machine: {machine_line(suite['machine'])}.", "",
             "| genotype | resolution | backend | p50 ms | p90 ms | images/s | vs ort |",
             "|---|---|---|---:|---:|---:|---:|"]
    for run in suite["runs"]:
        w, h = run["settings"]["resolution"]
        ort = next((r["stats"]["p50_ms"] for r in run["rows"] if r["backend"] == "ort" and r["stats"]), None)
        for r in run["rows"]:
            if r["stats"]:
                st = r["stats"]
                ratio = f"{st['p50_ms'] / ort:.2f}×" if ort else "–"
                lines.append(f"| {run['genotype']} | {w}×{h} | {r['backend']} | {st['p50_ms']:.1f} | "
                             f"{st['p90_ms']:.1f} | {st['images_per_s']:.2f} | {ratio} |")
            else:
                lines.append(f"| {run['genotype']} | {w}×{h} | {r['backend']} | {r['status']}: {r['reason']} | | | |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
