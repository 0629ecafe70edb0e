"""``make demo``'s summary.json (hbl_edge.demo.run_demo): the README's demo figures are read from it."""

from __future__ import annotations

import io
import json
import types

import numpy as np
import pytest
from rich.console import Console

from pipeline_fakes import gain_model


@pytest.fixture
def tiny_demo(monkeypatch):
    """The demo at 64×36 with 1 round of 3 timed runs (its procedure, tiny), no video; loads counted."""
    import hbl_edge.demo_video
    from hbl_edge import demo
    from hbl_edge.runtime import machine
    from hbl_edge.search import deployed

    monkeypatch.setattr(demo, "DEMO_RESOLUTION", (64, 36))
    monkeypatch.setattr(demo, "TIMING", dict(warmup=1, repeats=3, rounds=1))
    monkeypatch.setattr(demo, "BASELINE_TIMING", dict(warmup=0, repeats=3))
    monkeypatch.setattr(hbl_edge.demo_video, "write_demo_video", lambda *a, **k: None)  # tested in test_stream_demo_video
    loads = []

    def load():
        loads.append({"loadavg": [float(len(loads))] * 3})
        return loads[-1]

    monkeypatch.setattr(machine, "machine_load", load)
    timed = []  # every measure_onnx call: (file names, resolution, its samples)
    real = deployed.measure_onnx

    def spy(paths, resolution, **kw):
        got = real(paths, resolution, **kw)
        timed.append(([p.name for p in map(__import__("pathlib").Path, paths)], tuple(resolution), kw, got))
        return got

    monkeypatch.setattr(deployed, "measure_onnx", spy)
    return types.SimpleNamespace(demo=demo, loads=loads, timed=timed)


def test_summary_rows_put_quality_and_latency_side_by_side(tmp_path, tiny_demo):
    from hbl_edge.data import open_dataset

    demo = tiny_demo.demo
    calls = []

    def search_fn(cfg, resume):  # stands in for the search: a known model, clip(1.5 x), in the bundle's place
        calls.append((cfg, resume))
        gain_model(tmp_path / "demo" / "search" / "model", 1.5)
        return types.SimpleNamespace(interrupted=False)

    out = tmp_path / "demo"
    summary = demo.run_demo(out, 6, "lowlight", search_fn, Console(file=io.StringIO()), lambda report: None)
    saved = json.loads((out / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary))

    # the budget is SCI's median, measured first, through the deployed path, with the search's runner settings
    (cfg, resume), = calls
    assert resume is False and cfg.out == str(out / "search")
    assert cfg.macro == "edge" and cfg.space == "edge" and cfg.quick and cfg.resolution == (64, 36)
    assert cfg.macro_scales == (4, 8) and cfg.macro_units == (1, 2) and cfg.steps_t == 6
    budget_files, res, kw, budget_samples = tiny_demo.timed[0]
    assert budget_files == ["sci.onnx"] and res == (64, 36) and len(budget_samples[0]) == 3
    assert kw["threads"] == cfg.latency_threads and kw["allow_spinning"] == cfg.latency_spinning
    assert cfg.latency_budget == pytest.approx(float(np.median(budget_samples[0])))
    assert saved["latency"]["budget_ms"] == cfg.latency_budget

    # one row per method; models and the peer timed in ONE pass through ONNX Runtime, baselines as numpy
    rows = {r["name"]: r for r in saved["rows"]}
    assert [r["name"] for r in saved["rows"]] == ["model", "sci", "gamma", "clahe", "input"]
    assert [rows[n]["kind"] for n in rows] == ["model", "peer", "baseline", "baseline", "input"]
    assert len(tiny_demo.timed) == 2
    pass_files, res, _, pass_samples = tiny_demo.timed[1]
    assert pass_files == ["model.onnx", "sci.onnx"] and res == (64, 36)
    for name, samples in zip(("model", "sci"), pass_samples):
        q25, q50, q75 = np.percentile(samples, [25, 50, 75])
        assert rows[name]["ms"] == pytest.approx(q50) and rows[name]["iqr_ms"] == pytest.approx(q75 - q25)
        assert rows[name]["latency_target"] is True
    for name in ("gamma", "clahe"):
        assert rows[name]["latency_target"] is False and rows[name]["ms"] > 0 and rows[name]["parameters"] == 0
    assert rows["input"]["ms"] is None and rows["input"]["latency_target"] is False
    assert rows["sci"]["parameters"] == 258
    assert rows["sci"]["description"].startswith("SCI's inference architecture, trained here supervised with L1 for 6 "
                                                  "steps (stage T's data sampler, crop and schedule), not SCI's own recipe")
    assert rows["model"]["parameters"] == json.loads((out / "search/model/model.json").read_text())["parameters"]
    # the load was measured right around the timing pass (the 4th and 5th of 6 readings)
    assert saved["latency"]["load"] == {"before": {"loadavg": [3.0] * 3}, "after": {"loadavg": [4.0] * 3}}
    assert saved["run"]["load"] == {"start": {"loadavg": [0.0] * 3}, "end": {"loadavg": [5.0] * 3}}

    # quality: the rows are the evaluations; the model's PSNR is that of clip(1.5 x), computed independently
    # (8-bit rounding as PEERS.md's procedure, then PSNR per image, averaged)
    for name in ("model", "sci", "gamma", "clahe", "input"):
        assert rows[name]["psnr"] == saved["psnr"][name] and rows[name]["ssim"] == saved["ssim"][name]
    src = open_dataset("embedded", "lowlight", "test")
    ours = []
    for i in range(len(src)):
        _, x, target = src.load(i)
        y = np.round(np.clip(1.5 * x, 0, 1) * 255) / 255
        ours.append(10 * np.log10(1.0 / np.mean((y - target) ** 2)))
    assert saved["test_images"] == len(ours) == 12
    assert abs(saved["psnr"]["model"] - float(np.mean(ours))) < 0.05
    sci_eval = json.loads((out / "eval/sci/eval.json").read_text())
    assert sci_eval["mean"]["psnr"] == saved["psnr"]["sci"] and sci_eval["method_kind"] == "peer"

    # the SCI-sized net was trained like stage T: its steps, crop and batch, L1
    meta = json.loads((out / "sci/weights.json").read_text())
    assert meta["parameters"] == 258 and meta["loss"]["terms"] == {"l1": 1.0}
    assert meta["provenance"]["steps"] == 6 and meta["provenance"]["config"]["crop"] == cfg.train_crop
    assert meta["provenance"]["config"]["batch_size"] == cfg.train_batch_size
    run = saved["run"]
    assert run["reused_finished_search"] is False and 0 <= run["search_and_train_seconds"] <= run["seconds"]
    assert run["machine"]["cpu"] and run["machine"]["cpu_cores"] >= 1

    # re-running reuses the finished search, the budget and the trained peer; only the timing pass is redone
    weights = (out / "sci/model.safetensors").read_bytes()
    text = io.StringIO()
    again = demo.run_demo(out, 6, "lowlight", search_fn, Console(file=text, width=200), lambda report: None)
    assert len(calls) == 1 and again["run"]["reused_finished_search"] is True
    assert again["run"]["search_and_train_seconds"] is None and again["psnr"] == saved["psnr"]
    assert again["latency"]["budget"] == saved["latency"]["budget"]  # budget.json, not measured again
    assert (out / "sci/model.safetensors").read_bytes() == weights
    assert [f for f, *_ in tiny_demo.timed] == [["sci.onnx"], ["model.onnx", "sci.onnx"], ["model.onnx", "sci.onnx"]]
    printed = text.getvalue()  # the rows as a table at the end
    for r in again["rows"]:
        assert r["name"] in printed and f"{r['psnr']:.2f}" in printed


def test_summary_rows_kinds_and_latency_targets():
    from hbl_edge.demo import summary_rows

    rows = summary_rows(
        {"model": 20.0, "sci": 18.0, "gamma": 16.0, "input": 11.0},
        {"model": 0.8, "sci": 0.7, "gamma": 0.6, "input": 0.3},
        {"model": {"ms": 9.0, "iqr_ms": 1.0}, "sci": {"ms": 14.0, "iqr_ms": 2.0}, "gamma": {"ms": 1.1, "iqr_ms": 0.1}},
        {"model": {"kind": "model", "parameters": 900, "description": "m"},
         "sci": {"kind": "peer", "parameters": 258, "description": "s"},
         "gamma": {"kind": "baseline", "parameters": 0, "description": "g"}},
    )
    assert [(r["name"], r["kind"], r["ms"], r["latency_target"]) for r in rows] == [
        ("model", "model", 9.0, True), ("sci", "peer", 14.0, True), ("gamma", "baseline", 1.1, False),
        ("input", "input", None, False)]
    assert rows[1] == {"name": "sci", "kind": "peer", "psnr": 18.0, "ssim": 0.7, "ms": 14.0, "iqr_ms": 2.0,
                       "parameters": 258, "latency_target": True, "description": "s"}


def test_demo_refuses_a_task_without_a_fast_peer(tmp_path, monkeypatch):
    from hbl_edge import demo, tasks
    from hbl_edge.errors import ConfigError

    monkeypatch.setattr(demo, "DEMO_PEER", {"lowlight": "sci"})
    with pytest.raises(ConfigError, match="the demo has no fast peer for task 'dehaze'; use one of lowlight"):
        demo.run_demo(tmp_path, 4, "dehaze", None, Console(file=io.StringIO()), lambda r: None)
    assert "dehaze" in tasks.TASKS
