"""Macro search of the edge network: EdgeSupernet, the edge latency model, the outer sweep."""

import json
from pathlib import Path

import pytest
import torch

from hbl_edge.genotype import FORMAT_V2, load_genotype
from hbl_edge.search.edge_latency import EdgeLatencyModel, core_genotype, low_resolution, macro_key, measure_parts
from hbl_edge.search.latency import LatencyModel
from hbl_edge.search.macro import Candidate, EdgeSupernet, derive_edge, floor_genotype, grid, parse_refine, parse_widths

from latency_fixtures import synthetic_table


def test_edge_supernet_derives_an_edge_genotype_and_starts_at_the_exposure_ratio(tmp_path):
    cand = Candidate(4, (4, 8), 1, ("conv_3x3",))
    net = EdgeSupernet(cand.macro("lowlight"), "edge", (4, 8), 1, seed=0)
    x = torch.rand(2, 3, 37, 50) * 0.2
    target = torch.rand(2, 3, 37, 50) * 0.2 + 0.5
    net.init_from_data(x, target)
    with torch.no_grad():
        p, _, _ = net._maps(x)
    assert p.shape == (2, 1, 37, 50)
    ratio = float(x.mean() / target.mean())
    assert float(p.mean()) == pytest.approx(ratio, rel=0.1)  # σ(z + b) at mean z; the guided filter keeps the mean
    assert net(x).shape == x.shape
    g, _ = derive_edge(net)
    assert g.format == FORMAT_V2 and g.macro == cand.macro("lowlight") and g.units == 1 and g.channels == (4, 8)
    assert load_genotype(g.save(tmp_path / "g.json")) == g  # the file alone rebuilds it


def test_grid_and_parsers():
    cands = grid((2, 8), ((4, 8),), (1, 3), ((), ("conv_3x3",)))
    assert len(cands) == 8 and cands[0] == Candidate(2, (4, 8), 1, ())
    assert parse_widths("8/16,16/32") == ((8, 16), (16, 32))
    assert parse_refine("none,conv_3x3+conv_1x1") == ((), ("conv_3x3", "conv_1x1"))
    from hbl_edge.errors import ConfigError

    with pytest.raises(ConfigError, match="C1/C2"):
        parse_widths("8,16")
    with pytest.raises(ConfigError, match="no refinement op"):
        parse_refine("resconv_3x3")
    with pytest.raises(ConfigError, match="--macro-scales"):
        grid((3,))


def _edge_model(cand, resolution=(64, 48), part=1.5, part_off=0.5):
    low = low_resolution(resolution, cand.scale)
    inner = LatencyModel(synthetic_table("edge", cand.channels, low, units=cand.units))
    m = cand.macro("lowlight")
    import dataclasses

    parts = {macro_key(m): {"ms": part}, macro_key(dataclasses.replace(m, refine=())): {"ms": part_off}}
    return EdgeLatencyModel(inner, parts, m, resolution)


def test_edge_latency_is_the_inner_network_plus_the_full_resolution_part():
    cand = Candidate(4, (4, 8), 1, ("conv_3x3",))
    model = _edge_model(cand)
    assert model.inner.table.resolution == (16, 12)
    g = floor_genotype(cand, "lowlight", "edge", model)
    assert g.macro.refine == ()  # the floor switches the refinement off
    assert model.predict(g) == pytest.approx(model.inner.predict(core_genotype(g)) + 0.5)
    import dataclasses

    on = dataclasses.replace(g, macro=cand.macro("lowlight"), format=None)
    assert model.predict(on) == pytest.approx(model.inner.predict(core_genotype(g)) + 1.5)
    alpha = model.inner.one_hot_alpha(core_genotype(on))
    assert float(model.expected(alpha)) == pytest.approx(model.predict(on))  # the search term, one-hot
    # the repair may switch the branch off: it is a candidate change priced at a whole edge's weight
    from hbl_edge.search.repair import candidates, edge_probabilities

    probs = edge_probabilities(alpha, model.fcm, model.hnu)
    changes = [c for c, _ in candidates(on, probs, model.predict, model.fcm, model.hnu)]
    off = [c for c in changes if c.where == "macro.refine"]
    assert off and off[0].ms_saved == pytest.approx(1.0) and off[0].alpha_lost == 1.0


def test_full_resolution_parts_are_measured_as_deployed():
    m = Candidate(4, (4, 8), 1, ()).macro("lowlight")
    got = measure_parts([m], (64, 48), threads=1, repeats=3, warmup=1, rounds=1)
    row = got[macro_key(m)]
    assert row["ms"] == pytest.approx(row["shell_ms"] - row["empty_ms"]) and row["shell_ms"] > 0 and row["empty_ms"] > 0


def _tiny_macro_config(tmp_path, train_steps, proxy_seeds=1):
    """--macro edge on tiny shapes; the profiled tables are replaced by made-up ones in the run's cache
    (s = 2 made too slow for the budget)."""
    from hbl_edge.runio import write_json
    from hbl_edge.search.config import SearchConfig

    res = (64, 48)
    cands = grid((2, 4), ((4, 8),), (1,), ((),))
    out = tmp_path / "run"
    cache = out / "latency"
    cache.mkdir(parents=True)
    parts = {}
    for c in cands:
        low = low_resolution(res, c.scale)
        synthetic_table("edge", c.channels, low, units=1).save(cache / f"inner_s{c.scale}_4x8.json")
        # no whole-network correction (identity), so the made-up parts below decide the pruning
        write_json(cache / f"whole_s{c.scale}_4x8.json", {"kind": "offset", "offset_ms": 0.0, "n": 0, "loo": None,
                                                          "scales": {"full": 1.0, "half": 1.0, "hnu": 1.0, "fixed": 1.0}})
        # s = 2 made too slow for the budget: it must be pruned without training
        parts[macro_key(c.macro("lowlight"))] = {"ms": 5000.0 if c.scale == 2 else 1.0}
    write_json(cache / "parts.json", parts)
    (out / "loss.json").write_text(json.dumps({"format": "hbl-loss/1", "terms": {"l1": 1.0}}))
    cfg = SearchConfig(out=str(out), stages="A", space="edge", units=1, crop=32, batch_size=2, steps_a=3,
                       w_lr=0.02, upper_lr=0.05, device="cpu", latency_budget=1000.0, resolution=res,
                       deterministic=True, macro="edge", macro_scales=(2, 4), macro_widths=((4, 8),), macro_units=(1,),
                       macro_refine=((),), macro_steps=2, macro_train_steps=train_steps, latency_threads=1,
                       macro_proxy_seeds=proxy_seeds)
    return cfg, out


@pytest.mark.parametrize("train_steps,proxy_seeds", [(0, 1), (3, 1), (3, 2)])
def test_macro_search_sweeps_prunes_and_derives_an_edge_network(tmp_path, train_steps, proxy_seeds):
    """--macro edge on tiny shapes; the profiled tables are replaced by made-up ones in the run's cache.
    train_steps 0 ranks by the short search's loss; 3: each candidate's network is trained and scored
    (with 2 proxy seeds: twice, each seed its own carve-out, and the mean ranks)."""
    from hbl_edge.search.driver import run_search

    cfg, out = _tiny_macro_config(tmp_path, train_steps, proxy_seeds)
    run_search(cfg)
    sweep = json.loads((out / "search/macro.json").read_text())
    rows = {r["name"]: r for r in sweep["candidates"]}
    assert rows["s2 4/8x1 refine:none"]["feasible"] is False and "score" not in rows["s2 4/8x1 refine:none"]
    s4 = rows["s4 4/8x1 refine:none"]
    assert s4["feasible"] is True and s4["steps"] == 2
    if train_steps:  # the candidate's network was trained and scored on whole validation frames
        bundle = json.loads((Path(s4["proxy_run"]) / "model.json").read_text())
        assert s4["proxy_steps"] == 3 and bundle["provenance"]["steps"] == 3 and 0 < s4["proxy_val_psnr"] < 100
        assert "trained 3 steps" in sweep["rule"] and "proxy_val_psnr" not in rows["s2 4/8x1 refine:none"]
        assert sweep["proxy_seeds"] == proxy_seeds
        if proxy_seeds > 1:
            second = json.loads((Path(s4["proxy_runs"][1]) / "model.json").read_text())
            assert s4["proxy_seeds"] == [cfg.seed, cfg.seed + 1] and second["provenance"]["config"]["seed"] == cfg.seed + 1
            psnrs = [bundle["metrics"]["val_psnr"], second["metrics"]["val_psnr"]]
            assert s4["proxy_val_psnr_seeds"] == pytest.approx(psnrs)
            assert s4["proxy_val_psnr"] == pytest.approx(sum(psnrs) / 2) and "mean over 2 seeds" in sweep["rule"]
        else:
            assert s4["proxy_val_psnr"] == pytest.approx(bundle["metrics"]["val_psnr"])
            assert "proxy_runs" not in s4 and "mean over" not in sweep["rule"]
    else:
        assert "proxy_val_psnr" not in s4 and "λ* loss" in sweep["rule"]
    assert sweep["chosen"] == Candidate(4, (4, 8), 1, ()).to_dict()
    g = load_genotype(out / "genotype.json")
    assert g.format == FORMAT_V2 and g.macro.scale == 4 and g.units == 1 and g.channels == (4, 8)
    lat = json.loads((out / "search/report.json").read_text())["latency"]
    assert lat["measured_ms"] is not None and lat["measured_ms"] <= 1000.0
    assert lat["repair"]["fits"] is True


def test_a_signal_in_a_candidates_short_search_stops_the_sweep_there_and_resume_finishes(tmp_path, monkeypatch):
    """Ctrl-C during the short search stops before its next step (at s = 2 one candidate takes
    minutes), trains no proxy, and ``--resume`` completes the sweep."""
    import os
    import signal

    import hbl_edge.search.driver as driver

    calls = []
    real_step = driver.bilevel_step

    def step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C sends; the search's flag takes it
        return real_step(*args, **kwargs)

    monkeypatch.setattr(driver, "bilevel_step", step)
    cfg, out = _tiny_macro_config(tmp_path, train_steps=2)
    res = driver.run_search(cfg)
    assert res.interrupted and len(calls) == 1 and not (out / "search" / "macro").exists()
    res = driver.run_search(cfg, resume=True)
    assert res.completed == ["A"] and (out / "genotype.json").exists()
    assert json.loads((out / "search/macro.json").read_text())["chosen_name"] == "s4 4/8x1 refine:none"


def test_macro_needs_a_budget():
    from hbl_edge.errors import ConfigError
    from hbl_edge.search.config import SearchConfig

    with pytest.raises(ConfigError, match="--latency-budget"):
        SearchConfig(macro="edge", stages="A").validate()
    with pytest.raises(ConfigError, match="--macro takes edge"):
        SearchConfig(macro="grid", latency_budget=5.0).validate()


def test_genotype_latency_cli_prices_an_edge_genotype_with_an_edge_model(tmp_path):
    from typer.testing import CliRunner

    from hbl_edge.cli import app

    cand = Candidate(4, (4, 8), 1, ())
    model = _edge_model(cand, part=0.7, part_off=0.7)
    path = model.save(tmp_path / "edge_latency.json")
    g = floor_genotype(cand, "lowlight", "edge", model)
    gpath = g.save(tmp_path / "g.json")
    res = CliRunner().invoke(app, ["genotype", "latency", str(gpath), "--latency-table", str(path)])
    assert res.exit_code == 0, res.output
    got = json.loads(res.output)
    assert got["predicted_ms"] == pytest.approx(model.predict(g)) and got["full_resolution_part_ms"] == 0.7
    assert got["low_resolution"] == [16, 12]
    assert EdgeLatencyModel.load(path).predict(g) == pytest.approx(model.predict(g))
    paper = tmp_path / "paper.json"
    model.inner.table.save(paper)
    res = CliRunner().invoke(app, ["genotype", "latency", str(gpath), "--latency-table", str(paper)])
    assert res.exit_code == 2 and "profile --edge" in res.output


def test_whole_network_correction_is_fitted_on_edge_networks_and_used_by_predict_and_expected(monkeypatch, tmp_path):
    """A machine whose edge networks take 1.5 × the inner prediction + the part + 2 ms: the
    correction recovers it (form linear, leave-one-out error ~0) and predict/expected apply it."""
    import hbl_edge.search.deployed as deployed
    from hbl_edge.search.edge_latency import calibrate_edge, edge_calibration_genotypes

    res = (64, 48)
    m1 = Candidate(4, (4, 8), 1, ()).macro("lowlight")
    m2 = Candidate(4, (4, 8), 2, ()).macro("lowlight")
    inner = LatencyModel(synthetic_table("edge", (4, 8), low_resolution(res, 4), units=2))
    parts = {macro_key(m1): {"ms": 3.0}}

    def fake_measure(genotypes, backend, resolution, **kw):
        assert tuple(resolution) == res and all(g.macro is not None for g in genotypes)
        return [1.5 * inner.predict(core_genotype(g)) + 3.0 + 2.0 for g in genotypes]

    monkeypatch.setattr(deployed, "measure_networks", fake_measure)
    shapes = [(m1, 1), (m2, 2)]
    gs = edge_calibration_genotypes(inner, shapes, 6)
    assert [g.units for g in gs] == [1, 2, 1, 2, 1, 2] and [g.macro for g in gs[:2]] == [m1, m2]
    whole = calibrate_edge(inner, parts, [(m1, 1)], res, n=6)
    assert whole["kind"] == "linear" and whole["scales"]["full"] == pytest.approx(1.5)
    assert whole["offset_ms"] == pytest.approx(2.0) and whole["loo"]["max_abs_pct"] < 1e-6
    model = EdgeLatencyModel(inner, parts, m1, res, whole)
    g = gs[0]
    assert model.predict(g) == pytest.approx(1.5 * inner.predict(core_genotype(g)) + 5.0)
    assert model.predict_raw(g) == pytest.approx(inner.predict(core_genotype(g)) + 3.0)
    net = EdgeSupernet(m1, "edge", (4, 8), 1, seed=0)
    assert float(model.expected(net).detach()) == pytest.approx(1.5 * float(inner.expected(net).detach()) + 5.0, rel=1e-6)
    again = EdgeLatencyModel.load(model.save(tmp_path / "m.json"))
    assert again.predict(g) == pytest.approx(model.predict(g))


def test_loss_check_trains_the_winner_with_each_loss_and_keeps_the_best(tmp_path):
    """λ* (here a made-up ``l2`` stage-L result) against ``l1`` on the sweep's winner: each trained
    as its proxies were, the higher mean validation PSNR becomes loss.json (stage L's kept beside
    it), and a resumed run reads the decision back instead of training again."""
    from hbl_edge.losses import parse_loss_spec
    from hbl_edge.search.driver import run_search

    cfg, out = _tiny_macro_config(tmp_path, train_steps=3, proxy_seeds=2)
    (out / "loss.json").write_text(json.dumps({"format": "hbl-loss/1", "terms": {"l2": 1.0}}))
    cfg.loss_check = ("l1",)
    run_search(cfg)
    rec = json.loads((out / "search/loss_check.json").read_text())
    assert rec["candidate"] == "s4 4/8x1 refine:none" and rec["seeds"] == [0, 1] and rec["steps"] == 3
    stage_l, l1 = rec["losses"]
    assert stage_l["terms"] == {"l2": 1.0} and l1["terms"] == {"l1": 1.0} and len(l1["val_psnr_seeds"]) == 2
    sweep = {r["name"]: r for r in json.loads((out / "search/macro.json").read_text())["candidates"]}
    assert stage_l["val_psnr_seeds"] == pytest.approx(sweep["s4 4/8x1 refine:none"]["proxy_val_psnr_seeds"])
    from hbl_edge.search.driver import macro_candidate_dir

    home = macro_candidate_dir(out, "s4 4/8x1 refine:none")
    runs = sorted(p.name for p in home.glob("loss_check*"))
    assert runs == ["loss_check0_seed0", "loss_check0_seed1"]
    for seed, psnr in zip((0, 1), l1["val_psnr_seeds"]):
        bundle = json.loads((home / f"loss_check0_seed{seed}" / "model.json").read_text())
        assert bundle["metrics"]["val_psnr"] == pytest.approx(psnr) and bundle["loss"]["terms"] == {"l1": 1.0}
    l1_wins = l1["val_psnr"] > stage_l["val_psnr"]
    assert rec["chosen"] == ("l1" if l1_wins else "stage L's λ*")
    assert parse_loss_spec(out / "loss.json").terms == ({"l1": 1.0} if l1_wins else {"l2": 1.0})
    assert (out / "search/loss_stage_l.json").exists() == l1_wins
    before = (out / "search/loss_check.json").read_text()
    (out / "genotype.json").unlink()
    run_search(cfg, resume=True)  # stage A again: the check is read back, not trained again
    assert (out / "search/loss_check.json").read_text() == before
    assert sorted(p.name for p in home.glob("loss_check*")) == runs


def test_perturbation_selection_derives_and_records_the_argmax_beside_it(tmp_path):
    from hbl_edge.search.driver import run_search

    cfg, out = _tiny_macro_config(tmp_path, train_steps=0, proxy_seeds=1)
    cfg.selection = "perturbation"
    run_search(cfg)
    rep = json.loads((out / "search/report.json").read_text())
    d = rep["derivation"]
    assert d["selection"] == "perturbation" and d["batches"] == 4 and "argmax_genotype" in d
    assert d["score_max"] >= d["score_min"]
    saved = torch.load(out / "search/alpha.pt", weights_only=True)
    assert len(saved["selection_logits"]) == 3 and saved["selection_logits"][2].shape == saved["alpha"][2].shape
    assert load_genotype(out / "genotype.json").macro.scale == 4
