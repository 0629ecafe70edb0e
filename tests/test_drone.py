"""Drone integrations on loopback: BlueROV2/BlueOS (H.264 RTP in and out) and Blueye (RTSP in).

- BlueROV2: a PyAV H.264 RTP sender on 127.0.0.1 plays BlueOS's camera (``tests/streams.py``
  RtpSender, payload 96), ``hbl-edge stream rtp://@:P rtp://127.0.0.1:Q`` runs as a device would
  run it (a subprocess, torch unimportable, a copied export/ folder), and a receiver on Q plays
  QGroundControl. The received frames are the model's output on the sent frames (H.264
  tolerance); the sender goes silent for 4 s and returns: the output stream stays up (it shows
  "waiting for source"), the gap is counted, frames resume.
- Blueye: gst-rtsp-server serves /test (``RtspServer``), the pipeline reads
  ``rtsp://127.0.0.1:P/test`` through the library API; the server goes away for 3 s and comes back.

The model is :func:`pipeline_fakes.gain_model`: a real exported network computing clip(1.6·x),
so "enhanced" is checkable. Ephemeral ports; each test stops by itself in seconds.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from hbl_edge.runtime.enhancer import Enhancer
from hbl_edge.runtime.pipeline import build_pipeline
from hbl_edge.runtime.video import VideoOptions, open_source
from hbl_edge.runtime.video.base import SourceLost
from hbl_edge.runtime.video.stamp import read_stamp

from pipeline_fakes import FakeSink, gain_model
from streams import RtpSender, RtspServer, free_tcp_port, free_udp_port, requires_rtsp_server, synth_frame
from torchless import torchless_env

pytest.importorskip("av")
GAIN = 1.6
SIZE = (320, 240)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return gain_model(tmp_path_factory.mktemp("drone") / "gain", GAIN)


def expected(i: int) -> np.ndarray:
    return np.clip(np.rint(synth_frame(i, SIZE, stamp=True).astype(np.float64) * GAIN), 0, 255)


class Receiver:
    """QGroundControl's part: receive an RTP stream (our own rtp:// source) and keep every frame."""

    def __init__(self, port: int) -> None:
        self.src = open_source(f"rtp://@:{port}", VideoOptions(timeout_s=1.0))
        self.src.open()
        self.frames: list[tuple[float, int | None, np.ndarray]] = []
        self.lost = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                f = self.src.read()
            except SourceLost:
                self.lost += 1
                self.src.close()
                self.src.open()
                continue
            if f is None:
                return
            self.frames.append((time.monotonic(), read_stamp(f.image), f.image))

    def stamped(self) -> list[tuple[float, int, np.ndarray]]:
        return [f for f in list(self.frames) if f[1] is not None]

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(5)
        self.src.close()


def wait_until(fn, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = fn()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def stats_of(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def test_bluerov2_rtp_relay_survives_a_dropped_tether(model, tmp_path):
    p_in, p_out = free_udp_port(), free_udp_port()
    stats = tmp_path / "stats.json"
    sdp = tmp_path / "enhanced.sdp"
    rx = Receiver(p_out)
    proc = subprocess.Popen(
        [sys.executable, "-m", "hbl_edge.cli", "stream", f"rtp://@:{p_in}", f"rtp://127.0.0.1:{p_out}", "--model",
         str(model), "--input-timeout", "1", "--stats-json", str(stats), "--sdp", str(sdp), "--threads", "1"],
        cwd=tmp_path, env=torchless_env(tmp_path / "blocker"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sender = None
    try:
        wait_until(lambda: (stats_of(stats) or {}).get("state") in ("waiting", "running"), 60, "the relay to start")
        sender = RtpSender(p_in, fps=30, size=SIZE)  # BlueOS starts sending
        wait_until(lambda: len(rx.stamped()) >= 30, 20, "30 enhanced frames at QGroundControl's port")
        sender.pause()  # the tether drops
        t_pause = time.monotonic()
        waiting = wait_until(lambda: (s := stats_of(stats)) and s["state"] == "waiting" and s, 10, "state waiting")
        assert waiting["gaps"]["count"] == 1
        time.sleep(max(0.0, 4.0 - (time.monotonic() - t_pause)))
        before = len(rx.stamped())
        sender.resume()
        t_resume = time.monotonic()
        wait_until(lambda: len(rx.stamped()) >= before + 30, 20, "frames after the source came back")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if sender is not None:
            sender.stop()
        if proc.poll() is None:
            proc.kill()
        rx.stop()
    assert proc.returncode == 0, err
    final = json.loads(stats.read_text())
    g = final["gaps"]
    assert g["count"] == 1 and 3.5 <= g["total_s"] <= 6.5, g  # 4 s of silence (+ a keyframe wait)
    assert sdp.read_text().startswith("v=0") and "H264/90000" in sdp.read_text()
    frames = rx.stamped()
    # Enhanced: every received frame is the model's output on the frame BlueOS sent with that
    # stamp (two H.264 encodes in between), and far from the raw frame.
    err_model = np.array([np.abs(img - expected(s)).mean() for _, s, img in frames])
    err_raw = np.array([np.abs(img.astype(np.float64) - synth_frame(s, SIZE, stamp=True)).mean() for _, s, img in frames])
    assert np.median(err_model) < 4 and np.mean(err_model < 8) > 0.9, np.percentile(err_model, [50, 90, 100])
    assert np.median(err_raw) > 5 * np.median(err_model)
    # The output stream stayed up during the gap: "waiting for source" pictures (no stamp) came
    # through the same stream, then stamped frames from after the gap.
    during = [img for t, s, img in rx.frames if t_pause + 1.5 < t < t_resume and s is None]
    assert during and max(img.mean() for img in during) < 60
    after = [s for t, s, _ in frames if t > t_resume + 0.2]
    assert after and min(after) > max(s for t, s, _ in frames if t < t_pause)
    assert final["sinks"][f"rtp://127.0.0.1:{p_out}"]["failed"] is None
    assert final["sinks"][f"rtp://127.0.0.1:{p_out}"]["gap_frames"] >= 4
    assert "source gap" in out and "done:" in out


class Recording(Enhancer):
    """The Enhancer, keeping every (input, output) pair it made."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.pairs: list[tuple[np.ndarray, np.ndarray]] = []

    def process(self, images, temporal=None):
        outs = super().process(images, temporal)
        self.pairs.extend((np.array(i), o) for i, o in zip(images, outs))
        return outs


@requires_rtsp_server
def test_blueye_rtsp_input_survives_the_server_going_away(model):
    port = free_tcp_port()
    server = RtspServer(port, "/test", size=SIZE)
    enh = Recording(model, backend="ort", threads=1)
    sink = FakeSink("rtp://127.0.0.1:5601", keep_images=True)  # a stream sink: gets gap pictures too
    pipe = build_pipeline(enh, server.url, sink, timeout_s=1.0, handle_signals=False, reconnect_base_s=0.2,
                          reconnect_cap_s=0.5, duration_s=30)
    pipe.prepare()
    thread = threading.Thread(target=pipe.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: len(sink.indices) >= 20, 20, "20 frames from the RTSP server")
        server.stop()  # the vehicle's server goes away
        t_stop = time.monotonic()
        wait_until(lambda: pipe.stats.state == "waiting", 10, "the source to count as lost")
        time.sleep(max(0.0, 3.0 - (time.monotonic() - t_stop)))
        n_before = len(sink.indices)
        server.start()  # … and comes back on the same port
        wait_until(lambda: len(sink.indices) >= n_before + 20, 20, "frames after the server came back")
    finally:
        pipe.stop()
        thread.join(15)
        server.stop()
        enh.close()
    assert not thread.is_alive()
    final = pipe.stats.snapshot()
    g = final["gaps"]
    assert g["count"] == 1 and 2.8 <= g["total_s"] <= 8, g
    assert g["reconnects"] >= 2  # refused while the server was down, then accepted
    assert sink.closed == 1 and len(sink.placeholders) >= 2
    # Every frame that came in over RTSP was enhanced by the model (exactly clip(1.6·x)), and the
    # sink got those outputs, in order (a live sink may skip one it was too slow for).
    assert len(enh.pairs) == final["frames"]["out"] and len(sink.images) == len(sink.indices)
    for x, y in enh.pairs:
        np.testing.assert_array_equal(y, np.clip(np.rint(x.astype(np.float64) * GAIN), 0, 255).astype(np.uint8))
    outs = iter(o for _, o in enh.pairs)
    assert all(any(np.array_equal(img, o) for o in outs) for img in sink.images)
    assert len(sink.images) + final["sinks"]["rtp://127.0.0.1:5601"]["dropped"] == len(enh.pairs)
    assert sink.images[0].shape == (SIZE[1], SIZE[0], 3)
