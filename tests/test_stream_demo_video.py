"""``make demo``'s video (hbl_edge.demo_video): the embedded panorama, enhanced through the stream pipeline."""

from __future__ import annotations

import io

import numpy as np
import pytest
from rich.console import Console

from hbl_edge.demo_video import FPS, GAP_PX, WINDOW, pan_frames, panorama, write_demo_video

from pipeline_fakes import gain_model

av = pytest.importorskip("av")


def test_pan_frames():
    pano = np.arange(20 * 50 * 3, dtype=np.uint8).reshape(20, 50, 3)
    frames = pan_frames(pano, (10, 20), step=5)
    assert len(frames) == 9 and frames[0].shape == (20, 10, 3)
    np.testing.assert_array_equal(frames[2], pano[:, 10:20])


def test_panorama_of_the_embedded_test_split():
    pano = panorama("lowlight")
    assert pano.dtype == np.uint8 and pano.shape[0] == 256 and pano.shape[1] > 1000
    assert pano.mean() < 60  # degraded (dark) inputs


def test_demo_video(tmp_path):
    bundle = gain_model(tmp_path / "run", 1.6).parent
    buf = io.StringIO()
    info = write_demo_video(tmp_path / "demo", bundle, "lowlight", Console(file=buf, width=200))
    text = buf.getvalue()
    n = info["frames"]
    with av.open(info["input"]) as c:
        inputs = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        assert float(c.streams.video[0].average_rate) == pytest.approx(FPS, rel=0.01)
    with av.open(info["before_after"]) as c:
        pairs = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(inputs) == len(pairs) == n > 100
    w, h = WINDOW
    assert pairs[0].shape == (h, 2 * w + GAP_PX, 3)
    for k in (0, n // 2, n - 1):
        left, right = pairs[k][:, :w].astype(float), pairs[k][:, w + GAP_PX:].astype(float)
        # The right half is the model's output (clip(1.6·x)) on the left half, up to H.264.
        assert np.abs(right - np.clip(left * 1.6, 0, 255)).mean() < 3
        assert np.abs(left - inputs[k]).mean() < 3
    assert f"hbl-edge stream {info['input']} --model {bundle} --input-loop -1 --preview 8080" in text
    assert "http://127.0.0.1:8080/" in text
