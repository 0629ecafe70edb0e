"""RTP → H.264/H.265 access units (Annex-B), without waiting for the next frame.

libavformat's RTP demuxer hands H.264 to a parser that only knows a frame has ended when the
next one starts, which holds every frame for one frame interval (≈ 33 ms at 30 fps, measured).
The RTP marker bit already says "last packet of this access unit" (RFC 6184 §5.1, RFC 7798
§4.1), so assembling access units here and feeding them to a decoder removes that delay.

Payloads: H.264 single NAL unit, STAP-A and FU-A (packetization-mode 0 and 1; the interleaved
mode's STAP-B/MTAP/FU-B are rejected as unsupported); H.265 single NAL unit, AP and FU (no DONL,
i.e. ``sprop-max-don-diff`` 0, which is what every live encoder sends).

Losses: a gap in the sequence numbers drops the access unit it broke (a decoder fed half a
picture may crash into garbage; the next one decodes with the usual error concealment of its
missing reference) and counts the lost packets. A truncated fragment (an FU that never ends, or
a middle fragment without its start), a malformed aggregation packet, or bytes that are not RTP
at all are counted and skipped the same way. Until the first keyframe (or SPS) after a start or
a resynchronisation, access units are skipped: a decoder cannot start on them.
"""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass, field

START_CODE = b"\x00\x00\x00\x01"
#: Sequence jumps larger than this are a restarted sender, not losses.
RESYNC_GAP = 3000
#: A foreign SSRC takes over when the current one has been quiet this long (sender restarted).
SSRC_TAKEOVER_S = 0.2


@dataclass
class RtpPacket:
    marker: bool
    payload_type: int
    seq: int
    timestamp: int
    ssrc: int
    payload: bytes


def parse_rtp(data: bytes) -> RtpPacket | None | bool:
    """One RTP packet (RFC 3550 §5.1), ``False`` for RTCP (RFC 5761 demultiplexing: second byte
    192–223), ``None`` for anything that is not a well-formed RTP packet."""
    n = len(data)
    if n < 8 or data[0] >> 6 != 2:
        return None
    b0, b1 = data[0], data[1]
    if 192 <= b1 <= 223:
        return False
    if n < 12:
        return None
    off = 12 + 4 * (b0 & 0x0F)
    if b0 & 0x10:  # header extension: 16-bit profile, 16-bit length in words
        if n < off + 4:
            return None
        off += 4 + 4 * struct.unpack_from("!H", data, off + 2)[0]
    end = n
    if b0 & 0x20:  # padding: the last byte counts the padding bytes
        end -= data[-1]
    if off >= end:
        return None
    seq, ts, ssrc = struct.unpack_from("!HII", data, 2)
    return RtpPacket(bool(b1 & 0x80), b1 & 0x7F, seq, ts, ssrc, bytes(data[off:end]))


@dataclass
class AccessUnit:
    """One coded picture: Annex-B bytes (start code + NAL unit, …)."""

    data: bytes
    timestamp: int
    keyframe: bool
    nal_types: tuple[int, ...]


@dataclass
class DepayStats:
    packets: int = 0
    lost: int = 0  #: packets missing from the sequence
    late: int = 0  #: duplicated or reordered packets that came after their access unit
    bad: int = 0  #: datagrams that are not RTP, or RTP of another payload type/SSRC
    rtcp: int = 0
    units: int = 0  #: access units handed out
    dropped: int = 0  #: access units dropped as broken (loss, truncated fragment, malformed payload)
    skipped: int = 0  #: access units skipped while waiting for a keyframe
    resyncs: int = 0


class _Codec:
    """What differs between H.264 and H.265 payloads."""

    name = ""
    header = 1  #: NAL unit header bytes

    def nal_type(self, nal: bytes) -> int:
        raise NotImplementedError

    def is_key(self, t: int) -> bool:
        raise NotImplementedError

    def is_sps(self, t: int) -> bool:
        raise NotImplementedError


class _H264(_Codec):
    name = "h264"
    header = 1
    single = range(1, 24)
    aggregate = 24  # STAP-A
    fragment = 28  # FU-A

    def nal_type(self, nal: bytes) -> int:
        return nal[0] & 0x1F

    def is_key(self, t: int) -> bool:
        return t == 5

    def is_sps(self, t: int) -> bool:
        return t == 7

    def fu(self, payload: bytes) -> tuple[bool, bool, bytes, bytes] | None:
        if len(payload) < 3:
            return None
        ind, hdr = payload[0], payload[1]
        return bool(hdr & 0x80), bool(hdr & 0x40), bytes([(ind & 0xE0) | (hdr & 0x1F)]), payload[2:]


class _H265(_Codec):
    name = "h265"
    header = 2
    single = range(0, 48)
    aggregate = 48  # AP
    fragment = 49  # FU

    def nal_type(self, nal: bytes) -> int:
        return (nal[0] >> 1) & 0x3F

    def is_key(self, t: int) -> bool:
        return 16 <= t <= 21  # IRAP: BLA, IDR, CRA

    def is_sps(self, t: int) -> bool:
        return t == 33

    def fu(self, payload: bytes) -> tuple[bool, bool, bytes, bytes] | None:
        if len(payload) < 4:
            return None
        hdr = payload[2]
        nal_header = bytes([(payload[0] & 0x81) | ((hdr & 0x3F) << 1), payload[1]])
        return bool(hdr & 0x80), bool(hdr & 0x40), nal_header, payload[3:]


CODECS = {"h264": _H264(), "h265": _H265()}


class SequenceCounter:
    """Lost/late/foreign packet counts from RTP headers alone (for receivers that depacketize
    elsewhere, e.g. GStreamer): the same rules as :class:`Depacketizer`."""

    def __init__(self, payload_type: int = 96):
        self.payload_type = payload_type
        self.stats = DepayStats()
        self._ssrc: int | None = None
        self._expected: int | None = None
        self._last_time = 0.0

    def push(self, data: bytes, now: float = 0.0) -> None:
        pkt = parse_rtp(data)
        if pkt is False:
            self.stats.rtcp += 1
            return
        if pkt is None or pkt.payload_type != self.payload_type:
            self.stats.bad += 1
            return
        if pkt.ssrc != self._ssrc:
            if self._ssrc is not None and now - self._last_time < SSRC_TAKEOVER_S:
                self.stats.bad += 1
                return
            self._ssrc, self._expected = pkt.ssrc, None
        self._last_time = now
        self.stats.packets += 1
        if self._expected is not None:
            d = (pkt.seq - self._expected) & 0xFFFF
            behind = 0x10000 - d if d >= 0x8000 else 0
            if 0 < behind <= RESYNC_GAP:
                self.stats.late += 1
                return
            if not behind and d <= RESYNC_GAP:
                self.stats.lost += d
        self._expected = (pkt.seq + 1) & 0xFFFF


def sprop_parameter_sets(fmtp: dict[str, str], codec: str) -> list[bytes]:
    """Parameter sets from an SDP ``a=fmtp`` line (``sprop-parameter-sets`` for H.264,
    ``sprop-vps/sps/pps`` for H.265), decoded from base64; malformed entries are ignored."""
    keys = ["sprop-parameter-sets"] if codec == "h264" else ["sprop-vps", "sprop-sps", "sprop-pps"]
    out: list[bytes] = []
    for key in keys:
        for item in fmtp.get(key, "").split(","):
            item = item.strip()
            if item:
                try:
                    out.append(base64.b64decode(item + "=" * (-len(item) % 4), validate=True))
                except ValueError:
                    continue
    return [p for p in out if p]


@dataclass
class Depacketizer:
    """Packets in (:meth:`push`), complete access units out, with the counts in :attr:`stats`.

    Args:
        codec: ``h264`` or ``h265``.
        payload_type: the RTP payload type to accept (others are counted as ``bad``).
        parameter_sets: NAL units (no start codes) from the SDP, put in front of every keyframe
            that lacks its SPS, so decoding starts even when the sender never repeats them.
    """

    codec: str = "h264"
    payload_type: int = 96
    parameter_sets: list[bytes] = field(default_factory=list)
    stats: DepayStats = field(default_factory=DepayStats)

    def __post_init__(self) -> None:
        self._c = CODECS[self.codec]
        self._ssrc: int | None = None
        self._expected: int | None = None
        self._last_time = 0.0
        self._need_key = True
        self._reset_unit()

    def _reset_unit(self) -> None:
        self._started = False
        self._ts = 0
        self._nals: list[bytes] = []
        self._fu: bytearray | None = None
        self._broken = False

    def resync(self) -> None:
        """Forget the stream state (a new sender, a reopened socket): wait for the next keyframe."""
        self._ssrc = None
        self._expected = None
        self._need_key = True
        self._reset_unit()

    # -- packets ------------------------------------------------------------------------------
    def push(self, data: bytes, now: float = 0.0) -> list[AccessUnit]:
        """Take one UDP datagram; return the access units it completed (usually 0 or 1)."""
        pkt = parse_rtp(data)
        if pkt is False:
            self.stats.rtcp += 1
            return []
        if pkt is None or pkt.payload_type != self.payload_type:
            self.stats.bad += 1
            return []
        out: list[AccessUnit] = []
        if pkt.ssrc != self._ssrc:
            if self._ssrc is not None and now - self._last_time < SSRC_TAKEOVER_S:
                self.stats.bad += 1  # a second sender on our port: ignore it while ours is alive
                return []
            if self._ssrc is not None:
                self.stats.resyncs += 1
                out += self._finish()
            self.resync()
            self._ssrc = pkt.ssrc
        self._last_time = now
        self.stats.packets += 1
        gap = False
        if self._expected is not None:
            d = (pkt.seq - self._expected) & 0xFFFF
            behind = 0x10000 - d if d >= 0x8000 else 0
            if 0 < behind <= RESYNC_GAP:  # a duplicate or a packet overtaken by its successors
                self.stats.late += 1
                return out
            if behind or d > RESYNC_GAP:  # far off either way: the sender restarted its numbering
                self.stats.resyncs += 1
                out += self._finish()
                self.resync()
                self._ssrc = pkt.ssrc
            elif d:
                self.stats.lost += d
                gap = True
        self._expected = (pkt.seq + 1) & 0xFFFF
        if self._started and pkt.timestamp != self._ts:
            # The previous unit's marker packet never came: it ends here (broken if the gap took its tail).
            if gap:
                self._broken = True
            out += self._finish()
        if gap:
            self._broken = True  # the lost packets may have been this unit's head
        self._started = True
        self._ts = pkt.timestamp
        self._payload(pkt.payload)
        if pkt.marker:
            out += self._finish()
        return out

    def _payload(self, p: bytes) -> None:
        c = self._c
        if len(p) < c.header or p[0] & 0x80:  # forbidden_zero_bit set: not a valid NAL unit
            self._broken = True
            return
        t = c.nal_type(p)
        if t in c.single:
            if self._fu is not None:  # a fragmented NAL unit ended without its end fragment
                self._broken, self._fu = True, None
            self._nals.append(p)
        elif t == c.aggregate:
            i, n = c.header, len(p)
            while i < n:
                if i + 2 > n:
                    self._broken = True
                    return
                size = (p[i] << 8) | p[i + 1]
                i += 2
                if size == 0 or i + size > n:
                    self._broken = True
                    return
                self._nals.append(p[i:i + size])
                i += size
        elif t == c.fragment:
            fu = c.fu(p)
            if fu is None:
                self._broken = True
                return
            start, end, header, chunk = fu
            if start:
                if self._fu is not None:
                    self._broken = True  # the previous fragmented NAL unit was truncated
                self._fu = bytearray(header)
                self._fu += chunk
            elif self._fu is None:
                self._broken = True  # a middle or end fragment whose start we never saw
                return
            else:
                self._fu += chunk
            if end:
                self._nals.append(bytes(self._fu))
                self._fu = None
        else:
            self._broken = True  # STAP-B, MTAP, FU-B, PACI: not sent by live encoders; unsupported

    def _finish(self) -> list[AccessUnit]:
        if not self._started:
            return []
        broken = self._broken or self._fu is not None
        nals = self._nals
        ts = self._ts
        self._reset_unit()
        if broken:
            self.stats.dropped += 1
            return []
        if not nals:
            return []
        c = self._c
        types = tuple(c.nal_type(n) for n in nals)
        key = any(c.is_key(t) for t in types)
        if key and self.parameter_sets and not any(c.is_sps(t) for t in types):
            nals = self.parameter_sets + nals
            types = tuple(c.nal_type(n) for n in nals)
        if self._need_key:
            if not (key or any(c.is_sps(t) for t in types)):
                self.stats.skipped += 1
                return []
            self._need_key = False
        self.stats.units += 1
        return [AccessUnit(b"".join(START_CODE + n for n in nals), ts, key, types)]


__all__ = ["AccessUnit", "DepayStats", "Depacketizer", "RtpPacket", "SequenceCounter", "parse_rtp",
           "sprop_parameter_sets"]
