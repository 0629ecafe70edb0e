"""``udp://`` MPEG-TS: ``udp://@:PORT`` as a source, ``udp://HOST:PORT`` as a sink (PyAV).

MPEG-TS over UDP is what many encoders, ffmpeg one-liners and some ground stations use; it
carries its own timing and stream tables, so a receiver needs no SDP. It is slower to start and
to receive than RTP (the demuxer probes and buffers: measured in docs/runtime.md), so prefer
``rtp://`` where both ends allow it.

Sink: 7 TS packets (1316 bytes) per datagram, packets flushed per frame, the keyframe rule of
every network sink (SPS/PPS repeated, a keyframe at least every ``keyframe_interval_s``).
"""

from __future__ import annotations

import logging
from typing import Any

from ._common import UDP_RCVBUF, AvLiveReader, AvVideoWriter, check_udp_free, is_multicast, resolve_host
from ._deps import need_av, need_encoder, one_line
from .base import SINKS, SOURCES, Frame, SinkError, SourceLost, StreamError, Uri, VideoOptions

log = logging.getLogger(__name__)


class UdpTsSource(AvLiveReader):
    """MPEG-TS from a UDP port (``udp://@:PORT``, ``udp://GROUP:PORT`` for multicast)."""

    def __init__(self, uri: Uri, options: VideoOptions):
        self.uri = uri
        self.port = int(uri.port or 0)
        self.host = uri.host or ""
        super().__init__(options, f"udp source {uri.text}")

    def _bind(self) -> str:
        if not self.host:
            return "0.0.0.0"
        addr = resolve_host(self.host, self.what)
        return addr if is_multicast(addr) or addr.startswith("127.") else "0.0.0.0"

    def open(self) -> None:
        av = need_av(self.what)
        addr = self._bind()
        check_udp_free("" if addr == "0.0.0.0" else addr, self.port, self.what)
        t = self.options.timeout_s
        # fifo_size is in 188-byte packets; overrun_nonfatal: a slow consumer loses data, not the stream.
        url = (f"udp://{addr}:{self.port}?overrun_nonfatal=1&fifo_size=50000&buffer_size={UDP_RCVBUF}"
               f"&timeout={int(t * 1e6)}")
        opts = {"fflags": "nobuffer", "flags": "low_delay", "probesize": "65536", "analyzeduration": "500000"}
        try:
            container = av.open(url, format="mpegts", options=opts, timeout=(t, t))
        except av.error.ExitError:
            raise SourceLost(f"{self.what}: no MPEG-TS on udp port {self.port} within {t:g} s") from None
        except (OSError, av.error.FFmpegError) as e:
            raise SourceLost(f"{self.what}: {one_line(e)}") from None
        self._start(av, container, SourceLost(f"{self.what}: the MPEG-TS on port {self.port} has no video stream (yet)"))

    def describe(self) -> dict[str, Any]:
        return {"uri": self.uri.text, "kind": "udp", "live": True, "port": self.port, "format": "mpegts"}


class UdpTsSink:
    """MPEG-TS to ``host:port``. Counters: ``frames``, ``keyframes``, ``bytes``."""

    def __init__(self, uri: Uri, options: VideoOptions):
        self.uri = uri
        self.options = options
        if uri.listen or not uri.host:
            raise StreamError(f"{uri.text}: a udp:// output sends to a receiver: give its address, "
                              f"e.g. udp://192.168.2.1:{uri.port}")
        self.host = uri.host
        self.port = int(uri.port or 0)
        self.what = f"udp sink {uri.text}"
        self.counters: dict[str, int] = {"frames": 0, "keyframes": 0, "bytes": 0}
        self._writer: AvVideoWriter | None = None
        self._av: Any = None
        self._addr = ""

    def start(self) -> None:
        self._av = need_av(self.what)
        need_encoder(self._av, self.options.output_codec, self.what)
        self._addr = resolve_host(self.host, self.what)

    def write(self, frame: Frame) -> None:
        av = self._av
        if av is None:
            raise StreamError(f"{self.what}: write() before start()")
        try:
            if self._writer is None:
                ttl = "&ttl=16" if is_multicast(self._addr) else ""
                container = av.open(f"udp://{self._addr}:{self.port}?pkt_size=1316{ttl}", "w", format="mpegts",
                                    container_options={"flush_packets": "1", "muxdelay": "0", "muxpreload": "0"})
                self._writer = AvVideoWriter(av, container, self.options, live=True, what=self.what)
            self._writer.write(frame)
        except (OSError, av.error.FFmpegError) as e:
            raise SinkError(f"{self.what}: {one_line(e)}") from None
        w = self._writer
        self.counters.update(frames=w.frames, keyframes=w.keyframes, bytes=w.bytes)

    def close(self) -> None:
        w, self._writer = self._writer, None
        if w is not None:
            w.close()

    def describe(self) -> dict[str, Any]:
        return {"uri": self.uri.text, "kind": "udp", "host": self.host, "port": self.port, "format": "mpegts",
                "keyframe_interval_s": self.options.keyframe_interval_s}


SOURCES.add("udp", UdpTsSource)
SINKS.add("udp", UdpTsSink)

__all__ = ["UdpTsSink", "UdpTsSource"]
