"""Lazy imports of the heavy video libraries, each turned into a one-line :class:`StreamError`.

PyAV, GStreamer (through PyGObject) and OpenCV are optional: every source or sink imports what it
needs here, inside ``open()``/``start()``, so that importing the package (and the pipeline, the
CLI's ``--help``) works without any of them, and a missing one is a message that says what to
install rather than a traceback.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

from .base import StreamError

#: What to install for the GStreamer paths (Debian/Ubuntu/JetPack package names, then the venv).
GST_DEBIAN = ("gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good "
              "gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav "
              "gstreamer1.0-rtsp gir1.2-gst-rtsp-server-1.0 python3-gi")
GST_HINT = (f"install GStreamer (apt-get install {GST_DEBIAN} libgirepository1.0-dev libcairo2-dev "
            "pkg-config) and PyGObject in this Python (pip install \"pygobject<3.51\", or a venv made "
            "with --system-site-packages); see docs/runtime.md")
AV_HINT = "install PyAV (pip install av, or pip install 'hbl-edge[video]')"

_gst_lock = threading.Lock()


def need_av(what: str) -> Any:
    """``import av`` or a :class:`StreamError` saying that ``what`` needs PyAV."""
    try:
        import av
    except ImportError:
        raise StreamError(f"{what} needs PyAV, which is not installed: {AV_HINT}") from None
    return av


def need_encoder(av: Any, codec: str, what: str) -> str:
    """The FFmpeg encoder name for ``codec`` (h264/h265) or a :class:`StreamError`."""
    name = {"h264": "libx264", "h265": "libx265"}[codec]
    if name not in av.codecs_available:
        raise StreamError(f"{what}: this PyAV build has no {name} encoder for {codec}; "
                          f"install a PyAV wheel from PyPI (they bundle it) or use --output-codec h264")
    return name


@functools.lru_cache(maxsize=None)
def _gst_modules(rtsp_server: bool) -> tuple[Any, Any, Any]:
    import gi

    gi.require_version("Gst", "1.0")
    if rtsp_server:
        gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst

    Gst.init(None)
    server = None
    if rtsp_server:
        from gi.repository import GstRtspServer as server  # noqa: N813
    return Gst, GLib, server


def gst_available(*elements: str, rtsp_server: bool = False) -> bool:
    """True when PyGObject, GStreamer and every named element are there (never raises)."""
    try:
        need_gst("probe", *elements, rtsp_server=rtsp_server)
    except StreamError:
        return False
    return True


def need_gst(what: str, *elements: str, rtsp_server: bool = False) -> tuple[Any, Any, Any]:
    """``(Gst, GLib, GstRtspServer or None)``, initialised, with every element in ``elements``
    present; otherwise a :class:`StreamError` that names what is missing and how to install it."""
    with _gst_lock:
        try:
            Gst, GLib, server = _gst_modules(rtsp_server)
        except (ImportError, ValueError) as e:
            # ImportError: no gi; ValueError: gi without the Gst / GstRtspServer typelib.
            missing = "gst-rtsp-server" if rtsp_server and "Rtsp" in str(e) else "GStreamer/PyGObject"
            raise StreamError(f"{what} needs {missing} ({' '.join(str(e).split())}): {GST_HINT}") from None
    absent = [e for e in elements if Gst.ElementFactory.find(e) is None]
    if absent:
        raise StreamError(f"{what} needs the GStreamer element(s) {', '.join(absent)}, not installed: {GST_HINT}")
    return Gst, GLib, server


def need_cv2(what: str) -> Any:
    try:
        import cv2
    except ImportError:
        raise StreamError(f"{what} needs OpenCV (pip install opencv-python) or GStreamer ({GST_HINT})") from None
    return cv2


def one_line(err: BaseException) -> str:
    """An exception as one line of text (library messages sometimes span several)."""
    text = " ".join(str(err).split())
    return text or type(err).__name__


__all__ = ["AV_HINT", "GST_DEBIAN", "GST_HINT", "gst_available", "need_av", "need_cv2", "need_encoder",
           "need_gst", "one_line"]
