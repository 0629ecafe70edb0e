"""A Pareto sweep (issue 8 §4): one search, several latency budgets, one network per budget.

``hbl-edge search ... --latency-budget 8,16,32,64``::

    RUN/loss.json, RUN/search/...      stage L, once, shared by every budget
    RUN/latency.json | RUN/latency/    the profiled table(s), once, shared
    RUN/budget-8ms/ ...                stages A and T at that budget (a search run directory each,
                                       with copies of loss.json and the table)
    RUN/pareto.json                    per budget: measured and predicted ms, what the repair
                                       changed, the genotype, PSNR/SSIM; the reference points
    RUN/plots/pareto.png               PSNR and SSIM against measured ms, with the references

Every budget is checked against the space's floor before stage L (the smallest budget binds).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError
from ..runio import write_json
from .config import SearchConfig

log = logging.getLogger(__name__)
FORMAT = "hbl-pareto/1"


def parse_budgets(text: str | float | None) -> list[float]:
    """``"8,16,32"`` → [8.0, 16.0, 32.0] (sorted, distinct); one value → a one-item list."""
    if text is None:
        return []
    if isinstance(text, (int, float)):
        return [float(text)]
    try:
        vals = sorted({float(v) for v in str(text).split(",") if v.strip()})
    except ValueError:
        vals = []
    if not vals or any(not v > 0 for v in vals):
        raise ConfigError(f"--latency-budget takes positive ms, one or several separated by commas (8,16,32); got {text!r}")
    return vals


def parse_references(text: str | None) -> list[dict[str, Any]]:
    """``NAME=MS:PSNR[:SSIM],...`` or a CSV file (``name,ms,psnr[,ssim]`` rows, a header allowed)."""
    if not text:
        return []
    p = Path(text)
    items: list[list[str]] = []
    if p.suffix.lower() == ".csv":
        if not p.is_file():
            raise ConfigError(f"--reference {text}: no such CSV file")
        for line in p.read_text().splitlines():
            cells = [c.strip() for c in line.split(",")]
            if len(cells) >= 3 and cells[0] and cells[0].lower() != "name":
                items.append(cells)
    else:
        for part in (x.strip() for x in text.split(",") if x.strip()):
            name, sep, rest = part.partition("=")
            if not sep:
                raise ConfigError(f"--reference takes NAME=MS:PSNR[:SSIM],... or a .csv file; got {part!r}")
            items.append([name.strip(), *rest.split(":")])
    out = []
    for cells in items:
        try:
            ref = {"name": cells[0], "ms": float(cells[1]), "psnr": float(cells[2])}
            if len(cells) > 3 and cells[3]:
                ref["ssim"] = float(cells[3])
        except (IndexError, ValueError):
            raise ConfigError(f"--reference {cells[0]!r}: give MS:PSNR[:SSIM] as numbers") from None
        out.append(ref)
    return out


def budget_dir(out: Path, budget: float) -> Path:
    return out / f"budget-{budget:g}ms"


def run_pareto(cfg: SearchConfig, budgets: Sequence[float], references: Sequence[dict[str, Any]] = (), *,
               resume: bool = False, progress=None) -> dict[str, Any]:
    """Stage L once, then stages A, T per budget; writes ``pareto.json`` and the plot (module docstring)."""
    from .driver import _check_reachable, _check_reachable_macro, _edge_models, _latency_model, run_search

    if len(budgets) < 1:
        raise ConfigError("a Pareto sweep needs at least one --latency-budget")
    out = Path(cfg.out)
    stages = cfg.stage_list
    raw = cfg  # as given: run_search resolves its defaults itself (a resumed run may keep saved ones)
    cfg = dataclasses.replace(cfg, latency_budget=min(budgets))
    cfg.validate()
    out.mkdir(parents=True, exist_ok=True)
    if "A" in stages:  # the smallest budget binds: refuse it before stage L trains anything
        if cfg.macro:
            _check_reachable_macro(cfg, _edge_models(cfg, out))
        else:
            _check_reachable(cfg, _latency_model(cfg, out))
    if "L" in stages and not (out / "loss.json").exists():
        run_search(dataclasses.replace(raw, latency_budget=min(budgets), stages="L"), resume=resume and (out / "config.json").exists(),
                   progress=progress)
    rows = []
    for b in budgets:
        sub = budget_dir(out, b)
        sub.mkdir(parents=True, exist_ok=True)
        for name in ("loss.json", "latency.json", "latency"):  # the shared stage L and tables
            src = out / name
            if src.is_dir() and not (sub / name).exists():
                shutil.copytree(src, sub / name)
            elif src.is_file() and not (sub / name).exists():
                shutil.copy2(src, sub / name)
        todo = [s for s in stages if s != "L"]
        sub_cfg = dataclasses.replace(raw, out=str(sub), latency_budget=b, stages=",".join(todo))
        if todo and not (sub / ("model/model.json" if "T" in todo else "genotype.json")).exists():
            run_search(sub_cfg, resume=resume and (sub / "config.json").exists(), progress=progress)
        rows.append(_row(sub, b))
    result = {"format": FORMAT, "resolution": list(cfg.resolution), "device": cfg.device, "backend": cfg.backend,
              "task": cfg.task, "macro": cfg.macro, "points": rows, "references": list(references)}
    write_json(out / "pareto.json", result)
    plot_pareto(result, out / "plots" / "pareto.png")
    return result


def _row(sub: Path, budget: float) -> dict[str, Any]:
    row: dict[str, Any] = {"budget_ms": budget, "run": sub.name}
    rep = sub / "search" / "report.json"
    if rep.exists():
        lat = json.loads(rep.read_text()).get("latency") or {}
        row.update(measured_ms=lat.get("measured_ms"), predicted_ms=lat.get("predicted_ms"),
                   changes=len((lat.get("repair") or {}).get("changes", [])),
                   argmax_measured_ms=(lat.get("argmax") or {}).get("measured_ms"))
        row["genotype"] = json.loads(rep.read_text()).get("genotype")
    ev = sub / "eval.json"
    if ev.exists():
        mean = json.loads(ev.read_text())["mean"]
        row.update(psnr=mean.get("psnr"), ssim=mean.get("ssim"), quality_on="test")
    elif (sub / "model" / "model.json").exists():
        meta = json.loads((sub / "model" / "model.json").read_text())
        metrics = meta.get("metrics") or meta.get("val") or {}
        row.update(psnr=metrics.get("psnr"), ssim=metrics.get("ssim"), quality_on="validation")
    return row


def plot_pareto(result: dict[str, Any], path: Path) -> Path | None:
    """PSNR (and SSIM) against measured ms: the sweep's points joined, the references marked."""
    from .plots import _plt, _save

    pts = [p for p in result["points"] if p.get("psnr") is not None]
    refs = result.get("references") or []
    if not pts and not refs:
        return None
    plt = _plt()
    has_ssim = any(p.get("ssim") is not None for p in pts) or any("ssim" in r for r in refs)
    fig, axes = plt.subplots(1, 2 if has_ssim else 1, figsize=(11 if has_ssim else 6, 4))
    axes = list(axes) if has_ssim else [axes]
    for ax, key, label in zip(axes, ("psnr", "ssim"), ("PSNR (dB)", "SSIM")):
        xs = [p.get("measured_ms") if p.get("measured_ms") is not None else p.get("predicted_ms") for p in pts]
        ys = [p.get(key) for p in pts]
        good = sorted((x, y, p["budget_ms"]) for x, y, p in zip(xs, ys, pts) if x is not None and y is not None)
        if good:
            ax.plot([g[0] for g in good], [g[1] for g in good], "o-", color="C0", label="searched (measured ms)")
            for x, y, b in good:
                ax.annotate(f"≤{b:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        for i, r in enumerate(refs):
            if key in r:
                ax.scatter([r["ms"]], [r[key]], marker="s", color=f"C{i + 1}", label=r["name"])
        ax.set_xlabel(f"ms at {result['resolution'][0]}x{result['resolution'][1]} ({result['device']}, {result['backend']})")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


__all__ = ["parse_budgets", "parse_references", "plot_pareto", "run_pareto", "budget_dir"]
