"""bench/proxy_seeds.py: seed replicates of a recorded macro sweep, and their agreement."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import proxy_seeds  # noqa: E402

from test_macro import _tiny_macro_config  # noqa: E402


def test_a_replicate_trains_the_sweeps_genotype_with_the_searchs_recipe_and_another_seed(tmp_path):
    from hbl_edge.search.driver import run_search

    cfg, run = _tiny_macro_config(tmp_path, train_steps=2)
    run_search(dataclasses.replace(cfg, stages="A", train_crop=32))
    name = "s4 4/8x1 refine:none"
    r = proxy_seeds.proxy_score(run, name, 2, cfg.seed + 5, tmp_path / "work", threads=1)
    meta = json.loads((tmp_path / "work" / "s4_4_8x1_refine_none" / f"t2_s{cfg.seed + 5}" / "model.json").read_text())
    assert meta["provenance"]["config"]["seed"] == cfg.seed + 5 and meta["provenance"]["steps"] == 2
    assert meta["provenance"]["config"]["crop"] == 32 and meta["provenance"]["config"]["val_crop"] is None
    assert r["val_psnr"] == pytest.approx(meta["metrics"]["val_psnr"])
    # only one feasible candidate in this sweep: nothing to rank, a one-line refusal
    assert proxy_seeds.main([str(run), "--steps", "2", "--seeds", "0,1"]) == 2


def test_the_summary_reads_the_recorded_seed_and_ranks_by_the_mean(tmp_path, monkeypatch, capsys):
    from hbl_edge.search.config import SearchConfig

    run = tmp_path / "run"
    (run / "search").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(dataclasses.asdict(SearchConfig(seed=0))))
    recorded = {"a": 20.0, "b": 19.0, "c": 18.0}  # seed 0's proxy, as the sweep wrote it
    rows = [{"name": n, "feasible": True, "proxy_val_psnr": p, "proxy_val_ssim": 0.8, "proxy_seconds": 1.0,
             "proxy_run": str(run / n)} for n, p in recorded.items()]
    rows.append({"name": "slow", "feasible": False})
    (run / "search" / "macro.json").write_text(json.dumps({"train_steps": 300, "candidates": rows, "chosen_name": "a"}))
    # seeds 1, 2 rank c first and a last, each on a carve-out that reads 2 dB lower
    trained = {("a", 1): 16.0, ("b", 1): 17.0, ("c", 1): 18.5, ("a", 2): 16.1, ("b", 2): 17.1, ("c", 2): 18.6}
    calls = []

    def fake(run_, name, steps, seed, work, threads):
        calls.append((name, steps, seed))
        return {"val_psnr": trained[(name, seed)], "val_ssim": 0.7, "train_s": 0.0, "run": "x"}

    monkeypatch.setattr(proxy_seeds, "proxy_score", fake)
    out = tmp_path / "res.json"
    assert proxy_seeds.main([str(run), "--steps", "300", "--seeds", "0,1,2", "--out", str(out)]) == 0
    assert sorted(calls) == sorted((n, 300, s) for n in "abc" for s in (1, 2))  # seed 0 read, not retrained
    res = json.loads(out.read_text())
    summ = res["by_steps"]["300"]
    assert res["candidates"] == ["a", "b", "c"] and res["runs"]["a"]["t300_s0"]["recorded"] is True
    assert summ["spearman_pairs"] == {"0-1": pytest.approx(-1.0), "0-2": pytest.approx(-1.0), "1-2": pytest.approx(1.0)}
    assert summ["winner_per_seed"] == {"0": "a", "1": "c", "2": "c"}
    assert summ["winner_of_mean"] == "c" and summ["mean_psnr"]["c"] == pytest.approx((18.0 + 18.5 + 18.6) / 3)
    assert summ["gap_best_two_db"] == pytest.approx(summ["mean_psnr"]["c"] - summ["mean_psnr"]["b"])
    assert "winner of the mean c" in capsys.readouterr().out


def test_lanes_split_the_jobs_and_write_no_summary(tmp_path, monkeypatch):
    from hbl_edge.search.config import SearchConfig

    run = tmp_path / "run"
    (run / "search").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(dataclasses.asdict(SearchConfig(seed=0))))
    rows = [{"name": n, "feasible": True, "proxy_val_psnr": 1.0, "proxy_val_ssim": 0.5, "proxy_seconds": 1.0,
             "proxy_run": "x"} for n in "abcd"]
    (run / "search" / "macro.json").write_text(json.dumps({"train_steps": 300, "candidates": rows}))
    calls: list = []
    monkeypatch.setattr(proxy_seeds, "proxy_score", lambda r, n, t, s, w, th: calls.append((n, s)) or
                        {"val_psnr": 1.0, "val_ssim": 0.5, "train_s": 0, "run": "x"})
    out = tmp_path / "none.json"
    assert proxy_seeds.main([str(run), "--steps", "300", "--seeds", "1", "--lane", "1/2", "--out", str(out)]) == 0
    assert calls == [("b", 1), ("d", 1)] and not out.exists()
