"""``rtsp://@:PORT/name`` sink: an RTSP server that players (VLC, QGroundControl, ffplay, another
hbl-edge) connect to, through gst-rtsp-server (PyAV can publish to an RTSP server but cannot be
one).

One shared media per mount: every client sees the same encoder output
(``appsrc ! videoconvert ! x264enc tune=zerolatency speed-preset=ultrafast ! rtph264pay``: SPS/PPS
in-band before every keyframe). Keyframes: at least one every ``keyframe_interval_s`` of real
time (the GOP is that many frames at the nominal rate, and a key unit is requested from the
encoder when the time is up, so a model slower than the nominal rate does not stretch the
interval), and one as soon as a player starts playing (its transport attached), so its first
picture is whole. Frames written while nobody watches are counted in ``idle_frames`` and
dropped without encoding. ``rtsp://@:8554/enhanced`` listens on every address; ``rtsp://127.0.0.1:8554/x``
only on that one.

The server runs its own GLib main loop in a thread, which also serves every client connection
(gst-rtsp-server's client thread pool is off), so ``close()`` never closes a connection while
another thread is reading it; ``write()`` pushes buffers into the current media's appsrc
(thread-safe in GStreamer). Port in use → :class:`StreamError` at ``start()``;
GStreamer or gst-rtsp-server missing → :class:`StreamError` naming the packages.
"""

from __future__ import annotations

import collections
import logging
import socket
import threading
import time
from typing import Any

from ._common import SizeKeeper, check_tcp_free
from ._deps import need_gst
from .base import SINKS, Frame, SinkError, StreamError, Uri, VideoOptions

log = logging.getLogger(__name__)


class RtspSink:
    """Counters: ``frames`` (pushed to the encoder), ``idle_frames`` (nobody connected),
    ``clients`` (connections so far), ``keyframes`` / ``forced_keyframes``, ``dropped`` (pushed
    but dropped by the encoder's input queue because the encoder was behind: a CPU too busy to
    encode in real time; the queue keeps the newest 2 so latency stays bounded). The indices of
    the last dropped frames are in :attr:`dropped_indices`."""

    def __init__(self, uri: Uri, options: VideoOptions):
        self.uri = uri
        self.options = options
        self.port = int(uri.port or 0)
        self.host = uri.host or ""
        self.path = uri.path if uri.path and uri.path != "/" else "/stream"
        self.what = f"rtsp server {uri.text}"
        self.counters: dict[str, int] = {"frames": 0, "idle_frames": 0, "clients": 0, "keyframes": 0,
                                         "forced_keyframes": 0, "dropped": 0}
        self._lock = threading.Lock()
        self._media: list[tuple[Any, Any]] = []  # (appsrc, payloader) of every media, prepared or preparing
        self._appsrcs: list[Any] = []  # where frames go (a media being prepared needs them for its SDP)
        self._encoded: set[Any] = set()  # appsrcs whose media's encoder has put out a frame
        self._last_key: float | None = None  # time.monotonic() of the last keyframe out of the encoder
        self._last_write: float | None = None
        self._seq = 0  # push number, carried in each buffer's offset to see which the queue dropped
        self._in_flight: dict[Any, collections.deque[tuple[int, int]]] = {}  # appsrc → (seq, frame index)
        self.dropped_indices: collections.deque[int] = collections.deque(maxlen=256)
        self._caps: Any = None
        self._fit = SizeKeeper(self.what)
        self._server: Any = None
        self._loop: Any = None
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def url(self) -> str:
        host = self.host or socket.gethostname()
        return f"rtsp://{host}:{self.port}{self.path}"

    def _launch(self) -> str:
        o = self.options
        gop = max(1, round((o.rate or 30.0) * o.keyframe_interval_s))
        # SPS/PPS go in-band before every keyframe from the encoder (byte-stream x264 repeats them;
        # x265 is told to), not from the payloader: rtph264pay's config-interval=-1 puts them before
        # *every slice* of a keyframe, which libavformat's parser (ffplay, OpenCV, PyAV) takes for new
        # access units (measured: half-grey pictures); zerolatency x264 cuts frames into slices.
        if o.output_codec == "h264":
            enc = (f"x264enc tune=zerolatency speed-preset={o.preset or 'ultrafast'} bitrate={o.bitrate_kbps} "
                   f"key-int-max={gop} ! video/x-h264,stream-format=byte-stream ! "
                   f"rtph264pay name=pay0 pt={o.payload_type} config-interval=0")
        else:
            enc = (f"x265enc tune=zerolatency speed-preset={o.preset or 'ultrafast'} bitrate={o.bitrate_kbps} "
                   f"key-int-max={gop} option-string=repeat-headers=1 ! video/x-h265,stream-format=byte-stream ! "
                   f"rtph265pay name=pay0 pt={o.payload_type} config-interval=0")
        return (f"( appsrc name=src is-live=true format=time do-timestamp=true block=false max-bytes=0 "
                f"max-buffers=2 leaky-type=downstream ! videoconvert ! video/x-raw,format=I420 ! {enc} )")

    def start(self) -> None:
        enc, pay = ("x264enc", "rtph264pay") if self.options.output_codec == "h264" else ("x265enc", "rtph265pay")
        Gst, GLib, RS = need_gst(self.what, "appsrc", "videoconvert", enc, pay, rtsp_server=True)
        self._Gst = Gst
        check_tcp_free(self.host, self.port, self.what)
        ctx = GLib.MainContext.new()
        server = RS.RTSPServer.new()
        server.set_address(self.host or "0.0.0.0")
        server.set_service(str(self.port))
        # Client connections are served in this server's own context (the loop thread below), not
        # on gst-rtsp-server's client pool thread (by default one, shared by every client): close()
        # closes clients from the loop thread, and gst_rtsp_client_close() is only safe in the
        # context that reads the connection. From another thread it can clear the connection's
        # input stream while the pool thread parses a request (a TEARDOWN, a keepalive); the next
        # read fails without a GError, which GstRTSPConnection (1.22) counts as success, so its line
        # reader never sees a line end: the pool thread spins at 100 % of a core for good, logging
        # "g_pollable_input_stream_read_nonblocking: assertion ... failed" hundreds of thousands of
        # times a second (tests/test_video_rtsp.py::test_close_while_a_player_is_talking_leaves_no_busy_loop).
        # The price: a DESCRIBE holds this thread until its media has a first frame, so close()
        # fails a media that has none rather than wait for it.
        server.get_thread_pool().set_max_threads(0)
        factory = RS.RTSPMediaFactory.new()
        factory.set_launch(self._launch())
        factory.set_shared(True)
        factory.connect("media-configure", self._on_media)
        server.get_mount_points().add_factory(self.path, factory)
        server.connect("client-connected", self._on_client)
        self._source_id = server.attach(ctx)
        if not self._source_id:
            raise StreamError(f"{self.what}: cannot listen on tcp port {self.port} (in use?); use another port")
        self._server, self._ctx, self._GLib, self._RS = server, ctx, GLib, RS
        self._loop = GLib.MainLoop.new(ctx, False)
        self._thread = threading.Thread(target=self._loop.run, name=f"rtsp-sink-{self.port}", daemon=True)
        self._thread.start()
        log.info("%s: players can open %s", self.what, self.url)

    # -- GLib thread --------------------------------------------------------------------------
    def _on_client(self, server: Any, client: Any) -> None:
        self.counters["clients"] += 1
        client.connect("play-request", self._on_play)

    def _on_media(self, factory: Any, media: Any) -> None:
        element = media.get_element()
        appsrc = element.get_by_name_recurse_up("src")
        pay = element.get_by_name_recurse_up("pay0")
        # Keyframes as they leave the encoder (no DELTA_UNIT flag), for the time-based keyframe rule.
        pay.get_static_pad("sink").add_probe(self._Gst.PadProbeType.BUFFER,
                                             lambda pad, info: self._on_encoded(appsrc, info))
        with self._lock:
            closing = self._closed  # a player came in while close() ran: it will get no frame
            if self._caps is not None:
                appsrc.set_property("caps", self._caps)
            self._media.append((appsrc, pay))
            if not closing:
                self._appsrcs.append(appsrc)
            self._in_flight[appsrc] = collections.deque()
        appsrc.get_static_pad("src").add_probe(self._Gst.PadProbeType.BUFFER,
                                               lambda pad, info: self._on_dequeued(appsrc, info))
        media.connect("unprepared", lambda m: self._forget(appsrc))
        if closing:
            self._fail_unprepared(appsrc)

    def _on_play(self, client: Any, ctx: Any) -> None:
        # gst-rtsp-server emits play-request after the session's media went to PLAYING, with the
        # player's transport attached: frames from now on reach it. The frame being encoded right
        # now may have been cut (its first slices left before the transport was there): ask for a
        # keyframe so the player's first picture is whole instead of grey until the next GOP.
        with self._lock:
            pays = [pay for _, pay in self._media]
        for pay in pays:
            self._request_keyframe(pay)

    def _forget(self, appsrc: Any) -> None:
        with self._lock:
            self._media = [(a, p) for a, p in self._media if a is not appsrc]
            self._in_flight.pop(appsrc, None)
            self._encoded.discard(appsrc)
            if appsrc in self._appsrcs:
                self._appsrcs.remove(appsrc)

    def _on_dequeued(self, appsrc: Any, info: Any) -> Any:
        """A buffer left the appsrc queue for the encoder: the pushes queued before it and not seen
        were dropped by the queue (leaky, oldest first)."""
        buf = info.get_buffer()
        with self._lock:
            pending = self._in_flight.get(appsrc)
            while pending and buf is not None and pending[0][0] < buf.offset:
                self.dropped_indices.append(pending.popleft()[1])
                self.counters["dropped"] += 1
            if pending and buf is not None and pending[0][0] == buf.offset:
                pending.popleft()
        return self._Gst.PadProbeReturn.OK

    def _on_encoded(self, appsrc: Any, info: Any) -> Any:
        if appsrc not in self._encoded:
            with self._lock:
                self._encoded.add(appsrc)
        buf = info.get_buffer()
        if buf is not None and not buf.has_flags(self._Gst.BufferFlags.DELTA_UNIT):
            self._last_key = time.monotonic()
            self.counters["keyframes"] += 1
        return self._Gst.PadProbeReturn.OK

    def _request_keyframe(self, pay: Any) -> None:
        """Ask the encoder for a key unit (SPS/PPS included): an upstream GstForceKeyUnit event,
        which GStreamer video encoders (x264enc, x265enc, the Jetson's nvv4l2h264enc) honour on
        the next frame they encode; upstream events may be sent from any thread."""
        Gst = self._Gst
        event = Gst.Event.new_custom(Gst.EventType.CUSTOM_UPSTREAM,
                                     Gst.Structure.new_from_string("GstForceKeyUnit, all-headers=(boolean)true"))
        if pay.send_event(event):
            self.counters["forced_keyframes"] += 1

    # -- pipeline thread ----------------------------------------------------------------------
    def write(self, frame: Frame) -> None:
        if self._server is None:
            raise StreamError(f"{self.what}: write() before start()")
        Gst = self._Gst
        image = self._fit(frame.image)
        with self._lock:
            if self._caps is None:
                h, w = image.shape[:2]
                rate = round(self.options.rate or 30)
                self._caps = Gst.Caps.from_string(f"video/x-raw,format=RGB,width={w},height={h},framerate={rate}/1")
                for src in self._appsrcs:
                    src.set_property("caps", self._caps)
            targets = list(self._appsrcs)
        if not targets:
            self.counters["idle_frames"] += 1
            return
        now = time.monotonic()
        self._keyframe_due(now)
        buf = Gst.Buffer.new_wrapped(image.tobytes())
        self._seq += 1
        buf.offset = self._seq
        with self._lock:
            for src in targets:
                pending = self._in_flight.get(src)
                if pending is not None:
                    pending.append((self._seq, frame.index))
                    while len(pending) > 64:  # a media that stopped pulling (going away): keep it bounded
                        pending.popleft()
        for src in targets:
            ret = src.emit("push-buffer", buf)
            if ret not in (Gst.FlowReturn.OK, Gst.FlowReturn.FLUSHING):
                # The media went away between our look and our push (a client left): not an error.
                log.debug("%s: push-buffer returned %s", self.what, ret)
        self.counters["frames"] += 1

    def _keyframe_due(self, now: float) -> None:
        """Request a keyframe when the next frame (one frame interval from now: the nominal one, or
        the last observed when frames come slower) would be past ``keyframe_interval_s`` since the
        last keyframe: the encoder's GOP counts frames, which a slow model stretches in time."""
        interval = self.options.keyframe_interval_s
        nominal = 1.0 / float(self.options.rate or 30.0)
        last_dt = now - self._last_write if self._last_write is not None else nominal
        self._last_write = now
        step = max(nominal, min(last_dt, interval / 2))
        if self._last_key is None or now - self._last_key < interval - step:
            return
        self._last_key = now  # requested: not again before this one is out (the probe updates it)
        with self._lock:
            pays = [pay for _, pay in self._media]
        for pay in pays:
            self._request_keyframe(pay)

    def close(self) -> None:
        if self._closed or self._server is None:
            return
        self._closed = True
        with self._lock:
            srcs, self._appsrcs = list(self._appsrcs), []
            unprepared = [src for src, _ in self._media if src not in self._encoded]
        for src in srcs:
            src.emit("end-of-stream")
        # A player's DESCRIBE waits, on the loop thread (which serves every client), until its media
        # has encoded a first frame (at most 20 s). One that has none will get none now: fail it, so
        # the player is answered at once (503) and the loop is free to run shutdown().
        for src in unprepared:
            self._fail_unprepared(src)
        server, ctx, RS = self._server, self._ctx, self._RS
        done = threading.Event()

        def shutdown() -> bool:
            server.client_filter(lambda s, c, *a: RS.RTSPFilterResult.REMOVE)
            source = ctx.find_source_by_id(self._source_id)
            if source is not None:
                source.destroy()
            done.set()
            return False

        ctx.invoke_full(self._GLib.PRIORITY_DEFAULT, shutdown)
        done.wait(5)
        self._loop.quit()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        if not done.is_set():
            raise SinkError(f"{self.what}: the server did not stop cleanly")

    def _fail_unprepared(self, appsrc: Any) -> None:
        """An error on the media's bus: gst-rtsp-server ends the media's preparation with it, and a
        DESCRIBE waiting for that preparation is answered 503 (any thread may post a message)."""
        Gst = self._Gst
        error = self._GLib.Error.new_literal(Gst.ResourceError.quark(), f"{self.what} is closing",
                                             int(Gst.ResourceError.FAILED))
        appsrc.post_message(Gst.Message.new_error(appsrc, error, "closed before its first frame"))

    def describe(self) -> dict[str, Any]:
        return {"uri": self.uri.text, "kind": "rtsp", "url": self.url, "port": self.port, "path": self.path,
                "codec": self.options.output_codec}


SINKS.add("rtsp", RtspSink)

__all__ = ["RtspSink"]
