"""``make demo``: train a small model on the embedded data and show it beats the input.

Writes into ``out``: ``model/`` (the run: bundle, config, log, plots), ``eval/`` (one
``eval.json`` per method), ``before_after/`` (input | baseline | model | reference strips) and
``summary.json``. Re-running reuses a finished model and resumes an interrupted one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from .bundle import META
from .data import open_dataset
from .evaluate import baseline_method, evaluate, model_method
from .imageio import save_image
from .runio import write_json
from .tasks import get_task
from .train import STATE, TrainConfig

DEMO_GENOTYPE = "hbl-lol-2022"


def run_demo(
    out: Path,
    steps: int,
    task: str,
    train_fn: Callable[..., Any],
    console,
    print_report: Callable[[dict], None],
) -> dict[str, Any]:
    t = get_task(task)
    out = Path(out)
    run_dir = out / "model"
    cfg = TrainConfig(
        task=task, genotype=DEMO_GENOTYPE, data="embedded", out=str(run_dir), steps=steps,
        batch_size=4, crop=96, lr=1e-3, val_every=max(steps // 6, 1), ckpt_every=max(steps // 6, 1),
    )
    if (run_dir / META).exists():
        console.print(f"reusing the trained model in {run_dir} (delete it to train again)")
    else:
        console.print(f"training {DEMO_GENOTYPE} on the embedded {task} data for {steps} steps …")
        result = train_fn(cfg, resume=(run_dir / STATE).exists())
        if result.interrupted:
            return {}

    reports = {}
    methods = [model_method(run_dir)] + [baseline_method(b) for b in t.baselines]
    for m in methods:
        label = "model" if m.kind == "model" else m.name
        reports[label] = evaluate(m, "embedded", task, out=out / "eval" / label)
        print_report(reports[label])

    strips = _before_after(out / "before_after", task, methods)
    summary = {
        "task": task,
        "model": str(run_dir),
        "test_images": reports["model"]["images"],
        "psnr": {k: r["mean"]["psnr"] for k, r in reports.items()} | {"input": reports["model"]["mean"]["input_psnr"]},
        "ssim": {k: r["mean"]["ssim"] for k, r in reports.items()} | {"input": reports["model"]["mean"]["input_ssim"]},
    }
    write_json(out / "summary.json", summary)
    console.print("\n[bold]What the demo produced[/]")
    console.print(f"  model bundle      {run_dir}/model.safetensors + model.json")
    console.print(f"  training curves   {run_dir}/plots/train_curves.png  (log: {run_dir}/log.jsonl)")
    console.print(f"  evaluations       {out}/eval/*/eval.json")
    console.print(f"  before / after    {out}/before_after/  ({len(strips)} strips: input | {' | '.join(b for b in t.baselines)} | model | reference)")
    console.print(f"  summary           {out}/summary.json")
    psnr = summary["psnr"]
    console.print(
        f"\ntest PSNR: input {psnr['input']:.2f} dB → model {psnr['model']:.2f} dB "
        + " ".join(f"({b} {psnr[b]:.2f} dB)" for b in t.baselines)
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
        paths.append(save_image(folder / f"{name}.png", strip) or folder / f"{name}.png")
    return paths
