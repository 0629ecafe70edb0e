"""``make demo``: an edge model searched at the fast peer's speed, beside that peer and auto-gamma.

On the embedded data of a task (low light by default), in this order:

1. **Budget.** The task's fast peer (SCI's 258-parameter inference net for low light;
   :mod:`hbl_edge.peers`) is exported and timed at 640×360 through the deployed ONNX Runtime
   path the search measures its derived network with (:func:`hbl_edge.search.deployed.measure_onnx`:
   fresh :class:`~hbl_edge.runtime.ort_runner.OrtRunner` per round, 3 warm-up + 15 consecutive
   runs, 2 rounds, the search's runner threads and spinning). Its median is the latency budget
   (``budget.json``).
2. **Search.** A ``--quick`` search with ``--macro edge`` (DESIGN §10) over a small grid
   (:data:`DEMO_GRID`: s ∈ {4, 8} × widths 8/16 × 1 or 2 HNUs, refinement off), stage L's loss
   weights, stage A's ops, the repair that makes the derived network's *measured* latency fit
   the budget, and stage T (``--steps``).
3. **The peer, trained alike.** The same peer architecture is trained on the same training
   split with stage T's steps, sampler, crop and schedule
   (:func:`hbl_edge.search.driver.stage_t_config`), supervised with L1 — not the peer's own
   (for SCI: unsupervised) recipe; the rows say so.
4. **Scores and one timing pass.** The model, the peer, the task's classical baselines and the
   input are scored on the embedded test split; then, side by side in one pass, the model and
   the peer run through ONNX Runtime as deployed (the same method as step 1) and the baselines
   as numpy (for reference: no latency target), with the machine load measured around it.

Writes into ``out``: ``budget.json``, ``search/`` (the search run and its bundle in
``search/model/``), ``<peer>/`` (the trained peer: ``model.safetensors`` + ``weights.json``),
``eval/`` (one ``eval.json`` per method), ``before_after/`` strips, ``video/`` and
``summary.json`` with ``rows`` (one per method: psnr, ssim, ms, iqr_ms, parameters). Re-running
reuses what is finished and resumes what is not; the timing pass is redone every time.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .data import open_dataset
from .errors import ConfigError
from .evaluate import Method, baseline_method, evaluate, model_method
from .imageio import save_image
from .runio import read_json, write_json
from .search.config import SearchConfig, quick_overrides
from .search.driver import OUTPUTS, STATE
from .tasks import get_task

DEMO_RESOLUTION = (640, 360)
#: The fast peer per task whose measured latency is the demo's budget, and which is trained beside the model.
DEMO_PEER = {"lowlight": "sci", "dehaze": "aodnet", "underwater": "physicalnn"}
#: The macro candidates the demo sweeps (4; the full grid is the search's default, docs/search.md).
DEMO_GRID = dict(macro_scales=(4, 8), macro_widths=((8, 16),), macro_units=(1, 2), macro_refine=((),))
#: ONNX Runtime timing of the budget and of the final pass: the search's measurement of its derived
#: network (hbl_edge.search.driver._measurer) uses the same counts.
TIMING = dict(warmup=3, repeats=15, rounds=2)
#: numpy baselines in the final pass (reference only).
BASELINE_TIMING = dict(warmup=2, repeats=9)


def demo_config(out: Path, task: str, steps: int, budget_ms: float | None) -> SearchConfig:
    """The demo's search: ``--quick --macro edge --space edge`` over :data:`DEMO_GRID` at 640×360."""
    cfg = SearchConfig(task=task, data="embedded", out=str(out), device="cpu", backend="onnxruntime",
                       latency_budget=budget_ms, resolution=DEMO_RESOLUTION, quick=True, macro="edge", space="edge",
                       **DEMO_GRID)
    for k, v in quick_overrides().items():
        setattr(cfg, k, v)
    cfg.steps_t, cfg.train_crop = steps, 96
    # each macro candidate's network trains a quarter of stage T before the best one is kept
    cfg.macro_train_steps = max(steps // 4, 1)
    return cfg


def _stats(samples: list[float]) -> dict[str, float]:
    q = np.percentile(samples, [25, 50, 75])
    return {"ms": float(q[1]), "iqr_ms": float(q[2] - q[0]), "n": len(samples)}


def _deployed_procedure(cfg: SearchConfig) -> str:
    return (f"ONNX Runtime CPU through hbl_edge.search.deployed.measure_onnx (OrtRunner threads={cfg.latency_threads}, "
            f"allow_spinning={cfg.latency_spinning}; None = onnxruntime's default), fresh runner per round, "
            f"{TIMING['warmup']} warm-up + {TIMING['repeats']} consecutive runs x {TIMING['rounds']} rounds, "
            f"{DEMO_RESOLUTION[0]}x{DEMO_RESOLUTION[1]}, batch 1, seeded random input; median and IQR of all runs")


def peer_budget(out: Path, peer: str, cfg: SearchConfig) -> dict[str, Any]:
    """``out/budget.json``: the peer's measured latency (its median is the search's budget).

    Measured once and kept, so that a resumed demo searches under the budget it started with.
    """
    from .peers import export_peer, peer_module
    from .runtime.machine import machine_load
    from .search.deployed import measure_onnx

    path = out / "budget.json"
    if path.exists():
        return read_json(path, ConfigError, "demo budget")
    with tempfile.TemporaryDirectory(prefix="hbl-demo-") as tmp:
        onnx = export_peer(peer_module(peer), Path(tmp) / f"{peer}.onnx")  # random weights: timing only
        before = machine_load()
        samples = measure_onnx([onnx], DEMO_RESOLUTION, threads=cfg.latency_threads,
                               allow_spinning=cfg.latency_spinning, **TIMING)[0]
        after = machine_load()
    rec = {"peer": peer, **_stats(samples), "resolution": list(DEMO_RESOLUTION), "procedure": _deployed_procedure(cfg),
           "load": {"before": before, "after": after}}
    write_json(path, rec)
    return rec


def train_peer(folder: Path, peer: str, cfg: SearchConfig, run_dir: Path) -> tuple[Any, dict[str, Any]]:
    """The peer's architecture trained like the search's stage T, with L1; (module in eval mode, weights.json).

    Reuses ``folder`` when it holds the finished weights, resumes its checkpoint otherwise.
    Returns (None, {}) when interrupted (the checkpoint is kept).
    """
    from dataclasses import replace

    from .bundle import WEIGHTS_META, load_weights
    from .peers import get_peer, peer_module
    from .search.driver import stage_t_config
    from .train import STATE as TRAIN_STATE
    from .train import TrainSession

    module = peer_module(peer, seed=cfg.seed)
    if (folder / WEIGHTS_META).exists():
        meta = load_weights(folder, module)
        return module.eval(), meta
    tcfg = replace(stage_t_config(cfg, run_dir), genotype=None, loss="l1=1", out=str(folder))
    prov = {"peer": peer, "architecture": get_peer(peer).architecture,
            "recipe": f"trained here supervised with L1 for {tcfg.steps} steps, stage T's sampler, crop and schedule "
                      f"(not {get_peer(peer).label}'s own recipe: {get_peer(peer).recipe})"}
    session = TrainSession(tcfg, resume=(folder / TRAIN_STATE).exists(), provenance=prov, model=module)
    res = session.run()
    if res.interrupted:
        return None, {}
    return module.eval(), read_json(folder / WEIGHTS_META, ConfigError, "peer weights")


def _module_method(name: str, module, info: dict[str, Any]) -> Method:
    """A torch module (N×3×H×W → N×3×H×W in [0, 1]) as an evaluation :class:`Method`."""
    import torch

    def fn(img: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)[None], dtype=np.float32))
            return module(x)[0].clamp(0, 1).permute(1, 2, 0).numpy()

    return Method(name=name, fn=fn, kind="peer", info=info)


def time_side_by_side(onnx: dict[str, Path], baselines: list[str], cfg: SearchConfig) -> dict[str, Any]:
    """One timing pass: every ONNX model as deployed (:data:`TIMING`), then the baselines (numpy).

    Returns {"ms": {name: {"ms", "iqr_ms", "n"}}, "load": {"before", "after"}, "procedure": …}.
    """
    from .baselines import time_baselines
    from .runtime.machine import machine_load
    from .search.deployed import measure_onnx

    names = list(onnx)
    before = machine_load()
    samples = measure_onnx([onnx[n] for n in names], DEMO_RESOLUTION, threads=cfg.latency_threads,
                           allow_spinning=cfg.latency_spinning, **TIMING)
    base = time_baselines(baselines, DEMO_RESOLUTION, **BASELINE_TIMING)
    after = machine_load()
    return {
        "ms": {**{n: _stats(s) for n, s in zip(names, samples)}, **{n: _stats(s) for n, s in base.items()}},
        "load": {"before": before, "after": after},
        "procedure": {"models": _deployed_procedure(cfg),
                      "baselines": (f"numpy, float32 {DEMO_RESOLUTION[0]}x{DEMO_RESOLUTION[1]} random image, "
                                    f"{BASELINE_TIMING['warmup']} warm-up + {BASELINE_TIMING['repeats']} interleaved "
                                    "runs; reference only, not a latency target")},
    }


def summary_rows(psnr: dict[str, float], ssim: dict[str, float], timing: dict[str, dict[str, float]],
                 methods: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per method, in ``methods``' order, then ``input``.

    ``methods``: name → {"kind": "model" | "peer" | "baseline", "parameters", "description"};
    ``timing``: name → {"ms", "iqr_ms"} from :func:`time_side_by_side`. Models and peers are
    latency targets (timed as deployed), baselines are not (numpy, reference); the input has
    no latency.
    """
    rows = []
    for name, m in methods.items():
        t = timing[name]
        rows.append({"name": name, "kind": m["kind"], "psnr": psnr[name], "ssim": ssim[name], "ms": t["ms"],
                     "iqr_ms": t["iqr_ms"], "parameters": m["parameters"], "latency_target": m["kind"] != "baseline",
                     "description": m["description"]})
    rows.append({"name": "input", "kind": "input", "psnr": psnr["input"], "ssim": ssim["input"], "ms": None,
                 "iqr_ms": None, "parameters": 0, "latency_target": False, "description": "the degraded input"})
    return rows


def print_rows(console, rows: list[dict[str, Any]], budget_ms: float, load: dict[str, Any]) -> None:
    from rich.table import Table

    from .runtime.machine import load_line

    w, h = DEMO_RESOLUTION
    table = Table(title=f"embedded test split; ms: median (IQR) at {w}x{h}, one timing pass on this CPU")
    for col in ("method", "kind", "PSNR dB", "SSIM", "ms", "params"):
        table.add_column(col, justify="left" if col in ("method", "kind") else "right")
    for r in rows:
        ms = "–" if r["ms"] is None else f"{r['ms']:.1f} ({r['iqr_ms']:.1f})" + ("" if r["latency_target"] else " numpy")
        table.add_row(r["name"], r["kind"], f"{r['psnr']:.2f}", f"{r['ssim']:.3f}", ms, f"{r['parameters']:,}")
    console.print(table)
    console.print(f"budget {budget_ms:.1f} ms (the peer's measured median before the search); "
                  f"load {load_line(load['before'])} before the timing pass, {load_line(load['after'])} after")


def run_demo(
    out: Path,
    steps: int,
    task: str,
    search_fn: Callable[..., Any],
    console,
    print_report: Callable[[dict], None],
) -> dict[str, Any]:
    from .runtime.machine import machine_info, machine_load

    t = get_task(task)
    peer = DEMO_PEER.get(task)
    if peer is None:
        raise ConfigError(f"the demo has no fast peer for task {task!r}; use one of {', '.join(DEMO_PEER)}")
    out = Path(out)
    run_dir = out / "search"
    started, load_start = time.perf_counter(), machine_load()
    cfg = demo_config(run_dir, task, steps, None)
    budget = peer_budget(out, peer, cfg)
    cfg.latency_budget = budget["ms"]
    search_s = None
    reused = (run_dir / OUTPUTS["T"]).exists()
    if reused:
        console.print(f"reusing the finished search and model in {run_dir} (delete it to run again)")
    else:
        resume = (run_dir / "config.json").exists() or (run_dir / STATE).exists()
        console.print(
            f"budget: {peer} measured at {budget['ms']:.1f} ms ({DEMO_RESOLUTION[0]}x{DEMO_RESOLUTION[1]}, ONNX Runtime, "
            f"this CPU). Searching an edge network (--quick --macro edge, {len(_grid(cfg))} macro candidates) and its "
            f"loss on the embedded {task} data under that budget, then training it {steps} steps …"
        )
        result = search_fn(cfg, resume=resume)
        if result.interrupted:
            return {}
        search_s = time.perf_counter() - started

    peer_dir = out / peer
    t_peer = time.perf_counter()
    console.print(f"training {peer}'s inference architecture like stage T ({steps} steps, L1) …")
    module, peer_meta = train_peer(peer_dir, peer, cfg, run_dir)
    if module is None:
        return {}
    peer_s = time.perf_counter() - t_peer

    bundle = run_dir / "model"
    reports = {}
    model = model_method(bundle)
    baselines = [baseline_method(b) for b in t.baselines]
    peer_m = _module_method(peer, module, {"task": task, "parameters": peer_meta["parameters"]})
    for m in [model, peer_m, *baselines]:
        label = "model" if m.kind == "model" else m.name
        reports[label] = evaluate(m, "embedded", task, out=out / "eval" / label)
        print_report(reports[label])
    strips = _before_after(out / "before_after", task, [model, *baselines, peer_m])

    from .bundle import read_meta
    from .export.pipeline import ensure_export
    from .peers import export_peer, get_peer

    meta = read_meta(bundle)
    with tempfile.TemporaryDirectory(prefix="hbl-demo-") as tmp:
        onnx = {"model": ensure_export(bundle) or bundle / "export" / "model.onnx",
                peer: export_peer(module, Path(tmp) / f"{peer}.onnx")}
        timing = time_side_by_side(onnx, list(t.baselines), cfg)
    from .genotype import Genotype

    about = get_peer(peer)
    methods = {
        "model": {"kind": "model", "parameters": meta.get("parameters"),
                  "description": "searched edge network (--quick --macro edge), trained by stage T: "
                                 + Genotype.from_dict(meta["genotype"]).summary()},
        peer: {"kind": "peer", "parameters": peer_meta["parameters"],
               "description": f"{about.label}'s inference architecture, trained here supervised with L1 for {steps} steps "
                              f"(stage T's data sampler, crop and schedule), not {about.label}'s own recipe "
                              f"({about.recipe})"},
        **{b.name: {"kind": "baseline", "parameters": 0, "description": b.info["doc"]} for b in baselines},
    }
    psnr = {k: r["mean"]["psnr"] for k, r in reports.items()} | {"input": reports["model"]["mean"]["input_psnr"]}
    ssim = {k: r["mean"]["ssim"] for k, r in reports.items()} | {"input": reports["model"]["mean"]["input_ssim"]}
    rows = summary_rows(psnr, ssim, timing["ms"], methods)
    search_latency = _search_latency(run_dir)
    summary = {
        "task": task,
        "search_run": str(run_dir),
        "model": str(bundle),
        "peer": {"name": peer, "weights": str(peer_dir), "seconds_this_run": round(peer_s, 1)},
        "test_images": reports["model"]["images"],
        "psnr": psnr,
        "ssim": ssim,
        "rows": rows,
        "latency": {
            "resolution": list(DEMO_RESOLUTION),
            "budget_ms": budget["ms"],
            "budget": budget,
            "search_measured_ms": search_latency.get("measured_ms"),
            "search_predicted_ms": search_latency.get("predicted_ms"),
            "repair_changes": len((search_latency.get("repair") or {}).get("changes", [])),
            "procedure": timing["procedure"],
            "load": timing["load"],
        },
    }
    # What the README's demo figures are read from: they vary with the machine and its load (the
    # search is latency-aware, so even the architecture found depends on this CPU's timings).
    summary["run"] = {
        "seconds": round(time.perf_counter() - started, 1),
        "search_and_train_seconds": None if search_s is None else round(search_s, 1),
        "reused_finished_search": reused,
        "machine": machine_info(),
        "load": {"start": load_start, "end": machine_load()},
    }
    write_json(out / "summary.json", summary)
    console.print("\n[bold]What the demo produced[/]")
    console.print(f"  budget            {out}/budget.json  ({peer} measured as deployed)")
    console.print(f"  searched loss     {run_dir}/loss.json  (λ over time: {run_dir}/plots/lambda.png)")
    console.print(f"  searched network  {run_dir}/genotype.json, macro sweep {run_dir}/search/macro.json")
    console.print(f"  latency           {run_dir}/latency/, {run_dir}/search/report.json (predicted vs measured, repair)")
    console.print(f"  model bundle      {bundle}/model.safetensors + model.json")
    console.print(f"  training curves   {bundle}/plots/train_curves.png, {peer_dir}/plots/train_curves.png")
    console.print(f"  evaluations       {out}/eval/*/eval.json")
    console.print(f"  before / after    {out}/before_after/  ({len(strips)} strips: input | "
                  f"{' | '.join([*t.baselines, peer])} | model | reference)")
    console.print(f"  summary           {out}/summary.json  (rows: quality and latency per method)")
    __import__("hbl_edge.demo_video", fromlist=["write_demo_video"]).write_demo_video(out, bundle, task, console)
    console.print()
    print_rows(console, rows, budget["ms"], timing["load"])
    from .runtime.machine import load_line

    measured = summary["latency"]["search_measured_ms"]
    if measured is not None:
        console.print(f"the search measured its derived network at {measured:.1f} ms against the {budget['ms']:.1f} ms "
                      f"budget ({summary['latency']['repair_changes']} repair change(s))")
    console.print(f"took {summary['run']['seconds'] / 60:.1f} min before the video (summary.json: run); "
                  f"{load_line(summary['run']['load']['end'])} at the end")
    return summary


def _grid(cfg: SearchConfig) -> list:
    from .search.macro import grid

    return grid(cfg.macro_scales, cfg.macro_widths, cfg.macro_units, cfg.macro_refine)


def _search_latency(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "search" / "report.json"
    return (read_json(path, ConfigError, "search report").get("latency") or {}) if path.exists() else {}


def _before_after(folder: Path, task: str, methods) -> list[Path]:
    """Strips input | methods[1:] | methods[0] | reference per embedded test image."""
    src = open_dataset("embedded", task, "test")
    paths = []
    for i in range(len(src)):
        name, inp, tgt = src.load(i)
        panels = [inp] + [m.fn(inp) for m in methods[1:]] + [methods[0].fn(inp), tgt]
        gap = np.ones((inp.shape[0], 4, 3), dtype=np.float32)
        strip = np.concatenate([x for p in panels for x in (p, gap)][:-1], axis=1)
        paths.append(save_image(folder / f"{name}.png", strip))
    return paths


__all__ = ["run_demo", "demo_config", "peer_budget", "print_rows", "summary_rows", "time_side_by_side", "train_peer",
           "DEMO_GRID", "DEMO_PEER", "DEMO_RESOLUTION"]
