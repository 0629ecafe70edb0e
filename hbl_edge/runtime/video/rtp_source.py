"""``rtp://@:PORT`` and ``*.sdp`` sources: H.264/H.265 over RTP/UDP (what BlueOS sends to 5600).

Three receivers (``--input-receiver``, or ``?receiver=`` on the URI):

- ``packets``: the UDP socket is read here, access units are assembled from the RTP packets by
  their marker bit (:mod:`.rtp_depay`) and fed to a PyAV decoder as soon as they are complete.
  Counts lost, late and malformed packets; needs only PyAV.
- ``gstreamer``: ``udpsrc ! rtph264depay ! avdec_h264 ! appsink`` through PyGObject.
- ``pyav``: libavformat's own RTP demuxer from an SDP (written to a temporary file for
  ``rtp://``): holds each frame until the next one starts (≈ one frame interval).

``auto`` takes the first installed of :data:`AUTO_ORDER`, the order measured by
``bench/rtp_receive.py`` (docs/runtime.md, "Receive latency").

A live source: silence for ``timeout_s`` raises :class:`SourceLost` (the pipeline reopens it);
a port in use is a :class:`StreamError` at ``open()``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import tempfile
import time
from collections import deque
from typing import Any

from ._common import (
    UDP_RCVBUF, AvLiveReader, Conditioner, RgbConverter, av_errors, bind_udp, check_udp_free, is_multicast,
    low_latency_decoder, resolve_host,
)
from ._deps import gst_available, need_av, one_line
from .base import CODECS, SOURCES, Frame, SourceLost, StreamError, Uri, VideoOptions
from .gst_source import APPSINK, DECODER_OPTIONS, GstSource
from .rtp_depay import Depacketizer, SequenceCounter, sprop_parameter_sets
from .sdp import SdpInfo, make_sdp, read_sdp

log = logging.getLogger(__name__)

#: ``--input-receiver auto``: the first of these that is installed (lowest measured latency first).
AUTO_ORDER = ("packets", "gstreamer", "pyav")
#: Packets keep arriving but none decodes (no keyframe yet, wrong codec): give up after this long.
NO_PICTURE_S = 10.0


def options_from_query(uri: Uri, options: VideoOptions) -> VideoOptions:
    """``?codec=h265&receiver=gstreamer&payload=97`` on a URI override the options for that stream."""
    changes: dict[str, Any] = {}
    q = uri.query
    if "codec" in q:
        changes["codec"] = q["codec"].lower()
    if "receiver" in q:
        changes["receiver"] = q["receiver"].lower()
    if "payload" in q:
        try:
            changes["payload_type"] = int(q["payload"])
        except ValueError:
            raise StreamError(f"{uri.text}: payload must be a number (96 for BlueOS)") from None
    return dataclasses.replace(options, **changes) if changes else options


def _bind_address(host: str | None) -> str:
    """Where a receiver binds: a multicast group or a loopback address as given, else every address."""
    if not host:
        return ""
    addr = resolve_host(host, "rtp source")
    return addr if is_multicast(addr) or addr.startswith("127.") else ""


def _stream(uri: Uri, options: VideoOptions) -> tuple[SdpInfo, str | None]:
    """The stream an ``rtp://`` URI or an ``.sdp`` file names, and the SDP path if any."""
    if uri.scheme == "sdp":
        info = read_sdp(uri.path)
        return info, uri.path
    return SdpInfo(port=int(uri.port or 0), payload_type=options.payload_type, codec=options.codec,
                   address=uri.host or None), None


class RtpSource:
    """The ``packets`` receiver (see the module docstring).

    Counters: ``frames``, ``corrupt`` (malformed/foreign datagrams + access units dropped as
    broken + access units the decoder rejected), ``lost_packets``, ``late_packets``,
    ``skipped_units`` (before the first keyframe).
    """

    live = True

    def __init__(self, uri: Uri, options: VideoOptions):
        self.uri = uri
        self.options = options
        self.info, self.sdp_path = _stream(uri, options)
        self.what = f"rtp source {uri.text}"
        if self.info.clock_rate != 90000:
            raise StreamError(f"{self.what}: RTP clock rate {self.info.clock_rate}; video RTP uses 90000")
        if self.info.codec not in CODECS:
            raise StreamError(f"{self.what}: codec {self.info.codec} is not supported")
        self.counters: dict[str, int] = {"frames": 0, "corrupt": 0, "lost_packets": 0, "late_packets": 0,
                                         "skipped_units": 0}
        self._depay = Depacketizer(self.info.codec, self.info.payload_type,
                                   sprop_parameter_sets(self.info.fmtp, self.info.codec))
        self._cond = Conditioner(options, True, self.counters, resize=False)
        self._rgb = RgbConverter(options)
        self._sock: socket.socket | None = None
        self._dec: Any = None
        self._av: Any = None
        self._ready: deque[Any] = deque()
        self._decode_errors = 0
        self._index = 0
        self._buf = bytearray(65536)

    def open(self) -> None:
        self._av = need_av(self.what)
        self._sock = bind_udp(_bind_address(self.info.address), self.info.port, self.what)
        self._dec = low_latency_decoder(self._av, self.info.codec)
        self._errors = av_errors(self._av)
        self._depay.resync()
        self._ready.clear()
        self._cond.reset()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock = None
        self._dec = None
        self._ready.clear()

    def describe(self) -> dict[str, Any]:
        return {"uri": self.uri.text, "kind": "rtp", "live": True, "receiver": "packets", "codec": self.info.codec,
                "port": self.info.port, "payload_type": self.info.payload_type}

    def read(self) -> Frame | None:
        if self._sock is None:
            raise StreamError(f"{self.what}: read() before open()")
        pending = self._cond.pending()
        if pending is not None:
            return pending
        timeout = self.options.timeout_s
        now = time.monotonic()
        silent_until = now + timeout
        picture_until = now + max(timeout, NO_PICTURE_S)
        view = memoryview(self._buf)
        while True:
            while self._ready:
                vframe, t, meta = self._ready.popleft()
                frame = self._cond.admit(lambda pts: self._frame(vframe, t, meta), t)
                if frame is not None:
                    return frame
            now = time.monotonic()
            if now >= silent_until:
                raise SourceLost(f"{self.what}: no RTP packets on udp port {self.info.port} for {timeout:g} s")
            if now >= picture_until:
                raise SourceLost(f"{self.what}: packets arrive but none decodes for {max(timeout, NO_PICTURE_S):g} s "
                                 f"(is it {self.info.codec} with payload type {self.info.payload_type}? "
                                 f"see --input-codec)")
            self._sock.settimeout(min(silent_until, picture_until) - now)
            try:
                n = self._sock.recv_into(self._buf)
            except socket.timeout:
                continue
            except OSError as e:
                raise SourceLost(f"{self.what}: {one_line(e)}") from None
            now = time.monotonic()
            silent_until = now + timeout
            for unit in self._depay.push(bytes(view[:n]), now):
                self._decode(unit, now)
            self._sync_counters()

    def _decode(self, unit: Any, now: float) -> None:
        try:
            frames = self._dec.decode(self._av.Packet(unit.data))
        except self._errors:
            self._decode_errors += 1
            return
        for vf in frames:
            self._ready.append((vf, now, {"rtp_timestamp": unit.timestamp, "keyframe": unit.keyframe}))

    def _frame(self, vframe: Any, t: float, meta: dict[str, Any]) -> Frame:
        image = self._cond.image(self._rgb(vframe))
        frame = Frame(image, self._index, time.monotonic(), None, meta)
        frame.meta["t_received"] = t
        self._index += 1
        self.counters["frames"] += 1
        return frame

    def _sync_counters(self) -> None:
        s = self._depay.stats
        c = self.counters
        c["corrupt"] = s.bad + s.dropped + self._decode_errors
        c["lost_packets"] = s.lost
        c["late_packets"] = s.late
        c["skipped_units"] = s.skipped


class GstRtpSource(GstSource):
    """The ``gstreamer`` receiver: ``udpsrc ! rtpXdepay ! avdec_X ! videoconvert ! appsink``."""

    def __init__(self, uri: Uri, options: VideoOptions):
        super().__init__(uri, options)
        self.info, self.sdp_path = _stream(uri, options)
        self.what = f"rtp source {uri.text} (GStreamer)"
        c = self.info.codec
        self._depay, self._dec = ("rtph264depay", "avdec_h264") if c == "h264" else ("rtph265depay", "avdec_h265")
        self.elements = ("udpsrc", self._depay, self._dec, "videoconvert", "videoscale", "appsink")
        self.data_element = "depay"
        self.counters.update(lost_packets=0, late_packets=0, bad_packets=0)
        self._seq = SequenceCounter(self.info.payload_type)

    def check(self) -> None:
        check_udp_free(_bind_address(self.info.address), self.info.port, self.what)

    def description(self) -> str:
        addr = _bind_address(self.info.address) or "0.0.0.0"
        return (f"udpsrc name=src address={addr} port={self.info.port} reuse=false buffer-size={UDP_RCVBUF} ! "
                f"{self._depay} name=depay ! {self._dec} {DECODER_OPTIONS} ! {self.scale()}{APPSINK}")

    def inspect(self, buffer: Any) -> None:
        """Count what the packets receiver counts, from the RTP headers entering the depayloader
        (GStreamer drops broken units and conceals as it sees fit; its warnings count as corrupt)."""
        self._seq.push(buffer.extract_dup(0, min(buffer.get_size(), 64)), time.monotonic())
        st = self._seq.stats
        self.counters["lost_packets"] = st.lost
        self.counters["late_packets"] = st.late
        self.counters["bad_packets"] = st.bad

    def _caps(self) -> str:
        enc = "H264" if self.info.codec == "h264" else "H265"
        caps = f"application/x-rtp,media=video,clock-rate=90000,encoding-name={enc},payload={self.info.payload_type}"
        sets = self.info.fmtp.get("sprop-parameter-sets")
        if sets and self.info.codec == "h264":
            caps += f',sprop-parameter-sets=(string)"{sets}"'
        return caps

    def configure(self, pipe: Any) -> None:
        pipe.get_by_name("src").set_property("caps", self._gst.Caps.from_string(self._caps()))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "kind": "rtp", "codec": self.info.codec, "port": self.info.port}


class PyavRtpSource(AvLiveReader):
    """The ``pyav`` receiver: libavformat's SDP/RTP demuxer (measured one frame slower)."""

    silence = "no packets"
    drain = True  # the frames the decoder holds when the stream ends are handed out before SourceLost

    def __init__(self, uri: Uri, options: VideoOptions):
        self.uri = uri
        self.info, self.sdp_path = _stream(uri, options)
        super().__init__(options, f"rtp source {uri.text} (PyAV)")
        self._tmp: str | None = None

    def open(self) -> None:
        av = need_av(self.what)
        check_udp_free(_bind_address(self.info.address), self.info.port, self.what)
        path = self.sdp_path
        if path is None:
            fd, path = tempfile.mkstemp(prefix="hbl-edge-", suffix=".sdp")
            with os.fdopen(fd, "w") as f:
                f.write(make_sdp(self.info.address or "127.0.0.1", self.info.port, codec=self.info.codec,
                                 payload_type=self.info.payload_type))
            self._tmp = path
        opts = {"protocol_whitelist": "file,udp,rtp", "fflags": "nobuffer", "flags": "low_delay",
                "reorder_queue_size": "0", "buffer_size": str(UDP_RCVBUF)}
        t = self.options.timeout_s
        try:
            container = av.open(path, format="sdp", options=opts, timeout=(t, t))
        except av.error.ExitError:
            self.close()
            raise SourceLost(f"{self.what}: no stream on udp port {self.info.port} within {t:g} s") from None
        except OSError as e:
            self.close()
            raise SourceLost(f"{self.what}: {one_line(e)}") from None
        self._start(av, container, StreamError(f"{self.what}: the SDP describes no video stream"))

    def close(self) -> None:
        super().close()
        if self._tmp:
            try:
                os.unlink(self._tmp)
            except OSError:
                pass
            self._tmp = None

    def describe(self) -> dict[str, Any]:
        return {"uri": self.uri.text, "kind": "rtp", "live": True, "receiver": "pyav", "codec": self.info.codec,
                "port": self.info.port}


RECEIVER_CLASSES = {"packets": RtpSource, "gstreamer": GstRtpSource, "pyav": PyavRtpSource}


def pick_receiver(name: str) -> str:
    """``auto`` → the first installed receiver of :data:`AUTO_ORDER`; others are taken as asked."""
    if name != "auto":
        return name
    try:
        import av  # noqa: F401
        have_av = True
    except ImportError:
        have_av = False
    for candidate in AUTO_ORDER:
        if candidate == "gstreamer" and not gst_available("udpsrc", "rtph264depay", "avdec_h264", "appsink"):
            continue
        if candidate != "gstreamer" and not have_av:
            continue
        return candidate
    return "packets"  # nothing installed: its open() says to install PyAV


def rtp_source(uri: Uri, options: VideoOptions) -> Any:
    options = options_from_query(uri, options)
    return RECEIVER_CLASSES[pick_receiver(options.receiver)](uri, options)


SOURCES.add("rtp", rtp_source)
SOURCES.add("sdp", rtp_source)

__all__ = ["AUTO_ORDER", "GstRtpSource", "PyavRtpSource", "RtpSource", "options_from_query", "pick_receiver",
           "rtp_source"]
