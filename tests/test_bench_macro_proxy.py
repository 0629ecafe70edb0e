"""bench/macro_proxy.py: the macro shapes it trains, the rank statistic, and a real tiny run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import macro_proxy  # noqa: E402

from hbl_edge.genotype import load_genotype  # noqa: E402


def test_spearman_is_one_for_the_same_order_and_minus_one_for_the_reverse():
    assert macro_proxy.spearman([1.0, 2.0, 5.0], [10.0, 11.0, 30.0]) == pytest.approx(1.0)
    assert macro_proxy.spearman([1.0, 2.0, 5.0], [3.0, 2.0, 1.0]) == pytest.approx(-1.0)


def test_variant_keeps_the_ops_and_changes_only_the_macro_shape(tmp_path):
    base = load_genotype(macro_proxy.ROOT / "bench/results/macro_proxy_genotype.json")
    g = macro_proxy.variant(base, scale=8, channels=(16, 32), units=1, refine=("conv_3x3",))
    path = g.save(tmp_path / "g.json")
    back = load_genotype(path)  # validates
    assert (back.macro.scale, back.channels, back.units, back.macro.refine) == (8, (16, 32), 1, ("conv_3x3",))
    assert back.encoder == base.encoder and back.decoder == base.decoder and back.hnu == base.hnu[:1]


def test_a_tiny_run_trains_each_shape_twice_and_ranks_them(tmp_path):
    out = tmp_path / "res.json"
    macro_proxy.main(["--data", "embedded", "--steps", "2,3", "--only", "c0,c2,c3", "--work", str(tmp_path / "w"),
                      "--out", str(out)])
    res = json.loads(out.read_text())
    assert set(res["runs"]) == {"c0", "c2", "c3"} and res["steps"] == [2, 3]
    for row in res["runs"].values():
        for steps in ("2", "3"):
            meta = json.loads((macro_proxy.ROOT / row[steps]["run"] / "model.json").read_text())  # repo-relative
            assert meta["provenance"]["steps"] == int(steps)
            assert row[steps]["val_psnr"] == pytest.approx(meta["metrics"]["val_psnr"])
    assert -1.0 <= res["spearman_val"] <= 1.0 and res["proxy_first"] in res["runs"]
