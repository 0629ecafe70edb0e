"""Memory stays bounded on a long live run: the slope of the process's RSS, not one sample.

``hbl-edge stream rtp://@:P rtp://127.0.0.1:Q --temporal --stats-json …`` is fed a 30 fps
loopback H.264 stream (tests/streams.py RtpSender); its RSS (/proc/PID/status) is sampled after
a warm-up and a least-squares line is fitted. One leaked output frame per input frame would be
≈ 7 MB/s at 320×240; the default test (about 8 s) allows 1 MB/s, the ``slow`` one (about 20 s)
0.2 MB/s, and checks on a deliberately leaking sink that the measurement sees a leak.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline_fakes import gain_model
from streams import RtpSender, free_udp_port
from torchless import torchless_env

pytest.importorskip("av")
SIZE = (320, 240)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def rss_slope(pid: int, warmup_s: float, measure_s: float, every_s: float = 0.25) -> tuple[float, list[float]]:
    """MB/s of a least-squares line through RSS samples taken after ``warmup_s``."""
    time.sleep(warmup_s)
    t0 = time.monotonic()
    ts, ms = [], []
    while time.monotonic() - t0 < measure_s:
        ts.append(time.monotonic() - t0)
        ms.append(rss_mb(pid))
        time.sleep(every_s)
    return float(np.polyfit(ts, ms, 1)[0]), ms


def test_slope_fit():
    assert np.polyfit([0, 1, 2, 3], [10, 12, 14, 16], 1)[0] == pytest.approx(2.0)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return gain_model(tmp_path_factory.mktemp("memory") / "gain")


def run_relay(model, tmp_path, warmup_s: float, measure_s: float) -> tuple[float, list[float], dict]:
    import json

    p_in, p_out = free_udp_port(), free_udp_port()
    hold = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # a bound receiver port: no ICMP refusals
    hold.bind(("127.0.0.1", p_out))
    stats = tmp_path / "stats.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "hbl_edge.cli", "stream", f"rtp://@:{p_in}", f"rtp://127.0.0.1:{p_out}", "--model",
         str(model), "--temporal", "--threads", "1", "--stats-json", str(stats), "--sdp", str(tmp_path / "o.sdp")],
        cwd=tmp_path, env=torchless_env(tmp_path / "blocker"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    sender = RtpSender(p_in, fps=30, size=SIZE)
    try:
        slope, samples = rss_slope(proc.pid, warmup_s, measure_s)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        proc.terminate()
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
    finally:
        sender.stop()
        hold.close()
        if proc.poll() is None:
            proc.kill()
    return slope, samples, json.loads(stats.read_text())


def test_rss_flat_on_a_live_stream(model, tmp_path):
    slope, samples, final = run_relay(model, tmp_path, warmup_s=3.0, measure_s=5.0)
    assert final["frames"]["out"] > 60  # it really streamed
    assert slope < 1.0, (slope, samples)


LEAKY = r"""
import sys, time
sys.path.insert(0, {tests!r})
from pipeline_fakes import FakeSink
from hbl_edge.runtime.enhancer import Enhancer
from hbl_edge.runtime.pipeline import build_pipeline
sink = FakeSink("rtp://127.0.0.1:9", keep_images=True)  # keeps every frame: a leak
pipe = build_pipeline(Enhancer({model!r}, backend="ort", threads=1), "rtp://@:{port}", sink, timeout_s=1.0,
                      duration_s={duration}, handle_signals=False)
pipe.run()
"""


@pytest.mark.slow
def test_rss_flat_on_a_long_live_stream_and_a_leak_shows(model, tmp_path):
    slope, samples, final = run_relay(model, tmp_path, warmup_s=5.0, measure_s=14.0)
    assert final["frames"]["out"] > 200
    assert slope < 0.2, (slope, samples)
    # The same measurement on a sink that keeps every frame (230 kB each) sees the leak.
    port = free_udp_port()
    code = LEAKY.format(tests=str(Path(__file__).parent), model=str(model), port=port, duration=12)
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
    sender = RtpSender(port, fps=30, size=SIZE)
    try:
        leak, leak_samples = rss_slope(proc.pid, 3.0, 5.0)
    finally:
        sender.stop()
        proc.wait(30)
    assert leak > 1.0, (leak, leak_samples)
