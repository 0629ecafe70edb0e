"""bench/search_record.py: the record of a real (tiny) macro search run, with a second seed's eval."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import search_record  # noqa: E402

from test_macro import _tiny_macro_config  # noqa: E402


def test_a_tiny_macro_search_is_recorded_with_its_sweep_promise_and_seeds(tmp_path, capsys):
    from hbl_edge.search.driver import run_search

    cfg, run = _tiny_macro_config(tmp_path, train_steps=2)
    run_search(dataclasses.replace(cfg, stages="A,T", steps_t=2, train_crop=32))
    seed1 = tmp_path / "seed1"
    seed1.mkdir()
    ev = json.loads((run / "eval.json").read_text())
    ev["mean"] = {**ev["mean"], "psnr": ev["mean"]["psnr"] + 1.0}
    (seed1 / "eval.json").write_text(json.dumps(ev))
    out = tmp_path / "rec.json"
    assert search_record.main([str(run), "--seed-eval", str(seed1), "--wall-minutes", "1.5", "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    names = {r["name"]: r for r in rec["sweep"]["candidates"]}
    assert rec["sweep"]["chosen"] == "s4 4/8x1 refine:none" and names["s2 4/8x1 refine:none"]["feasible"] is False
    assert names["s4 4/8x1 refine:none"]["proxy_val_psnr"] is not None
    assert rec["latency"]["budget_ms"] == 1000.0 and rec["latency"]["rounds"][0]["round"] == 0
    assert set(rec["stage_step_seconds"]) == {"A"} and rec["wall_minutes"] == 1.5
    check = rec["loss_check"]  # the default under --macro edge: λ* against L1 on the winner
    assert [r["loss"] for r in check["losses"]] == ["stage L's λ*", "l1"] and check["chosen"] in ("stage L's λ*", "l1")
    seeds = rec["test"]["seeds"]
    assert seeds["n"] == 2 and seeds["psnr"][1] == pytest.approx(seeds["psnr"][0] + 1.0)
    assert seeds["psnr_std"] == pytest.approx(2 ** -0.5)
    assert not Path(rec["run"]).is_absolute() and "chose s4 4/8x1" in capsys.readouterr().out
    from hbl_edge.genotype import load_genotype  # the record alone rebuilds the network

    (tmp_path / "from_record.json").write_text(json.dumps(rec["genotype_json"]))
    assert load_genotype(str(tmp_path / "from_record.json")) == load_genotype(str(run / "genotype.json"))


def test_a_folder_without_a_run_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="no search run"):
        search_record.main([str(tmp_path)])
