"""Pieces shared by several sources and sinks: frame conditioning (size, flip, rate), the
sinks' output clock, UDP/TCP port handling, PyAV decoders and the PyAV video writer.

Nothing here imports PyAV or GStreamer at module level.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import math
import socket
import time
from collections import deque
from fractions import Fraction
from typing import Any, Callable

import numpy as np

from ._deps import need_encoder, one_line
from .base import Frame, SinkError, SourceLost, StreamError, VideoOptions, apply_flip, fit_to

log = logging.getLogger(__name__)

#: The 90 kHz clock of RTP video and MPEG-TS; encoders and muxers all use it.
TIME_BASE = Fraction(1, 90000)
UDP_RCVBUF = 4 << 20


# ---------------------------------------------------------------------------------------------
# Sources: size, flip, rate
# ---------------------------------------------------------------------------------------------
def target_size(options: VideoOptions, width: int, height: int) -> tuple[int, int] | None:
    """The ``--input-width/--input-height`` size for a ``width``×``height`` picture, or None when
    no size is asked. Only one given: the other follows the aspect ratio (rounded to even)."""
    w, h = options.width, options.height
    if w is None and h is None:
        return None
    if w is None:
        w = max(2, 2 * round(width * h / height / 2))
    if h is None:
        h = max(2, 2 * round(height * w / width / 2))
    return int(w), int(h)


class Conditioner:
    """Applies ``--input-width/height`` (when the source did not), ``--input-flip`` and
    ``--input-rate`` to decoded frames.

    Rate: a live source is decimated (frames arriving sooner than 1/rate after the last one kept
    are dropped and counted in ``counters["rate_dropped"]``); a file is resampled on its own
    timeline: output frame k shows the first source frame with pts ≥ k/rate (frames are
    repeated when the file is slower, skipped when faster), so a 60 fps file at ``--input-rate 30``
    plays at the same speed with half the frames.
    """

    def __init__(self, options: VideoOptions, live: bool, counters: dict[str, int], *, resize: bool = True):
        self.options = options
        self.live = live
        self.counters = counters
        self.resize = resize
        self._next_t: float | None = None  # live: earliest time of the next frame kept
        self._emitted = 0  # file: output frames so far
        self._pending: deque[Frame] = deque()

    def reset(self) -> None:
        self._next_t = None
        self._pending.clear()

    def image(self, image: np.ndarray) -> np.ndarray:
        if self.resize:
            size = target_size(self.options, image.shape[1], image.shape[0])
            if size is not None:
                image = fit_to(image, *size)
        return apply_flip(image, self.options.flip)

    def pending(self) -> Frame | None:
        return self._pending.popleft() if self._pending else None

    def admit(self, make: Callable[[float | None], Frame], t: float) -> Frame | None:
        """Decide about a decoded frame at time ``t`` (live: monotonic seconds; file: pts).

        ``make(pts)`` builds the Frame (with that pts; None keeps the source's), so the costly
        conversion is skipped for dropped frames. Returns the frame to hand out now (repeats of a
        file frame queue up behind it: call :meth:`pending` first on the next read), or None.
        """
        rate = self.options.rate
        if rate is None:
            return make(None)
        period = 1.0 / rate
        if self.live:
            if self._next_t is not None and t < self._next_t - 0.25 * period:
                self.counters["rate_dropped"] = self.counters.get("rate_dropped", 0) + 1
                return None
            # Keep the cadence, but never "owe" frames after a stall (no bursts).
            self._next_t = max((self._next_t if self._next_t is not None else t) + period, t + 0.5 * period)
            return make(None)
        due = math.floor(t * rate + 1e-6) + 1 - self._emitted
        if due <= 0:
            self.counters["rate_dropped"] = self.counters.get("rate_dropped", 0) + 1
            return None
        first = make(self._emitted * period)
        for k in range(1, due):
            self._pending.append(Frame(first.image, first.index, first.t_capture, (self._emitted + k) * period,
                                       dict(first.meta)))
        self._emitted += due
        return first


# ---------------------------------------------------------------------------------------------
# Sinks: clock, size
# ---------------------------------------------------------------------------------------------
class OutputClock:
    """Seconds since a sink's first frame, strictly increasing, for the encoder's timestamps.

    Uses ``frame.pts`` (a file's timeline) when the source has one, else ``frame.t_capture``
    (live sources: the real time between frames, gaps included). When the input time goes back
    (a file loops, a source restarts) the output continues one nominal frame later.
    """

    def __init__(self, nominal_rate: float):
        self.step = 1.0 / nominal_rate
        self._offset: float | None = None
        self._last_in: float | None = None
        self._last_out = -1.0

    def __call__(self, frame: Frame) -> float:
        t = frame.pts if frame.pts is not None else frame.t_capture
        if self._offset is None:
            self._offset = -t
        elif self._last_in is not None and t <= self._last_in:
            self._offset = self._last_out + self.step - t
        out = t + self._offset
        if out <= self._last_out:  # rounding on the 90 kHz grid must never repeat a timestamp
            out = self._last_out + 1.0 / 90000
        self._last_in, self._last_out = t, out
        return out


def even_size(width: int, height: int) -> tuple[int, int]:
    """4:2:0 encoders need even sizes: round odd ones down (at least 2)."""
    return max(2, width - width % 2), max(2, height - height % 2)


class SizeKeeper:
    """Scales every frame to the first frame's (even) size, warning once (encoders keep one size)."""

    def __init__(self, what: str):
        self.what = what
        self.size: tuple[int, int] | None = None
        self._warned = False

    def __call__(self, image: np.ndarray) -> np.ndarray:
        w, h = image.shape[1], image.shape[0]
        if self.size is None:
            self.size = even_size(w, h)
            if self.size != (w, h):
                log.warning("%s: %dx%d is odd; encoding %dx%d", self.what, w, h, *self.size)
        elif (w, h) != self.size and not self._warned:
            self._warned = True
            log.warning("%s: frames changed size from %dx%d to %dx%d; scaling them to %dx%d (the stream keeps "
                        "one size)", self.what, *self.size, w, h, *self.size)
        return np.ascontiguousarray(fit_to(image, *self.size))


# ---------------------------------------------------------------------------------------------
# Ports
# ---------------------------------------------------------------------------------------------
def resolve_host(host: str, what: str) -> str:
    """An IPv4 address for ``host`` or a :class:`StreamError`."""
    try:
        return socket.gethostbyname(host)
    except (socket.gaierror, UnicodeError) as e:
        raise StreamError(f"{what}: cannot resolve host {host!r} ({one_line(e)}); check the name or use an IP") from None


def is_multicast(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_multicast
    except ValueError:
        return False


def bind_udp(host: str | None, port: int, what: str, *, rcvbuf: int = UDP_RCVBUF) -> socket.socket:
    """A UDP socket bound to ``host:port`` (every address for ""/None; a multicast group is
    joined). Port in use or not ours → :class:`StreamError` (no retry can fix it)."""
    addr = "0.0.0.0" if not host else resolve_host(host, what)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if is_multicast(addr):
            # Several receivers of one group may share the port; the group is joined on the default interface.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((addr, port))
        if is_multicast(addr):
            mreq = socket.inet_aton(addr) + socket.inet_aton("0.0.0.0")
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
    except OSError as e:
        sock.close()
        raise port_error(e, "udp", addr, port, what) from None
    return sock


def port_error(e: OSError, proto: str, host: str, port: int, what: str) -> StreamError:
    if e.errno == errno.EADDRINUSE:
        return StreamError(f"{what}: {proto} port {port} is already in use by another program (another hbl-edge, "
                           f"QGroundControl, a player?); stop it or use another port")
    if e.errno == errno.EACCES:
        return StreamError(f"{what}: not allowed to use {proto} port {port} (ports below 1024 need root); use a higher one")
    if e.errno == errno.EADDRNOTAVAIL:
        return StreamError(f"{what}: {host} is not an address of this machine; use @ to listen on every address")
    return StreamError(f"{what}: cannot bind {proto} {host}:{port} ({one_line(e)})")


def check_udp_free(host: str | None, port: int, what: str) -> None:
    """Raise :class:`StreamError` now when ``port`` cannot be bound (for libraries that bind it
    themselves and would fail later, or with a vaguer message)."""
    bind_udp(host, port, what, rcvbuf=65536).close()


def check_tcp_free(host: str | None, port: int, what: str) -> None:
    addr = "0.0.0.0" if not host else resolve_host(host, what)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        # Same as the servers we start (they set SO_REUSEADDR): TIME_WAIT is no conflict, a listener is.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((addr, port))
        sock.listen(1)
    except OSError as e:
        raise port_error(e, "tcp", addr, port, what) from None
    finally:
        sock.close()


# ---------------------------------------------------------------------------------------------
# PyAV decoding
# ---------------------------------------------------------------------------------------------
def low_latency_decoder(av: Any, codec: str) -> Any:
    """A PyAV H.264/H.265 decoder that returns each frame as soon as its access unit is in.

    FFmpeg's frame threading would hold (threads − 1) frames: live decoding uses slice threads.
    """
    ctx = av.CodecContext.create({"h264": "h264", "h265": "hevc"}[codec], "r")
    live_decoder(ctx)
    return ctx


def live_decoder(ctx: Any) -> None:
    """Configure a PyAV decoder context for live input: one thread, ``low_delay``.

    Frame threads hold (threads − 1) frames; slice threads only help streams cut into slices and
    cost more than they save on a busy small CPU (measured at 320×240 on 2 loaded cores: 3.0 ms
    decode + RGB with 2 slice threads, 1.2 ms with one).
    """
    ctx.thread_type = "NONE"
    ctx.thread_count = 1
    try:
        from av.codec.context import Flags

        ctx.flags |= Flags.low_delay
    except (ImportError, AttributeError, TypeError):  # older PyAV spells flags differently
        pass


class RgbConverter:
    """PyAV VideoFrames → H×W×3 uint8 RGB, scaled by swscale to ``--input-width/height``.

    One per source: its reformatter keeps the swscale context between frames, where
    ``VideoFrame.to_ndarray(format=...)`` builds a new one for every frame (measured at 320×240:
    0.06 ms against 0.35 ms in a loop, and ~1.5 ms for a live frame arriving to cold caches).
    """

    def __init__(self, options: VideoOptions):
        self.options = options
        self._reformatter: Any = None

    def __call__(self, vframe: Any) -> np.ndarray:
        if self._reformatter is None:
            from av.video.reformatter import VideoReformatter

            self._reformatter = VideoReformatter()
        size = target_size(self.options, vframe.width, vframe.height)
        w, h = size if size is not None else (None, None)
        return self._reformatter.reformat(vframe, width=w, height=h, format="rgb24").to_ndarray()


def av_errors(av: Any) -> tuple[type[BaseException], ...]:
    """The exceptions PyAV raises for undecodable data (skipped and counted, never fatal)."""
    return (av.error.InvalidDataError, av.error.PatchWelcomeError, av.error.BugError, av.error.UndefinedError,
            av.error.BufferTooSmallError, ValueError)


class AvReader:
    """What a PyAV source does once its container is open: demux the first video stream, decode,
    hand out the frames the :class:`Conditioner` admits and count every undecodable packet as
    ``corrupt``. Subclasses open the container and call :meth:`_start`.

    What differs between a live source (:class:`AvLiveReader`) and a file is in these hooks:

    - ``live``: the Conditioner's rate rule (decimate on arrival / resample the file's timeline).
    - ``drain``: whether the demuxer's empty end-of-stream packets are decoded, which flushes the
      decoder and hands out the frames it still holds (a file's frame threads hold several; a live
      decoder holds those a stream with B-frames reorders: 2 of a 12-frame x264 ``medium`` clip).
    - :meth:`_configure`: the decoder's threads (and whatever the source reads from the stream).
    - :meth:`_admit`: the timestamp rule of a decoded frame.
    - :meth:`_ended`: the demuxer ran out of packets.
    - :meth:`_failed`: the demuxer failed.
    """

    live: bool
    drain: bool

    def __init__(self, options: VideoOptions, what: str) -> None:
        self.options = options
        self.what = what
        self.counters: dict[str, int] = {"frames": 0, "corrupt": 0}
        self._cond = Conditioner(options, self.live, self.counters, resize=False)
        self._rgb = RgbConverter(options)
        self._container: Any = None
        self._packets: Any = None
        self._ready: deque[Any] = deque()
        self._index = 0

    def _start(self, av: Any, container: Any, no_video: Exception) -> None:
        """Read ``container``'s first video stream from now on (``no_video`` raised if it has none)."""
        self._av, self._errors, self._container = av, av_errors(av), container
        if not container.streams.video:
            self.close()
            raise no_video
        stream = container.streams.video[0]
        self._configure(stream)
        self._packets = container.demux(stream)
        self._ready.clear()
        self._cond.reset()

    def _configure(self, stream: Any) -> None:
        raise NotImplementedError

    def _admit(self, vf: Any) -> Frame | None:
        """The frame to hand out for the decoded ``vf`` now, or None (the Conditioner dropped it)."""
        raise NotImplementedError

    def _ended(self) -> Any:
        """The demuxer's packets ran out: the packet iterator to go on with, or None (the source is
        over: :meth:`read` returns None once the decoded frames are out); or raise."""
        raise NotImplementedError

    def _failed(self, e: Exception) -> BaseException:
        """What :meth:`read` raises when the demuxer fails with ``e`` (OSError, FFmpegError)."""
        raise NotImplementedError

    def read(self) -> Frame | None:
        if self._container is None:
            raise StreamError(f"{self.what}: read() before open()")
        pending = self._cond.pending()
        if pending is not None:
            return pending
        while True:
            while self._ready:
                frame = self._admit(self._ready.popleft())
                if frame is not None:
                    return frame
            if self._packets is None:
                return None
            try:
                packet = next(self._packets)
            except StopIteration:
                self._packets = self._ended()
                continue
            except self._errors:
                self.counters["corrupt"] += 1
                continue
            except (OSError, self._av.error.FFmpegError) as e:
                raise self._failed(e) from None
            if packet.size == 0 and not self.drain:
                continue
            try:
                self._ready.extend(packet.decode())
            except self._errors:
                self.counters["corrupt"] += 1

    def _frame(self, vf: Any, pts: float | None = None) -> Frame:
        frame = Frame(self._cond.image(self._rgb(vf)), self._index, time.monotonic(), pts, {})
        self._index += 1
        self.counters["frames"] += 1
        return frame

    def close(self) -> None:
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # a dead connection or unplugged camera may fail its teardown: nothing to flush
                pass
        self._container = self._packets = None
        self._ready.clear()


class AvLiveReader(AvReader):
    """A live PyAV source (a camera, a network stream): frames are timed on arrival, and every end
    or failure of the connection is :class:`SourceLost` (the pipeline reconnects).

    ``ended``: what :meth:`read` says when the peer ends the stream; ``silence``: what it says,
    before "for N s", when nothing arrived within ``timeout_s``. ``drain`` is off by default (the
    RTSP and MPEG-TS clients): the frames the decoder holds when the stream ends are dropped.
    """

    live = True
    drain = False
    ended = "the stream ended"
    silence = "no data"

    def _configure(self, stream: Any) -> None:
        live_decoder(stream.codec_context)

    def _admit(self, vf: Any) -> Frame | None:
        return self._cond.admit(lambda pts: self._frame(vf), time.monotonic())

    def _ended(self) -> Any:
        raise SourceLost(f"{self.what}: {self.ended}") from None

    def _failed(self, e: Exception) -> BaseException:
        if isinstance(e, self._av.error.ExitError):
            return SourceLost(f"{self.what}: {self.silence} for {self.options.timeout_s:g} s")
        return SourceLost(f"{self.what}: {one_line(e)}")


# ---------------------------------------------------------------------------------------------
# PyAV encoding: one writer for the file, RTP and MPEG-TS sinks
# ---------------------------------------------------------------------------------------------
class AvVideoWriter:
    """Encodes frames into an open PyAV output container with the keyframe rule of the sinks.

    Keyframes: the encoder's GOP is ``round(rate · keyframe_interval_s)`` frames and, because a
    live source's real rate is not known in advance, a keyframe is also forced on a frame when
    the next one, expected one frame interval later, would be ``keyframe_interval_s`` or more
    after the last keyframe (:meth:`key_due`). The expected interval is the nominal one, or the
    last observed when frames come slower (a model slower than the camera), so a frame that
    arrives late by up to one interval (scheduling jitter on a busy CPU) still finds a keyframe
    within the interval before it. SPS/PPS are repeated before every keyframe
    (``repeat-headers``), so a receiver that joins late or lost packets has a picture within the
    interval.

    Args:
        container: a PyAV output container (``av.open(..., "w")``), owned and closed by this writer.
        live: network sinks: ``tune=zerolatency`` (no B-frames, no lookahead: a frame leaves the
            encoder as soon as it went in), preset ultrafast; files: preset veryfast.
        on_packet: called with each encoded packet before it is muxed (e.g. to read SPS/PPS).
    """

    def __init__(self, av: Any, container: Any, options: VideoOptions, *, live: bool, what: str,
                 on_packet: Callable[[Any], None] | None = None):
        self.av = av
        self.on_packet = on_packet
        self.container = container
        self.options = options
        self.live = live
        self.what = what
        self.rate = float(options.rate or 30.0)
        self.clock = OutputClock(self.rate)
        self.fit = SizeKeeper(what)
        self.stream: Any = None
        self.frames = 0
        self.keyframes = 0
        self.bytes = 0
        self._last_key: float | None = None
        self._last_t: float | None = None
        self._closed = False

    def _open_stream(self, width: int, height: int) -> None:
        av, o = self.av, self.options
        encoder = need_encoder(av, o.output_codec, self.what)
        gop = max(1, round(self.rate * o.keyframe_interval_s))
        preset = o.preset or ("ultrafast" if self.live else "veryfast")
        kbps = o.bitrate_kbps
        params = f"repeat-headers=1:keyint={gop}:min-keyint=1"
        if self.live:
            # A bounded VBV keeps every frame's size near the average: no burst a tether must absorb.
            params += f":scenecut=0:vbv-maxrate={kbps}:vbv-bufsize={max(1, kbps // 2)}"
        opts = {"preset": preset, "forced-idr": "1"}
        if self.live:
            opts["tune"] = "zerolatency"
        opts["x264-params" if encoder == "libx264" else "x265-params"] = params
        if encoder == "libx265":
            opts["x265-params"] += ":log-level=error"
        stream = self.container.add_stream(encoder, rate=Fraction(self.rate).limit_denominator(1001), options=opts)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = kbps * 1000
        stream.time_base = TIME_BASE
        stream.codec_context.time_base = TIME_BASE
        stream.codec_context.gop_size = gop
        self.stream = stream

    def write(self, frame: Frame) -> None:
        av = self.av
        image = self.fit(frame.image)
        if self.stream is None:
            self._open_stream(image.shape[1], image.shape[0])
        t = self.clock(frame)
        vf = av.VideoFrame.from_ndarray(image, format="rgb24")
        vf.pts = round(t * 90000)
        vf.time_base = TIME_BASE
        if self.key_due(t):
            vf.pict_type = av.video.frame.PictureType.I
            self._last_key = t
        self._last_t = t
        try:
            for packet in self.stream.encode(vf):
                self._mux(packet)
        except (OSError, av.error.FFmpegError) as e:
            raise SinkError(f"{self.what}: {one_line(e)}") from None
        self.frames += 1

    def key_due(self, t: float) -> bool:
        """Whether the frame at output time ``t`` must be a keyframe: the first one, or one after
        which the next frame (``t`` + the expected frame interval) would be at least
        ``keyframe_interval_s`` after the last keyframe.

        Expected interval: the nominal 1/rate, or the last observed one when it is longer (capped
        at half the keyframe interval, so one long pause does not force a run of keyframes).
        On frames at the nominal rate this puts keyframes ``round(rate · interval) − 1`` frames
        apart (29 at 30 fps and 1 s), which leaves one frame interval of slack for jitter.
        """
        if self._last_key is None:
            return True
        interval = self.options.keyframe_interval_s
        step = 1.0 / self.rate
        if self._last_t is not None:
            step = max(step, min(t - self._last_t, interval / 2))
        return t - self._last_key >= interval - step - 1e-6

    def _mux(self, packet: Any) -> None:
        if packet.is_keyframe:
            self.keyframes += 1
            if packet.pts is not None:  # the encoder's own GOP keyframes count too
                self._last_key = max(self._last_key or 0.0, float(packet.pts * packet.time_base))
        self.bytes += packet.size
        if self.on_packet is not None:
            self.on_packet(packet)
        self.container.mux(packet)

    def close(self) -> None:
        """Flush the encoder and finalise the container (an mp4 gets its index); safe twice."""
        if self._closed:
            return
        self._closed = True
        error = None
        try:
            if self.stream is not None:
                for packet in self.stream.encode(None):
                    self._mux(packet)
        except (OSError, self.av.error.FFmpegError) as e:
            error = e
        try:
            self.container.close()
        except (OSError, self.av.error.FFmpegError) as e:
            error = error or e
        if error is not None:
            raise SinkError(f"{self.what}: could not finish the stream ({one_line(error)})") from None


__all__ = [
    "AvLiveReader", "AvReader", "AvVideoWriter", "Conditioner", "OutputClock", "RgbConverter", "SizeKeeper", "TIME_BASE", "av_errors",
    "bind_udp", "check_tcp_free", "check_udp_free", "even_size", "is_multicast", "live_decoder",
    "low_latency_decoder", "port_error", "resolve_host", "target_size",
]
