"""The whole-network model of a latency table: calibration networks, least-squares fit, check.

The parts of a table (ops in context, fixed parts) do not add up to a whole network exactly:
a network pays one call into the runtime and one thread start-up per run, shares caches between
neighbouring ops, and at some feature sizes runs its ops faster or slower than the chains they
were timed in. The model (see :mod:`hbl_edge.search.latency`) is

    measured ≈ Σ_{l ∈ full, half, hnu} s_l · S_l(g) + fixed + b

with S_l(g) the sum of the table's op times of genotype g at level l. It is fitted on
**calibration networks** that span the search's range: network i picks, at every edge of level
l, op o with probability ∝ exp(−κ_{i,l} · t_o / mean_o t_o), the κ of each level spread evenly
over [−3, 3] and shuffled independently per level (κ < 0: heavy ops, κ > 0: light ops, 0:
uniform). So the calibration holds the lightest and the heaviest networks a search can derive,
and the three level sums vary independently enough to be told apart.

Forms, fitted by least squares on relative errors (a 10 % error counts alike on a light and a
heavy network):

========  ========================================  ==========
form      model                                     parameters
========  ========================================  ==========
offset    S + fixed + b                             b
ratio     s · (S + fixed)                           s
linear    s · S + fixed + b                         s, b
levels    Σ_l s_l · S_l + fixed + b                 s_full, s_half, s_hnu, b
========  ========================================  ==========

A form is eligible when it has at least two more networks than parameters and all its scales
are positive; the one with the smallest leave-one-out error is kept (each network predicted by
a fit on the others: a check on networks the fit has not seen), the simpler one when two come
within 5 % of each other. Calibration networks are timed
by :mod:`hbl_edge.search.deployed`, consecutive runs in the deployed runner.
"""

from __future__ import annotations

import math
import random
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import ConfigError
from ..genotype import DECODER_EDGES, ENCODER_EDGES, HNU_EDGES, Genotype
from .latency import CALIBRATION_TERMS, LEVELS, LatencyModel, LatencyTable

Progress = Callable[[str, int, int], None]
#: Range of the op-choice bias κ of the calibration networks (per level).
KAPPA = 3.0
#: Parameters of each form, in the order :func:`fit_network_model` tries them.
FORMS: dict[str, tuple[str, ...]] = {
    "offset": ("offset_ms",),
    "ratio": ("scale",),
    "linear": ("scale", "offset_ms"),
    "levels": ("full", "half", "hnu", "offset_ms"),
}


# ---------------------------------------------------------------------------------------------
# Calibration networks
# ---------------------------------------------------------------------------------------------
def _biased_choice(rng: random.Random, times: Sequence[tuple[str, float]], kappa: float) -> str:
    mean = sum(t for _, t in times) / len(times)
    if mean <= 0:
        return rng.choice([o for o, _ in times])
    weights = [math.exp(-kappa * t / mean) for _, t in times]
    return rng.choices([o for o, _ in times], weights=weights)[0]


def calibration_genotypes(model: LatencyModel, n: int, seed: int = 10_000, kappa: float = KAPPA) -> list[tuple[Genotype, dict[str, float]]]:
    """``n`` genotypes spanning the table's range, each with its κ per level (see the module docstring).

    Deterministic in ``seed``; the κ of level l over the n networks is ``linspace(−kappa, kappa, n)``
    in an order shuffled per level.
    """
    if n < 1:
        raise ConfigError(f"calibrate must be ≥ 1 genotypes, got {n}")
    t = model.table
    rng = random.Random(seed)
    grid = [0.0] if n == 1 else [float(v) for v in np.linspace(-kappa, kappa, n)]
    kappas: dict[str, list[float]] = {}
    for lv in LEVELS:
        order = list(grid)
        rng.shuffle(order)
        kappas[lv] = order

    def options(group: str, i: int) -> list[tuple[str, float]]:
        tt, m, ops = {"encoder": (model.t_encoder, model.m_encoder, model.fcm),
                      "decoder": (model.t_decoder, model.m_decoder, model.fcm),
                      "hnu": (model.t_hnu, model.m_hnu, model.hnu)}[group]
        return [(op, float(tt[i, j])) for j, op in enumerate(ops) if bool(m[i, j])]

    out = []
    for k in range(n):
        r = random.Random(seed + 1 + k)
        kap = {lv: kappas[lv][k] for lv in LEVELS}
        enc = [_biased_choice(r, options("encoder", i), kap[model.levels["encoder"][i]]) for i in range(ENCODER_EDGES)]
        dec = [_biased_choice(r, options("decoder", i), kap[model.levels["decoder"][i]]) for i in range(DECODER_EDGES)]
        hnu = [[_biased_choice(r, options("hnu", i), kap["hnu"]) for i in range(HNU_EDGES)] for _ in range(t.units)]
        g = Genotype(encoder=enc, decoder=dec, hnu=hnu, space=t.space["name"], channels=t.channels, units=t.units)
        out.append((g, kap))
    return out


# ---------------------------------------------------------------------------------------------
# Fit
# ---------------------------------------------------------------------------------------------
def _design(form: str, terms: Sequence[dict[str, float]]) -> tuple[np.ndarray, np.ndarray]:
    """Columns X and fixed part c of ``measured ≈ X·θ + c`` for a form (θ in FORMS[form] order)."""
    ops = np.array([sum(t[lv] for lv in LEVELS) for t in terms])
    fixed = np.array([t["fixed"] for t in terms])
    one = np.ones(len(terms))
    if form == "offset":
        return one[:, None], ops + fixed
    if form == "ratio":
        return (ops + fixed)[:, None], np.zeros(len(terms))
    if form == "linear":
        return np.stack([ops, one], 1), fixed
    if form == "levels":
        return np.stack([np.array([t[lv] for t in terms]) for lv in LEVELS] + [one], 1), fixed
    raise ValueError(f"unknown calibration form {form!r}")


def _solve(x: np.ndarray, c: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares on relative residuals: minimise Σ ((x·θ + c − y) / y)²."""
    w = 1.0 / y
    theta, *_ = np.linalg.lstsq(x * w[:, None], (y - c) * w, rcond=None)
    return theta


def _as_calibration(form: str, theta: np.ndarray) -> dict[str, Any]:
    p = dict(zip(FORMS[form], (float(v) for v in theta)))
    if form == "offset":
        scales = {k: 1.0 for k in CALIBRATION_TERMS}
    elif form == "ratio":
        scales = {k: p["scale"] for k in CALIBRATION_TERMS}
    elif form == "linear":
        scales = {**{lv: p["scale"] for lv in LEVELS}, "fixed": 1.0}
    else:
        scales = {**{lv: p[lv] for lv in LEVELS}, "fixed": 1.0}
    scale = p.get("scale", float(np.median([scales[lv] for lv in LEVELS])))
    return {"kind": form, "scale": scale, "scales": scales, "offset_ms": p.get("offset_ms", 0.0)}


def apply_calibration(cal: dict[str, Any], terms: dict[str, Any]) -> Any:
    """A fitted whole-network model applied to one network's terms (floats, or tensors of ``expected``)."""
    return sum(cal["scales"][k] * terms[k] for k in CALIBRATION_TERMS) + cal["offset_ms"]


def fit_network_model(
    terms: Sequence[dict[str, float]], measured: Sequence[float], forms: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Fit the whole-network model on calibration networks; keep the form with the best leave-one-out error.

    Args:
        terms: per network, the uncalibrated ms per term (:meth:`LatencyModel.terms`).
        measured: per network, the measured ms.
        forms: the forms to consider (all of :data:`FORMS` by default).

    Returns the calibration (``kind``, ``scales``, ``scale``, ``offset_ms``) with ``n``,
    ``rmse_ms``, ``loo`` (leave-one-out errors of the kept form, % of measured) and ``forms``
    (every form's fit and leave-one-out error).
    """
    y = np.asarray(measured, dtype=np.float64)
    if len(y) == 0:
        raise ConfigError("calibration needs at least one measured genotype")
    if len(terms) != len(y):
        raise ValueError("terms and measured differ in length")
    if not np.all(y > 0):
        raise ConfigError("calibration measurements must be positive milliseconds")
    forms = list(forms or FORMS)
    n = len(y)
    tried: dict[str, dict[str, Any]] = {}
    for form in forms:
        k = len(FORMS[form])
        if n < k + 2 and not (form == "offset" and n >= 1):
            continue
        x, c = _design(form, terms)
        cal = _as_calibration(form, _solve(x, c, y))
        if any(v <= 0 for v in cal["scales"].values()):
            continue
        loo = []
        if n >= k + 2:
            for i in range(n):
                keep = np.arange(n) != i
                ci = _as_calibration(form, _solve(x[keep], c[keep], y[keep]))
                loo.append(100.0 * (apply_calibration(ci, terms[i]) - y[i]) / y[i])
        tried[form] = {**cal, "loo_rel_rmse_pct": float(np.sqrt(np.mean(np.square(loo)))) if loo else None,
                       "loo_max_abs_pct": float(np.max(np.abs(loo))) if loo else None, "loo_pct": loo}
    if not tried:
        raise ConfigError("no calibration form fits these measurements (all scales came out ≤ 0); measure again")
    scored = [f for f in tried if tried[f]["loo_rel_rmse_pct"] is not None]
    if scored:
        # Occam: the form with the fewest parameters among those within 5 % (+0.05 points) of the best
        low = min(tried[f]["loo_rel_rmse_pct"] for f in scored)
        near = [f for f in scored if tried[f]["loo_rel_rmse_pct"] <= low * 1.05 + 0.05]
        best = min(near, key=lambda f: (len(FORMS[f]), tried[f]["loo_rel_rmse_pct"]))
    else:
        best = next(iter(tried))
    chosen = dict(tried[best])
    resid = np.array([apply_calibration(chosen, t) for t in terms]) - y
    return {
        "kind": best, "scale": chosen["scale"], "scales": chosen["scales"], "offset_ms": chosen["offset_ms"],
        "n": n, "rmse_ms": float(np.sqrt(np.mean(resid**2))),
        "rel_rmse_pct": float(np.sqrt(np.mean((100.0 * resid / y) ** 2))),
        "loo": {"rel_rmse_pct": chosen["loo_rel_rmse_pct"], "max_abs_pct": chosen["loo_max_abs_pct"],
                "pct": chosen["loo_pct"]},
        "forms": {f: {k: v for k, v in d.items() if k != "loo_pct"} for f, d in tried.items()},
    }


def fit_calibration(predicted: Sequence[float], measured: Sequence[float]) -> dict[str, Any]:
    """The one-term fit of older tables: ``measured ≈ scale · predicted + offset`` (kept for scripts).

    Equivalent to :func:`fit_network_model` with all of ``predicted`` in one term.
    """
    terms = [{"full": float(p), "half": 0.0, "hnu": 0.0, "fixed": 0.0} for p in predicted]
    fit = fit_network_model(terms, measured, forms=("offset", "ratio", "linear"))
    return {k: fit[k] for k in ("scale", "offset_ms", "kind", "n", "rmse_ms")}


# ---------------------------------------------------------------------------------------------
# Calibrate a table
# ---------------------------------------------------------------------------------------------
def calibrate_table(
    table: LatencyTable,
    n: int,
    *,
    seed: int = 10_000,
    repeats: int = 15,
    warmup: int = 3,
    rounds: int = 2,
    threads: int | None = None,
    allow_spinning: bool | None = None,
    device: str = "cpu",
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Measure ``n`` calibration networks as deployed and fit the whole-network model of ``table``.

    Returns the calibration to store in the table (the fit of :func:`fit_network_model` plus
    one row per network); ``table`` itself is not changed.
    """
    from .deployed import measure_networks
    from .timing import load_snapshot

    base = LatencyTable.from_dict({**table.to_dict(), "calibration": None})
    model = LatencyModel(base)
    picked = calibration_genotypes(model, n, seed)
    genotypes = [g for g, _ in picked]
    before = load_snapshot()
    measured = measure_networks(
        genotypes, table.backend["name"], table.resolution, repeats=repeats, warmup=warmup, rounds=rounds,
        threads=threads, allow_spinning=allow_spinning, device=device, dtype=table.dtype, progress=progress,
    )
    after = load_snapshot()
    terms = [model.terms(g) for g in genotypes]
    fit = fit_network_model(terms, measured)
    rows = []
    for i, ((g, kap), t, m) in enumerate(zip(picked, terms, measured)):
        rows.append({"index": i, "kappa": kap, "genotype": g.summary(), "terms_ms": t,
                     "predicted_raw_ms": sum(t.values()), "predicted_ms": apply_calibration(fit, t), "measured_ms": m})
    fit.update(
        seed=seed, rows=rows, load={"before": before, "after": after},
        measured_by="hbl_edge.search.deployed: fresh runner per network and round, "
                    f"{warmup} warm-up + {repeats} consecutive runs, {rounds} rounds (alternate reversed), median",
        fit="measured ≈ Σ_l s_l · S_l + s_fixed · fixed + offset_ms (relative least squares, form by leave-one-out)",
    )
    return fit


__all__ = ["FORMS", "apply_calibration", "calibrate_table", "calibration_genotypes", "fit_calibration", "fit_network_model"]
