"""A source that runs a GStreamer pipeline ending in an ``appsink`` and pulls RGB frames from it.

Used by the GStreamer receivers (RTP: ``udpsrc ! rtph264depay ! avdec_h264``; RTSP:
``rtspsrc``) and by ``csi://`` (Jetson ``nvarguscamerasrc``). Each subclass only builds the
pipeline description; this class starts it, pulls samples with a timeout, watches the bus
(an error or end-of-stream of a live source is :class:`SourceLost`) and converts buffers
to H×W×3 uint8 arrays (GStreamer pads RGB rows to 4 bytes: the stride is taken from the buffer).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from ._common import Conditioner
from ._deps import need_gst, one_line
from .base import Frame, SourceLost, StreamError, Uri, VideoOptions

log = logging.getLogger(__name__)

#: What every pipeline ends with: RGB frames into an appsink that never blocks the pipeline.
#: Data keeps arriving but no picture decodes: give up after this long (a keyframe may be a GOP away).
NO_PICTURE_S = 10.0
#: libav decoder options of every GStreamer receiver: no picture before the first keyframe. A
#: receiver that joins mid-GOP (a player connecting to a running RTSP server, a relay started
#: after the vehicle) would otherwise output grey garbage built on missing references until the
#: next keyframe; after that first keyframe, frames with concealed losses still come out (FFmpeg
#: marks the stream recovered), as with the ``packets`` receiver's skip-until-keyframe.
DECODER_OPTIONS = "output-corrupt=false"
APPSINK = ("videoconvert ! video/x-raw,format=RGB ! "
           "appsink name=sink sync=false max-buffers=4 drop=true emit-signals=false")


def quote(value: str) -> str:
    """A value for a ``gst-launch`` description (locations with spaces, '!' or quotes)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class GstSource:
    """Base of the GStreamer-pipeline sources (subclasses define :meth:`description`).

    ``elements`` are checked before start so that a missing plugin is a one-line
    :class:`StreamError` naming it.
    """

    live = True
    what = "GStreamer source"
    elements: tuple[str, ...] = ("appsink", "videoconvert")
    #: An element whose sink pad sees the incoming data (a depayloader): while data flows but no
    #: picture decodes yet (a reconnect waiting for the sender's next keyframe), the source is
    #: not lost until ``max(timeout_s, NO_PICTURE_S)``.
    data_element: str | None = None

    def __init__(self, uri: Uri, options: VideoOptions):
        self.uri = uri
        self.options = options
        self.counters: dict[str, int] = {"frames": 0, "corrupt": 0, "warnings": 0}
        self._pipe: Any = None
        self._sink: Any = None
        self._bus: Any = None
        self._index = 0
        self._warned_corrupt = 0
        self._cond = Conditioner(options, self.live, self.counters, resize=False)
        self._gst: Any = None

    # -- to override ------------------------------------------------------------------------
    def description(self) -> str:
        raise NotImplementedError

    def check(self) -> None:
        """Checks before the pipeline starts (ports, devices); raise StreamError."""

    def configure(self, pipe: Any) -> None:
        """Set properties that a launch description cannot spell (caps with quoted values)."""

    def scale(self) -> str:
        """``videoscale`` to ``--input-width/height`` in the pipeline (swscale-free, before RGB)."""
        o = self.options
        if o.width is None and o.height is None:
            return ""
        caps = ",".join(f"{k}={v}" for k, v in (("width", o.width), ("height", o.height)) if v)
        return f"videoscale ! video/x-raw,{caps} ! "

    # -- lifecycle ----------------------------------------------------------------------------
    def open(self) -> None:
        Gst, _, _ = need_gst(self.what, *self.elements)
        self._gst = Gst
        self.check()
        desc = self.description()
        try:
            pipe = Gst.parse_launch(desc)
        except Exception as e:  # GLib.Error: a bad description is our bug or a missing element
            raise StreamError(f"{self.what}: GStreamer cannot build {desc!r} ({one_line(e)})") from None
        self._pipe = pipe
        self.configure(pipe)
        self._sink = pipe.get_by_name("sink")
        self._last_data = 0.0
        if self.data_element:
            pad = pipe.get_by_name(self.data_element).get_static_pad("sink")
            pad.add_probe(Gst.PadProbeType.BUFFER, self._on_data)
        self._bus = pipe.get_bus()
        self._cond.reset()
        if pipe.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
            message = self._bus_error() or "the pipeline did not start"
            self.close()
            raise SourceLost(f"{self.what}: {message}")
        log.debug("%s: started %s", self.what, desc)

    def read(self) -> Frame | None:
        if self._pipe is None:
            raise StreamError(f"{self.what}: read() before open()")
        pending = self._cond.pending()
        if pending is not None:
            return pending
        Gst = self._gst
        timeout = self.options.timeout_s
        start = time.monotonic()
        while True:
            self._poll_bus()
            now = time.monotonic()
            if now - max(start, self._last_data) >= timeout:
                raise SourceLost(f"{self.what}: no {'data' if self.data_element else 'frames'} for {timeout:g} s")
            if now - start >= max(timeout, NO_PICTURE_S):
                raise SourceLost(f"{self.what}: data arrives but no picture decodes for "
                                 f"{max(timeout, NO_PICTURE_S):g} s (wrong --input-codec?)")
            sample = self._sink.emit("try-pull-sample", int(min(timeout, 0.1) * Gst.SECOND))
            if sample is None:
                continue
            now = time.monotonic()
            frame = self._cond.admit(lambda pts: self._frame(sample, now), now)
            if frame is not None:
                return frame

    def close(self) -> None:
        if self._pipe is not None:
            self._pipe.set_state(self._gst.State.NULL)
        self._pipe = self._sink = self._bus = None

    def describe(self) -> dict[str, Any]:
        return {"uri": self.uri.text, "kind": self.what, "live": self.live, "receiver": "gstreamer"}

    # -- helpers ------------------------------------------------------------------------------
    def _on_data(self, pad: Any, info: Any) -> Any:
        # Runs in a streaming thread for every packet: a timestamp and a header look, nothing that blocks.
        self._last_data = time.monotonic()
        self.inspect(info.get_buffer())
        return self._gst.PadProbeReturn.OK

    def inspect(self, buffer: Any) -> None:
        """Look at each buffer entering :attr:`data_element` (e.g. to count RTP sequence gaps)."""

    def _frame(self, sample: Any, now: float) -> Frame:
        buf = sample.get_buffer()
        s = sample.get_caps().get_structure(0)
        w, h = s.get_value("width"), s.get_value("height")
        ok, info = buf.map(self._gst.MapFlags.READ)
        if not ok:
            raise SourceLost(f"{self.what}: cannot map a GStreamer buffer")
        try:
            data = np.frombuffer(info.data, np.uint8)
        finally:
            buf.unmap(info)
        stride = data.size // h
        image = np.ascontiguousarray(data[: stride * h].reshape(h, stride)[:, : w * 3].reshape(h, w, 3))
        image = self._cond.image(image)
        frame = Frame(image, self._index, now, None, {})
        self._index += 1
        self.counters["frames"] += 1
        self.counters["corrupt"] = self._warned_corrupt + self.counters.get("bad_packets", 0)
        return frame

    def _bus_error(self) -> str | None:
        Gst = self._gst
        while True:
            msg = self._bus.pop_filtered(Gst.MessageType.ERROR | Gst.MessageType.EOS)
            if msg is None:
                return None
            if msg.type == Gst.MessageType.EOS:
                return "the stream ended (end of stream)"
            err, debug = msg.parse_error()
            return f"{_message(err)} ({msg.src.get_name()})"

    def _poll_bus(self) -> None:
        Gst = self._gst
        while True:
            msg = self._bus.pop_filtered(Gst.MessageType.ERROR | Gst.MessageType.EOS | Gst.MessageType.WARNING)
            if msg is None:
                return
            if msg.type == Gst.MessageType.WARNING:
                err, _ = msg.parse_warning()
                self.counters["warnings"] += 1
                # Decoders and depayloaders warn about the packets/frames they had to drop.
                if any(k in msg.src.get_name() for k in ("dec", "depay", "parse")):
                    self._warned_corrupt += 1
                    self.counters["corrupt"] = self._warned_corrupt + self.counters.get("bad_packets", 0)
                log.debug("%s: %s", self.what, _message(err))
                continue
            if msg.type == Gst.MessageType.EOS:
                raise SourceLost(f"{self.what}: the stream ended")
            err, _ = msg.parse_error()
            raise SourceLost(f"{self.what}: {_message(err)}")


def _message(err: Any) -> str:
    """A GLib.Error's text without its domain and code."""
    return one_line(getattr(err, "message", None) or err)


__all__ = ["APPSINK", "DECODER_OPTIONS", "GstSource", "quote"]
