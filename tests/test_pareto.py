"""The Pareto sweep: stage L and the table shared across budgets, one network per budget."""

import json

import pytest

from hbl_edge.errors import ConfigError
from hbl_edge.search.pareto import parse_budgets, parse_references, run_pareto

from test_search import tiny


def test_parsers(tmp_path):
    assert parse_budgets("32,8,16,8") == [8.0, 16.0, 32.0]
    assert parse_budgets(5) == [5.0]
    with pytest.raises(ConfigError, match="positive ms"):
        parse_budgets("8,-1")
    refs = parse_references("SCI=14.1:14.85,auto-gamma=1.1:16.46:0.634")
    assert refs == [{"name": "SCI", "ms": 14.1, "psnr": 14.85}, {"name": "auto-gamma", "ms": 1.1, "psnr": 16.46, "ssim": 0.634}]
    csv = tmp_path / "refs.csv"
    csv.write_text("name,ms,psnr,ssim\nZero-DCE++,22,15.36,0.568\n")
    assert parse_references(str(csv)) == [{"name": "Zero-DCE++", "ms": 22.0, "psnr": 15.36, "ssim": 0.568}]
    with pytest.raises(ConfigError, match="NAME=MS:PSNR"):
        parse_references("SCI:14")


def test_sweep_shares_stage_l_and_the_table_and_trains_one_net_per_budget(tmp_path):
    from hbl_edge.genotype import Genotype
    from hbl_edge.search.latency import LatencyModel, load_latency_model
    from hbl_edge.search.repair import cheapest

    est = load_latency_model("jetson-orin-nano", (64, 48), "paper", (4, 8))
    start = Genotype(encoder=["conv_5x5"] * 9, decoder=["conv_5x5"] * 9, hnu=[["conv_3x3"] * 8], channels=(4, 8), units=1)
    floor = est.predict(cheapest(start, est.predict, est.fcm, est.hnu))
    budgets = [floor * 1.01, 100.0]
    refs = parse_references("SCI=0.6:12.0:0.5")
    cfg = tiny(tmp_path, latency_budget=None, steps_t=3)
    res = run_pareto(cfg, budgets, refs)
    out = tmp_path / "run"
    saved = json.loads((out / "pareto.json").read_text())
    assert saved == json.loads(json.dumps(res)) and saved["references"] == refs
    pts = saved["points"]
    assert [p["budget_ms"] for p in pts] == budgets
    loss = (out / "loss.json").read_text()
    steps_l = [r for r in map(json.loads, (out / "search/log.jsonl").read_text().splitlines()) if r["stage"] == "L"]
    assert len(steps_l) == 3  # stage L ran once, in the sweep's directory
    for p, b in zip(pts, budgets):
        sub = out / p["run"]
        assert (sub / "loss.json").read_text() == loss
        assert not [r for r in map(json.loads, (sub / "search/log.jsonl").read_text().splitlines()) if r["stage"] == "L"]
        assert (sub / "latency.json").read_text() == (out / "latency.json").read_text()  # the one table
        model = LatencyModel(sub / "latency.json")
        assert model.predict(sub / "genotype.json") <= b and p["predicted_ms"] == pytest.approx(model.predict(sub / "genotype.json"))
        assert p["psnr"] is not None and p["quality_on"] == "test" and (sub / "model/model.json").exists()
    assert pts[0]["changes"] >= 1  # the tight budget needed the repair
    assert (out / "plots/pareto.png").stat().st_size > 1000


def test_an_unreachable_budget_in_the_list_stops_before_stage_l(tmp_path):
    from hbl_edge.search.repair import BudgetError

    with pytest.raises(BudgetError, match="below the fastest network"):
        run_pareto(tiny(tmp_path, latency_budget=None), [1e-6, 100.0])
    assert not (tmp_path / "run" / "loss.json").exists()
