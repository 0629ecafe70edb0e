"""``rtsp://host:port/path`` client (a Blueye drone: ``rtsp://192.168.1.101:8554/test``; IP cameras).

Two receivers (``--input-receiver``): ``gstreamer`` (``rtspsrc latency=MS protocols=tcp|udp !
rtph264depay ! avdec_h264 ! appsink``) and ``pyav`` (libavformat's RTSP client, whose H.264 parser
holds each frame until the next one starts). ``auto`` takes the first installed of
:data:`AUTO_ORDER` (measured: docs/runtime.md, "Receive latency").

Options: ``transport`` (``tcp``, the default, survives lossy links and NAT; ``udp``),
``latency_ms`` (the jitter buffer; 0 = show each frame as soon as it is complete), ``timeout_s``.

The server going away (the vehicle powered off, the tether cut) is :class:`SourceLost`: PyAV's
demuxer ends as at the end of a file or times out; GStreamer posts an error or end-of-stream on
the bus, or frames simply stop. A server not there (yet) at ``open()`` is :class:`SourceLost`
too, so the pipeline keeps retrying until the vehicle is up.
"""

from __future__ import annotations

import logging
from typing import Any

from ._common import AvLiveReader
from ._deps import gst_available, need_av, one_line
from .base import SOURCES, SourceLost, StreamError, Uri, VideoOptions
from .gst_source import APPSINK, DECODER_OPTIONS, GstSource, quote
from .rtp_source import options_from_query

log = logging.getLogger(__name__)

#: ``--input-receiver auto``: the first of these that is installed (lowest measured latency first).
AUTO_ORDER = ("gstreamer", "pyav")


def _url(uri: Uri) -> str:
    """The URL without our own ``?codec=``/``?receiver=`` options (a camera's own query stays)."""
    text = uri.text
    if "?" not in text:
        return text
    base, _, query = text.partition("?")
    keep = [kv for kv in query.split("&") if kv.split("=", 1)[0] not in ("codec", "receiver", "payload")]
    return base + ("?" + "&".join(keep) if keep else "")


class GstRtspSource(GstSource):
    """``rtspsrc ! depay ! avdec ! appsink``."""

    def __init__(self, uri: Uri, options: VideoOptions):
        super().__init__(uri, options)
        self.url = _url(uri)
        self.what = f"rtsp source {self.url} (GStreamer)"
        c = options.codec
        self._depay, self._dec = ("rtph264depay", "avdec_h264") if c == "h264" else ("rtph265depay", "avdec_h265")
        self.elements = ("rtspsrc", self._depay, self._dec, "videoconvert", "videoscale", "appsink")
        self.data_element = "depay"

    def description(self) -> str:
        o = self.options
        tcp_timeout = int(o.timeout_s * 1e6)
        # drop-on-latency stays off: with latency=0 the jitter buffer would drop the packets of a
        # frame whenever decoding falls a moment behind (a busy CPU), and every later frame up to
        # the next keyframe decodes from a broken reference. Whole frames are dropped after
        # decoding instead (the pipeline keeps the newest; the appsink holds at most 4).
        return (f"rtspsrc location={quote(self.url)} latency={o.latency_ms} protocols={o.transport} "
                f"drop-on-latency=false tcp-timeout={tcp_timeout} timeout={tcp_timeout} ! "
                f"{self._depay} name=depay ! {self._dec} {DECODER_OPTIONS} ! {self.scale()}{APPSINK}")

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "kind": "rtsp", "url": self.url, "transport": self.options.transport,
                "latency_ms": self.options.latency_ms}


class PyavRtspSource(AvLiveReader):
    """libavformat's RTSP client through PyAV."""

    ended = "the server ended the stream"

    def __init__(self, uri: Uri, options: VideoOptions):
        self.uri = uri
        self.url = _url(uri)
        super().__init__(options, f"rtsp source {self.url} (PyAV)")

    def open(self) -> None:
        av = need_av(self.what)
        o = self.options
        opts = {"rtsp_transport": o.transport, "fflags": "nobuffer", "flags": "low_delay",
                "max_delay": str(o.latency_ms * 1000), "reorder_queue_size": "0" if o.latency_ms == 0 else "64",
                "probesize": "65536", "analyzeduration": "1000000"}
        t = o.timeout_s
        try:
            container = av.open(self.url, options=opts, timeout=(t, t))
        except av.error.ExitError:
            raise SourceLost(f"{self.what}: no answer within {t:g} s") from None
        except (OSError, av.error.FFmpegError) as e:
            # Refused, unreachable, 404 (the stream may not be mounted yet): the pipeline retries.
            raise SourceLost(f"{self.what}: {one_line(e)}") from None
        self._start(av, container, StreamError(f"{self.what}: the server offers no video stream"))

    def describe(self) -> dict[str, Any]:
        return {"uri": self.uri.text, "kind": "rtsp", "live": True, "receiver": "pyav", "url": self.url,
                "transport": self.options.transport, "latency_ms": self.options.latency_ms}


RECEIVER_CLASSES = {"gstreamer": GstRtspSource, "pyav": PyavRtspSource}


def pick_receiver(name: str, codec: str = "h264") -> str:
    if name == "packets":
        raise StreamError("--input-receiver packets is for rtp:// inputs; use auto, gstreamer or pyav for rtsp://")
    if name != "auto":
        return name
    dec = ("rtph264depay", "avdec_h264") if codec == "h264" else ("rtph265depay", "avdec_h265")
    for candidate in AUTO_ORDER:
        if candidate == "gstreamer" and not gst_available("rtspsrc", *dec, "appsink"):
            continue
        return candidate
    return "pyav"  # its open() says to install PyAV when it is missing too


def rtsp_source(uri: Uri, options: VideoOptions) -> Any:
    if uri.listen:
        raise StreamError(f"{uri.text}: an rtsp:// input connects to a server: give its address, "
                          f"e.g. rtsp://192.168.1.101:8554/test (rtsp://@:PORT/name is an output)")
    options = options_from_query(uri, options)
    return RECEIVER_CLASSES[pick_receiver(options.receiver, options.codec)](uri, options)


SOURCES.add("rtsp", rtsp_source)

__all__ = ["AUTO_ORDER", "GstRtspSource", "PyavRtspSource", "pick_receiver", "rtsp_source"]
