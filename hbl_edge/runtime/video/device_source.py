"""Cameras: ``/dev/videoN`` / ``v4l2:///dev/videoN`` (V4L2, through PyAV's FFmpeg) and
``csi://N`` (a Jetson's MIPI CSI camera through ``nvarguscamerasrc``).

Neither can run on a machine without the device; what is tested without one is the plumbing:
the V4L2 demuxer options and the CSI pipeline built from ``--input-width/height/rate/flip``
(:func:`v4l2_options`, :func:`csi_pipeline`), with the device itself replaced by a fake.

V4L2: the camera is asked for ``video_size``/``framerate`` (and ``?format=mjpeg|yuyv422|h264``
as ``input_format``); if it picks another size the frames are scaled to the one asked; the flip is
applied to the decoded frames. A device node that does not exist at the first ``open()`` is a
:class:`StreamError`; once it has worked, it disappearing (unplugged) is :class:`SourceLost` and
the pipeline waits for it to come back.

CSI: ``nvarguscamerasrc sensor-id=N ! NVMM NV12 at the mode ! nvvidconv flip-method=M ! BGRx !
videoconvert ! RGB ! appsink`` (the flip runs in the VIC, not on the CPU), through PyGObject's
GStreamer (JetPack's python3 has it), else through an OpenCV built with GStreamer.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import time
from fractions import Fraction
from typing import Any

from ._common import AvLiveReader, Conditioner
from ._deps import gst_available, need_av, need_cv2, need_gst, one_line
from .base import SOURCES, Frame, SourceLost, StreamError, Uri, VideoOptions
from .gst_source import GstSource

log = logging.getLogger(__name__)

V4L2_FORMATS = ("mjpeg", "yuyv422", "h264", "nv12", "yuv420p", "rgb24", "bgr24", "gray")


def rate_fraction(rate: float) -> Fraction:
    """A frame rate as a fraction: whole rates exact, the NTSC ones (29.97, 59.94) as N·1000/1001."""
    n = round(rate)
    if abs(rate - n) < 1e-6:
        return Fraction(n)
    if abs(rate - n * 1000 / 1001) < 0.006:
        return Fraction(n * 1000, 1001)
    return Fraction(rate).limit_denominator(1000)


def rate_text(rate: float) -> str:
    """A frame rate as FFmpeg writes it (30, 30000/1001)."""
    f = rate_fraction(rate)
    return str(f.numerator) if f.denominator == 1 else f"{f.numerator}/{f.denominator}"


def v4l2_options(options: VideoOptions, query: dict[str, str] | None = None) -> dict[str, str]:
    """FFmpeg ``video4linux2`` demuxer options for the asked mode (see the module docstring)."""
    opts: dict[str, str] = {}
    if options.width and options.height:
        opts["video_size"] = f"{options.width}x{options.height}"
    if options.rate:
        opts["framerate"] = rate_text(options.rate)
    fmt = (query or {}).get("format")
    if fmt:
        if fmt not in V4L2_FORMATS:
            raise StreamError(f"v4l2 ?format={fmt}: use one of {', '.join(V4L2_FORMATS)}")
        opts["input_format"] = fmt
    return opts


class V4l2Source(AvLiveReader):
    """A V4L2 camera (USB webcams, HDMI grabbers, a Jetson's USB cameras)."""

    ended = "the camera stopped"
    silence = "no frame"
    drain = True  # the frames the decoder holds when the camera stops are handed out before SourceLost

    def __init__(self, uri: Uri, options: VideoOptions):
        self.uri = uri
        path, _, query = (uri.path or "/dev/video0").partition("?")
        self.path = path or "/dev/video0"
        self.query = {**dict(kv.partition("=")[::2] for kv in query.split("&") if kv), **uri.query}
        if not re.fullmatch(r"/dev/[\w/.-]+", self.path):
            raise StreamError(f"{uri.text}: a V4L2 device is a /dev path such as /dev/video0")
        super().__init__(options, f"camera {self.path}")
        self.device_options = v4l2_options(options, self.query)
        self._worked = False

    # The two seams through which tests put a fake device in (there are no cameras in CI).
    @staticmethod
    def device_exists(path: str) -> bool:
        return os.path.exists(path)

    @staticmethod
    def open_container(av: Any, path: str, options: dict[str, str], timeout: float) -> Any:
        return av.open(path, format="video4linux2", options=options, timeout=(timeout, timeout))

    def open(self) -> None:
        av = need_av(self.what)
        if not self.device_exists(self.path):
            if self._worked:
                raise SourceLost(f"{self.what}: the device is gone (unplugged?)")
            raise StreamError(f"{self.path}: no such V4L2 device (cameras here: "
                              f"{', '.join(sorted(_video_nodes())) or 'none'}); check the cable or the number")
        try:
            container = self.open_container(av, self.path, self.device_options, self.options.timeout_s)
        except (OSError, av.error.FFmpegError) as e:
            if self._worked:
                raise SourceLost(f"{self.what}: {one_line(e)}") from None
            raise StreamError(f"{self.what}: cannot open it with {self.device_options or 'its default mode'} "
                              f"({one_line(e)}); check the mode with v4l2-ctl --list-formats-ext") from None
        self._start(av, container, StreamError(f"{self.what}: the device offers no video stream"))
        self._worked = True

    def describe(self) -> dict[str, Any]:
        return {"uri": self.uri.text, "kind": "v4l2", "live": True, "device": self.path, "mode": self.device_options}


def _video_nodes() -> list[str]:
    try:
        return [f"/dev/{n}" for n in os.listdir("/dev") if n.startswith("video")]
    except OSError:
        return []


# ---------------------------------------------------------------------------------------------
# CSI (Jetson)
# ---------------------------------------------------------------------------------------------
#: ``--input-flip`` → nvvidconv ``flip-method``.
NVVIDCONV_FLIP = {"none": 0, "rotate-180": 2, "horizontal": 4, "vertical": 6}
CSI_DEFAULT = (1280, 720, 30.0)
JETSON_HINT = ("csi:// cameras need a Jetson with JetPack's GStreamer (nvarguscamerasrc, nvvidconv); "
               "on this machine use /dev/videoN, a file or a stream")


def csi_pipeline(sensor: int, options: VideoOptions, *, output: str = "RGB",
                 sink: str = "appsink name=sink sync=false max-buffers=4 drop=true emit-signals=false") -> str:
    """The GStreamer description for ``csi://sensor`` in the asked mode (default 1280×720 at 30)."""
    w = options.width or CSI_DEFAULT[0]
    h = options.height or CSI_DEFAULT[1]
    f = rate_fraction(options.rate or CSI_DEFAULT[2])
    rate = f"{f.numerator}/{f.denominator}"  # GStreamer caps want a fraction, even 30/1
    flip = NVVIDCONV_FLIP[options.flip]
    return (f"nvarguscamerasrc sensor-id={sensor} ! "
            f"video/x-raw(memory:NVMM),width={w},height={h},framerate={rate},format=NV12 ! "
            f"nvvidconv flip-method={flip} ! video/x-raw,format=BGRx ! videoconvert ! "
            f"video/x-raw,format={output} ! {sink}")


class GstCsiSource(GstSource):
    """``csi://N`` through PyGObject's GStreamer."""

    elements = ("nvarguscamerasrc", "nvvidconv", "videoconvert", "appsink")

    def __init__(self, uri: Uri, options: VideoOptions):
        super().__init__(uri, options)
        self.sensor = int(uri.path or 0)
        self.what = f"csi camera {self.sensor}"
        # nvvidconv flips; the CPU must not flip again.
        self._cond = Conditioner(dataclasses.replace(options, flip="none"), True, self.counters, resize=False)

    def description(self) -> str:
        return csi_pipeline(self.sensor, self.options)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "kind": "csi", "sensor": self.sensor, "pipeline": self.description()}


class CvCsiSource:
    """``csi://N`` through an OpenCV built with GStreamer (``cv2.CAP_GSTREAMER``)."""

    live = True

    def __init__(self, uri: Uri, options: VideoOptions):
        self.uri = uri
        self.options = options
        self.sensor = int(uri.path or 0)
        self.what = f"csi camera {self.sensor} (OpenCV)"
        self.pipeline = csi_pipeline(self.sensor, options, output="BGR",
                                     sink="appsink drop=true max-buffers=2 sync=false")
        self.counters: dict[str, int] = {"frames": 0, "corrupt": 0}
        self._cond = Conditioner(dataclasses.replace(options, flip="none"), True, self.counters, resize=True)
        self._cap: Any = None
        self._index = 0

    def open(self) -> None:
        cv2 = need_cv2(self.what)
        self._cv2 = cv2
        if not opencv_has_gstreamer(cv2):
            raise StreamError(f"{self.what}: this OpenCV was built without GStreamer; {JETSON_HINT}")
        self._cap = cv2.VideoCapture(self.pipeline, cv2.CAP_GSTREAMER)
        if not self._cap.isOpened():
            self._cap = None
            raise SourceLost(f"{self.what}: the camera pipeline did not start (is the camera connected?)")

    def read(self) -> Frame | None:
        if self._cap is None:
            raise StreamError(f"{self.what}: read() before open()")
        pending = self._cond.pending()
        if pending is not None:
            return pending
        while True:
            # appsink drop=true keeps read() from queueing; nvarguscamerasrc ends its stream on a camera error.
            ok, bgr = self._cap.read()
            if not ok or bgr is None:
                raise SourceLost(f"{self.what}: no frame (camera stopped)")
            now = time.monotonic()
            frame = self._cond.admit(lambda pts: self._frame(bgr, now), now)
            if frame is not None:
                return frame

    def _frame(self, bgr: Any, now: float) -> Frame:
        image = self._cond.image(bgr[:, :, ::-1].copy())
        frame = Frame(image, self._index, now, None, {})
        self._index += 1
        self.counters["frames"] += 1
        return frame

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
        self._cap = None

    def describe(self) -> dict[str, Any]:
        return {"uri": self.uri.text, "kind": "csi", "live": True, "sensor": self.sensor, "pipeline": self.pipeline,
                "backend": "opencv"}


def opencv_has_gstreamer(cv2: Any) -> bool:
    info = cv2.getBuildInformation()
    m = re.search(r"GStreamer:\s*(\w+)", info)
    return bool(m and m.group(1).upper() == "YES")


class CsiSource:
    """``csi://N``: the PyGObject path when JetPack's GStreamer has nvarguscamerasrc, else OpenCV
    with GStreamer; elsewhere ``open()`` is a one-line :class:`StreamError` (no Jetson)."""

    live = True

    def __init__(self, uri: Uri, options: VideoOptions):
        self.uri = uri
        self.options = options
        self._impl: Any = None
        self.counters: dict[str, int] = {"frames": 0, "corrupt": 0}

    def _choose(self) -> Any:
        if gst_available(*GstCsiSource.elements):
            return GstCsiSource(self.uri, self.options)
        try:
            cv2 = need_cv2("csi")
        except StreamError:
            cv2 = None
        if cv2 is not None and opencv_has_gstreamer(cv2):
            return CvCsiSource(self.uri, self.options)
        try:
            need_gst(f"csi://{self.uri.path}")
        except StreamError as e:
            raise StreamError(f"csi://{self.uri.path}: {JETSON_HINT} (no GStreamer here: {e})") from None
        raise StreamError(f"csi://{self.uri.path}: {JETSON_HINT} (GStreamer element nvarguscamerasrc not found)")

    def open(self) -> None:
        if self._impl is None:
            self._impl = self._choose()
            self._impl.counters = self.counters
            self._impl._cond.counters = self.counters
        self._impl.open()

    def read(self) -> Frame | None:
        if self._impl is None:
            raise StreamError(f"csi://{self.uri.path}: read() before open()")
        return self._impl.read()

    def close(self) -> None:
        if self._impl is not None:
            self._impl.close()

    def describe(self) -> dict[str, Any]:
        if self._impl is not None:
            return self._impl.describe()
        return {"uri": self.uri.text, "kind": "csi", "live": True,
                "pipeline": csi_pipeline(int(self.uri.path or 0), self.options)}


SOURCES.add("v4l2", V4l2Source)
SOURCES.add("csi", CsiSource)

__all__ = ["CsiSource", "CvCsiSource", "GstCsiSource", "NVVIDCONV_FLIP", "V4l2Source", "csi_pipeline",
           "opencv_has_gstreamer", "rate_text", "v4l2_options"]
