"""``--preview [HOST:]PORT``: a live page for the pilot (raw and enhanced video, FPS, latency, drops).

An HTTP server (stdlib ``ThreadingHTTPServer``) with::

    /                 the page (side by side, or one picture with a split slider)
    /raw.mjpg         the source frames     } MJPEG (multipart/x-mixed-replace), every browser
    /enhanced.mjpg    the enhanced frames   } plays it in an <img>
    /stats.json       the pipeline's stats snapshot (the ``--stats-json`` document)

It binds 127.0.0.1 unless a host is given (``0.0.0.0:8080`` to watch from another machine).
JPEGs are encoded by Pillow in the HTTP threads, only while someone watches, at most
``max_fps`` per second, once per frame whatever the number of viewers; the pipeline only
hands over its newest frame (:meth:`Preview.publish` never blocks). While the source is down
the streams show a "waiting for source" picture and the page says so.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

import numpy as np

from .video.base import StreamError

log = logging.getLogger(__name__)

BOUNDARY = "hblframe"


def parse_preview(spec: str | int) -> tuple[str, int]:
    """``"8080"`` → ("127.0.0.1", 8080); ``"0.0.0.0:8080"`` → ("0.0.0.0", 8080); ``":0"`` → any free port."""
    text = str(spec).strip()
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    host = host.strip("[]") or "127.0.0.1"
    try:
        p = int(port)
    except ValueError:
        raise StreamError(f"--preview {spec!r}: give PORT or HOST:PORT, e.g. --preview 8080") from None
    if not 0 <= p < 65536:
        raise StreamError(f"--preview {spec!r}: the port must be 1 to 65535 (0: any free port)")
    return host, p


def _jpeg(image: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def placeholder(text: str, width: int = 640, height: int = 360) -> np.ndarray:
    """A dark picture with ``text`` in the middle (what the streams show while the source is down)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), (24, 28, 34))
    draw = ImageDraw.Draw(img)
    try:
        from PIL import ImageFont

        font = ImageFont.load_default(size=max(14, height // 14))
    except (TypeError, OSError):  # Pillow < 10.1 has no sized default font
        font = None
    box = draw.textbbox((0, 0), text, font=font)
    draw.text(((width - (box[2] - box[0])) / 2, (height - (box[3] - box[1])) / 2), text, fill=(230, 230, 230), font=font)
    return np.asarray(img)


class _Channel:
    """The newest frame of one stream and its JPEG (encoded on first request, once per frame)."""

    def __init__(self) -> None:
        self.image: np.ndarray | None = None
        self.seq = 0
        self._jpeg: tuple[int, bytes] | None = None
        self._lock = threading.Lock()

    def set(self, image: np.ndarray) -> None:
        with self._lock:
            self.image = image
            self.seq += 1

    def jpeg(self, quality: int) -> tuple[int, bytes] | None:
        with self._lock:
            if self.image is None:
                return None
            if self._jpeg is not None and self._jpeg[0] == self.seq:
                return self._jpeg
            seq, image = self.seq, self.image
        data = _jpeg(image, quality)  # outside the lock: publishing never waits for an encode
        with self._lock:
            self._jpeg = (seq, data)
        return seq, data


class Preview:
    """The preview server. ``start()`` binds (port in use → :class:`StreamError`), ``publish()``
    hands over frames, ``close()`` stops it.

    Args:
        spec: ``PORT`` or ``HOST:PORT`` (``0``: a free port; :attr:`port` tells which).
        stats: a callable returning the stats snapshot (``StreamStats.snapshot``).
        max_fps: JPEG encodes per second per stream (keeps a CPU box's cores for inference).
        quality: JPEG quality.
    """

    def __init__(self, spec: str | int, stats: Callable[[], dict[str, Any]] | None = None, *, max_fps: float = 15.0,
                 quality: int = 80) -> None:
        self.host, self.requested_port = parse_preview(spec)
        self.stats = stats or (lambda: {})
        #: optional cheap ``() -> state`` ("running", "waiting", …); the pipeline sets it
        self.state: Callable[[], str] | None = None
        self.max_fps = max_fps
        self.quality = quality
        self.channels = {"raw": _Channel(), "enhanced": _Channel()}
        self._waiting = _Channel()
        self._new = threading.Condition()
        self._stop = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None
        self.clients = 0

    @property
    def url(self) -> str:
        host = self.host if self.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        return f"http://{host}:{self.port}/"

    # -- lifetime -----------------------------------------------------------------------
    def start(self) -> None:
        preview = self

        class Handler(_Handler):
            owner = preview

        try:
            server = ThreadingHTTPServer((self.host, self.requested_port), Handler)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise StreamError(f"--preview {self.host}:{self.requested_port}: the port is in use; pick another "
                                  "(e.g. --preview 8081)") from None
            if isinstance(e, socket.gaierror) or e.errno in (errno.EADDRNOTAVAIL,):
                raise StreamError(f"--preview {self.host}:{self.requested_port}: cannot bind that address "
                                  f"({e.strerror or e}); use 127.0.0.1 or 0.0.0.0") from None
            raise StreamError(f"--preview {self.host}:{self.requested_port}: {e.strerror or e}") from None
        server.daemon_threads = True
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="hbl-preview", daemon=True)
        self._thread.start()

    def publish(self, raw: np.ndarray, enhanced: np.ndarray) -> None:
        """The newest pair of frames (H×W×3 uint8); never blocks on viewers."""
        self.channels["raw"].set(raw)
        self.channels["enhanced"].set(enhanced)
        with self._new:
            self._new.notify_all()

    def close(self) -> None:
        self._stop.set()
        with self._new:
            self._new.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "Preview":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what the streams show ------------------------------------------------------------
    def _source_down(self) -> bool:
        # Called for every frame of every viewer: the cheap state getter when the pipeline gave one.
        state = self.state() if self.state is not None else self.stats().get("state")
        return state in ("waiting", "starting")

    def _frame_for(self, name: str) -> tuple[int, bytes] | None:
        if self._source_down():
            ch = self._waiting
            if ch.image is None:
                ref = self.channels[name].image
                h, w = (ref.shape[:2] if ref is not None else (360, 640))
                ch.set(placeholder("waiting for source …", w, h))
            got = ch.jpeg(self.quality)
            return None if got is None else (-got[0], got[1])  # negative: never equal to a frame's seq
        return self.channels[name].jpeg(self.quality)

    def _count(self, d: int) -> None:
        with self._new:
            self.clients += d

    def wait_new(self, seq: int | None, timeout: float) -> None:
        with self._new:
            if self.channels["raw"].seq == seq:
                self._new.wait(timeout)


class _Handler(BaseHTTPRequestHandler):
    owner: Preview
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        log.debug("preview: " + format, *args)

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        path = self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            from .preview_page import page

            info = self.owner.stats()
            self._send(200, "text/html; charset=utf-8", page(info).encode())
        elif path == "/stats.json":
            self._send(200, "application/json", json.dumps(self.owner.stats()).encode(), cache=False)
        elif path in ("/raw.mjpg", "/enhanced.mjpg"):
            self._mjpeg(path[1:].split(".")[0])
        elif path == "/favicon.ico":
            self._send(204, "image/x-icon", b"")
        else:
            self._send(404, "text/plain", b"not found: try /\n")

    def _send(self, code: int, ctype: str, body: bytes, cache: bool = True) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        if not cache:
            self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _mjpeg(self, name: str) -> None:
        owner = self.owner
        self.send_response(200)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        owner._count(+1)
        last_seq: int | None = None
        last_sent = 0.0
        min_interval = 1.0 / owner.max_fps
        try:
            while not owner._stop.is_set():
                t0 = time.monotonic()
                got = owner._frame_for(name)
                # A new frame, or the same one again each second: browsers show a part once the
                # next one starts, and a still picture ("waiting") must not hang half-drawn.
                if got is not None and (got[0] != last_seq or t0 - last_sent > 1.0):
                    last_seq, data = got
                    last_sent = t0
                    self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(data)}\r\n\r\n"
                                     .encode() + data + b"\r\n")
                    self.wfile.flush()
                # At most max_fps, and wake early for a new frame (or every 0.5 s for the waiting picture).
                rest = min_interval - (time.monotonic() - t0)
                if rest > 0:
                    owner._stop.wait(rest)
                owner.wait_new(last_seq if (last_seq or 0) > 0 else None, 0.5)
        except (BrokenPipeError, ConnectionResetError, TimeoutError, OSError):
            pass  # the viewer went away
        finally:
            owner._count(-1)


__all__ = ["Preview", "parse_preview", "placeholder"]
