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
import time
from collections import deque
from typing import Any

from ._common import (
    UDP_RCVBUF, AvVideoWriter, Conditioner, av_errors, RgbConverter, check_udp_free, is_multicast,
    live_decoder, resolve_host,
)
from ._deps import need_av, need_encoder, one_line
from .base import SINKS, SOURCES, Frame, SinkError, SourceLost, StreamError, Uri, VideoOptions

log = logging.getLogger(__name__)


class UdpTsSource:
    """MPEG-TS from a UDP port (``udp://@:PORT``, ``udp://GROUP:PORT`` for multicast)."""

    live = True

    def __init__(self, uri: Uri, options: VideoOptions):
        self.uri = uri
        self.options = options
        self.port = int(uri.port or 0)
        self.host = uri.host or ""
        self.what = f"udp source {uri.text}"
        self.counters: dict[str, int] = {"frames": 0, "corrupt": 0}
        self._cond = Conditioner(options, True, self.counters, resize=False)
        self._rgb = RgbConverter(options)
        self._container: Any = None
        self._packets: Any = None
        self._ready: deque[Any] = deque()
        self._index = 0

    def _bind(self) -> str:
        if not self.host:
            return "0.0.0.0"
        addr = resolve_host(self.host, self.what)
        return addr if is_multicast(addr) or addr.startswith("127.") else "0.0.0.0"

    def open(self) -> None:
        av = need_av(self.what)
        self._av = av
        self._errors = av_errors(av)
        addr = self._bind()
        check_udp_free("" if addr == "0.0.0.0" else addr, self.port, self.what)
        t = self.options.timeout_s
        # fifo_size is in 188-byte packets; overrun_nonfatal: a slow consumer loses data, not the stream.
        url = (f"udp://{addr}:{self.port}?overrun_nonfatal=1&fifo_size=50000&buffer_size={UDP_RCVBUF}"
               f"&timeout={int(t * 1e6)}")
        opts = {"fflags": "nobuffer", "flags": "low_delay", "probesize": "65536", "analyzeduration": "500000"}
        try:
            self._container = av.open(url, format="mpegts", options=opts, timeout=(t, t))
        except av.error.ExitError:
            raise SourceLost(f"{self.what}: no MPEG-TS on udp port {self.port} within {t:g} s") from None
        except (OSError, av.error.FFmpegError) as e:
            raise SourceLost(f"{self.what}: {one_line(e)}") from None
        if not self._container.streams.video:
            self.close()
            raise SourceLost(f"{self.what}: the MPEG-TS on port {self.port} has no video stream (yet)")
        stream = self._container.streams.video[0]
        live_decoder(stream.codec_context)
        self._packets = self._container.demux(stream)
        self._cond.reset()

    def read(self) -> Frame | None:
        if self._container is None:
            raise StreamError(f"{self.what}: read() before open()")
        pending = self._cond.pending()
        if pending is not None:
            return pending
        while True:
            while self._ready:
                vf = self._ready.popleft()
                frame = self._cond.admit(lambda pts: self._frame(vf), time.monotonic())
                if frame is not None:
                    return frame
            try:
                packet = next(self._packets)
            except StopIteration:
                raise SourceLost(f"{self.what}: the stream ended") from None
            except self._av.error.ExitError:
                raise SourceLost(f"{self.what}: no data for {self.options.timeout_s:g} s") from None
            except self._errors:
                self.counters["corrupt"] += 1
                continue
            except (OSError, self._av.error.FFmpegError) as e:
                raise SourceLost(f"{self.what}: {one_line(e)}") from None
            if packet.size == 0:
                continue
            try:
                self._ready.extend(packet.decode())
            except self._errors:
                self.counters["corrupt"] += 1

    def _frame(self, vf: Any) -> Frame:
        frame = Frame(self._cond.image(self._rgb(vf)), self._index, time.monotonic(), None, {})
        self._index += 1
        self.counters["frames"] += 1
        return frame

    def close(self) -> None:
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # nothing to flush on a reader
                pass
        self._container = self._packets = None
        self._ready.clear()

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
