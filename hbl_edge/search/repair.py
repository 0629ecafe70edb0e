"""A latency budget is a promise (DESIGN §3, §10): repair a derived network until it fits, measured.

After stage A derives the argmax genotype, :func:`repair` measures it on the target with the
independent method of :mod:`hbl_edge.search.deployed` (exported with BatchNorm folded, its own
runner, consecutive runs). While the measurement is over the budget it changes the genotype
where that costs the search the least, and measures again:

- a change replaces the op of one edge e by a cheaper op o' (``skip_connect`` where the
  position allows it removes the op), or, for an edge network, switches the full-resolution
  refinement branch off;
- its price is the α-weight it gives up per predicted millisecond it saves,

      price(e, o → o') = (p_e(o) − p_e(o')) / (LAT(g) − LAT(g with o' at e)),   p_e = softmax(α_e),

  with LAT the latency model's prediction (so the per-choice saving is the table's time of the
  op at that position, with the model's level scale); the refinement branch carries no α and
  is priced as a whole edge's weight (1), so op swaps come first;
- each round applies the cheapest changes until the *prediction*, corrected by the error the
  last measurement showed (target = budget · predicted / measured), fits; then it measures
  again. It stops when the measurement fits, and raises :class:`BudgetError` when no change
  is left (which :func:`check_reachable` rules out before any training).

A target that is not this machine cannot be measured here: ``measure=None`` repairs against
the prediction and the report says so.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Sequence

import torch

from ..errors import ConfigError
from ..genotype import Genotype, load_genotype
from .latency import op_buildable

log = logging.getLogger(__name__)

Measure = Callable[[Genotype], float]
#: α-weight given up by switching the refinement branch off (it has no α of its own).
REFINE_WEIGHT = 1.0


class BudgetError(ConfigError):
    """The latency budget cannot be met in this search space on this target."""


@dataclass(frozen=True)
class Change:
    """One repair step: ``where`` is ``encoder[i]``, ``decoder[i]``, ``hnu[u][i]`` or ``macro.refine``."""

    where: str
    old: str
    new: str
    alpha_lost: float
    ms_saved: float  # predicted, by the latency model

    @property
    def price(self) -> float:
        return self.alpha_lost / self.ms_saved


@dataclass
class RepairResult:
    genotype: Genotype
    budget_ms: float
    changes: list[Change] = field(default_factory=list)
    rounds: list[dict[str, Any]] = field(default_factory=list)  # per measurement: predicted, measured
    measured_ms: float | None = None  # the final network's measurement (None: not measurable here)
    predicted_ms: float = 0.0

    @property
    def fits(self) -> bool:
        ms = self.measured_ms if self.measured_ms is not None else self.predicted_ms
        return ms <= self.budget_ms

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget_ms": self.budget_ms, "measured_ms": self.measured_ms, "predicted_ms": self.predicted_ms,
            "fits": self.fits, "changed": bool(self.changes),
            "changes": [{**asdict(c), "price_alpha_per_ms": c.price} for c in self.changes],
            "rounds": self.rounds, "genotype": self.genotype.summary(),
        }


# ---------------------------------------------------------------------------------------------
# α → per-edge probabilities in genotype order
# ---------------------------------------------------------------------------------------------
def _alpha_tensor(alpha: Any, name: str) -> torch.Tensor:
    return (alpha[name] if isinstance(alpha, dict) else getattr(alpha, name)).detach().double()


def edge_probabilities(alpha: Any, ops_fcm: Sequence[str], ops_hnu: Sequence[str]) -> dict[str, dict[str, float]]:
    """``{where: {op: softmax(α_e)_op}}`` for every searched edge (``where`` as in :class:`Change`).

    ``alpha``: a supernet or a dict with ``alpha_encoder [9, n_fcm]``, ``alpha_decoder``,
    ``alpha_hnu [units, 8, n_hnu]``; op order is the space's (``ops_fcm``, ``ops_hnu``).
    """
    out: dict[str, dict[str, float]] = {}
    for group, ops in (("encoder", ops_fcm), ("decoder", ops_fcm)):
        p = torch.softmax(_alpha_tensor(alpha, f"alpha_{group}"), dim=-1)
        for i in range(p.shape[0]):
            out[f"{group}[{i}]"] = dict(zip(ops, p[i].tolist()))
    p = torch.softmax(_alpha_tensor(alpha, "alpha_hnu"), dim=-1)
    for u in range(p.shape[0]):
        for i in range(p.shape[1]):
            out[f"hnu[{u}][{i}]"] = dict(zip(ops_hnu, p[u, i].tolist()))
    return out


# ---------------------------------------------------------------------------------------------
# Genotype edits
# ---------------------------------------------------------------------------------------------
def _edges(g: Genotype) -> list[tuple[str, str, int, int]]:
    """(where, current op, c_in, c_out) of every searched edge."""
    c1, c2 = g.channels
    enc_io = [(3, c1)] + [(c1, c1)] * 4 + [(c2, c2)] * 4
    dec_io = [(c2, c2)] * 4 + [(c1, c1)] * 4 + [(c1, 3)]
    rows = [(f"encoder[{i}]", op, *enc_io[i]) for i, op in enumerate(g.encoder)]
    rows += [(f"decoder[{i}]", op, *dec_io[i]) for i, op in enumerate(g.decoder)]
    rows += [(f"hnu[{u}][{i}]", op, c2, c2) for u, unit in enumerate(g.hnu) for i, op in enumerate(unit)]
    return rows


def with_op(g: Genotype, where: str, op: str) -> Genotype:
    """``g`` with the op at ``where`` (``encoder[i]``, ``decoder[i]``, ``hnu[u][i]``) replaced."""
    group, rest = where.split("[", 1)
    idx = [int(v) for v in rest.replace("]", " ").replace("[", " ").split()]
    if group in ("encoder", "decoder"):
        ops = list(getattr(g, group))
        ops[idx[0]] = op
        return replace(g, **{group: tuple(ops)}, format=None)
    hnu = [list(u) for u in g.hnu]
    hnu[idx[0]][idx[1]] = op
    return replace(g, hnu=tuple(tuple(u) for u in hnu), format=None)


def candidates(g: Genotype, probs: dict[str, dict[str, float]], predict: Callable[[Genotype], float],
               ops_fcm: Sequence[str], ops_hnu: Sequence[str]) -> list[tuple[Change, Genotype]]:
    """Every single change the latency model says saves time, cheapest price first."""
    base = predict(g)
    found: list[tuple[Change, Genotype]] = []
    for where, cur, c_in, c_out in _edges(g):
        ops = ops_hnu if where.startswith("hnu") else ops_fcm
        p = probs.get(where, {})
        for op in ops:
            if op == cur or not op_buildable(op, c_in, c_out):
                continue
            new = with_op(g, where, op)
            try:
                saved = base - predict(new)
            except ConfigError:  # the table cannot price the op there
                continue
            if saved > 1e-9:
                found.append((Change(where, cur, op, p.get(cur, 0.0) - p.get(op, 0.0), saved), new))
    if g.macro is not None and g.macro.refine:
        new = replace(g, macro=replace(g.macro, refine=()), format=None)
        saved = base - predict(new)
        if saved > 1e-9:
            found.append((Change("macro.refine", "+".join(g.macro.refine), "off", REFINE_WEIGHT, saved), new))
    found.sort(key=lambda cn: (cn[0].price, -cn[0].ms_saved))
    return found


def cheapest(g: Genotype, predict: Callable[[Genotype], float], ops_fcm: Sequence[str], ops_hnu: Sequence[str]) -> Genotype:
    """``g`` with the fastest op (by the model) on every edge and no refinement branch: the floor."""
    g = load_genotype(g)
    if g.macro is not None and g.macro.refine:
        g = replace(g, macro=replace(g.macro, refine=()), format=None)
    for where, _cur, c_in, c_out in _edges(g):
        ops = ops_hnu if where.startswith("hnu") else ops_fcm
        best, best_ms = g, predict(g)
        for op in ops:
            if not op_buildable(op, c_in, c_out):
                continue
            try:
                cand = with_op(g, where, op)
                ms = predict(cand)
            except ConfigError:
                continue
            if ms < best_ms:
                best, best_ms = cand, ms
        g = best
    return g


# ---------------------------------------------------------------------------------------------
# The repair loop
# ---------------------------------------------------------------------------------------------
def repair(
    genotype: Genotype,
    alpha: Any,
    predict: Callable[[Genotype], float],
    budget_ms: float,
    ops_fcm: Sequence[str],
    ops_hnu: Sequence[str],
    measure: Measure | None = None,
    max_rounds: int = 8,
) -> RepairResult:
    """Change ``genotype`` until its measured latency fits ``budget_ms`` (module docstring).

    ``predict``: the latency model's ms of a genotype; ``measure``: its measured ms on the
    target (None: the target is not this machine, the prediction stands in). Raises
    :class:`BudgetError` when the space has no faster network left.
    """
    g = load_genotype(genotype)
    probs = edge_probabilities(alpha, ops_fcm, ops_hnu)
    res = RepairResult(genotype=g, budget_ms=float(budget_ms))
    for rnd in range(max_rounds + 1):
        predicted = predict(g)
        measured = measure(g) if measure is not None else None
        res.rounds.append({"round": rnd, "genotype": g.summary(), "predicted_ms": predicted, "measured_ms": measured})
        res.genotype, res.predicted_ms, res.measured_ms = g, predicted, measured
        ms = measured if measured is not None else predicted
        log.info("repair round %d: predicted %.2f ms, measured %s (budget %.2f ms)", rnd, predicted,
                 "-" if measured is None else f"{measured:.2f} ms", budget_ms)
        if ms <= budget_ms:
            return res
        if rnd == max_rounds:
            break
        # what the prediction has to reach for the measurement to fit, if the model's error holds
        target = budget_ms * predicted / ms
        progressed = False
        while predict(g) > target:
            options = candidates(g, probs, predict, ops_fcm, ops_hnu)
            if not options:
                break
            change, g = options[0]
            res.changes.append(change)
            progressed = True
        if not progressed:
            break
    what = "measured" if measure is not None else "predicted"
    raise BudgetError(
        f"the latency budget {budget_ms:.2f} ms cannot be met: the fastest network left is {what} at "
        f"{res.measured_ms if res.measured_ms is not None else res.predicted_ms:.2f} ms "
        f"({res.genotype.summary()}); raise --latency-budget or lower --resolution"
    )


__all__ = ["BudgetError", "Change", "RepairResult", "candidates", "cheapest", "edge_probabilities", "repair", "with_op"]
