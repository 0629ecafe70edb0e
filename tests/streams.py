"""Loopback stream fixtures for the video tests (and for anyone testing on top of sources/sinks).

Import with ``from streams import ...`` (pytest puts ``tests/`` on ``sys.path``; a benchmark adds it
itself). Everything talks to 127.0.0.1 on ephemeral ports and stops by itself.

- :func:`free_udp_port` / :func:`free_tcp_port`: a port nobody holds (UDP: an even one whose
  RTCP neighbour PORT+1 is free too).
- :func:`synth_frame`: H×W×3 uint8 test picture with moving content (``pattern``: ``moving``
  (gradient + square), ``noise``, ``flat``), optionally stamped with its index
  (:mod:`hbl_edge.runtime.video.stamp`).
- :func:`make_clip`: a small H.264 (or H.265) file of such frames (mp4/mkv/mov/avi by suffix).
- :class:`RtpSender`: BlueOS emulation: H.264 RTP (payload 96) to 127.0.0.1:PORT at ``fps`` from a
  thread, stamped frames, with ``pause()``/``resume()`` (the source goes silent and returns),
  ``stop()``, fault injection (``inject_garbage``, ``truncate_fragments``, ``drop_packets``) and
  ``sent`` (frame index → monotonic time just before its last packet was sent).
- :class:`RtspServer`: Blueye emulation: gst-rtsp-server serving ``/test`` on 127.0.0.1 (the
  vehicle's ``rtsp://192.168.1.101:8554/test``), ``stop()`` (clients are dropped: the server goes
  away) and ``start()`` again on the same port.
- :class:`StreamReceiver`: an independent receiver (libavformat through PyAV) of a sink's output:
  an SDP file (``rtp://`` sinks), ``udp://`` MPEG-TS or ``rtsp://``; records every decoded frame's
  arrival time, key-frame flag, pts and stamp in ``frames``.
- :data:`requires_gst` / :data:`requires_rtsp_server`: skip marks, only for machines without
  GStreamer/PyGObject (CI installs them).
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hbl_edge.runtime.video._deps import gst_available
from hbl_edge.runtime.video.stamp import read_stamp, write_stamp

GST_REASON = "GStreamer/PyGObject not installed (CI installs them: see .ci/run)"
HAVE_GST = gst_available("udpsrc", "rtph264depay", "avdec_h264", "x264enc")
HAVE_RTSP_SERVER = gst_available("appsrc", "x264enc", "rtph264pay", "rtspsrc", rtsp_server=True)
requires_gst = pytest.mark.skipif(not HAVE_GST, reason=GST_REASON)
requires_rtsp_server = pytest.mark.skipif(
    not HAVE_RTSP_SERVER, reason="gst-rtsp-server/PyGObject not installed (CI installs them: see .ci/run)")


# ---------------------------------------------------------------------------------------------
# Ports
# ---------------------------------------------------------------------------------------------
def free_udp_port() -> int:
    """An even UDP port on 127.0.0.1 that is free, with PORT+1 free too (RTCP)."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port % 2 or port >= 65535:
            continue
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a, \
                    socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
                a.bind(("0.0.0.0", port))
                b.bind(("0.0.0.0", port + 1))
        except OSError:
            continue
        return port
    raise RuntimeError("no free UDP port pair")


def looks_like_ball(image: np.ndarray) -> bool:
    """True for an intact frame of videotestsrc's ``ball`` pattern (black, one white ball); a
    frame decoded from broken units is mostly grey/green."""
    return bool(np.median(image) < 30 and image.max() > 200)


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# Pictures and clips
# ---------------------------------------------------------------------------------------------
def synth_frame(i: int, size: tuple[int, int] = (320, 240), pattern: str = "moving", stamp: bool = False,
                seed: int = 0) -> np.ndarray:
    """Frame ``i`` of a test sequence, H×W×3 uint8 (``size`` is (width, height))."""
    w, h = size
    if pattern == "noise":
        img = np.random.default_rng(seed * 100003 + i).integers(0, 256, (h, w, 3), dtype=np.uint8)
    elif pattern == "flat":
        img = np.full((h, w, 3), (i * 7) % 256, np.uint8)
    elif pattern == "moving":
        x = np.arange(w, dtype=np.int32)[None, :]
        y = np.arange(h, dtype=np.int32)[:, None]
        img = np.empty((h, w, 3), np.uint8)
        img[..., 0] = (x * 255 // max(1, w - 1) + 4 * i) % 256
        img[..., 1] = (y * 255 // max(1, h - 1) + 2 * i) % 256
        img[..., 2] = 128
        s = max(4, min(w, h) // 5)
        cx = (3 * i) % max(1, w - s)
        cy = (2 * i) % max(1, h - s)
        img[cy:cy + s, cx:cx + s] = (250, 250, 30)
    else:
        raise ValueError(f"unknown pattern {pattern!r}")
    if stamp:
        write_stamp(img, i)
    return img


def make_clip(path: str | Path, frames: int = 30, size: tuple[int, int] = (160, 120), fps: float = 30,
              pattern: str = "moving", *, codec: str = "libx264", stamp: bool = False, keyint: int | None = None,
              preset: str = "ultrafast") -> Path:
    """Write a small video of :func:`synth_frame` pictures (container by suffix) with PyAV
    (``preset="medium"``: x264 with B-frames, which a decoder reorders and so holds back)."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        opts = {"preset": preset}
        if keyint:
            opts["x264-params" if codec == "libx264" else "x265-params"] = f"keyint={keyint}"
        if codec == "libx265":
            opts["x265-params"] = opts.get("x265-params", "") + (":" if keyint else "") + "log-level=error"
        st = out.add_stream(codec, rate=Fraction(fps).limit_denominator(1001), options=opts)
        st.width, st.height = size
        st.pix_fmt = "yuv420p"
        for i in range(frames):
            vf = av.VideoFrame.from_ndarray(synth_frame(i, size, pattern, stamp), format="rgb24")
            for p in st.encode(vf):
                out.mux(p)
        for p in st.encode(None):
            out.mux(p)
    return path


# ---------------------------------------------------------------------------------------------
# BlueOS: H.264 RTP to a UDP port
# ---------------------------------------------------------------------------------------------
class _Packets:
    """File object collecting the RTP muxer's packets (one write = one packet)."""

    def __init__(self) -> None:
        self.packets: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self.packets.append(bytes(b))
        return len(b)

    def flush(self) -> None:
        pass


class RtpSender:
    """Sends stamped H.264 (or H.265) RTP to ``host:port`` at ``fps``, like BlueOS's camera manager.

    The encoder is libx264 ``ultrafast``/``zerolatency`` with SPS/PPS repeated and a keyframe every
    ``keyint`` frames; packets are made by libavformat's RTP muxer (1200 bytes, so a 320×240
    keyframe is several FU-A fragments) and sent from our own socket with sequence numbers
    rewritten by us: a fault can then remove a packet without leaving a sequence gap (a truncated
    fragment) or with one (a lost packet).

    Attributes:
        sent: frame index → ``time.monotonic()`` just before its last packet was sent.
        frames_sent: frames sent so far. ``packets_sent``: RTP packets sent.
    """

    def __init__(self, port: int, *, host: str = "127.0.0.1", fps: float = 30, size: tuple[int, int] = (320, 240),
                 codec: str = "h264", keyint: int = 30, stamp: bool = True, pattern: str = "moving",
                 payload_type: int = 96, bitrate_kbps: int = 1500, start: bool = True):
        self.host, self.port, self.fps, self.size = host, port, fps, size
        self.codec, self.keyint, self.stamp, self.pattern = codec, keyint, stamp, pattern
        self.payload_type, self.bitrate_kbps = payload_type, bitrate_kbps
        self.sent: dict[int, float] = {}
        self.keyframes: list[int] = []
        self.frames_sent = 0
        self.packets_sent = 0
        self.faults_applied = 0
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._paused = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._faults: list[tuple[str, int]] = []  # (kind, frames left)
        self._garbage = 0
        self._seq = 1000
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        if start:
            self.start()

    # -- control ------------------------------------------------------------------------------
    def start(self) -> "RtpSender":
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"rtp-sender-{self.port}", daemon=True)
        self._thread.start()
        return self

    def pause(self) -> None:
        """Go silent (a tether unplugged, the vehicle's camera restarting)."""
        self._paused.set()

    def resume(self) -> None:
        self._paused.clear()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._sock.close()

    def inject_garbage(self, count: int = 1) -> None:
        """Send ``count`` datagrams that are not RTP (next frame)."""
        with self._lock:
            self._garbage += count

    def truncate_fragments(self, frames: int = 1) -> None:
        """In each of the next ``frames`` non-key frames, drop the end fragment of its FU-A and hide
        the gap (sequence numbers stay contiguous): only the payload shows the damage."""
        with self._lock:
            self._faults.append(("truncate", frames))

    def drop_packets(self, frames: int = 1) -> None:
        """In each of the next ``frames`` non-key frames, lose one packet (a sequence gap)."""
        with self._lock:
            self._faults.append(("drop", frames))

    def wait_frames(self, n: int, timeout: float = 10.0) -> None:
        end = time.monotonic() + timeout
        while self.frames_sent < n and time.monotonic() < end:
            time.sleep(0.01)

    def __enter__(self) -> "RtpSender":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- sending ------------------------------------------------------------------------------
    def _open(self) -> tuple[Any, Any, _Packets]:
        import av

        sink = _Packets()
        out = av.open(sink, "w", format="rtp",
                      container_options={"packetsize": "1200", "payload_type": str(self.payload_type)})
        name = "libx264" if self.codec == "h264" else "libx265"
        params = f"repeat-headers=1:keyint={self.keyint}:min-keyint={self.keyint}:scenecut=0"
        if name == "libx265":
            params += ":log-level=error"
        st = out.add_stream(name, rate=Fraction(self.fps).limit_denominator(1001),
                            options={"preset": "ultrafast", "tune": "zerolatency",
                                     ("x264-params" if name == "libx264" else "x265-params"): params})
        st.width, st.height = self.size
        st.pix_fmt = "yuv420p"
        st.bit_rate = self.bitrate_kbps * 1000
        return out, st, sink

    def _run(self) -> None:
        try:
            out, st, sink = self._open()
            t0 = time.monotonic()
            i = 0
            while not self._stop.is_set():
                due = t0 + i / self.fps
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                if self._paused.is_set():
                    i += 1
                    continue
                vf = __import__("av").VideoFrame.from_ndarray(synth_frame(i, self.size, self.pattern, self.stamp),
                                                              format="rgb24")
                vf.pts = i
                sink.packets.clear()
                key = False
                for p in st.encode(vf):
                    key = key or p.is_keyframe
                    out.mux(p)
                self.sent[i] = self._send(sink.packets, key)
                if key:
                    self.keyframes.append(i)
                self.frames_sent += 1
                i += 1
            out.close()
        except BaseException as e:  # surfaced by the tests through .error
            self.error = e

    def _send(self, packets: list[bytes], key: bool) -> float:
        rtp = [bytearray(p) for p in packets if not 200 <= p[1] <= 204]  # RTCP is not part of the emulation
        with self._lock:
            garbage, self._garbage = self._garbage, 0
            fault = None
            if self._faults and not key and len(rtp) >= 2:
                kind, left = self._faults[0]
                fault = kind
                self._faults[0] = (kind, left - 1)
                if left - 1 <= 0:
                    self._faults.pop(0)
        for _ in range(garbage):
            self._sock.sendto(b"\x00garbage, not RTP" * 3, (self.host, self.port))
        if fault == "truncate":
            # Drop the last FU-A end fragment (H.265: FU) of the frame; if it carried the marker bit,
            # the packet before gets it, so the unit still ends "normally".
            ends = [k for k, p in enumerate(rtp) if self._fu_end(p)]
            if ends:
                gone = rtp.pop(ends[-1])
                if gone[1] & 0x80:
                    rtp[-1][1] |= 0x80
                self.faults_applied += 1
        drop_at = len(rtp) // 2 if fault == "drop" else None
        if drop_at is not None:
            self.faults_applied += 1
        t_last = time.monotonic()
        for k, p in enumerate(rtp):
            p[2:4] = self._seq.to_bytes(2, "big")
            self._seq = (self._seq + 1) & 0xFFFF
            if k == drop_at:
                continue  # lost in transit: its sequence number is used, the packet never arrives
            # Read the clock before the send: the receiver cannot have the packet earlier, so a
            # latency measured from here is never negative, whatever the scheduler does next.
            t_last = time.monotonic()
            self._sock.sendto(bytes(p), (self.host, self.port))
            self.packets_sent += 1
        return t_last


    def _fu_end(self, p: bytearray) -> bool:
        off = 12 + 4 * (p[0] & 0x0F)
        if len(p) < off + 3:
            return False
        if self.codec == "h264":
            return p[off] & 0x1F == 28 and bool(p[off + 1] & 0x40)
        return (p[off] >> 1) & 0x3F == 49 and bool(p[off + 2] & 0x40)


# ---------------------------------------------------------------------------------------------
# Blueye: an RTSP server
# ---------------------------------------------------------------------------------------------
class RtspServer:
    """gst-rtsp-server on 127.0.0.1:``port`` serving ``path`` (videotestsrc ball, H.264, 30 fps).

    ``stop()`` removes the listening socket and disconnects every client (the vehicle went
    away); ``start()`` serves again on the same port.

    ``config_interval``: rtph264pay's; -1 (SPS/PPS before every slice of a keyframe, what many
    gst-rtsp-server cameras send) breaks libavformat's parser, 0 (in-band from x264) does not.
    """

    def __init__(self, port: int | None = None, path: str = "/test", size: tuple[int, int] = (320, 240),
                 fps: int = 30, start: bool = True, config_interval: int = 0):
        self.port = port or free_tcp_port()
        self.path = path
        self.size, self.fps = size, fps
        self.config_interval = config_interval
        self._loop: Any = None
        self._thread: threading.Thread | None = None
        self._server: Any = None
        self._source_id = 0
        if start:
            self.start()

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}{self.path}"

    def start(self) -> "RtspServer":
        from hbl_edge.runtime.video._deps import need_gst

        Gst, GLib, RS = need_gst("RtspServer fixture", "videotestsrc", "x264enc", "rtph264pay", rtsp_server=True)
        ctx = GLib.MainContext.new()
        self._loop = GLib.MainLoop.new(ctx, False)
        server = RS.RTSPServer.new()
        server.set_address("127.0.0.1")
        server.set_service(str(self.port))
        # Clients on this loop's thread, as in RtspSink: stop() closes them from here, and closing a
        # client from another thread than the one reading it can leave gst-rtsp-server spinning.
        server.get_thread_pool().set_max_threads(0)
        factory = RS.RTSPMediaFactory.new()
        w, h = self.size
        factory.set_launch(
            f"( videotestsrc is-live=true pattern=ball ! video/x-raw,width={w},height={h},framerate={self.fps}/1 ! "
            f"x264enc tune=zerolatency speed-preset=ultrafast key-int-max={self.fps} ! "
            f"video/x-h264,stream-format=byte-stream ! rtph264pay name=pay0 pt=96 config-interval={self.config_interval} )")
        factory.set_shared(True)
        server.get_mount_points().add_factory(self.path, factory)
        self._source_id = server.attach(ctx)
        if not self._source_id:
            raise RuntimeError(f"RtspServer: cannot listen on 127.0.0.1:{self.port}")
        self._server = server
        self._ctx = ctx
        self._thread = threading.Thread(target=self._loop.run, name=f"rtsp-server-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        from hbl_edge.runtime.video._deps import need_gst

        _, GLib, RS = need_gst("RtspServer fixture", rtsp_server=True)
        server, ctx = self._server, self._ctx
        done = threading.Event()

        def shutdown() -> bool:
            server.client_filter(lambda s, c, *a: RS.RTSPFilterResult.REMOVE)
            source = ctx.find_source_by_id(self._source_id)
            if source is not None:
                source.destroy()
            done.set()
            return False

        ctx.invoke_full(GLib.PRIORITY_DEFAULT, shutdown)
        done.wait(5)
        self._loop.quit()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None

    def __enter__(self) -> "RtspServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


# ---------------------------------------------------------------------------------------------
# An independent receiver of a sink's output
# ---------------------------------------------------------------------------------------------
@dataclass
class Received:
    t: float  #: time.monotonic() when decoded
    key: bool
    pts: float | None  #: seconds
    stamp: int | None
    size: tuple[int, int]


class StreamReceiver:
    """Decodes a stream with libavformat (PyAV) in a thread and records every frame.

    ``url``: an SDP file path (the RTP sink's), ``udp://127.0.0.1:PORT`` (MPEG-TS) or an
    ``rtsp://`` URL. ``frames`` fills as frames decode; ``stop()`` ends it.
    """

    def __init__(self, url: str, *, timeout: float = 10.0, stamped: bool = False, start: bool = True):
        self.url = str(url)
        self.timeout = timeout
        self.stamped = stamped
        self.frames: list[Received] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._opened = threading.Event()
        self._thread: threading.Thread | None = None
        if start:
            self.start()

    def start(self) -> "StreamReceiver":
        self._thread = threading.Thread(target=self._run, name="stream-receiver", daemon=True)
        self._thread.start()
        return self

    def _open(self) -> Any:
        import av

        kwargs: dict[str, Any] = {"timeout": (self.timeout, 1.0)}
        if self.url.endswith(".sdp"):
            kwargs.update(format="sdp", options={"protocol_whitelist": "file,udp,rtp", "reorder_queue_size": "0"})
        elif self.url.startswith("udp://"):
            sep = "&" if "?" in self.url else "?"
            self.url += f"{sep}overrun_nonfatal=1&buffer_size=4194304&fifo_size=100000"
            kwargs.update(format="mpegts")
        elif self.url.startswith("rtsp://"):
            kwargs.update(options={"rtsp_transport": "tcp"})
        return av.open(self.url, **kwargs)

    def _run(self) -> None:
        import av

        try:
            container = self._open()
        except BaseException as e:
            self.error = e
            self._opened.set()
            return
        self._opened.set()
        try:
            stream = container.streams.video[0]
            for packet in container.demux(stream):
                if self._stop.is_set():
                    break
                try:
                    frames = packet.decode()
                except av.error.InvalidDataError:
                    continue
                for f in frames:
                    img = f.to_ndarray(format="rgb24")
                    self.frames.append(Received(time.monotonic(), bool(f.key_frame), float(f.time) if f.time is not None
                                                else None, read_stamp(img) if self.stamped else None,
                                                (f.width, f.height)))
        except av.error.ExitError:
            pass  # read timeout: the sender stopped
        except BaseException as e:
            self.error = e
        finally:
            container.close()

    def wait_frames(self, n: int, timeout: float = 10.0) -> list[Received]:
        end = time.monotonic() + timeout
        while len(self.frames) < n and time.monotonic() < end and (self._thread and self._thread.is_alive()):
            time.sleep(0.01)
        return self.frames

    def wait_stamp(self, stamp: int, timeout: float = 10.0) -> list[Received]:
        """Wait until a frame stamped ``stamp`` or later was decoded (the receiver may run behind
        the sender on a busy machine: stopping it as soon as the sender is done would cut the
        stream short), at most ``timeout`` s (a lost last frame)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end and (self._thread and self._thread.is_alive()):
            if any(f.stamp is not None and f.stamp >= stamp for f in self.frames[-5:]):
                break
            time.sleep(0.01)
        return self.frames

    def wait_open(self, timeout: float = 10.0) -> None:
        self._opened.wait(timeout)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout + 2)

    def __enter__(self) -> "StreamReceiver":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def keyframe_gaps(frames: list[Received]) -> list[float]:
    """Seconds between consecutive key frames of a received sequence, on the stream's own clock
    (pts; arrival times are useless for this: a receiver that probes releases frames in a burst)."""
    keys = [f.pts for f in frames if f.key and f.pts is not None]
    return [b - a for a, b in zip(keys, keys[1:])]


__all__ = [
    "GST_REASON", "HAVE_GST", "HAVE_RTSP_SERVER", "Received", "RtpSender", "RtspServer", "StreamReceiver", "free_tcp_port", "free_udp_port",
    "keyframe_gaps", "looks_like_ball", "make_clip", "requires_gst", "requires_rtsp_server", "synth_frame",
]
