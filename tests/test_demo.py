"""``make demo``'s summary.json (hbl_edge.demo.run_demo): the README's demo figures are read from it."""

from __future__ import annotations

import io
import json
import types

import numpy as np
from rich.console import Console

from pipeline_fakes import gain_model


def test_summary_records_the_figures_the_time_and_the_measured_load(tmp_path, monkeypatch):
    import hbl_edge.demo_video
    from hbl_edge import demo
    from hbl_edge.data import open_dataset
    from hbl_edge.runtime import machine

    loads = iter([{"loadavg": [1.0, 1.0, 1.0], "tag": "start"}, {"loadavg": [3.0, 2.0, 1.0], "tag": "end"}])
    monkeypatch.setattr(machine, "machine_load", lambda: next(loads))
    monkeypatch.setattr(hbl_edge.demo_video, "write_demo_video", lambda *a, **k: None)  # tested in test_stream_demo_video
    calls = []

    def search_fn(cfg, resume):  # stands in for the search: a known model, clip(1.5 x), in the bundle's place
        calls.append((cfg.out, resume))
        gain_model(tmp_path / "demo" / "search" / "model", 1.5)
        return types.SimpleNamespace(interrupted=False)

    out = tmp_path / "demo"
    summary = demo.run_demo(out, 10, "lowlight", search_fn, Console(file=io.StringIO()), lambda report: None)
    assert calls == [(str(out / "search"), False)]
    saved = json.loads((out / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    run = saved["run"]
    assert run["load"] == {"start": {"loadavg": [1.0, 1.0, 1.0], "tag": "start"},
                           "end": {"loadavg": [3.0, 2.0, 1.0], "tag": "end"}}
    assert run["reused_finished_search"] is False and 0 <= run["search_and_train_seconds"] <= run["seconds"]
    assert run["machine"]["cpu"] and run["machine"]["cpu_cores"] >= 1
    # the model's PSNR is that of clip(1.5 x) on the embedded test pairs, computed here independently
    # (8-bit rounding as PEERS.md's procedure, then PSNR per image, averaged)
    src = open_dataset("embedded", "lowlight", "test")
    ours = []
    for i in range(len(src)):
        _, x, target = src.load(i)
        y = np.round(np.clip(1.5 * x, 0, 1) * 255) / 255
        ours.append(10 * np.log10(1.0 / np.mean((y - target) ** 2)))
    assert saved["test_images"] == len(ours) == 12
    assert abs(saved["psnr"]["model"] - float(np.mean(ours))) < 0.05
    assert saved["psnr"]["model"] > saved["psnr"]["input"]  # brightening a dark input helps
    # re-running reuses the finished model: no search, and it says so
    loads = iter([{"loadavg": [0.5, 0.5, 0.5]}, {"loadavg": [0.5, 0.5, 0.5]}])
    again = demo.run_demo(out, 10, "lowlight", search_fn, Console(file=io.StringIO()), lambda report: None)
    assert len(calls) == 1 and again["run"]["reused_finished_search"] is True
    assert again["run"]["search_and_train_seconds"] is None and again["psnr"] == saved["psnr"]
