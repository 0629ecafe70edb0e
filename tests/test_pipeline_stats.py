"""Stream statistics (hbl_edge.runtime.stats): bounded windows, rates, gaps, the line and the JSON."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from hbl_edge.runtime.stats import WINDOW, LatencyWindow, RateMeter, StatsWriter, StreamStats, format_line


def test_latency_window_percentiles():
    w = LatencyWindow()
    assert w.summary() is None
    for v in range(1, 101):
        w.add(float(v))
    s = w.summary()
    assert s["p50"] == pytest.approx(50.5) and s["p99"] == pytest.approx(99.01) and s["max"] == 100 and s["n"] == 100


def test_latency_window_is_bounded():
    w = LatencyWindow()
    for v in range(WINDOW + 1000):
        w.add(float(v))
    s = w.summary()
    # Only the last WINDOW samples (1000 … WINDOW+999) count; the count keeps counting.
    assert s["n"] == WINDOW + 1000
    assert s["p50"] == pytest.approx(np.median(np.arange(1000, WINDOW + 1000)))
    assert w._ring.size == WINDOW


def test_rate_meter():
    r = RateMeter(window_s=2.0)
    t0 = 100.0
    for i in range(61):  # 30 fps for 2 s
        r.tick(t0 + i / 30)
    assert r.rate(t0 + 2.0) == pytest.approx(30.0, rel=0.02)
    assert r.average() == pytest.approx(30.0)
    assert r.rate(t0 + 10.0) == 0.0  # stopped: the window empties
    assert r.average() == pytest.approx(30.0)  # the run's average stays


def test_gaps_and_line():
    s = StreamStats()
    s.frame_in(1.0)
    t = time.monotonic()
    s.gap_started(at=t - 3.0)  # the last frame came 3 s ago
    snap = s.snapshot()
    assert snap["state"] == "waiting" and snap["gaps"]["count"] == 1 and snap["gaps"]["current_s"] >= 3.0
    assert "waiting for source 3." in format_line(snap)
    d = s.gap_ended()
    assert d == pytest.approx(3.0, abs=0.1)
    snap = s.snapshot()
    assert snap["state"] == "running" and snap["gaps"]["current_s"] is None
    assert snap["gaps"]["total_s"] == pytest.approx(d, abs=1e-3) and len(snap["gaps"]["last"]) == 1
    line = format_line(snap)
    assert line.startswith("running · in ") and "gaps 1 (3.0s)" in line


def test_stats_writer_is_atomic_and_final(tmp_path):
    s = StreamStats()
    w = StatsWriter(s, tmp_path / "a" / "stats.json", every_s=0.05)
    w.check()
    w.start()
    s.frame_in(2.0)
    s.frame_out(1.0, 5.0)
    time.sleep(0.2)
    s.state = "ended"
    w.close()
    doc = json.loads((tmp_path / "a" / "stats.json").read_text())
    assert doc["state"] == "ended" and doc["frames"]["out"] == 1 and doc["latency_ms"]["infer"]["p50"] == 5.0
    assert not list((tmp_path / "a").glob(".stats.json.*"))  # no temporary file left
