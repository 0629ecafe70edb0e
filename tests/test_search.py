"""The search driver: L → A → T end to end on a tiny supernet, resume, stage subsets, errors."""

import json
import os
import signal

import pytest
import torch

from hbl_edge.errors import ConfigError
from hbl_edge.genotype import load_genotype
from hbl_edge.losses import parse_loss_spec
from hbl_edge.search.config import SearchConfig
from hbl_edge.search.driver import run_search, search_summary


def tiny(tmp_path, name="run", **kw):
    base = dict(
        out=str(tmp_path / name), channels=(4, 8), units=1, crop=32, batch_size=2, steps_l=3, steps_a=3,
        steps_t=4, train_crop=32, train_batch_size=2, critic_steps=5, ckpt_every=2, w_lr=0.02, upper_lr=0.05,
        device="jetson-orin-nano", latency_budget=5.0, resolution=(64, 48), deterministic=True,
    )
    base.update(kw)
    return SearchConfig(**base)


def test_full_search_writes_every_artifact(tmp_path):
    res = run_search(tiny(tmp_path))
    out = tmp_path / "run"
    assert res.completed == ["L", "A", "T"] and not res.interrupted
    for f in ("config.json", "loss.json", "genotype.json", "latency.json", "search/log.jsonl", "search/report.json",
              "model/model.json", "model/model.safetensors", "eval.json",
              "plots/lambda.png", "plots/alpha.png", "plots/latency_vs_loss.png"):
        assert (out / f).exists(), f
    spec = parse_loss_spec(out / "loss.json")
    assert set(spec.terms) == {"l1", "l2", "color", "ssim", "tv", "laplacian"}
    assert abs(sum(spec.terms.values()) / len(spec.terms) - 1.0) < 1e-5  # λ ≥ 0, mean 1
    assert min(spec.terms.values()) >= 0
    g = load_genotype(out / "genotype.json")
    assert g.units == 1 and g.channels == (4, 8)
    records = [json.loads(line) for line in (out / "search/log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["stage"] == "L"] == [1, 2, 3]
    a = [r for r in records if r["stage"] == "A"]
    assert len(a) == 3 and all("expected_latency_ms" in r and "genotype" in r for r in a)
    lat = json.loads((out / "search/report.json").read_text())["latency"]
    # no measured table for a Jetson here: the roofline estimate is used and says so
    assert lat["estimate"] is True and "ESTIMATE" in lat["model"] and lat["measured_ms"] is None
    bundle = json.loads((out / "model/model.json").read_text())
    assert bundle["genotype"] == g.to_dict() and bundle["loss"]["terms"] == spec.terms
    summary = search_summary(out)
    assert {"loss", "genotype", "latency", "test"} <= set(summary)


def _interrupt_at(stage_name, step_no):
    def progress(stage, step, total, rec):
        if stage == stage_name and step == step_no:
            os.kill(os.getpid(), signal.SIGINT)

    return progress


@pytest.mark.parametrize("stage", ["L", "A"])
def test_killed_search_resumes_to_the_same_result(tmp_path, stage):
    kw = dict(stages="L,A", steps_l=4, steps_a=4)
    run_search(tiny(tmp_path, "straight", **kw))
    cfg = tiny(tmp_path, "killed", **kw)
    part = run_search(cfg, progress=_interrupt_at(stage, 3))
    assert part.interrupted
    assert not (tmp_path / "killed" / "genotype.json").exists()
    run_search(cfg, resume=True)
    a, b = tmp_path / "straight", tmp_path / "killed"
    assert json.loads((a / "genotype.json").read_text()) == json.loads((b / "genotype.json").read_text())
    assert parse_loss_spec(a / "loss.json").terms == parse_loss_spec(b / "loss.json").terms
    steps = [json.loads(x)["step"] for x in (b / "search/log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 1, 2, 3, 4]


def test_truncated_stage_marker_is_a_one_line_error_on_resume(tmp_path, monkeypatch):
    """loss.json marks stage L done: a truncated one is refused on resume, never taken as done."""
    cfg = tiny(tmp_path, stages="L,A", latency_budget=None)
    run_search(cfg)
    out = tmp_path / "run"
    good = (out / "loss.json").read_text()
    (out / "loss.json").write_text(good[: len(good) // 2])
    ran = []
    import hbl_edge.search.driver as driver

    monkeypatch.setattr(driver, "_stage_l", lambda *a: ran.append("L") or {})
    with pytest.raises(ConfigError) as e:
        run_search(cfg, resume=True)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("stage L's output is unreadable (") and "malformed JSON" in msg
    assert f"delete {out / 'loss.json'} to re-run stage L" in msg and ran == []
    (out / "loss.json").unlink()  # the fix the message gives: the stage runs again
    monkeypatch.undo()
    res = run_search(cfg, resume=True)
    assert res.completed == ["L"]  # A's genotype.json is intact and stays done
    assert set(parse_loss_spec(out / "loss.json").terms) == set(json.loads(good)["terms"])


def test_loss_spec_is_written_atomically(tmp_path, monkeypatch):
    """A failure mid-write leaves the previous file intact (no half-written marker)."""
    from hbl_edge.losses import LossSpec

    path = tmp_path / "loss.json"
    LossSpec({"l1": 1.0}).save(path)
    before = path.read_text()

    real = type(path).write_text

    def killed_mid_write(self, data, *a, **k):  # half the bytes land, then the process "dies"
        real(self, data[: len(data) // 2])
        raise OSError("killed")

    monkeypatch.setattr(type(path), "write_text", killed_mid_write)
    with pytest.raises(OSError):
        LossSpec({"l1": 0.5, "ssim": 0.5}).save(path)
    monkeypatch.undo()
    assert path.read_text() == before and [p.name for p in tmp_path.iterdir()] == ["loss.json"]


def test_stage_subsets_read_files_a_user_can_replace(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "loss.json").write_text(json.dumps({"format": "hbl-loss/1", "terms": {"l1": 1.0, "ssim": 0.5}}))
    res = run_search(tiny(tmp_path, stages="A", latency_budget=None))
    assert res.completed == ["A"] and (out / "genotype.json").exists()
    res = run_search(tiny(tmp_path, stages="T", latency_budget=None))
    assert res.completed == ["T"]
    assert json.loads((out / "model/model.json").read_text())["loss"]["terms"] == {"l1": 1.0, "ssim": 0.5}


def test_critic_objective_trains_and_saves_a_critic(tmp_path):
    run_search(tiny(tmp_path, stages="L", objective="critic"))
    out = tmp_path / "run"
    assert (out / "search/critic.safetensors").exists()
    prov = parse_loss_spec(out / "loss.json").provenance
    assert prov["stage"] == "L" and prov["trained"] is True


def test_user_errors(tmp_path):
    with pytest.raises(ConfigError, match="--order second"):
        run_search(tiny(tmp_path, order="first"))
    with pytest.raises(ConfigError, match="run stage L first"):
        run_search(tiny(tmp_path, stages="A"))
    with pytest.raises(ConfigError, match="--stages takes"):
        run_search(tiny(tmp_path, stages="L,X"))
    with pytest.raises(ConfigError, match="no search run"):
        run_search(tiny(tmp_path, name="none"), resume=True)
    run_search(tiny(tmp_path, name="done", stages="L"))
    with pytest.raises(ConfigError, match="already has the output of stage L"):
        run_search(tiny(tmp_path, name="done", stages="L"))
    with pytest.raises(ConfigError, match="different settings"):
        run_search(tiny(tmp_path, name="done", stages="L", seed=3), resume=True)
    with pytest.raises(ConfigError, match="latency-table"):
        run_search(tiny(tmp_path, name="jet", device="jetson", stages="A,T"))


def test_unreachable_budget_is_a_one_line_error_before_any_training(tmp_path):
    from hbl_edge.search.repair import BudgetError

    with pytest.raises(BudgetError) as e:
        run_search(tiny(tmp_path, stages="L,A", latency_budget=1e-6))
    msg = str(e.value)
    assert "below the fastest network this space allows" in msg and "\n" not in msg
    assert not (tmp_path / "run" / "loss.json").exists()  # stage L never ran
    assert not (tmp_path / "run" / "search" / "critic.safetensors").exists()


def test_derived_network_is_repaired_to_the_budget(tmp_path):
    """On a target measured by the model alone (a Jetson estimate), the repaired genotype's
    prediction fits a budget just above the space's floor; the report lists the changes."""
    from hbl_edge.genotype import Genotype
    from hbl_edge.search.latency import LatencyModel, load_latency_model
    from hbl_edge.search.repair import cheapest

    est = load_latency_model("jetson-orin-nano", (64, 48), "paper", (4, 8))
    start = Genotype(encoder=["conv_5x5"] * 9, decoder=["conv_5x5"] * 9, hnu=[["conv_3x3"] * 8], channels=(4, 8), units=1)
    floor = est.predict(cheapest(start, est.predict, est.fcm, est.hnu))
    budget = floor * 1.01
    run_search(tiny(tmp_path, stages="L", latency_budget=None))
    run_search(tiny(tmp_path, stages="A", latency_budget=budget))
    out = tmp_path / "run"
    rep = json.loads((out / "search/report.json").read_text())["latency"]
    model = LatencyModel(out / "latency.json")
    g = load_genotype(out / "genotype.json")
    argmax = out / "search/genotype_argmax.json"
    assert rep["repair"]["changes"] and model.predict(g) <= budget < model.predict(argmax)
    assert rep["predicted_ms"] == pytest.approx(model.predict(g))
    assert rep["argmax"]["predicted_ms"] == pytest.approx(model.predict(argmax))
    assert rep["measured_ms"] is None and "not this machine" in rep["why_not_measured"]
    first = rep["repair"]["changes"][0]
    assert load_genotype(argmax).to_dict() != g.to_dict() and first["ms_saved"] > 0


def _paired_folder(root, n=6, size=(40, 36)):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for sub in ("low", "high"):
        (root / sub).mkdir(parents=True)
    for i in range(n):
        clean = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
        Image.fromarray(clean).save(root / "high" / f"{i}.png")
        Image.fromarray(clean // 6).save(root / "low" / f"{i}.png")
    return root


def test_stage_t_never_tests_on_training_images(tmp_path, caplog):
    import logging

    data = _paired_folder(tmp_path / "train_only")
    with caplog.at_level(logging.WARNING, logger="hbl_edge.search.driver"):
        res = run_search(tiny(tmp_path, data=str(data), latency_budget=None, objective="fidelity"))
    assert res.report["T"]["test"] is None and not (tmp_path / "run" / "eval.json").exists()
    assert "no held-out test split" in caplog.text
    test = _paired_folder(tmp_path / "held_out")
    res = run_search(tiny(tmp_path, name="run2", data=str(data), test_data=str(test), latency_budget=None,
                          objective="fidelity"))
    assert json.loads((tmp_path / "run2" / "eval.json").read_text())["data"] == str(test)


def test_local_cpu_search_profiles_calibrates_and_measures(tmp_path):
    run_search(tiny(tmp_path, stages="L,A", device="cpu", backend="onnxruntime", resolution=(32, 24),
                    objective="fidelity"))
    out = tmp_path / "run"
    table = json.loads((out / "latency.json").read_text())
    assert table["estimate"] is False and table["calibration"] is not None
    lat = json.loads((out / "search/report.json").read_text())["latency"]
    assert lat["measured_ms"] > 0 and "error_pct" in lat and lat["estimate"] is False


def _stage_a_only(tmp_path, name, **kw):
    """Stage A alone on a tiny supernet with an L1 loss.json: (α after it, the step records)."""
    out = tmp_path / name
    out.mkdir()
    (out / "loss.json").write_text(json.dumps({"format": "hbl-loss/1", "terms": {"l1": 1.0}}))
    assert run_search(tiny(tmp_path, name=name, stages="A", **kw)).completed == ["A"]
    records = [json.loads(x) for x in (out / "search/log.jsonl").read_text().splitlines()]
    return torch.load(out / "search/alpha.pt")["alpha"], records


def test_hinge_latency_form_is_the_budget_as_a_constraint(tmp_path):
    """L · max(1, LAT/T)^β: under the budget the latency factor is exactly 1, so stage A equals the
    search without any latency term (and estimating the latency table does not disturb the
    search's random stream); over the budget, the latency steers α."""
    def stage_a(name, **kw):
        return _stage_a_only(tmp_path, name, **kw)

    zero, _ = stage_a("zero", latency_budget=None)
    loose, records = stage_a("loose", latency_form="hinge", latency_beta=2.0, latency_budget=1e9)
    # reachable (the space's floor is ≈ 0.55 ms here, else a BudgetError before stage A) but below
    # what the search's soft α costs (≈ 0.60 ms), so max(1, LAT/T) > 1 from the first step
    tight, tight_records = stage_a("tight", latency_form="hinge", latency_beta=2.0, latency_budget=0.58)
    assert all(r["expected_latency_ms"] > 0.58 for r in tight_records)
    assert all("expected_latency_ms" in r for r in records)
    assert all(torch.equal(a, b) for a, b in zip(zero, loose))  # max(1, LAT/T) = 1: no latency gradient
    assert max((a - b).abs().max().item() for a, b in zip(loose, tight)) > 1e-4  # over the budget it acts


def test_a_run_saved_by_an_older_version_resumes_with_its_saved_settings(tmp_path, caplog):
    """config.json written before ``macro_train_steps`` existed and with another default crop:
    ``--resume`` with the same command continues that run (legacy value, saved crop) instead of
    refusing it; a setting the command does give must still match."""
    run_search(tiny(tmp_path, name="old", stages="L"))
    path = tmp_path / "old" / "config.json"
    saved = json.loads(path.read_text())
    del saved["macro_train_steps"]
    saved["train_crop"] = 48  # the default of the version that wrote it
    saved["macro_refine"] = [[], ["conv_3x3"]]  # the refinement grid's default before boxmix_3x3
    path.write_text(json.dumps(saved))
    cfg = tiny(tmp_path, name="old", stages="L", train_crop=None)  # the same command: no --train-crop
    with caplog.at_level("WARNING", logger="hbl_edge.search.driver"):
        res = run_search(cfg, resume=True)
    assert not res.interrupted
    assert cfg.macro_train_steps == 0 and cfg.train_crop == 48 and cfg.macro_refine == ((), ("conv_3x3",))
    assert "macro_train_steps = 0" in caplog.text and "train_crop = 48" in caplog.text
    with pytest.raises(ConfigError, match=r"different settings.*train_crop"):
        run_search(tiny(tmp_path, name="old", stages="L", train_crop=64), resume=True)


def test_stage_a_warmup_and_arch_lr_are_wired(tmp_path):
    """``arch_warmup``: stage A's first steps leave α where it starts (the log says which steps);
    ``arch_lr``: α's own learning rate, and the upper learning rate when it equals it."""
    def stage_a(name, **kw):
        return _stage_a_only(tmp_path, name, **kw)

    base, _ = stage_a("base")
    same, _ = stage_a("same", arch_lr=0.05)  # tiny()'s upper_lr
    other, _ = stage_a("other", arch_lr=0.5)
    warm, records = stage_a("warm", arch_warmup=0.67)  # 2 of 3 steps
    assert all(torch.equal(a, b) for a, b in zip(base, same))
    assert max((a - b).abs().max().item() for a, b in zip(base, other)) > 1e-4
    assert [r["upper_frozen"] for r in records] == [True, True, False]
    assert [r["upper_loss"] is None for r in records] == [True, True, False]
    # from the same initialisation, the warmed run took one Adam step of α (each logit moves by at
    # most the learning rate), the unwarmed run three
    from hbl_edge.search.supernet import Supernet

    cfg = tiny(tmp_path)
    cfg.validate()
    init = [a.detach() for a in Supernet(cfg.space, cfg.channels, cfg.units, seed=cfg.seed + 1).arch_parameters()]
    assert max((a - b).abs().max().item() for a, b in zip(warm, init)) <= 0.05 * 1.001
    assert max((a - b).abs().max().item() for a, b in zip(base, init)) > 0.06
