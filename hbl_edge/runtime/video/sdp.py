"""SDP files (RFC 8866) for one RTP video stream: read them as a source, write them for a sink.

Only what a unicast or multicast H.264/H.265 video stream needs: the connection address, the
``m=video`` port and payload type, ``a=rtpmap`` (codec, clock rate) and ``a=fmtp``
(packetization mode, parameter sets). VLC, ffplay/ffmpeg and GStreamer's ``sdpdemux`` open the
files :func:`make_sdp` writes.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path

from .base import StreamError

_ENCODINGS = {"h264": "H264", "h265": "H265"}


@dataclass
class SdpInfo:
    """One video stream described by an SDP."""

    port: int
    payload_type: int = 96
    codec: str = "h264"
    address: str | None = None  #: the c= address: where the packets go (our address, or a multicast group)
    clock_rate: int = 90000
    fmtp: dict[str, str] = field(default_factory=dict)


def parse_sdp(text: str, where: str = "SDP") -> SdpInfo:
    """The first video stream of an SDP text; no video, no port, or a codec other than
    H.264/H.265 → :class:`StreamError`."""
    address: str | None = None
    media: dict | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if len(line) < 2 or line[1] != "=":
            continue
        kind, value = line[0], line[2:].strip()
        if kind == "m":
            if media is not None:
                break  # only the first video stream
            parts = value.split()
            if len(parts) >= 4 and parts[0] == "video":
                try:
                    port = int(parts[1].split("/")[0])
                    pt = int(parts[3])
                except ValueError:
                    raise StreamError(f"{where}: malformed m= line {line!r}") from None
                media = {"port": port, "pt": pt, "codec": None, "clock": 90000, "fmtp": {}, "address": address}
        elif kind == "c":
            parts = value.split()
            if len(parts) >= 3:
                addr = parts[2].split("/")[0]
                if media is None:
                    address = addr
                else:
                    media["address"] = addr
        elif kind == "a" and media is not None:
            if value.startswith("rtpmap:"):
                head, _, enc = value[7:].partition(" ")
                if head.strip() == str(media["pt"]):
                    name, _, rate = enc.partition("/")
                    media["codec"] = name.strip().upper()
                    media["clock"] = int(rate.split("/")[0]) if rate.split("/")[0].isdigit() else 90000
            elif value.startswith("fmtp:"):
                head, _, params = value[5:].partition(" ")
                if head.strip() == str(media["pt"]):
                    for item in params.split(";"):
                        k, eq, v = item.strip().partition("=")
                        if eq:
                            media["fmtp"][k.strip().lower()] = v.strip()
    if media is None:
        raise StreamError(f"{where}: no 'm=video' stream in this SDP; is it a video stream description?")
    codec = {"H264": "h264", "H265": "h265", "HEVC": "h265", None: "h264"}.get(media["codec"])
    if codec is None:
        raise StreamError(f"{where}: the stream is {media['codec']}; only H.264 and H.265 RTP are supported")
    if not 0 < media["port"] < 65536:
        raise StreamError(f"{where}: port {media['port']} is not a UDP port")
    return SdpInfo(media["port"], media["pt"], codec, media["address"], media["clock"], media["fmtp"])


def read_sdp(path: str | Path) -> SdpInfo:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise StreamError(f"{path}: no such SDP file; check the path") from None
    except OSError as e:
        raise StreamError(f"{path}: cannot read the SDP file ({e.strerror})") from None
    return parse_sdp(text, str(path))


def make_sdp(address: str, port: int, *, codec: str = "h264", payload_type: int = 96,
             parameter_sets: list[bytes] | None = None, origin: str = "127.0.0.1", name: str = "hbl-edge") -> str:
    """An SDP for an RTP video stream sent to ``address:port``.

    ``parameter_sets``: SPS/PPS (H.265: VPS/SPS/PPS) NAL units without start codes; they go into
    ``sprop-parameter-sets`` (``sprop-vps/sps/pps``) and ``profile-level-id``, so a player can
    start before the first in-band SPS arrives.
    """
    enc = _ENCODINGS[codec]
    ttl = "/16" if _multicast(address) else ""
    lines = [
        "v=0",
        f"o=- 0 0 IN IP4 {origin}",
        f"s={name}",
        f"c=IN IP4 {address}{ttl}",
        "t=0 0",
        f"m=video {port} RTP/AVP {payload_type}",
        f"a=rtpmap:{payload_type} {enc}/90000",
    ]
    fmtp: list[str] = []
    sets = parameter_sets or []
    if codec == "h264":
        fmtp.append("packetization-mode=1")
        sps = [p for p in sets if p and p[0] & 0x1F == 7]
        if sps and len(sps[0]) >= 4:
            fmtp.append(f"profile-level-id={sps[0][1:4].hex()}")
        if sets:
            fmtp.append("sprop-parameter-sets=" + ",".join(base64.b64encode(p).decode() for p in sets))
    else:
        for key, t in (("sprop-vps", 32), ("sprop-sps", 33), ("sprop-pps", 34)):
            found = [p for p in sets if len(p) > 2 and (p[0] >> 1) & 0x3F == t]
            if found:
                fmtp.append(f"{key}=" + ",".join(base64.b64encode(p).decode() for p in found))
    if fmtp:
        lines.append(f"a=fmtp:{payload_type} " + "; ".join(fmtp))
    return "\r\n".join(lines) + "\r\n"


def _multicast(address: str) -> bool:
    try:
        import ipaddress

        return ipaddress.ip_address(address).is_multicast
    except ValueError:
        return False


__all__ = ["SdpInfo", "make_sdp", "parse_sdp", "read_sdp"]
