"""A budget is a promise: the repair step after derivation (hbl_edge.search.repair)."""

import math

import pytest
import torch

from hbl_edge.genotype import Genotype
from hbl_edge.ops import get_space
from hbl_edge.search.latency import LatencyModel, LatencyTable, edge_positions
from hbl_edge.search.repair import BudgetError, cheapest, repair

#: made-up ms per op per unit of work (c_in·c_out·h·w / 1e4): the order of a real CPU table
WEIGHT = {"skip_connect": 0.01, "conv_1x1": 0.1, "conv_3x3": 0.9, "dilconv_3x3": 1.0, "conv_5x5": 2.5,
          "resconv_1x1": 0.12, "resconv_3x3": 0.95, "resdilconv_3x3": 1.05, "denseblocks_1x1": 0.3,
          "denseblocks_3x3": 2.0}
SPACE = get_space("paper")


def work_table(channels=(4, 8), resolution=(32, 24), units=1) -> LatencyTable:
    entries, seen = [], set()
    for group, positions in edge_positions(channels, resolution).items():
        for pos in positions:
            for op in (SPACE.hnu if group == "hnu" else SPACE.fcm):
                key = (op, *pos.key)
                if key in seen or (op == "skip_connect" and pos.c_in != pos.c_out):
                    continue
                seen.add(key)
                ms = WEIGHT[op] * pos.c_in * pos.c_out * pos.height * pos.width / 1e4
                entries.append({"op": op, "c_in": pos.c_in, "c_out": pos.c_out, "height": pos.height,
                                "width": pos.width, "variant": pos.variant, "ms": ms})
    return LatencyTable(
        device={"name": "test cpu"}, backend={"name": "onnxruntime", "versions": {}}, resolution=resolution,
        space={"name": "paper", "fcm": list(SPACE.fcm), "hnu": list(SPACE.hnu)}, channels=channels,
        entries=entries, fixed=[{"name": "io", "per": "network", "count": 1, "ms": 0.5}], units=units, date="2024-01-01",
    )


def heavy(units=1, channels=(4, 8)) -> Genotype:
    return Genotype(encoder=["conv_3x3"] * 9, decoder=["conv_3x3"] * 9, hnu=[["conv_3x3"] * 8] * units,
                    channels=channels, units=units)


def peaked_alpha(g: Genotype, gap=12.0):
    """α with softmax ≈ 1 on the genotype's op of every edge."""
    a_enc = torch.zeros(9, len(SPACE.fcm), dtype=torch.float64)
    a_dec = torch.zeros(9, len(SPACE.fcm), dtype=torch.float64)
    a_hnu = torch.zeros(g.units, 8, len(SPACE.hnu), dtype=torch.float64)
    for i, op in enumerate(g.encoder):
        a_enc[i, SPACE.fcm.index(op)] = gap
    for i, op in enumerate(g.decoder):
        a_dec[i, SPACE.fcm.index(op)] = gap
    for u, unit in enumerate(g.hnu):
        for i, op in enumerate(unit):
            a_hnu[u, i, SPACE.hnu.index(op)] = gap
    return {"alpha_encoder": a_enc, "alpha_decoder": a_dec, "alpha_hnu": a_hnu}


def test_the_replacement_is_the_least_alpha_lost_per_ms_saved():
    model = LatencyModel(work_table())
    g = heavy()
    alpha = peaked_alpha(g)
    # hnu[0][5]: conv_3x3 barely ahead of conv_1x1 (0.45 vs 0.44): swapping it gives up ~0.01 α-weight;
    # every other edge would give up ~1.0. Its saving (0.8·8·8·6·8/1e4 ≈ 0.25 ms) is small, but the price is lowest.
    alpha["alpha_hnu"][0, 5] = torch.log(torch.tensor([1e-3, 0.44, 0.45, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3], dtype=torch.float64))
    before = model.predict(g)
    saved = before - model.predict(_set(g, "hnu[0][5]", "conv_1x1"))
    res = repair(g, alpha, model.predict, before - saved / 2, SPACE.fcm, SPACE.hnu, measure=model.predict)
    assert [(c.where, c.old, c.new) for c in res.changes] == [("hnu[0][5]", "conv_3x3", "conv_1x1")]
    assert res.changes[0].alpha_lost == pytest.approx(0.01, abs=2e-3)
    assert res.changes[0].ms_saved == pytest.approx(saved)
    assert res.measured_ms <= before - saved / 2 and res.fits
    assert res.genotype.hnu[0][5] == "conv_1x1" and res.genotype.encoder == g.encoder


def test_without_a_close_second_the_biggest_saving_per_weight_goes_first():
    model = LatencyModel(work_table())
    g = heavy()
    res = repair(g, peaked_alpha(g), model.predict, model.predict(g) - 0.01, SPACE.fcm, SPACE.hnu, measure=model.predict)
    # every edge peaked (α-weight lost ≈ 1 each): the price orders by saving, and the largest one is a
    # full-resolution FCM edge to conv_1x1 (the cheapest FCM op; skip_connect is no FCM op)
    first = res.changes[0]
    assert first.where.startswith(("encoder", "decoder")) and first.new == "conv_1x1"
    expected = max(model.predict(g) - model.predict(_set(g, w, "conv_1x1")) for w in
                   [f"encoder[{i}]" for i in range(9)] + [f"decoder[{i}]" for i in range(9)])
    assert first.ms_saved == pytest.approx(expected)


def _set(g, where, op):
    from hbl_edge.search.repair import with_op

    return with_op(g, where, op)


def test_the_loop_measures_again_until_the_measurement_fits():
    """The model under-predicts by 1.5×: fitting the prediction once is not enough."""
    model = LatencyModel(work_table())
    g = heavy()
    calls = []

    def measure(x):
        calls.append(x)
        return 1.5 * model.predict(x)

    budget = 0.6 * measure(g)
    calls.clear()
    res = repair(g, peaked_alpha(g), model.predict, budget, SPACE.fcm, SPACE.hnu, measure=measure)
    assert res.measured_ms == pytest.approx(1.5 * model.predict(res.genotype))
    assert res.measured_ms <= budget
    assert len(res.rounds) == len(calls) >= 2
    assert [r["measured_ms"] for r in res.rounds][-1] == res.measured_ms
    prices = [c.price for c in res.changes]
    assert len(prices) >= 2
    d = res.to_dict()
    assert d["fits"] and d["changed"] and len(d["changes"]) == len(res.changes)


def test_unmeetable_budget_raises_a_one_line_error():
    model = LatencyModel(work_table())
    g = heavy()
    floor = model.predict(cheapest(g, model.predict, SPACE.fcm, SPACE.hnu))
    with pytest.raises(BudgetError) as e:
        repair(g, peaked_alpha(g), model.predict, floor * 0.9, SPACE.fcm, SPACE.hnu, measure=model.predict)
    assert "cannot be met" in str(e.value) and "\n" not in str(e.value)
    # just above the floor is reachable and ends at the floor network's cost or below the budget
    res = repair(g, peaked_alpha(g), model.predict, floor * 1.001, SPACE.fcm, SPACE.hnu, measure=model.predict)
    assert res.measured_ms <= floor * 1.001


def test_repair_against_a_real_measurement_fits_the_budget():
    """Measured as deployed (ONNX Runtime, BN folded, consecutive runs) on a small net and shape."""
    from hbl_edge.search.deployed import measure_network

    channels, res_wh, units = (8, 16), (96, 64), 2
    model = LatencyModel(work_table(channels, res_wh, units))
    g = Genotype(encoder=["conv_5x5"] * 9, decoder=["conv_5x5"] * 9, hnu=[["denseblocks_3x3"] * 8] * units,
                 channels=channels, units=units)
    floor = cheapest(g, model.predict, SPACE.fcm, SPACE.hnu)

    def measure(x):
        return measure_network(x, "onnxruntime", res_wh, repeats=7, warmup=2, rounds=1, threads=1)

    slow, fast = measure(g), measure(floor)
    assert fast < slow  # the space has room
    budget = math.sqrt(slow * fast)
    got = repair(g, peaked_alpha(g), model.predict, budget, SPACE.fcm, SPACE.hnu, measure=measure)
    assert got.changes and got.measured_ms <= budget
    assert got.rounds[0]["measured_ms"] > budget
