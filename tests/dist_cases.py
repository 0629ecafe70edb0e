"""Bilevel steps on a tiny float64 supernet, for the data-parallel equality test.

Imported by ``tests/test_distributed.py`` (one process, the whole batch) and run as a script
under ``python -m torch.distributed.run --nproc-per-node 2`` (each rank its half of the same
batch): ``python dist_cases.py OUT.pt``. Rank 0 saves what every case produced.
"""

from __future__ import annotations

import sys
from typing import Any

import torch

from hbl_edge.distributed import SINGLE, DistContext, init_from_env, sync_batchnorm_
from hbl_edge.losses import build_loss
from hbl_edge.search.objectives import fidelity_objective
from hbl_edge.search.stages import BilevelState, bilevel_step, make_optimizers, normalise_weights_
from hbl_edge.search.config import SearchConfig
from hbl_edge.search.supernet import Supernet

GLOBAL_BATCH = 4
CASES = ("A-first", "A-second", "A-exact", "L-first", "L-second")
STEPS = 2


def batches(step: int) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """The global (lower, upper) batches of a step: 4 images of 3×16×16 each, float64."""
    g = torch.Generator().manual_seed(100 + step)
    x, y, xv, yv = (torch.rand(GLOBAL_BATCH, 3, 16, 16, generator=g, dtype=torch.float64) for _ in range(4))
    return (x * 0.4, y), (xv * 0.4, yv)  # dark inputs, bright targets: a low-light problem


def run_case(case: str, dist: DistContext = SINGLE) -> dict[str, Any]:
    """Two bilevel steps of ``case`` ("A-second": stage A, second order, …) on this rank's slice."""
    stage, order = case.split("-")
    torch.manual_seed(0)
    cfg = SearchConfig(w_lr=0.05, upper_lr=0.05)
    net = Supernet("paper", (4, 8), 1, seed=1, freeze_alpha=(stage == "L")).double()
    net = sync_batchnorm_(net, dist).train()
    criterion = build_loss("l1=1,l2=1,color=1,tv=1").double()
    if stage == "L":
        criterion.weights.requires_grad_(True)
        upper_vars = [criterion.weights]

        def objective(pred, target):
            return fidelity_objective(pred, target)
    else:
        upper_vars = list(net.arch_parameters())

        def objective(pred, target):
            return criterion(pred, target)[0]

    w_opt, u_opt = make_optimizers(cfg, net, upper_vars)
    state = BilevelState(net, upper_vars, w_opt, u_opt)
    lo = slice(dist.rank * GLOBAL_BATCH // dist.world_size, (dist.rank + 1) * GLOBAL_BATCH // dist.world_size)
    out: dict[str, Any] = {"hypergrads": [], "records": []}
    for step in range(STEPS):
        (x, y), (xv, yv) = batches(step)
        rec = bilevel_step(state, order=order, lower_batch=(x[lo], y[lo]), upper_batch=(xv[lo], yv[lo]),
                           lower_loss=criterion, upper_objective=objective, clip=cfg.w_clip, dist=dist,
                           after_upper=(lambda: normalise_weights_(criterion.weights)) if stage == "L" else None)
        out["hypergrads"].append([u.grad.detach().clone() for u in upper_vars])
        out["records"].append({k: v for k, v in rec.items() if isinstance(v, float)})
    out["upper"] = [u.detach().clone() for u in upper_vars]
    out["weights"] = {k: v.detach().clone() for k, v in net.state_dict().items()}
    return out


def main(path: str) -> None:
    torch.set_num_threads(1)
    dist = init_from_env()
    assert dist.enabled and dist.backend == "gloo", dist
    results = {case: run_case(case, dist) for case in CASES}
    if dist.is_main:
        torch.save({"world_size": dist.world_size, "results": results}, path)
    dist.barrier()
    dist.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
