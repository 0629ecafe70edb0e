"""bench/refine_ops.py and bench/refine_quality.py: real tiny runs, and the merge of lanes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import refine_ops  # noqa: E402
import refine_quality  # noqa: E402


def test_refine_ops_times_each_branch_beside_the_branch_off(tmp_path, capsys):
    out = tmp_path / "ops.json"
    refine_ops.main(["--resolution", "32x24", "--ops", "conv_3x3,boxmix_3x3", "--repeats", "2", "--rounds", "1",
                     "--threads", "1", "--out", str(out)])
    res = json.loads(out.read_text())
    rows = res["results"]["32x24"]
    assert set(rows) == {"none", "conv_3x3", "boxmix_3x3"}
    assert rows["none"]["refinement_ms"] == 0.0
    for r in rows.values():
        assert r["shell_ms"] > 0 and r["empty_ms"] > 0
        assert r["part_ms"] == pytest.approx(r["shell_ms"] - r["empty_ms"], abs=2e-3)
    assert res["macro"]["scale"] == 8 and {"before", "after"} <= set(res["load"])
    assert "boxmix_3x3" in capsys.readouterr().out


def test_refine_quality_parses_branches():
    assert refine_quality.parse_refine("none,conv_3x3,mix_1x1+boxmix_3x3") == {
        "none": (), "conv_3x3": ("conv_3x3",), "mix_1x1+boxmix_3x3": ("mix_1x1", "boxmix_3x3")}
    g = refine_quality.genotype(("boxmix_3x3",))
    assert (g.macro.scale, g.channels, g.units, g.macro.refine) == (8, (16, 32), 1, ("boxmix_3x3",))


def test_refine_quality_trains_scores_and_merges_lanes(tmp_path):
    work = tmp_path / "w"
    lanes = []
    for seed in (0, 1):
        lane = tmp_path / f"lane{seed}.json"
        refine_quality.main(["--data", "embedded", "--test-data", "embedded", "--refine", "none,boxmix_3x3",
                             "--seeds", str(seed), "--steps", "2", "--work", str(work), "--out", str(lane)])
        lanes.append(lane)
    assert (work / "boxmix_3x3-s1" / "model.json").exists()
    out = tmp_path / "merged.json"
    refine_quality.main(["--merge", *map(str, lanes), "--out", str(out)])
    res = json.loads(out.read_text())
    box = res["runs"]["boxmix_3x3"]
    assert [r["seed"] for r in box["seeds"]] == [0, 1] and box["n"] == 2
    psnr = [r["test_psnr"] for r in box["seeds"]]
    assert box["test_psnr_mean"] == pytest.approx(sum(psnr) / 2)
    assert len(res["merged_from"]) == 2 and "load" not in res
