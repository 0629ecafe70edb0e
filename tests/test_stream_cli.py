"""``hbl-edge stream`` on a device without torch: from a copied export/ folder only.

Every command here runs in a subprocess where importing torch, torchvision or kornia fails
(tests/torchless.py): file → file + image folder with the exact model output, bad arguments
(one line, exit 2, nothing started or written), and SIGINT/SIGTERM (drain, close, exit 0, the
mp4 plays).
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from hbl_edge.bundle import save_bundle
from hbl_edge.export import export_onnx
from hbl_edge.export.onnx_export import parity_images
from hbl_edge.network import Network
from hbl_edge.runtime.enhancer import Enhancer

from streams import make_clip
from test_enhancer import TINY
from torchless import run_torchless, torchless_env

av = pytest.importorskip("av")


@pytest.fixture(scope="module")
def device(tmp_path_factory):
    """A copy of a tiny bundle's export/ folder (all a device gets), and a short clip."""
    root = tmp_path_factory.mktemp("stream_cli")
    torch.manual_seed(0)
    bundle = save_bundle(root / "run", Network(TINY).eval(), task="lowlight", loss={"l1": 1.0})
    export_onnx(bundle, root / "run" / "export", images=parity_images(0, [(1, 5, 7)]))
    model = shutil.copytree(root / "run" / "export", root / "device" / "model")
    clip = make_clip(root / "device" / "clip.mp4", frames=12, size=(96, 64))
    return model, clip


def decode(path):
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    return lines[0]


def test_file_to_mp4_and_frames_without_torch(device, tmp_path):
    model, clip = device
    out, frames, stats = tmp_path / "out.mp4", tmp_path / "frames", tmp_path / "stats.json"
    proc = run_torchless(["stream", str(clip), str(out), f"{frames}/", "--model", str(model), "--stats-json", str(stats)],
                         tmp_path / "blocker", cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "done: 12 frames enhanced" in proc.stdout
    doc = json.loads(stats.read_text())
    assert doc["frames"]["out"] == 12 and doc["frames"]["dropped"] == 0 and doc["state"] == "ended"
    assert doc["model"]["backend"] == "ort" and doc["model"]["task"] == "lowlight"
    assert doc["model"]["allow_spinning"] is False  # the stream default (--ort-spinning turns it on)
    assert doc["model"]["model"].startswith(str(model))
    # The image folder holds exactly the model's output on each decoded input frame.
    pngs = sorted(frames.glob("*.png"))
    assert len(pngs) == 12
    with Enhancer(model, backend="ort", threads=1) as enh:
        for i, src in enumerate(decode(clip)):
            got = np.asarray(Image.open(pngs[i]).convert("RGB")).astype(int)
            want = enh.enhance(src).astype(int)
            assert np.abs(got - want).max() <= 1, i
    assert len(decode(out)) == 12


def _busy_tcp_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


NO_X265 = "import av\nav.codecs_available = frozenset(av.codecs_available) - {'libx265'}\n"


@pytest.mark.parametrize("case", ["scheme", "input", "model", "bundle-without-export", "backend", "preview", "flip",
                                  "rtsp-port", "rtp-port", "codec-name", "codec-missing"])
def test_bad_arguments_one_line_exit_2_nothing_started(device, tmp_path, case):
    model, clip = device
    out = tmp_path / "out.mp4"
    args = ["stream", str(clip), str(out), "--model", str(model)]
    held = None
    preamble = ""
    if case == "scheme":
        args[1], expect = "foo://x", "unknown stream URI scheme 'foo'"
    elif case == "input":
        args[1], expect = str(tmp_path / "missing.mp4"), "missing.mp4: no such video file"
    elif case == "model":
        (tmp_path / "empty").mkdir()
        args[4], expect = str(tmp_path / "empty"), "no model.onnx here or in"
    elif case == "bundle-without-export":
        bundle = tmp_path / "bundle"  # a bundle copied without its export/, on a device without torch
        bundle.mkdir()
        for name in ("model.json", "model.safetensors"):
            shutil.copy(model.parent.parent / "run" / name, bundle / name)
        args[4], expect = str(bundle), "has no export/ folder yet (export it where torch is installed"
    elif case == "backend":
        args += ["--backend", "tensorflow"]
        expect = "unknown backend 'tensorflow'; choose from auto, trt, trt-rtx, ort, torch"
    elif case == "rtp-port":
        held = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        held.bind(("0.0.0.0", 0))
        args[1], expect = f"rtp://@:{held.getsockname()[1]}", f"udp port {held.getsockname()[1]} is already in use"
    elif case == "codec-name":
        args += ["--output-codec", "vp9"]
        expect = "--output-codec 'vp9' is not supported; use h264 or h265"
    elif case == "codec-missing":
        args += ["--output-codec", "h265"]
        preamble, expect = NO_X265, "this PyAV build has no libx265 encoder for h265"
    elif case == "preview":
        held = _busy_tcp_port()
        args += ["--preview", str(held.getsockname()[1])]
        expect = f"--preview 127.0.0.1:{held.getsockname()[1]}: the port is in use"
    elif case == "flip":
        args += ["--input-flip", "sideways"]
        expect = "--input-flip 'sideways' is not one of"
    else:
        pytest.importorskip("gi")
        held = _busy_tcp_port()
        args.append(f"rtsp://@:{held.getsockname()[1]}/enhanced")
        expect = f"tcp port {held.getsockname()[1]} is already in use"
    try:
        proc = run_torchless(args, tmp_path / "blocker", cwd=tmp_path, timeout=120, preamble=preamble)
    finally:
        if held is not None:
            held.close()
    assert proc.returncode == 2, proc.stderr
    assert expect in one_error_line(proc.stderr)
    assert not out.exists()  # nothing was written
    assert proc.stdout.strip() == ""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_drains_closes_and_exits_0(device, tmp_path, sig):
    model, clip = device
    out, stats = tmp_path / "out.mp4", tmp_path / "stats.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "hbl_edge.cli", "stream", str(clip), str(out), "--model", str(model), "--input-loop", "-1",
         "--stats-json", str(stats)],
        cwd=tmp_path, env=torchless_env(tmp_path / "blocker"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if json.loads(stats.read_text())["frames"]["out"] >= 30:
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.1)
        else:
            pytest.fail("the stream did not start")
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    doc = json.loads(stats.read_text())
    assert doc["state"] == "ended" and doc["frames"]["dropped"] == 0
    # The mp4 was finalised: it plays, with every frame that was enhanced.
    assert len(decode(out)) == doc["frames"]["out"] >= 30
    assert f"done: {doc['frames']['out']} frames enhanced" in stdout
