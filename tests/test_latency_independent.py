"""Whole-network timing as deployed, and the accuracy benchmark's independent timer."""

from __future__ import annotations

import importlib.util
import inspect
import statistics
from pathlib import Path

import numpy as np
import pytest

from hbl_edge.search import deployed, timing
from hbl_edge.search.latency import random_genotype

BENCH = Path(__file__).resolve().parents[1] / "bench" / "latency_accuracy.py"
TINY = dict(channels=(4, 8), units=1)


def _bench():
    spec = importlib.util.spec_from_file_location("latency_accuracy_bench", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _boom(*a, **k):
    raise AssertionError("the profiler's timing code was used")


@pytest.fixture
def no_profiler_timing(monkeypatch):
    """Every timing function of the profiler (and of the deployed-runner timing) raises."""
    for name in ("time_block", "time_blocks", "retime_noisy", "make_harness"):
        monkeypatch.setattr(timing, name, _boom)
    from hbl_edge.search import profiler

    for name in ("time_blocks", "retime_noisy", "make_harness", "measure_networks", "measure_network"):
        monkeypatch.setattr(profiler, name, _boom)


def test_bench_timer_is_its_own(tmp_path, no_profiler_timing, monkeypatch):
    pytest.importorskip("onnxruntime")
    bench = _bench()
    monkeypatch.setattr(deployed, "measure_networks", _boom)
    monkeypatch.setattr(deployed, "_consecutive", _boom)
    for fn in (bench.time_consecutively, bench.time_independently, bench._session):
        assert fn.__module__ == bench.__name__ and "hbl_edge" not in inspect.getsource(fn)
    g = random_genotype(**TINY, seed=0)
    paths = bench.export_all([g, random_genotype(**TINY, seed=1)], tmp_path)
    x = np.random.default_rng(0).random((1, 3, 14, 18), dtype=np.float32)
    got = bench.time_independently(paths, x, threads=1, warmup=1, repeats=3, rounds=2)
    assert len(got) == 2 and all(len(r["round_ms"]) == 2 for r in got)
    assert got[0]["ms"] == pytest.approx(float(np.mean(got[0]["round_ms"])), abs=1e-3)


def test_bench_summary_by_hand():
    bench = _bench()
    s = bench.summarise([110.0, 95.0, 100.0, 130.0], [100.0, 100.0, 100.0, 100.0])
    assert s["within_10pct"] == 0.75 and s["within_5pct"] == 0.5 and s["within_20pct"] == 0.75
    assert s["mean_pct_error"] == pytest.approx(8.75) and s["median_abs_pct_error"] == pytest.approx(7.5)
    assert s["max_abs_pct_error"] == pytest.approx(30.0)
    assert bench.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert bench.spearman([1, 2, 3, 4], [40, 30, 20, 10]) == pytest.approx(-1.0)
    assert set(bench.SHAPES) >= {"full", "quick"}


class _FakeRunner:
    log: list = []
    live: set = set()

    def __init__(self, name: str, ms: float, clock) -> None:
        assert not _FakeRunner.live, "a runner opened while another is alive"
        self.name, self.ms, self.clock = name, ms, clock
        _FakeRunner.live.add(name)
        _FakeRunner.log.append(("open", name))

    def run(self, x):
        _FakeRunner.log.append(("run", self.name))
        self.clock.now += self.ms / 1e3

    def close(self):
        _FakeRunner.live.discard(self.name)
        _FakeRunner.log.append(("close", self.name))


def test_deployed_fresh_runner_consecutive_runs_alternating_rounds(monkeypatch, no_profiler_timing):
    class Clock:
        now = 0.0

        def __call__(self):
            return self.now

    clock = Clock()
    monkeypatch.setattr(deployed, "clock", clock)
    cost = {"net0": 4.0, "net1": 9.0}
    monkeypatch.setattr(deployed, "export_network", lambda g, where, seed=0: where)
    monkeypatch.setattr(deployed, "_ort_opener", lambda path, *a: (lambda: _FakeRunner(path.name, cost[path.name], clock)))
    _FakeRunner.log.clear()
    gs = [random_genotype(**TINY, seed=0), random_genotype(**TINY, seed=1)]
    got = deployed.measure_networks(gs, "onnxruntime", (18, 14), repeats=3, warmup=2, rounds=2, samples=True)
    assert got == [pytest.approx([4.0] * 6), pytest.approx([9.0] * 6)]
    per = ["open"] + ["run"] * 5 + ["close"]
    assert _FakeRunner.log == [(w, n) for n in ("net0", "net1", "net1", "net0") for w in per]
    assert deployed.measure_networks(gs, "onnxruntime", (18, 14), repeats=3, warmup=0) == pytest.approx([4.0, 9.0])


def test_deployed_measurement_runs_the_deploy_runner(tmp_path, no_profiler_timing):
    pytest.importorskip("onnxruntime")
    runs: list[float] = []
    g = random_genotype(**TINY, seed=2)
    ms = deployed.measure_network(g, "onnxruntime", (18, 14), repeats=3, warmup=1, rounds=2, threads=1,
                                  allow_spinning=False, samples=runs)
    assert len(runs) == 6 and ms == pytest.approx(statistics.median(runs))


@pytest.mark.parametrize("spinning, want", [(False, "0"), (True, "1"), (None, None)])
def test_ort_runner_allow_spinning(tmp_path, spinning, want):
    pytest.importorskip("onnxruntime")
    from hbl_edge.runtime.ort_runner import OrtRunner

    path = deployed.export_network(random_genotype(**TINY, seed=0), tmp_path / "net")
    with OrtRunner(path, providers=["CPUExecutionProvider"], threads=1, allow_spinning=spinning) as r:
        opts = r.session.get_session_options()
        if want is None:  # left to onnxruntime: no entry at all
            with pytest.raises(RuntimeError, match="allow_spinning"):
                opts.get_session_config_entry("session.intra_op.allow_spinning")
        else:
            assert opts.get_session_config_entry("session.intra_op.allow_spinning") == want
        out = r.run(np.zeros((1, 3, 14, 18), dtype=np.float32))
        assert out.shape == (1, 3, 14, 18)


def test_bench_isolated_table_uses_the_one_block_graphs():
    from latency_fixtures import synthetic_table

    bench = _bench()
    t = synthetic_table()
    t.settings = {"call_overhead_ms": 0.05}
    t.entries[0]["chain_ms"] = [2.0, 5.0]
    t.calibration = {"scale": 2.0, "offset_ms": 1.0}
    iso = bench.isolated_table(t)
    assert iso.entries[0]["ms"] == pytest.approx(1.95) and iso.calibration is None
    assert [e["ms"] for e in iso.entries[1:]] == [e["ms"] for e in t.entries[1:]]
