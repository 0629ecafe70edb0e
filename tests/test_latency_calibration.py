"""The whole-network model: the fit recovers known coefficients, leave-one-out, calibration networks."""

from __future__ import annotations

import numpy as np
import pytest

from hbl_edge.errors import ConfigError
from hbl_edge.search.calibration import calibration_genotypes, fit_network_model
from hbl_edge.search.latency import LatencyModel, random_genotype
from latency_fixtures import synthetic_table


def _terms(n: int, seed: int = 0) -> list[dict[str, float]]:
    rng = np.random.default_rng(seed)
    return [{"full": float(rng.uniform(20, 80)), "half": float(rng.uniform(5, 40)), "hnu": float(rng.uniform(2, 60)),
             "fixed": 12.0} for _ in range(n)]


def _truth(t: dict[str, float], s=(0.6, 1.3, 0.9), b: float = 7.5) -> float:
    return s[0] * t["full"] + s[1] * t["half"] + s[2] * t["hnu"] + t["fixed"] + b


def test_fit_recovers_level_scales_and_offset():
    terms = _terms(15)
    fit = fit_network_model(terms, [_truth(t) for t in terms])
    assert fit["kind"] == "levels"
    assert fit["scales"] == pytest.approx({"full": 0.6, "half": 1.3, "hnu": 0.9, "fixed": 1.0}, rel=1e-9)
    assert fit["offset_ms"] == pytest.approx(7.5, rel=1e-9)
    assert fit["loo"]["rel_rmse_pct"] == pytest.approx(0.0, abs=1e-8)
    # the simpler forms cannot express per-level scales: their leave-one-out error is real
    assert fit["forms"]["linear"]["loo_rel_rmse_pct"] > 1.0 and fit["forms"]["offset"]["loo_rel_rmse_pct"] > 1.0


def test_fit_with_noise_stays_close():
    terms = _terms(15, seed=1)
    rng = np.random.default_rng(2)
    measured = [_truth(t) * (1 + 0.01 * rng.standard_normal()) for t in terms]
    fit = fit_network_model(terms, measured)
    assert fit["kind"] == "levels"
    for k, want in (("full", 0.6), ("half", 1.3), ("hnu", 0.9)):
        assert abs(fit["scales"][k] - want) < 0.1, (k, fit["scales"])
    assert fit["loo"]["rel_rmse_pct"] < 3.0


def test_fit_prefers_the_simpler_form_that_explains_as_well():
    terms = _terms(12, seed=3)
    measured = [1.2 * (t["full"] + t["half"] + t["hnu"]) + t["fixed"] + 4.0 for t in terms]
    fit = fit_network_model(terms, measured)
    assert fit["kind"] == "linear" and fit["scale"] == pytest.approx(1.2) and fit["offset_ms"] == pytest.approx(4.0)
    assert fit["scales"]["fixed"] == 1.0 and fit["forms"]["levels"]["loo_rel_rmse_pct"] == pytest.approx(0.0, abs=1e-6)


def test_leave_one_out_by_hand():
    """Offset form on 3 networks: each left-out prediction is its parts plus the others' mean relative offset fit."""
    terms = [{"full": 10.0, "half": 0.0, "hnu": 0.0, "fixed": 0.0},
             {"full": 20.0, "half": 0.0, "hnu": 0.0, "fixed": 0.0},
             {"full": 30.0, "half": 0.0, "hnu": 0.0, "fixed": 0.0}]
    measured = [12.0, 25.0, 33.0]
    fit = fit_network_model(terms, measured, forms=["offset"])

    def offset_fit(idx):  # min Σ ((p + b − y)/y)²  →  b = Σ (y−p)/y² / Σ 1/y²
        y = np.array([measured[i] for i in idx])
        p = np.array([terms[i]["full"] for i in idx])
        return float(np.sum((y - p) / y**2) / np.sum(1 / y**2))

    want = [100 * (terms[i]["full"] + offset_fit([j for j in range(3) if j != i]) - measured[i]) / measured[i] for i in range(3)]
    assert fit["loo"]["pct"] == pytest.approx(want)
    assert fit["offset_ms"] == pytest.approx(offset_fit([0, 1, 2]))


def test_fit_errors_and_rejects_negative_scales():
    with pytest.raises(ConfigError, match="at least one"):
        fit_network_model([], [])
    with pytest.raises(ConfigError, match="positive"):
        fit_network_model(_terms(2), [1.0, -1.0])
    terms = _terms(10, seed=4)
    # measured falls as the full-resolution sum grows: a negative scale, which no form may use
    measured = [200.0 - t["full"] + t["half"] + t["hnu"] for t in terms]
    fit = fit_network_model(terms, measured)
    assert "levels" not in fit["forms"]  # its s_full came out negative: not eligible
    assert all(v > 0 for f in fit["forms"].values() for v in f["scales"].values())


def test_calibration_genotypes_span_the_range():
    model = LatencyModel(synthetic_table(units=3))
    picked = calibration_genotypes(model, 9, seed=5)
    assert [g.summary() for g, _ in picked] == [g.summary() for g, _ in calibration_genotypes(model, 9, seed=5)]
    for lv in ("full", "half", "hnu"):  # every level's κ covers [−3, 3] evenly, in its own order
        assert sorted(k[lv] for _, k in picked) == pytest.approx(list(np.linspace(-3, 3, 9)))
    assert [k["full"] for _, k in picked] != [k["hnu"] for _, k in picked]
    cal = [model.predict_raw(g) for g, _ in picked]
    uniform = [model.predict_raw(random_genotype(units=3, seed=s)) for s in range(60)]
    # the lightest and heaviest calibration networks lie beyond most uniformly random ones
    assert min(cal) < np.percentile(uniform, 10) and max(cal) > np.percentile(uniform, 90)
    with pytest.raises(ConfigError, match="≥ 1"):
        calibration_genotypes(model, 0)
