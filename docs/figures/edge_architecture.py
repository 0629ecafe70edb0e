"""Draw docs/figures/edge_architecture.svg (and .png): the resolution-decoupled edge network.

    python docs/figures/edge_architecture.py
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

HERE = Path(__file__).resolve().parent
FULL, LOW, OPT = "#dbe9f6", "#fde2c8", "#e4f2dc"


def box(ax, x, y, w, h, text, color, style="round,pad=0.02", ls="-"):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle=style, fc=color, ec="#333333", lw=1.2, ls=ls))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=8.5, wrap=True)


def arrow(ax, a, b, text=None, rad=0.0, dy=0.03):
    ax.add_patch(FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=11, lw=1.1, color="#333333",
                                 connectionstyle=f"arc3,rad={rad}"))
    if text:
        ax.text((a[0] + b[0]) / 2, (a[1] + b[1]) / 2 + dy, text, ha="center", va="bottom", fontsize=7.5, color="#444444")


def main() -> None:
    fig, ax = plt.subplots(figsize=(12.5, 4.3))
    ax.set_xlim(0, 12.5)
    ax.set_ylim(0, 4.3)
    ax.axis("off")
    # full-resolution lane (top) and low-resolution lane (bottom)
    ax.text(0.1, 4.05, "full resolution H×W", fontsize=9, weight="bold", color="#1f4e79")
    ax.text(0.1, 1.75, "low resolution (H/s)×(W/s), rounded up", fontsize=9, weight="bold", color="#8a4b08")

    box(ax, 0.1, 2.75, 1.1, 0.8, "input y\nN×3×H×W", FULL)
    box(ax, 0.9, 0.55, 1.5, 0.9, "box ↓s\n(AveragePool s×s,\nceil mode)", LOW)
    box(ax, 2.8, 0.35, 2.6, 1.3, "HNU network\n(paper structure, §2):\nencoder · n HNUs · decoder\nC1/C2 wide, tail → maps", LOW)
    box(ax, 5.8, 0.55, 2.1, 0.9, "map head\nL = σ(z + b)\nt = σ(z_t + b), A = σ(z̄_A + b)", LOW)
    box(ax, 6.3, 2.55, 1.9, 1.2, "upsample to H×W\nguided filter (a, b at 1/s;\nq = a↑·I + b↑)\nguide I = luma(y)", FULL)
    box(ax, 8.5, 2.65, 2.1, 1.0, "inverse model\nx = y ⊘ max(L, ε)\nJ = (y−A) ⊘ max(t, t₀) + A", FULL)
    box(ax, 10.95, 2.65, 1.3, 1.0, "refinement\nx + R(x)\n(optional)", OPT, ls="--")

    arrow(ax, (0.65, 2.75), (1.4, 1.45), "y")
    arrow(ax, (2.4, 1.0), (2.8, 1.0))
    arrow(ax, (5.4, 1.0), (5.8, 1.0), "z")
    arrow(ax, (7.0, 1.45), (7.25, 2.55), "L or t (1/s)")
    arrow(ax, (1.2, 3.15), (6.3, 3.15), "guide (full-resolution image)", dy=0.05)
    arrow(ax, (1.6, 1.2), (6.4, 2.6), rad=-0.25)
    ax.text(3.6, 2.05, "low-resolution guide", fontsize=7.5, color="#444444")
    arrow(ax, (8.2, 3.15), (8.5, 3.15))
    arrow(ax, (10.6, 3.15), (10.95, 3.15))
    arrow(ax, (0.65, 3.55), (9.5, 3.65), rad=-0.12)
    ax.text(4.8, 3.95, "y (numerator)", fontsize=7.5, color="#444444")
    arrow(ax, (6.9, 1.45), (9.2, 2.65), rad=0.15)
    ax.text(8.75, 1.9, "A (one RGB\nper image)", fontsize=7.5, color="#444444")
    ax.text(12.25, 2.45, "output", ha="right", fontsize=8.5)
    ax.text(0.1, 0.05, "Cost at full resolution: pooling, the guide, two resizes, one multiply-add, the division (+ R). "
            "The HNU network runs on H·W/s² pixels.  Searched (phase 2): s ∈ {1, 2, 4, 8}, widths, units, ops, "
            "upsampler, R.", fontsize=7.5, color="#333333")
    fig.tight_layout()
    for ext in ("svg", "png"):
        fig.savefig(HERE / f"edge_architecture.{ext}", dpi=110)
    print("wrote", HERE / "edge_architecture.svg")


if __name__ == "__main__":
    main()
