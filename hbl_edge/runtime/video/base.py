"""The contract between video I/O and the pipeline: frames, options, sources, sinks, URIs.

Following jetson-utils' ``videoSource`` / ``videoOutput``: one interface each, the URI scheme
picks the implementation, one options struct serves them all and the command line maps onto it
flag by flag. What we do differently: live sources report loss (:class:`SourceLost`) so the
pipeline reconnects instead of ending, and latency never grows (the pipeline keeps only the
newest frame of a live source).

Lifecycle
---------
Source: ``open()`` → ``read()``… → ``close()``; after :class:`SourceLost` the pipeline calls
``close()`` and later ``open()`` again on the same object (reconnect with backoff).

- ``open()`` raises :class:`StreamError` for what no retry can fix (bad option, missing codec or
  library, UDP port in use, file not found) and :class:`SourceLost` when a live peer is simply not
  there yet (RTSP server down): the pipeline then waits and retries.
- ``read()`` returns the next :class:`Frame`; ``None`` means a finite source ended (file, image
  folder, after its loops); :class:`SourceLost` means a live source went silent for
  ``options.timeout_s`` or its peer closed. It never blocks longer than about ``timeout_s``.
  Undecodable packets/frames are skipped and counted in ``counters["corrupt"]``, never raised.

Sink: ``start()`` → ``write()``… → ``close()``.

- ``start()`` runs before any frame flows, so bad arguments fail before anything starts
  (:class:`StreamError`): folder not writable, port in use, codec or library missing.
- ``write(frame)`` sends/encodes one enhanced frame; the encoder is opened lazily on the first
  frame (its size is known then). A frame of another size than the first is scaled to the first
  size (:func:`fit_to`) with one warning, because encoders and receivers keep one size. A sink
  that cannot go on raises :class:`SinkError`; the pipeline reports it in one line and keeps the
  other sinks running.
- ``close()`` flushes and finalises (an mp4 must play after Ctrl-C); safe to call twice.

Implementations import their heavy dependency (PyAV, GStreamer/PyGObject, OpenCV) inside
``open()``/``start()``, never at module import, and turn its absence into a :class:`StreamError`
that says what to install.
"""

from __future__ import annotations

import glob as _glob
import importlib
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable
from urllib.parse import parse_qs, urlsplit

import numpy as np

from ...errors import ConfigError
from ...registry import Registry

log = logging.getLogger(__name__)


class StreamError(ConfigError):
    """A stream argument is wrong or something it needs is missing: one line, exit 2, before start."""


class SourceLost(Exception):
    """A live source stopped (silence, peer gone, device unplugged): close, back off, reopen."""


class SinkError(Exception):
    """A sink cannot go on (disk full, peer refused, encoder failed): report it, keep the others."""


@dataclass
class Frame:
    """One decoded frame.

    Attributes:
        image: H×W×3 uint8 RGB, C-contiguous.
        index: sequence number assigned by the source (0, 1, 2, … across reconnects).
        t_capture: ``time.monotonic()`` when the frame was decoded (start of glass-to-glass
            latency inside this process).
        pts: presentation time in seconds on the source's clock, when it has one.
        meta: free-form extras (e.g. an RTP timestamp, a benchmark's frame stamp).
    """

    image: np.ndarray
    index: int
    t_capture: float = field(default_factory=time.monotonic)
    pts: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        return int(self.image.shape[1]), int(self.image.shape[0])


FLIPS = ("none", "horizontal", "vertical", "rotate-180")
CODECS = ("h264", "h265")
RECEIVERS = ("auto", "packets", "gstreamer", "pyav")
PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")


@dataclass
class VideoOptions:
    """Options of a source or sink (jetson-utils ``videoOptions``; the CLI maps onto it flag by flag).

    Input side: ``width``/``height``/``rate`` ask a camera for a mode, or resize/resample
    another source; ``codec`` is the RTP payload's codec; ``latency_ms`` the RTSP jitter buffer;
    ``loop`` how many more times a file plays (-1: forever); ``flip`` is applied to decoded
    frames; ``transport`` the RTSP transport; ``timeout_s`` how long a live source may be silent
    before it counts as lost.

    Output side: ``output_codec``, ``bitrate_kbps``, ``keyframe_interval_s`` (≥ one keyframe per
    interval, SPS/PPS repeated, so a receiver that joins late or drops packets has a picture
    within it), ``rate`` of the output when the source gives none.
    """

    width: int | None = None
    height: int | None = None
    rate: float | None = None
    codec: str = "h264"
    latency_ms: int = 0
    loop: int = 0
    flip: str = "none"
    transport: str = "tcp"
    timeout_s: float = 2.0
    output_codec: str = "h264"
    bitrate_kbps: int = 4000
    keyframe_interval_s: float = 1.0
    headless: bool = False
    #: RTP/RTSP receive path: ``auto`` (the measured fastest one installed, see docs/runtime.md
    #: "Receive latency"), ``packets`` (RTP assembled here, decoded by PyAV; RTP only),
    #: ``gstreamer`` (udpsrc/rtspsrc → depay → avdec → appsink) or ``pyav`` (libavformat's demuxer).
    receiver: str = "auto"
    #: RTP payload type a source accepts and a sink sends (96: the first dynamic one, BlueOS's).
    payload_type: int = 96
    #: Where an ``rtp://`` sink writes its SDP file (default: ``rtp-HOST-PORT.sdp`` in the
    #: current folder); VLC and ffplay open it to play the stream.
    sdp_path: str | None = None
    #: x264/x265 preset (default: ``ultrafast`` for network sinks, ``veryfast`` for files).
    preset: str | None = None

    def __post_init__(self) -> None:
        for name in ("width", "height"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise StreamError(f"--input-{name} must be a positive number of pixels, got {v}")
        if self.rate is not None and self.rate <= 0:
            raise StreamError(f"--input-rate must be positive frames per second, got {self.rate}")
        if self.codec not in CODECS:
            raise StreamError(f"--input-codec {self.codec!r} is not supported; use {' or '.join(CODECS)}")
        if self.output_codec not in CODECS:
            raise StreamError(f"--output-codec {self.output_codec!r} is not supported; use {' or '.join(CODECS)}")
        if self.flip not in FLIPS:
            raise StreamError(f"--input-flip {self.flip!r} is not one of {', '.join(FLIPS)}")
        if self.transport not in ("tcp", "udp"):
            raise StreamError(f"--input-transport {self.transport!r}: use tcp or udp")
        if self.loop < -1:
            raise StreamError(f"--input-loop must be -1 (forever), 0 (once) or a count, got {self.loop}")
        if self.receiver not in RECEIVERS:
            raise StreamError(f"--input-receiver {self.receiver!r} is not one of {', '.join(RECEIVERS)}")
        if not 0 <= self.payload_type <= 127:
            raise StreamError(f"RTP payload type must be 0..127 (96 for H.264 from BlueOS), got {self.payload_type}")
        if self.preset is not None and self.preset not in PRESETS:
            raise StreamError(f"encoder preset {self.preset!r} is not one of {', '.join(PRESETS)}")
        if self.latency_ms < 0 or self.timeout_s <= 0 or self.bitrate_kbps < 1 or self.keyframe_interval_s <= 0:
            raise StreamError("--input-latency ≥ 0, and timeout, bitrate and keyframe interval > 0, please")


# ---------------------------------------------------------------------------------------------
# URIs
# ---------------------------------------------------------------------------------------------
#: Schemes that name a resource by URI (everything else is a path).
URI_SCHEMES = ("file", "images", "rtp", "rtsp", "udp", "v4l2", "csi", "display", "sdp")
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".mov", ".avi", ".ts", ".webm", ".m4v")
_WITH_SCHEME = re.compile(r"^([a-z][a-z0-9+.-]*)://", re.IGNORECASE)


@dataclass(frozen=True)
class Uri:
    """A parsed stream URI.

    ``scheme`` is the implementation key (``file``, ``images``, ``sdp``, ``rtp``, ``rtsp``, ``udp``,
    ``v4l2``, ``csi``, ``display``); ``host`` is ``""`` for ``@`` (listen on every local address,
    jetson-utils' notation) and None where a URI has no host; ``path`` is the file/folder/glob/device
    path or the RTSP path; ``query`` holds ``?key=value`` options.
    """

    text: str
    scheme: str
    host: str | None = None
    port: int | None = None
    path: str = ""
    query: dict[str, str] = field(default_factory=dict)

    @property
    def listen(self) -> bool:
        """True for ``rtp://@:5600`` / ``udp://@:PORT`` / ``rtsp://@:PORT/name`` (we bind, the peer sends)."""
        return self.host == ""


def parse_uri(text: str) -> Uri:
    """Parse a source or sink URI (or a bare path) into a :class:`Uri`; bad ones raise :class:`StreamError`.

    Bare paths: ``/dev/videoN`` → ``v4l2``; ``*.sdp`` → ``sdp``; a folder, a glob pattern, or a
    path without a suffix that does not exist yet (a sink's frame folder) → ``images``; anything
    else → ``file``.

    >>> parse_uri("rtp://@:5600").port, parse_uri("rtp://@:5600").listen
    (5600, True)
    >>> parse_uri("clip.mp4").scheme
    'file'
    """
    text = str(text).strip()
    if not text:
        raise StreamError("empty stream URI; give a file, a folder, or a URI such as rtp://@:5600")
    m = _WITH_SCHEME.match(text)
    if m is None:
        return _path_uri(text, text)
    scheme = m.group(1).lower()
    if scheme not in URI_SCHEMES:
        raise StreamError(f"unknown stream URI scheme {scheme!r} in {text!r}; use one of "
                          f"{', '.join(s + '://' for s in URI_SCHEMES)} or a path")
    if scheme in ("file", "images", "sdp"):
        path = text[m.end():]
        if not path:
            raise StreamError(f"{text!r} names no path")
        uri = _path_uri(path, text)
        return Uri(text, scheme if scheme != "file" else uri.scheme, path=uri.path)
    if scheme == "v4l2":
        path = text[m.end():] or "/dev/video0"
        return Uri(text, "v4l2", path=path)
    # Network and device URIs. urlsplit does not know '@' alone as a host: map it to "".
    rest = text[m.end():]
    listen = rest.startswith("@")
    parts = urlsplit(f"{scheme}://{'listen.invalid' + rest[1:] if listen else rest}")
    try:
        port = parts.port
    except ValueError:
        raise StreamError(f"{text!r}: the port must be a number from 1 to 65535") from None
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    host = "" if listen else (parts.hostname or "")
    if scheme in ("csi", "display"):
        index = (parts.hostname or "0") if not listen else "0"
        if not index.isdigit():
            raise StreamError(f"{text!r}: {scheme}://N takes a device number, e.g. {scheme}://0")
        return Uri(text, scheme, host=None, port=None, path=index, query=query)
    if port is None or not 0 < port < 65536:
        raise StreamError(f"{text!r} needs a port, e.g. {scheme}://{'@' if scheme != 'rtsp' else '127.0.0.1'}:5600")
    if scheme in ("rtp", "udp") and not host and not listen:
        raise StreamError(f"{text!r}: give a host to send to, or '@' to listen ({scheme}://@:{port})")
    return Uri(text, scheme, host=host, port=port, path=parts.path, query=query)


def _path_uri(path: str, text: str) -> Uri:
    p = Path(path).expanduser()
    if re.fullmatch(r"/dev/video\d+", path):
        return Uri(text, "v4l2", path=path)
    if p.suffix.lower() == ".sdp":
        return Uri(text, "sdp", path=str(p))
    if p.is_dir() or _glob.has_magic(path) or path.endswith("/") or (not p.suffix and not p.exists()):
        # An existing folder, a glob, or a suffix-less path (a sink's folder to create).
        return Uri(text, "images", path=path if _glob.has_magic(path) else str(p))
    return Uri(text, "file", path=str(p))


# ---------------------------------------------------------------------------------------------
# Sources and sinks
# ---------------------------------------------------------------------------------------------
@runtime_checkable
class Source(Protocol):
    """A video source (see the module docstring for the lifecycle)."""

    uri: Uri
    options: VideoOptions
    #: Live sources (cameras, network streams) drop stale frames and reconnect; files drop nothing.
    live: bool
    #: Running counts the stats report: at least ``frames`` and ``corrupt``.
    counters: dict[str, int]

    def open(self) -> None: ...

    def read(self) -> Frame | None: ...

    def close(self) -> None: ...

    def describe(self) -> dict[str, Any]: ...


@runtime_checkable
class Sink(Protocol):
    """A video sink (see the module docstring for the lifecycle)."""

    uri: Uri
    options: VideoOptions
    counters: dict[str, int]

    def start(self) -> None: ...

    def write(self, frame: Frame) -> None: ...

    def close(self) -> None: ...

    def describe(self) -> dict[str, Any]: ...


SourceFactory = Callable[[Uri, VideoOptions], Source]
SinkFactory = Callable[[Uri, VideoOptions], Sink]

#: scheme → factory. Filled by the implementation modules listed in :data:`IMPLEMENTATIONS`.
SOURCES: Registry[SourceFactory] = Registry("video source scheme", StreamError, "see docs/runtime.md")
SINKS: Registry[SinkFactory] = Registry("video sink scheme", StreamError, "see docs/runtime.md")

#: Modules that register sources and sinks (imported on first use; each imports without PyAV,
#: GStreamer or OpenCV installed).
IMPLEMENTATIONS: list[str] = [
    f"{__package__}.{name}" for name in (
        "file_source", "rtp_source", "rtsp_source", "udp_ts", "device_source",
        "file_sink", "rtp_sink", "rtsp_sink", "display_sink",
    )
]


def _load_implementations() -> None:
    for module in IMPLEMENTATIONS:
        importlib.import_module(module)


def open_source(uri: str | Uri, options: VideoOptions | None = None) -> Source:
    """The source for ``uri`` (not yet opened: call ``open()``)."""
    _load_implementations()
    u = uri if isinstance(uri, Uri) else parse_uri(uri)
    return SOURCES.get(u.scheme)(u, options or VideoOptions())


def open_sink(uri: str | Uri, options: VideoOptions | None = None) -> Sink:
    """The sink for ``uri`` (not yet started: call ``start()``)."""
    _load_implementations()
    u = uri if isinstance(uri, Uri) else parse_uri(uri)
    return SINKS.get(u.scheme)(u, options or VideoOptions())


def fit_to(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """``image`` (H×W×3 uint8) scaled to ``width``×``height`` (nearest-neighbour-free: area/bilinear
    via Pillow), or itself when it already has that size."""
    if image.shape[1] == width and image.shape[0] == height:
        return image
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def apply_flip(image: np.ndarray, flip: str) -> np.ndarray:
    """``--input-flip``: none, horizontal, vertical or rotate-180 (a contiguous copy when flipped)."""
    if flip == "none":
        return image
    if flip == "horizontal":
        return np.ascontiguousarray(image[:, ::-1])
    if flip == "vertical":
        return np.ascontiguousarray(image[::-1])
    if flip == "rotate-180":
        return np.ascontiguousarray(image[::-1, ::-1])
    raise StreamError(f"--input-flip {flip!r} is not one of {', '.join(FLIPS)}")


__all__ = [
    "CODECS", "FLIPS", "PRESETS", "RECEIVERS", "Frame", "IMPLEMENTATIONS", "SINKS", "SOURCES", "Sink", "SinkError", "Source",
    "SourceLost", "StreamError", "Uri", "VideoOptions", "apply_flip", "fit_to", "open_sink", "open_source",
    "parse_uri",
]
