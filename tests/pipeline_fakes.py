"""Test doubles for the pipeline: scripted sources, recording/slow/failing sinks, a gain processor.

They follow the Source/Sink contract of ``hbl_edge.runtime.video.base`` exactly (open/read/close,
start/write/close, counters, SourceLost for a live source's silence), so the pipeline's queues,
reconnects and fault handling are tested without sockets or codecs; the real sources and sinks
are exercised in tests/test_drone*.py.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

import numpy as np

from hbl_edge.runtime.video.base import Frame, SinkError, SourceLost, StreamError, VideoOptions, parse_uri


def pattern(index: int, width: int = 32, height: int = 24) -> np.ndarray:
    """A frame whose pixels encode its index (index % 200 + a small ramp), H×W×3 uint8."""
    img = np.zeros((height, width, 3), np.uint8)
    img[..., 0] = index % 200
    img[..., 1] = np.arange(width, dtype=np.uint8)[None, :] % 50
    img[..., 2] = 30
    return img


class FakeSource:
    """A source of ``pattern`` frames.

    Args:
        n: frames before the end (None: endless); a live source paces them at ``fps``.
        live: live (drops, reconnects) or file-like (None at the end).
        outages: (start_s, end_s) windows after the first open during which a live source is
            silent: ``read`` raises SourceLost after ``timeout_s``, and ``open`` raises SourceLost
            too when ``refuse_open`` (an RTSP server that is gone).
        sizes: optional function index → (width, height) (resolution changes).
        corrupt_every: every k-th frame counts as corrupt (skipped, counted).
        paced_by: optional function → how many frames the test's consumers have taken; a live
            source then hands out frame k only once ``paced_by() >= k`` (a camera in lock-step with
            its consumers, up to 5 s). Tests that assert *exact* frames on live queues use it: the
            scheduler of a loaded machine can otherwise delay a consumer thread by a frame
            interval, and newest-only queues then drop frames, correctly. Drops themselves are
            tested without it (slow inference, slow sinks).

    ``go_away()`` / ``come_back()``: an outage the test starts and ends itself (as ``outages``, but
    on the test's schedule rather than the clock's, for tests with slow steps such as a browser).
    """

    def __init__(self, n: int | None = 20, *, live: bool = False, fps: float = 100.0, outages: list[tuple[float, float]] = (),
                 refuse_open: bool = False, sizes: Callable[[int], tuple[int, int]] | None = None, timeout_s: float = 0.3,
                 corrupt_every: int | None = None, open_error: Exception | None = None,
                 paced_by: Callable[[], int] | None = None) -> None:
        self.uri = parse_uri("rtp://@:5600") if live else parse_uri("clip.mp4")
        self.options = VideoOptions(timeout_s=timeout_s)
        self.live = live
        self.counters = {"frames": 0, "corrupt": 0}
        self.n, self.fps, self.outages, self.refuse_open = n, fps, list(outages), refuse_open
        self.sizes = sizes or (lambda i: (32, 24))
        self.corrupt_every = corrupt_every
        self.open_error = open_error
        self.opens = 0
        self.closes = 0
        self.is_open = False
        self.index = 0
        self.t_first_open: float | None = None
        self.paced_by = paced_by
        self.handed_out = 0
        self._gone = threading.Event()
        self._next = 0.0

    def go_away(self) -> None:
        self._gone.set()

    def come_back(self) -> None:
        self._gone.clear()

    def _in_outage(self) -> tuple[float, float] | None:
        if self._gone.is_set():
            return (0.0, float("inf"))
        if self.t_first_open is None:
            return None
        t = time.monotonic() - self.t_first_open
        for a, b in self.outages:
            if a <= t < b:
                return a, b
        return None

    def open(self) -> None:
        if self.open_error is not None:
            raise self.open_error
        if self.t_first_open is None:
            self.t_first_open = time.monotonic()
        self.opens += 1
        if self.refuse_open and self._in_outage():
            raise SourceLost("connection refused")
        self.is_open = True
        self._next = time.monotonic()

    def read(self) -> Frame | None:
        assert self.is_open, "read() on a closed source"
        if self.n is not None and self.index >= self.n:
            return None  # the end (a live source may end too, e.g. a stream its sender closed for good)
        if self.live:
            out = self._in_outage()
            if out is not None:
                time.sleep(min(self.options.timeout_s, max(0.0, out[1] - (time.monotonic() - self.t_first_open))))
                if self._in_outage():
                    raise SourceLost(f"no packets for {self.options.timeout_s} s")
            if self.paced_by is not None:
                end = time.monotonic() + 5.0
                while self.paced_by() < self.handed_out and time.monotonic() < end:
                    time.sleep(0.001)
            delay = self._next - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self._next = max(self._next + 1.0 / self.fps, time.monotonic() - 1.0 / self.fps)
        while self.corrupt_every and self.index % self.corrupt_every == self.corrupt_every - 1:
            self.counters["corrupt"] += 1
            self.index += 1
        w, h = self.sizes(self.index)
        f = Frame(pattern(self.index, w, h), self.index)
        self.index += 1
        self.handed_out += 1
        self.counters["frames"] += 1
        return f

    def close(self) -> None:
        self.closes += 1
        self.is_open = False

    def describe(self) -> dict[str, Any]:
        return {"kind": "fake", "live": self.live}


class FakeSink:
    """Records what it is given. ``delay``: seconds per write; ``fail_at``: raise SinkError on that
    write; ``start_error``: raise on start (port in use)."""

    def __init__(self, name: str = "out.mp4", *, delay: float = 0.0, fail_at: int | None = None,
                 start_error: Exception | None = None, keep_images: bool = False) -> None:
        self.uri = parse_uri(name)
        self.options = VideoOptions()
        self.counters = {"frames": 0}
        self.delay, self.fail_at, self.start_error = delay, fail_at, start_error
        self.keep_images = keep_images
        self.started = False
        self.closed = 0
        self.indices: list[int] = []
        self.images: list[np.ndarray] = []
        self.frames: list[Frame] = []
        self.write_times: list[float] = []
        self.placeholders: list[np.ndarray] = []  # "waiting for source" pictures during gaps
        self.attempts = 0  # write() calls with a frame (not placeholders), the failing one included
        self.failed = False
        self._lock = threading.Lock()

    def start(self) -> None:
        if self.start_error is not None:
            raise self.start_error
        self.started = True

    def write(self, frame: Frame) -> None:
        assert self.started and not self.closed
        if not frame.meta.get("placeholder"):
            self.attempts += 1
        if self.fail_at is not None and len(self.indices) >= self.fail_at:
            self.failed = True
            raise SinkError("No space left on device")
        if self.delay:
            time.sleep(self.delay)
        if frame.meta.get("placeholder"):
            self.placeholders.append(frame.image)
            return
        with self._lock:
            self.indices.append(frame.index)
            self.write_times.append(time.monotonic())
            if self.keep_images:
                self.images.append(frame.image)
        self.counters["frames"] += 1

    def close(self) -> None:
        self.closed += 1

    def describe(self) -> dict[str, Any]:
        return {"kind": "fake"}


class Gain:
    """A processor (the Enhancer's interface) that doubles the pixels; ``delay`` per call."""

    backend = "fake"

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.resized = 0
        self.calls: list[int] = []

    def describe(self) -> dict[str, Any]:
        return {"backend": "fake", "model": "gain2", "task": "lowlight"}

    def process(self, images, temporal=None):
        self.calls.append(len(images))
        if self.delay:
            time.sleep(self.delay)
        return [np.minimum(np.asarray(i, np.uint16) * 2, 255).astype(np.uint8) for i in images]


__all__ = ["FakeSink", "FakeSource", "Gain", "StreamError", "pattern"]


def gain_model(folder, gain: float = 1.6, genotype=None):
    """A real exported bundle (``folder/export``) whose network computes exactly clip(gain · x).

    The network is the package's own (by default a genotype of 1×1 convolutions, C = 4/16, one
    HNU; or any ``genotype`` with C2 ≥ 12, at that genotype's full compute cost), its weights set
    by hand: the head copies RGB (kernel centre), ``down1`` is a space-to-depth (12 channels
    hold the 4 sub-pixel phases of R, G, B) and ``up2`` its inverse, so the full-resolution
    picture passes the U exactly; every other weight is 0 (the HNUs then output 0), and the tail
    multiplies by ``gain``. Streams can then be checked against a known enhancement (H.264
    tolerance) and frame stamps survive it, which random weights (a near-black output) cannot give.
    """
    from pathlib import Path

    import torch

    from hbl_edge.bundle import save_bundle
    from hbl_edge.export import export_onnx
    from hbl_edge.export.onnx_export import parity_images
    from hbl_edge.genotype import Genotype
    from hbl_edge.network import Network

    g = genotype or Genotype(encoder=["conv_1x1"] * 9, decoder=["conv_1x1"] * 9, hnu=[["conv_1x1"] * 8],
                             channels=(4, 16), units=1)
    if g.channels[1] < 12:
        raise ValueError("the identity path needs C2 ≥ 12 (4 phases × 3 colours)")
    net = Network(g).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        head, tail = net.head.conv.weight, net.tail.conv.weight
        for c in range(3):
            head[c, c, head.shape[2] // 2, head.shape[3] // 2] = 1.0
            tail[c, c, tail.shape[2] // 2, tail.shape[3] // 2] = gain
            for dy in range(2):
                for dx in range(2):
                    net.down1.weight[4 * c + 2 * dy + dx, c, dy, dx] = 1.0
                    net.up2.weight[4 * c + 2 * dy + dx, c, dy, dx] = 1.0
    folder = Path(folder)
    bundle = save_bundle(folder, net, task="lowlight", loss={"l1": 1.0},
                         provenance={"note": f"test model: clip({gain} * x), weights set by hand"})
    export_onnx(bundle, folder / "export", images=parity_images(0, [(1, 8, 12)]))
    return folder / "export"
