"""The preview page (hbl_edge.runtime.preview): HTTP endpoints, and the page in headless Chromium.

Chromium is driven through chromedriver's W3C WebDriver HTTP API with urllib (no client
library needed): the page loads, a frame appears, and it changes over time (two canvas reads
and two screenshots taken apart differ), the stats show, and "waiting for source" appears while
the source is down. Skipped only when chromium or chromedriver is absent.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from contextlib import contextmanager

import numpy as np
import pytest
from PIL import Image

from hbl_edge.runtime.pipeline import Pipeline, PipelineConfig
from hbl_edge.runtime.preview import Preview, parse_preview, placeholder
from hbl_edge.runtime.video.base import StreamError

from pipeline_fakes import FakeSink, FakeSource, Gain

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def first_jpeg(url: str, timeout: float = 5.0) -> bytes:
    """The first part of an MJPEG stream."""
    with urllib.request.urlopen(url, timeout=timeout) as r:
        assert r.headers["Content-Type"].startswith("multipart/x-mixed-replace; boundary=")
        head = b""
        while b"\r\n\r\n" not in head:
            head += r.read(1)
        length = int([ln for ln in head.decode().split("\r\n") if ln.lower().startswith("content-length")][0].split(":")[1])
        return r.read(length)


class TestParse:
    @pytest.mark.parametrize("spec, expected", [
        ("8080", ("127.0.0.1", 8080)), (8080, ("127.0.0.1", 8080)), ("0.0.0.0:8080", ("0.0.0.0", 8080)),
        (":0", ("127.0.0.1", 0)), ("[::1]:9000", ("::1", 9000)),
    ])
    def test_specs(self, spec, expected):
        assert parse_preview(spec) == expected

    @pytest.mark.parametrize("spec", ["http", "host:port", "70000"])
    def test_bad(self, spec):
        with pytest.raises(StreamError, match="--preview"):
            parse_preview(spec)


class TestServer:
    def test_port_in_use(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen()
            port = s.getsockname()[1]
            with pytest.raises(StreamError, match=f"--preview 127.0.0.1:{port}: the port is in use"):
                Preview(str(port)).start()

    def test_endpoints(self):
        stats = {"state": "running", "model": {"model": "m.onnx", "backend": "ort", "task": "lowlight"},
                 "source": {"uri": "rtp://@:5600"}}
        with Preview("0", lambda: stats) as pv:
            assert pv._server.server_address[0] == "127.0.0.1"  # loopback unless a host is given
            raw = np.zeros((24, 32, 3), np.uint8)
            raw[:, :16] = 200
            pv.publish(raw, np.full((24, 32, 3), 90, np.uint8))
            page = urllib.request.urlopen(pv.url, timeout=5).read().decode()
            assert "hbl-edge preview" in page and "m.onnx" in page and 'src="/enhanced.mjpg"' in page
            assert json.loads(urllib.request.urlopen(pv.url + "stats.json", timeout=5).read()) == stats
            got = np.asarray(Image.open(io.BytesIO(first_jpeg(pv.url + "raw.mjpg"))))
            assert got.shape == (24, 32, 3) and abs(int(got[:, :8].mean()) - 200) < 6 and got[:, 24:].mean() < 8
            enh = np.asarray(Image.open(io.BytesIO(first_jpeg(pv.url + "enhanced.mjpg"))))
            assert abs(float(enh.mean()) - 90) < 3
            with pytest.raises(urllib.error.HTTPError, match="404"):
                urllib.request.urlopen(pv.url + "nope", timeout=5)

    def test_waiting_picture_while_source_is_down(self):
        state = {"state": "waiting"}
        with Preview("0", lambda: state) as pv:
            pv.publish(np.full((90, 160, 3), 250, np.uint8), np.full((90, 160, 3), 250, np.uint8))
            got = np.asarray(Image.open(io.BytesIO(first_jpeg(pv.url + "enhanced.mjpg"))))
            assert got.shape == (90, 160, 3)  # same size as the video, so the page does not jump
            assert got.mean() < 60  # the dark placeholder, not the bright last frame
            np.testing.assert_allclose(got.astype(float).mean(), placeholder("waiting for source …", 160, 90).mean(), atol=3)

    def test_placeholder_has_text(self):
        img = placeholder("waiting for source …", 320, 180)
        assert img.shape == (180, 320, 3) and img.max() > 200 and np.median(img) < 40


# ---------------------------------------------------------------------------------------------
# Headless Chromium through chromedriver (W3C WebDriver over HTTP)
# ---------------------------------------------------------------------------------------------
class WebDriver:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.session: str | None = None

    def call(self, method: str, path: str, body: dict | None = None, timeout: float = 30) -> object:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())["value"]

    def start(self, profile: str) -> None:
        args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--no-first-run", f"--user-data-dir={profile}", "--window-size=1200,900"]
        caps = {"capabilities": {"alwaysMatch": {
            "browserName": "chrome", "pageLoadStrategy": "eager",  # MJPEG images never finish loading
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args}}}}
        self.session = self.call("POST", "/session", caps, timeout=60)["sessionId"]

    def go(self, url: str) -> None:
        self.call("POST", f"/session/{self.session}/url", {"url": url})

    def js(self, script: str) -> object:
        return self.call("POST", f"/session/{self.session}/execute/sync", {"script": script, "args": []})

    def screenshot(self) -> np.ndarray:
        png = base64.b64decode(self.call("GET", f"/session/{self.session}/screenshot"))
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))

    def quit(self) -> None:
        if self.session:
            try:
                self.call("DELETE", f"/session/{self.session}", timeout=10)
            except OSError:
                pass


@contextmanager
def chromium():
    port = free_port()
    driver = subprocess.Popen([CHROMEDRIVER, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wd = WebDriver(port)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if wd.call("GET", "/status", timeout=2)["ready"]:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("chromedriver did not start")
            time.sleep(0.1)
        with tempfile.TemporaryDirectory() as profile:
            wd.start(profile)
            try:
                yield wd
            finally:
                wd.quit()
    finally:
        driver.terminate()
        try:
            driver.wait(10)
        except subprocess.TimeoutExpired:
            driver.kill()


def wait_for(fn, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


# Reads the enhanced <img> through a canvas: its size and mean red value (the frame index is in red).
READ_FRAME = """
const img = document.getElementById('enhanced');
if (!img.naturalWidth) return null;
const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
const g = c.getContext('2d'); g.drawImage(img, 0, 0);
const d = g.getImageData(0, 0, c.width, c.height).data;
let red = 0; for (let i = 0; i < d.length; i += 4) red += d[i];
return [c.width, c.height, red / (d.length / 4)];
"""


@pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None, reason="chromium / chromedriver not installed (apt-get install chromium chromium-driver)")
def test_page_in_headless_chromium():
    # A live source at 20 fps whose red channel counts frames; it goes away when the test says so
    # (Chromium's start takes seconds on a busy machine: a clock-driven outage could come too early).
    src = FakeSource(None, live=True, fps=20, refuse_open=True, timeout_s=0.3)
    pv = Preview("0", max_fps=10)
    pipe = Pipeline(src, [FakeSink()], Gain(), PipelineConfig(duration_s=30, handle_signals=False,
                                                             reconnect_base_s=0.1, reconnect_cap_s=0.3), preview=pv)
    pipe.prepare()
    thread = threading.Thread(target=pipe.run, daemon=True)
    thread.start()
    try:
        with chromium() as wd:
            wd.go(pv.url)
            assert wd.js("return document.title") == "hbl-edge preview"
            first = wait_for(lambda: wd.js(READ_FRAME), 10, "a frame in the enhanced <img>")
            assert first[:2] == [32, 24]
            shot1 = wd.screenshot()
            time.sleep(1.0)
            second = wd.js(READ_FRAME)
            shot2 = wd.screenshot()
            # The frame changed (the red channel counts frames, ×2 by the fake model) and so did the page.
            assert second[2] != pytest.approx(first[2], abs=1.0)
            assert np.abs(shot1.astype(int) - shot2.astype(int)).sum() > 0
            stats = wait_for(lambda: wd.js("return [document.getElementById('fps-out').textContent, "
                                           "document.getElementById('backend').textContent, "
                                           "document.getElementById('state').textContent]"), 5, "stats")
            assert stats[1] == "fake" and stats[2] == "running" and float(stats[0]) > 5
            # The source goes away (lost after its 0.3 s timeout): the page says so.
            src.go_away()
            banner = wait_for(lambda: wd.js("const w = document.getElementById('waiting');"
                                            "return w.style.display === 'block' ? w.textContent : null"),
                              10, "the waiting banner")
            assert banner.startswith("waiting for source")
            assert wd.js("return document.getElementById('state').textContent") == "waiting"
            # … and back to frames once it returns.
            src.come_back()
            wait_for(lambda: wd.js("return document.getElementById('state').textContent") == "running", 10, "running again")
    finally:
        pipe.stop()
        thread.join(15)
    assert not thread.is_alive()
    assert pipe.stats.gap_count == 1
