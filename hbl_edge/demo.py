"""``make demo``: search an architecture and a loss on the embedded data, train it, show it works.

Runs a ``--quick`` search (stages L and A on a small supernet, with the latency of every op
measured on this machine), trains the derived network from scratch (stage T), then evaluates it,
the degraded input and the task's classical baselines on the embedded test split. Writes into
``out``: ``search/`` (the search run: loss.json, genotype.json, latency table, plots, and the model
bundle in ``search/model/``), ``eval/`` (one ``eval.json`` per method), ``before_after/``
(input | baselines | model | reference strips) and ``summary.json``. Re-running reuses what is
finished and resumes what is not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from .data import open_dataset
from .evaluate import baseline_method, evaluate, model_method
from .imageio import save_image
from .runio import write_json
from .search.config import SearchConfig, quick_overrides
from .search.driver import OUTPUTS, STATE
from .tasks import get_task

#: The demo's latency budget: 100 ms per 640×360 frame on this machine's CPU (onnxruntime).
DEMO_BUDGET_MS = 100.0
DEMO_RESOLUTION = (640, 360)


def demo_config(out: Path, task: str, steps: int) -> SearchConfig:
    cfg = SearchConfig(task=task, data="embedded", out=str(out), device="cpu", backend="onnxruntime",
                       latency_budget=DEMO_BUDGET_MS, resolution=DEMO_RESOLUTION, quick=True)
    for k, v in quick_overrides().items():
        setattr(cfg, k, v)
    cfg.steps_t, cfg.train_crop = steps, 96
    return cfg


def run_demo(
    out: Path,
    steps: int,
    task: str,
    search_fn: Callable[..., Any],
    console,
    print_report: Callable[[dict], None],
) -> dict[str, Any]:
    t = get_task(task)
    out = Path(out)
    run_dir = out / "search"
    cfg = demo_config(run_dir, task, steps)
    if (run_dir / OUTPUTS["T"]).exists():
        console.print(f"reusing the finished search and model in {run_dir} (delete it to run again)")
    else:
        resume = (run_dir / "config.json").exists() or (run_dir / STATE).exists()
        console.print(
            f"searching loss and architecture on the embedded {task} data (--quick, budget "
            f"{DEMO_BUDGET_MS:.0f} ms at {DEMO_RESOLUTION[0]}x{DEMO_RESOLUTION[1]} on this CPU), then training {steps} steps …"
        )
        result = search_fn(cfg, resume=resume)
        if result.interrupted:
            return {}

    bundle = run_dir / "model"
    reports = {}
    methods = [model_method(bundle)] + [baseline_method(b) for b in t.baselines]
    for m in methods:
        label = "model" if m.kind == "model" else m.name
        reports[label] = evaluate(m, "embedded", task, out=out / "eval" / label)
        print_report(reports[label])

    strips = _before_after(out / "before_after", task, methods)
    summary = {
        "task": task,
        "search_run": str(run_dir),
        "model": str(bundle),
        "test_images": reports["model"]["images"],
        "psnr": {k: r["mean"]["psnr"] for k, r in reports.items()} | {"input": reports["model"]["mean"]["input_psnr"]},
        "ssim": {k: r["mean"]["ssim"] for k, r in reports.items()} | {"input": reports["model"]["mean"]["input_ssim"]},
    }
    write_json(out / "summary.json", summary)
    console.print("\n[bold]What the demo produced[/]")
    console.print(f"  searched loss     {run_dir}/loss.json  (λ over time: {run_dir}/plots/lambda.png)")
    console.print(f"  searched network  {run_dir}/genotype.json  (α per edge: {run_dir}/plots/alpha.png)")
    console.print(f"  latency           {run_dir}/latency.json, {run_dir}/search/report.json (predicted vs measured)")
    console.print(f"  model bundle      {bundle}/model.safetensors + model.json")
    console.print(f"  training curves   {bundle}/plots/train_curves.png")
    console.print(f"  evaluations       {out}/eval/*/eval.json")
    console.print(f"  before / after    {out}/before_after/  ({len(strips)} strips: input | {' | '.join(t.baselines)} | model | reference)")
    console.print(f"  summary           {out}/summary.json")
    __import__("hbl_edge.demo_video", fromlist=["write_demo_video"]).write_demo_video(out, bundle, task, console)
    psnr = summary["psnr"]
    console.print(
        f"\ntest PSNR: input {psnr['input']:.2f} dB → model {psnr['model']:.2f} dB; "
        + ", ".join(f"{b} {psnr[b]:.2f} dB" for b in t.baselines)
    )
    return summary


def _before_after(folder: Path, task: str, methods) -> list[Path]:
    src = open_dataset("embedded", task, "test")
    paths = []
    for i in range(len(src)):
        name, inp, tgt = src.load(i)
        panels = [inp] + [m.fn(inp) for m in methods[1:]] + [methods[0].fn(inp), tgt]
        gap = np.ones((inp.shape[0], 4, 3), dtype=np.float32)
        strip = np.concatenate([x for p in panels for x in (p, gap)][:-1], axis=1)
        paths.append(save_image(folder / f"{name}.png", strip))
    return paths


__all__ = ["run_demo", "demo_config", "DEMO_BUDGET_MS", "DEMO_RESOLUTION"]
