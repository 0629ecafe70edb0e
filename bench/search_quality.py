"""Quality of the search (issue 3 §6): searched architecture + loss vs conv3x3 + L1, critic vs fidelity.

Side by side, with identical training budgets:

1. the search (stages L and A) twice, ``objective=critic`` and ``objective=fidelity``, on the
   TRAIN data (a folder: its own carved val split is the upper level; never the test set), with a
   CPU latency budget (onnxruntime, device cpu), on a reduced supernet (``quick_overrides()``
   with more steps);
2. each derived genotype trained from scratch with its λ* (TrainConfig, same steps/crop/batch);
3. the hand-designed baseline: every edge ``conv_3x3`` AT THE SAME SHAPE (same channels and
   units as the searched nets) trained with plain L1 for the same steps/crop/batch;
4. all three evaluated on the TEST data with ``evaluate(model_method(bundle), test, task)``
   (shared/PEERS.md procedure), plus the degraded input and the task's classical baselines;
   end-to-end latency of each network with onnxruntime on CPU (``measure_networks``, interleaved
   rounds, median of ``--lat-repeats`` after warm-up) at 600×400 and 1280×720;
5. a table on stdout and JSON (written after every phase, so a killed run leaves partial results).

Finished phases are reused when the script is re-run with the same ``--work`` directory.

    .venv/bin/python bench/search_quality.py --task lowlight --train-data embedded --test-data embedded \\
        --out bench/results/search_quality_lowlight_embedded.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from hbl_edge.runio import write_json
from hbl_edge.runtime.machine import machine_load

OBJECTIVES = ("critic", "fidelity")


def _res(s: str) -> tuple[int, int]:
    w, h = s.lower().split("x")
    return int(w), int(h)


def _subset(name: str, grouped: bool = True) -> str:
    """Test subset of an image: its dataset prefix (``lol_``, ``fivek_``, ``lsui_`` …) on real sets."""
    return name.split("_", 1)[0] if grouped and "_" in name else "all"


def _summarise_eval(rep: dict[str, Any]) -> dict[str, Any]:
    rows = rep["per_image"]
    grouped = rep.get("data") != "embedded"  # embedded names are photo regions, not datasets
    subsets: dict[str, dict[str, Any]] = {}
    for key in sorted({_subset(r["name"], grouped) for r in rows}):
        sel = [r for r in rows if _subset(r["name"], grouped) == key]
        subsets[key] = {"n": len(sel), **{m: float(statistics.fmean(r[m] for r in sel))
                                          for m in ("psnr", "ssim", "input_psnr", "input_ssim") if m in sel[0]}}
    return {
        "method": rep["method"], "images": rep["images"], "mean": rep["mean"], "subsets": subsets,
        "ms_median_eval": rep["ms_median"], "info": rep.get("method_info"),
        "per_image": [{k: r[k] for k in ("name", "size", "psnr", "ssim") if k in r} for r in rows],
    }


def _remeasure(args: argparse.Namespace, out_json: Path) -> int:
    """Re-time every network of a finished run (interleaved rounds) and the classical baselines."""
    import numpy as np

    from hbl_edge.baselines import BASELINES
    from hbl_edge.genotype import Genotype
    from hbl_edge.search.profiler import measure_networks

    result = json.loads(out_json.read_text())
    st = result["settings"]
    gens = {f"searched_{o}": Genotype.from_dict(s["genotype"]) for o, s in result["search"].items()}
    ch = tuple(int(c) for c in st["channels"].split(","))
    gens["conv3x3+l1"] = Genotype(encoder=["conv_3x3"] * 9, decoder=["conv_3x3"] * 9,
                                  hnu=[["conv_3x3"] * 8] * st["units"], channels=ch, units=st["units"])
    names = list(gens)
    lat: dict[str, Any] = {}
    rng = np.random.default_rng(0)
    load0 = machine_load()
    for res_s in args.lat_resolutions.split(","):
        w, h = _res(res_s)
        samples = measure_networks([gens[n] for n in names], "onnxruntime", (w, h), repeats=args.lat_repeats,
                                   warmup=3, threads=args.lat_threads, samples=True)
        lat[res_s] = {n: {"median": statistics.median(s), "min": min(s), "n": len(s)} for n, s in zip(names, samples)}
        img = rng.random((h, w, 3)).astype(np.float32)
        for bname, b in BASELINES.items():
            if b.task != result["task"]:
                continue
            for _ in range(2):
                b.fn(img)
            ts = []
            for _ in range(args.lat_repeats):
                t0 = time.perf_counter()
                b.fn(img)
                ts.append((time.perf_counter() - t0) * 1e3)
            lat[res_s][bname] = {"median": statistics.median(ts), "min": min(ts), "n": len(ts)}
    result.setdefault("latency_earlier", []).append(
        {"latency_ms": result.get("latency_ms"), "load": result.get("latency_load")})
    result["latency_ms"] = lat
    result["latency_load"] = {"start": load0, "end": machine_load()}  # measured, for every resolution together
    result["latency_measured"] = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "threads": args.lat_threads,
                                  "repeats": args.lat_repeats, "warmup": 3, "note": args.note,
                                  "how": "onnxruntime CPU, whole exported graph, interleaved rounds over the networks; "
                                         "classical baselines: numpy/OpenCV function on a random image"}
    for n, m in result["methods"].items():
        if n in lat[next(iter(lat))]:
            m["latency_ms"] = {r: v[n]["median"] for r, v in lat.items()}
    write_json(out_json, result)
    for r, v in lat.items():
        print(r, {n: round(x["median"], 1) for n, x in v.items()})
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="lowlight")
    ap.add_argument("--train-data", default="embedded")
    ap.add_argument("--test-data", default="embedded")
    ap.add_argument("--out", required=True, help="JSON results file")
    ap.add_argument("--work", default=None, help="run directories (default runs/bench_search_quality/<out stem>)")
    ap.add_argument("--objectives", default="critic,fidelity")
    ap.add_argument("--steps-l", type=int, default=30)
    ap.add_argument("--steps-a", type=int, default=80)
    ap.add_argument("--steps-t", type=int, default=1500)
    ap.add_argument("--critic-steps", type=int, default=60)
    ap.add_argument("--channels", default="8,16")
    ap.add_argument("--units", type=int, default=3)
    ap.add_argument("--crop", type=int, default=48, help="search crop")
    ap.add_argument("--train-crop", type=int, default=96)
    ap.add_argument("--train-batch", type=int, default=4)
    ap.add_argument("--train-lr", type=float, default=1e-3)
    ap.add_argument("--latency-budget", type=float, default=100.0, help="ms at --latency-resolution")
    ap.add_argument("--latency-resolution", default="640x360")
    ap.add_argument("--latency-table", default="/tmp/hbl_search_quality/latency_cpu_ort_640x360_c8-16_u3.json",
                    help="cached latency table for stage A (profiled once, then shared by every run)")
    ap.add_argument("--lat-resolutions", default="600x400,1280x720")
    ap.add_argument("--lat-repeats", type=int, default=9)
    ap.add_argument("--lat-threads", type=int, default=2, help="onnxruntime intra-op threads for the timing")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for search/training/eval")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--note", default="", help="free text stored in the JSON (e.g. concurrent load)")
    ap.add_argument("--ablation", action="store_true",
                    help="also train conv3x3 with the first objective's λ* and that searched architecture with "
                         "plain L1 (same budget), to separate the loss's share from the architecture's")
    ap.add_argument("--remeasure", action="store_true",
                    help="only re-time the networks of an existing --out JSON (and the task's classical "
                         "baselines, as a machine check), e.g. once the machine is quieter")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from hbl_edge.baselines import BASELINES
    from hbl_edge.evaluate import baseline_method, evaluate, model_method
    from hbl_edge.genotype import Genotype, load_genotype
    from hbl_edge.search.config import SearchConfig, quick_overrides
    from hbl_edge.search.driver import run_search
    from hbl_edge.search.profiler import machine_info, measure_networks
    from hbl_edge.runio import versions
    from hbl_edge.train import TrainConfig, train

    channels = tuple(int(c) for c in args.channels.split(","))
    out_json = Path(args.out)
    work = Path(args.work or f"/tmp/hbl_search_quality/{out_json.stem}")
    work.mkdir(parents=True, exist_ok=True)
    objectives = [o for o in args.objectives.split(",") if o]

    result: dict[str, Any] = {
        "benchmark": "search_quality (issue 3 §6)",
        "task": args.task, "train_data": args.train_data, "test_data": args.test_data,
        "settings": vars(args), "machine": machine_info(), "versions": versions(),
        "note": args.note, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "phases_s": {}, "search": {}, "methods": {}, "latency_ms": {},
    }
    if out_json.exists():  # keep what an earlier (killed) run of the same benchmark measured
        try:
            old = json.loads(out_json.read_text())
            for k in ("phases_s", "search", "methods", "latency_ms"):
                result[k].update(old.get(k, {}))
        except Exception:
            pass

    def save() -> None:
        out_json.parent.mkdir(parents=True, exist_ok=True)
        write_json(out_json, result)

    def phase(name: str, t0: float) -> None:
        result["phases_s"][name] = round(time.time() - t0, 1)
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {result['phases_s'][name]:.0f} s", flush=True)
        save()

    if args.remeasure:
        return _remeasure(args, out_json)

    # ---------------------------------------------------------------- 1. search L, A
    table = Path(args.latency_table)
    genotypes: dict[str, Any] = {}
    losses: dict[str, Any] = {}
    for obj in objectives:
        run = work / f"search_{obj}"
        if not (run / "genotype.json").exists():
            t0 = time.time()
            kw = quick_overrides()
            kw.update(
                task=args.task, data=args.train_data, out=str(run), stages="L,A", objective=obj,
                channels=channels, units=args.units, steps_l=args.steps_l, steps_a=args.steps_a,
                crop=args.crop, critic_steps=args.critic_steps, device="cpu", backend="onnxruntime",
                latency_budget=args.latency_budget, resolution=_res(args.latency_resolution),
                seed=args.seed, quick=True, threads=args.threads,
                ckpt_every=max(args.steps_a, args.steps_l),
            )
            cfg = SearchConfig(**kw)
            resume = (run / "config.json").exists()
            run.mkdir(parents=True, exist_ok=True)
            if table.exists() and not (run / "latency.json").exists():
                shutil.copy(table, run / "latency.json")
            res = run_search(cfg, resume=resume)
            if res.interrupted:
                print("search interrupted", file=sys.stderr)
                return 2
            if not table.exists() and (run / "latency.json").exists():
                table.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(run / "latency.json", table)
            phase(f"search_{obj}", t0)
        loss = json.loads((run / "loss.json").read_text())
        g = load_genotype(run / "genotype.json")
        report = json.loads((run / "search" / "report.json").read_text()) if (run / "search" / "report.json").exists() else {}
        log = [json.loads(l) for l in (run / "search" / "log.jsonl").read_text().splitlines() if l.strip()]
        last = {s: next((r for r in reversed(log) if r.get("stage") == s), None) for s in ("L", "A")}
        result["search"][obj] = {
            "lambda": loss.get("terms"), "loss_provenance": loss.get("provenance"),
            "genotype": g.to_dict(), "genotype_summary": g.summary(),
            "derivation": report.get("derivation"), "latency_report": report.get("latency"),
            "last_log": {s: ({k: v for k, v in r.items() if k not in ("genotype",)} if r else None)
                         for s, r in last.items()},
        }
        genotypes[obj] = g
        losses[obj] = str(run / "loss.json")
        save()

    # ---------------------------------------------------------------- 2./3. training
    base = Genotype(encoder=["conv_3x3"] * 9, decoder=["conv_3x3"] * 9, hnu=[["conv_3x3"] * 8] * args.units,
                    channels=channels, units=args.units)
    base.save(work / "conv3x3_genotype.json")
    genotypes["conv3x3+l1"] = base
    models = {f"searched_{o}": (work / f"search_{o}" / "genotype.json", losses[o]) for o in objectives}
    models["conv3x3+l1"] = (work / "conv3x3_genotype.json", "l1=1")
    gen_of = {**{f"searched_{o}": genotypes[o] for o in objectives}, "conv3x3+l1": base}
    if args.ablation:  # separate the loss from the architecture: swap them between the two nets
        o = objectives[0]
        models[f"conv3x3+lambda_{o}"] = (work / "conv3x3_genotype.json", losses[o])
        models[f"arch_{o}+l1"] = (work / f"search_{o}" / "genotype.json", "l1=1")
        gen_of[f"conv3x3+lambda_{o}"] = base
        gen_of[f"arch_{o}+l1"] = genotypes[o]
    bundles: dict[str, Path] = {}
    for name, (gpath, loss) in models.items():
        tdir = work / f"train_{name}"
        bundles[name] = tdir
        if (tdir / "model.json").exists() and (tdir / "model.safetensors").exists():
            continue
        t0 = time.time()
        tcfg = TrainConfig(task=args.task, genotype=str(gpath), loss=loss, data=args.train_data, out=str(tdir),
                           steps=args.steps_t, batch_size=args.train_batch, crop=args.train_crop, lr=args.train_lr,
                           seed=args.seed, val_every=max(args.steps_t // 5, 1), ckpt_every=max(args.steps_t // 3, 1),
                           threads=args.threads)
        tres = train(tcfg, resume=(tdir / "train" / "state.pt").exists())
        result["methods"].setdefault(name, {})["train_val"] = tres.metrics
        phase(f"train_{name}", t0)

    # ---------------------------------------------------------------- 4. evaluation
    for name, tdir in bundles.items():
        if "mean" in result["methods"].get(name, {}):
            continue
        t0 = time.time()
        rep = evaluate(model_method(tdir, threads=args.threads), args.test_data, args.task)
        keep = result["methods"].get(name, {})
        result["methods"][name] = {**keep, **_summarise_eval(rep), "kind": "model",
                                   "genotype_summary": gen_of[name].summary()}
        if name == "conv3x3+l1" or "degraded_input" not in result["methods"]:
            s = _summarise_eval(rep)
            result["methods"]["degraded_input"] = {
                "kind": "input", "images": s["images"],
                "mean": {"psnr": rep["mean"]["input_psnr"], "ssim": rep["mean"]["input_ssim"]},
                "subsets": {k: {"n": v["n"], "psnr": v["input_psnr"], "ssim": v["input_ssim"]}
                            for k, v in s["subsets"].items()},
            }
        phase(f"eval_{name}", t0)
    for bname, b in BASELINES.items():
        if b.task != args.task or "mean" in result["methods"].get(bname, {}):
            continue
        t0 = time.time()
        rep = evaluate(baseline_method(bname), args.test_data, args.task)
        result["methods"][bname] = {**_summarise_eval(rep), "kind": "classical"}
        phase(f"eval_{bname}", t0)

    # ---------------------------------------------------------------- latency
    names = list(models)
    for res_s in args.lat_resolutions.split(","):
        if res_s in result["latency_ms"]:
            continue
        t0 = time.time()
        load0 = machine_load()
        samples = measure_networks([gen_of[n] for n in names], "onnxruntime",
                                   _res(res_s), repeats=args.lat_repeats, warmup=3, threads=args.lat_threads,
                                   samples=True)
        result["latency_ms"][res_s] = {n: {"median": statistics.median(s), "min": min(s), "n": len(s)}
                                       for n, s in zip(names, samples)}
        result.setdefault("latency_load", {})[res_s] = {"start": load0, "end": machine_load()}
        phase(f"latency_{res_s}", t0)
    for n in names:
        result["methods"][n]["latency_ms"] = {r: v[n]["median"] for r, v in result["latency_ms"].items() if n in v}
    save()

    # ---------------------------------------------------------------- table
    subsets = sorted({k for m in result["methods"].values() for k in m.get("subsets", {})})
    lat_cols = args.lat_resolutions.split(",")
    head = ["method", "params", "mean PSNR/SSIM", *[f"{s} ({result['methods']['degraded_input']['subsets'][s]['n']})"
                                                    for s in subsets if len(subsets) > 1], *[f"ms {r}" for r in lat_cols]]
    print("\n" + " | ".join(head))
    order = [*[f"searched_{o}" for o in objectives], "conv3x3+l1", *[n for n in models if n not in gen_of or
                                                                     n.startswith(("conv3x3+lambda", "arch_"))],
             "degraded_input",
             *[k for k, m in result["methods"].items() if m.get("kind") == "classical"]]
    for n in order:
        m = result["methods"].get(n)
        if not m:
            continue
        params = (m.get("info") or {}).get("parameters", "–") if m.get("kind") == "model" else ("0" if m.get("kind") == "classical" else "–")
        cells = [n, str(params), f"{m['mean']['psnr']:.2f} / {m['mean']['ssim']:.3f}"]
        if len(subsets) > 1:
            cells += [f"{m['subsets'][s]['psnr']:.2f} / {m['subsets'][s]['ssim']:.3f}" for s in subsets]
        cells += [f"{m['latency_ms'][r]:.1f}" if r in m.get("latency_ms", {}) else "–" for r in lat_cols]
        print(" | ".join(cells))
    for o in objectives:
        s = result["search"][o]
        print(f"λ*[{o}] = {json.dumps({k: round(v, 3) for k, v in (s['lambda'] or {}).items()})}; "
              f"genotype {s['genotype_summary']}")
    print(f"wrote {out_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
