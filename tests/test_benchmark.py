"""Backend benchmark (hbl_edge.runtime.benchmark): statistics, interleaving, failure rows."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from hbl_edge.errors import BundleError, ConfigError
from hbl_edge.runtime import benchmark as bm
from hbl_edge.runtime.benchmark import (
    BenchRow, latency_stats, machine_info, measure, parse_backends, parse_resolution, percentile,
)


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def sleeper(clock: FakeClock, seconds, log: list, name: str):
    """A run function that 'takes' seconds[i] on the i-th call (cycling), recording the call order."""
    calls = {"n": 0}

    def run(batch):
        log.append(name)
        clock.t += seconds[calls["n"] % len(seconds)]
        calls["n"] += 1
        return batch

    return run


def test_percentile_matches_numpy_linear():
    rng = np.random.default_rng(0)
    for n in (1, 2, 5, 20, 101):
        xs = list(rng.random(n))
        for q in (0, 10, 50, 90, 99, 100):
            assert percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5  # by hand: rank 1.5
    assert percentile([10.0, 20.0], 90) == pytest.approx(19.0)  # rank 0.9
    with pytest.raises(ValueError):
        percentile([], 50)


def test_latency_stats_by_hand():
    st = latency_stats([0.010] * 9 + [0.100], batch=2)  # nine 10 ms calls and one 100 ms call
    assert st["p50_ms"] == pytest.approx(10.0)
    assert st["p90_ms"] == pytest.approx(10.0 + 0.1 * 90.0)  # rank 8.1 → 10 + 0.1·(100 − 10)
    assert st["p99_ms"] == pytest.approx(10.0 + 0.91 * 90.0)
    assert st["mean_ms"] == pytest.approx(19.0) and st["min_ms"] == pytest.approx(10.0)
    assert st["images_per_s"] == pytest.approx(2 * 10 / 0.19)
    assert st["calls"] == 10


def test_measure_interleaves_and_times_with_the_clock():
    clock, log = FakeClock(), []
    runs = {
        "a": sleeper(clock, [0.001], log, "a"),
        "b": sleeper(clock, [0.004, 0.002], log, "b"),
        "c": sleeper(clock, [0.010], log, "c"),
    }
    rows = measure(runs, np.zeros((1, 3, 4, 4), np.float32), warmup=2, iters=6, clock=clock)
    assert log[:6] == ["a", "a", "b", "b", "c", "c"]  # warm-up first, per backend
    rounds = [log[6 + 3 * i: 9 + 3 * i] for i in range(6)]
    assert rounds[:3] == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]]  # rotated order
    assert rows["a"].stats["p50_ms"] == pytest.approx(1.0) and rows["c"].stats["p99_ms"] == pytest.approx(10.0)
    assert rows["b"].times_s == pytest.approx([0.004, 0.002] * 3)
    assert rows["b"].stats["p50_ms"] == pytest.approx(3.0)
    assert rows["a"].warmup_s == pytest.approx(0.002)


def test_measure_reports_failures_and_keeps_going():
    clock, log = FakeClock(), []

    def broken(batch):
        raise RuntimeError("no compiler here\nlong traceback text")

    state = {"n": 0}

    def flaky(batch):
        state["n"] += 1
        if state["n"] > 3:
            raise ValueError("shape outside the profile")
        clock.t += 0.001

    rows = measure({"good": sleeper(clock, [0.002], log, "good"), "broken": broken, "flaky": flaky},
                   np.zeros((1, 3, 2, 2), np.float32), warmup=1, iters=5, clock=clock)
    assert rows["good"].status == "ok" and rows["good"].stats["calls"] == 5
    assert rows["broken"].status == "failed" and rows["broken"].reason == "warm-up: RuntimeError: no compiler here"
    assert rows["flaky"].status == "failed" and "shape outside the profile" in rows["flaky"].reason
    assert rows["flaky"].stats is None
    with pytest.raises(ConfigError):
        measure({}, np.zeros((1, 3, 2, 2)), iters=0)


def test_parsers():
    assert parse_backends("ort, torch,ort") == ["ort", "torch"]
    with pytest.raises(ConfigError, match="unknown backend 'cuda'"):
        parse_backends("ort,cuda")
    assert parse_resolution("1280x720") == (1280, 720)
    for bad in ("1280", "x720", "0x10", "axb"):
        with pytest.raises(ConfigError, match="WIDTHxHEIGHT"):
            parse_resolution(bad)


def test_unavailable_backends_are_rows(tmp_path, monkeypatch):
    (tmp_path / "model.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"")
    monkeypatch.setattr(bm, "unavailable_reason", lambda name: f"not installed: {name}-lib")
    report = bm.run_benchmark(tmp_path, "trt,trt-rtx,torch-compile", resolution=(8, 8), iters=1, warmup=0)
    assert [r.status for r in report.rows] == ["unavailable"] * 3
    assert report.row("trt").reason == "not installed: trt-lib"
    assert report.row("torch-compile").reason == "not installed: torch-lib"  # the torch registry entry
    d = report.to_dict()
    assert d["format"] == "hbl-bench/1" and d["machine"]["cpu"] and "synchronised" in d["timing"]
    with pytest.raises(BundleError):
        bm.run_benchmark(tmp_path / "nope", "ort")


def test_machine_info():
    info = machine_info()
    assert info["cpu"] and info["cpu_cores"] >= 1 and "onnxruntime" in info["versions"]
    assert info["gpu"] is None or "sm_" in info["gpu"]


def test_benchmark_module_imports_no_torch():
    code = ("import sys, hbl_edge.runtime.benchmark as b; b.machine_info()\n"
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]\nassert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_bench_row_dict():
    row = BenchRow("ort", "ok", stats={"p50_ms": 1.0})
    assert row.to_dict()["stats"]["p50_ms"] == 1.0
