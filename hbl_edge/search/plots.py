"""Pictures of a search: α per edge, λ over time, latency against validation loss."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from ..runio import atomic_path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    _plt().close(fig)
    return path


def plot_lambda(records: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """The loss weights λ_k over stage L steps."""
    rows = [r for r in records if "lambda" in r]
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for name in rows[0]["lambda"]:
        ax.plot([r["step"] for r in rows], [r["lambda"][name] for r in rows], label=name)
    ax.set_xlabel("stage L step")
    ax.set_ylabel("λ (mean 1)")
    ax.set_title("loss weights during the loss search")
    ax.legend(ncol=3, fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_alpha(supernet, path: Path) -> Path:
    """Heat maps of softmax(α) per edge: encoder, decoder, and every HNU (rows = edges, cols = ops)."""
    plt = _plt()
    probs = {k: v.detach().float() for k, v in supernet.edge_probabilities().items()}
    space = supernet.space
    units = probs["hnu"].shape[0]
    fig, axes = plt.subplots(1, 2 + units, figsize=(1.1 * (2 + units) + 0.3 * len(space.hnu) * units, 5.0),
                             gridspec_kw={"width_ratios": [len(space.fcm)] * 2 + [len(space.hnu)] * units})
    panels = [("encoder", probs["encoder"], space.fcm), ("decoder", probs["decoder"], space.fcm)]
    panels += [(f"HNU {u}", probs["hnu"][u], space.hnu) for u in range(units)]
    for ax, (title, p, ops) in zip(axes, panels):
        im = ax.imshow(p.numpy(), vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_title(title, fontsize=9)
        ax.set_xticks(range(len(ops)))
        ax.set_xticklabels(ops, rotation=90, fontsize=6)
        ax.set_yticks(range(p.shape[0]))
        ax.set_yticklabels([str(i) for i in range(p.shape[0])], fontsize=6)
        best = torch.argmax(p, dim=1)
        for i, j in enumerate(best.tolist()):
            ax.text(j, i, "●", ha="center", va="center", color="red", fontsize=6)
    fig.subplots_adjust(left=0.04, right=0.9, bottom=0.3, top=0.86, wspace=0.35)
    fig.colorbar(im, ax=axes, shrink=0.7, label="softmax(α)", pad=0.02)
    fig.suptitle("architecture weights per edge (● = argmax)")
    return _save(fig, path)


def plot_latency_vs_loss(records: Sequence[dict[str, Any]], path: Path, budget: float | None) -> Path | None:
    """Expected latency and validation (upper) loss over stage A steps."""
    if not records:
        return None
    plt = _plt()
    fig, ax1 = plt.subplots(figsize=(7, 3.6))
    steps = [r["step"] for r in records]
    # the warm-up's steps (α frozen) take no upper step: a gap, not a zero
    ax1.plot(steps, [float("nan") if r.get("upper_loss") is None else r["upper_loss"] for r in records],
             color="tab:blue", lw=0.8, label="upper objective")
    ax1.set_xlabel("stage A step")
    ax1.set_ylabel("upper objective", color="tab:blue")
    if any("expected_latency_ms" in r for r in records):
        ax2 = ax1.twinx()
        ax2.plot(steps, [r.get("expected_latency_ms") for r in records], color="tab:red", label="expected latency")
        ax2.plot(steps, [r.get("derived_latency_ms") for r in records], color="tab:orange", ls=":", label="argmax latency")
        if budget:
            ax2.axhline(budget, color="gray", ls="--", label="budget")
        ax2.set_ylabel("ms", color="tab:red")
        ax2.legend(loc="upper right", fontsize=8)
    ax1.set_title("architecture search: latency and validation objective")
    fig.tight_layout()
    return _save(fig, path)
