"""bench/alpha_spread.py and bench/trained_seeds.py on a real (tiny) macro search run."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import alpha_spread  # noqa: E402
import trained_seeds  # noqa: E402

from test_macro import _tiny_macro_config  # noqa: E402


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from hbl_edge.search.driver import run_search

    tmp = tmp_path_factory.mktemp("seed_tables")
    cfg, run = _tiny_macro_config(tmp, train_steps=0)
    run_search(dataclasses.replace(cfg, stages="A,T", steps_t=2, train_crop=32))
    return run


def test_alpha_spread_reports_what_alpha_pt_holds(tiny_run, tmp_path):
    out = tmp_path / "spread.json"
    assert alpha_spread.main([str(tiny_run), "--out", str(out)]) == 0
    row = json.loads(out.read_text())["runs"][0]
    alpha = torch.load(tiny_run / "search/alpha.pt", weights_only=True)["alpha"]
    hnu = alpha[2].reshape(-1, alpha[2].shape[-1])
    ranges = sorted(float(r.max() - r.min()) for r in hnu)
    assert row["hnu"]["edges"] == hnu.shape[0] and row["hnu"]["logit_range_max"] == pytest.approx(ranges[-1])
    assert row["encoder_decoder"]["edges"] == alpha[0].shape[0] + alpha[1].shape[0]
    assert row["selection"] == "argmax" and row["arch_warmup"] == 0.0 and row["arch_lr"] == 0.05
    assert sum(row["op_counts"].values()) == alpha[0].shape[0] + alpha[1].shape[0] + hnu.shape[0]


def test_trained_seeds_groups_members_and_their_subsets(tiny_run, tmp_path):
    members = []
    for k in range(2):  # two "seeds": the run's bundle with its eval, the second scored 1 dB higher
        m = tmp_path / f"m{k}"
        shutil.copytree(tiny_run / "model", m)
        ev = json.loads((tiny_run / "eval.json").read_text())
        ev["mean"] = {**ev["mean"], "psnr": ev["mean"]["psnr"] + k}
        (m / "eval").mkdir(exist_ok=True)
        (m / "eval" / "eval.json").write_text(json.dumps(ev))
        members.append(m)
    out = tmp_path / "groups.json"
    assert trained_seeds.main(["--group", f"tiny={members[0]},{members[1]}", "--out", str(out)]) == 0
    g = json.loads(out.read_text())["groups"][0]
    base = json.loads((tiny_run / "eval.json").read_text())["mean"]["psnr"]
    assert g["name"] == "tiny" and [m["test_psnr"] for m in g["members"]] == pytest.approx([base, base + 1])
    assert g["test_psnr"]["mean"] == pytest.approx(base + 0.5) and g["test_psnr"]["std"] == pytest.approx(2 ** -0.5)
    assert g["members"][0]["loss"] == {"l1": 1.0} and g["subsets"]
    assert g["members"][0]["synthetic_mix"] == 0.0  # stage T trains on the real inputs alone
    with pytest.raises(SystemExit, match="no eval/eval.json"):
        trained_seeds.main(["--group", f"tiny={tiny_run}"])
