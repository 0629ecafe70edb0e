"""``rtp://HOST:PORT`` sink: H.264 (or H.265) RTP over UDP, payload type 96, plus an SDP file.

What QGroundControl and VLC receive from a BlueOS vehicle, so they receive ours the same way:
QGroundControl: Application Settings → Video → Source "UDP h.264 Video Stream", port PORT; VLC or
ffplay: open the SDP file. x264 runs with ``ultrafast``/``zerolatency`` (each frame leaves the
encoder with no delay), SPS/PPS are repeated before every keyframe and a keyframe is sent at least
every ``keyframe_interval_s`` (1 s), so a receiver that starts late or loses packets shows a
picture within a second.

Packets are made by libavformat's RTP muxer (RFC 6184 packetization mode 1: single NAL units and
FU-A, 1400-byte packets) into a Python file object whose every write is one packet, and sent from
our own UDP socket: that socket never fails because the receiver is not there yet, and RTCP
sender reports go to PORT+1 as the RTP convention (and ffmpeg's ``rtp://``) has it.

The SDP is written when the sink starts (``--sdp``/``options.sdp_path``, or ``?sdp=PATH``; default
``rtp-HOST-PORT.sdp`` in the current folder) and rewritten with the parameter sets once the first
keyframe is encoded.
"""

from __future__ import annotations

import io
import logging
import socket
from pathlib import Path
from typing import Any, Callable

from ._common import AvVideoWriter, is_multicast, resolve_host
from ._deps import need_av, need_encoder, one_line
from .base import SINKS, Frame, SinkError, StreamError, Uri, VideoOptions
from .sdp import make_sdp

log = logging.getLogger(__name__)

#: RTP packet size: 1400 bytes of RTP leave room for IP/UDP and a VPN or tether encapsulation.
PACKET_SIZE = 1400


class PacketWriter(io.RawIOBase):
    """A write-only file object that hands every write to ``send`` (the RTP muxer writes and
    flushes one packet at a time when ``packetsize`` is set, so each write is one packet)."""

    def __init__(self, send: Callable[[bytes], None]):
        super().__init__()
        self._send = send

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        data = bytes(b)
        self._send(data)
        return len(data)


def open_rtp_muxer(av: Any, send: Callable[[bytes], None], payload_type: int = 96) -> Any:
    """A PyAV ``rtp`` output container whose packets go to ``send(bytes)`` one by one."""
    return av.open(PacketWriter(send), "w", format="rtp",
                   container_options={"packetsize": str(PACKET_SIZE), "payload_type": str(payload_type)})


def parameter_sets(annexb: bytes, codec: str) -> list[bytes]:
    """SPS/PPS (H.265: VPS/SPS/PPS) NAL units found in an Annex-B access unit."""
    wanted = (7, 8) if codec == "h264" else (32, 33, 34)
    out = []
    for nal in split_annexb(annexb):
        t = (nal[0] & 0x1F) if codec == "h264" else ((nal[0] >> 1) & 0x3F)
        if t in wanted:
            out.append(nal)
    return out


def split_annexb(data: bytes) -> list[bytes]:
    """NAL units of an Annex-B byte stream (3- or 4-byte start codes)."""
    out = []
    i, n = 0, len(data)
    starts = []
    while True:
        j = data.find(b"\x00\x00\x01", i)
        if j < 0:
            break
        starts.append(j + 3)
        i = j + 3
    for k, s in enumerate(starts):
        e = starts[k + 1] - 3 if k + 1 < len(starts) else n
        nal = data[s:e]
        if k + 1 < len(starts) and nal.endswith(b"\x00"):
            nal = nal.rstrip(b"\x00")  # the next unit had a 4-byte start code
        if nal:
            out.append(nal)
    return out


class RtpSink:
    """Counters: ``frames``, ``keyframes``, ``packets``, ``bytes``, ``send_errors``."""

    def __init__(self, uri: Uri, options: VideoOptions):
        self.uri = uri
        self.options = options
        self.what = f"rtp sink {uri.text}"
        if uri.listen or not uri.host:
            raise StreamError(f"{uri.text}: an rtp:// output sends to a receiver: give its address, "
                              f"e.g. rtp://192.168.2.1:{uri.port} (QGroundControl's computer)")
        self.host = uri.host
        self.port = int(uri.port or 0)
        self.sdp_path = Path(options.sdp_path or uri.query.get("sdp") or f"rtp-{self.host}-{self.port}.sdp")
        self.counters: dict[str, int] = {"frames": 0, "keyframes": 0, "packets": 0, "bytes": 0, "send_errors": 0}
        self._sock: socket.socket | None = None
        self._writer: AvVideoWriter | None = None
        self._sdp_final = False
        self._addr = ""

    def start(self) -> None:
        av = need_av(self.what)
        self._av = av
        need_encoder(av, self.options.output_codec, self.what)
        self._addr = resolve_host(self.host, self.what)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        if is_multicast(self._addr):
            self._sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 16)
        self._write_sdp([])
        log.info("%s: SDP for VLC/ffplay written to %s", self.what, self.sdp_path)

    def _write_sdp(self, sets: list[bytes]) -> None:
        from ...runio import atomic_path

        text = make_sdp(self._addr, self.port, codec=self.options.output_codec,
                        payload_type=self.options.payload_type, parameter_sets=sets)
        try:
            with atomic_path(self.sdp_path) as tmp:
                tmp.write_text(text)
        except OSError as e:
            raise StreamError(f"{self.what}: cannot write the SDP file {self.sdp_path} ({e.strerror}); "
                              f"give another place with --sdp PATH") from None

    def _send(self, data: bytes) -> None:
        rtcp = len(data) > 1 and 200 <= data[1] <= 204
        try:
            self._sock.sendto(data, (self._addr, self.port + 1 if rtcp else self.port))
        except OSError as e:
            # The link may come back (a tether re-plugged, Wi-Fi roaming): keep encoding, count the loss.
            if self.counters["send_errors"] == 0:
                log.warning("%s: cannot send (%s); will keep trying", self.what, one_line(e))
            self.counters["send_errors"] += 1
            return
        if not rtcp:
            self.counters["packets"] += 1
            self.counters["bytes"] += len(data)

    def write(self, frame: Frame) -> None:
        if self._sock is None:
            raise StreamError(f"{self.what}: write() before start()")
        av = self._av
        if self._writer is None:
            try:
                container = open_rtp_muxer(av, self._send, self.options.payload_type)
            except (OSError, av.error.FFmpegError) as e:
                raise SinkError(f"{self.what}: {one_line(e)}") from None
            self._writer = AvVideoWriter(av, container, self.options, live=True, what=self.what,
                                         on_packet=self._on_packet)
        self._writer.write(frame)
        self.counters["frames"] = self._writer.frames
        self.counters["keyframes"] = self._writer.keyframes

    def _on_packet(self, packet: Any) -> None:
        """Put the first keyframe's parameter sets into the SDP (sprop-parameter-sets)."""
        if self._sdp_final or not packet.is_keyframe:
            return
        sets = parameter_sets(bytes(packet), self.options.output_codec)
        if sets:
            self._sdp_final = True
            try:
                self._write_sdp(sets)
            except StreamError as e:
                log.warning("%s", e)

    def close(self) -> None:
        w, self._writer = self._writer, None
        try:
            if w is not None:
                w.close()
        finally:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def describe(self) -> dict[str, Any]:
        return {"uri": self.uri.text, "kind": "rtp", "host": self.host, "port": self.port, "sdp": str(self.sdp_path),
                "codec": self.options.output_codec, "payload_type": self.options.payload_type,
                "keyframe_interval_s": self.options.keyframe_interval_s}


SINKS.add("rtp", RtpSink)

__all__ = ["PACKET_SIZE", "PacketWriter", "RtpSink", "open_rtp_muxer", "parameter_sets", "split_annexb"]
