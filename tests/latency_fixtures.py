"""Made-up latency tables and α for the latency tests (no measuring)."""

from __future__ import annotations

import torch

from hbl_edge.ops import get_space
from hbl_edge.search.latency import LatencyModel, LatencyTable, edge_positions


def synthetic_table(space: str = "paper", channels=(16, 32), resolution=(64, 48), units: int = 7, seed: int = 0) -> LatencyTable:
    """A table with distinct made-up times at every position."""
    sp = get_space(space)
    g = torch.Generator().manual_seed(seed)
    entries, seen = [], set()
    for group, positions in edge_positions(channels, resolution).items():
        for pos in positions:
            for op in (sp.hnu if group == "hnu" else sp.fcm):
                key = (op, *pos.key)
                if key in seen or (op == "skip_connect" and pos.c_in != pos.c_out):
                    continue
                seen.add(key)
                entries.append({"op": op, "c_in": pos.c_in, "c_out": pos.c_out, "height": pos.height,
                                "width": pos.width, "variant": pos.variant, "ms": float(torch.rand(1, generator=g)) + 0.1})
    fixed = [{"name": "io", "per": "network", "count": 1, "ms": 0.5},
             {"name": "hnu_merge", "per": "unit", "count": 2, "ms": 0.25}]
    return LatencyTable(
        device={"name": "test cpu"}, backend={"name": "onnxruntime", "versions": {}}, resolution=resolution,
        space={"name": space, "fcm": list(sp.fcm), "hnu": list(sp.hnu)}, channels=channels, entries=entries,
        fixed=fixed, units=units, date="2024-01-01",
    )


def random_alpha(model: LatencyModel, units: int = 7, seed: int = 0, grad: bool = True):
    g = torch.Generator().manual_seed(seed)
    nf, nh = len(model.fcm), len(model.hnu)
    return {
        "alpha_encoder": torch.randn(9, nf, generator=g, dtype=torch.float64).requires_grad_(grad),
        "alpha_decoder": torch.randn(9, nf, generator=g, dtype=torch.float64).requires_grad_(grad),
        "alpha_hnu": torch.randn(units, 8, nh, generator=g, dtype=torch.float64).requires_grad_(grad),
    }
