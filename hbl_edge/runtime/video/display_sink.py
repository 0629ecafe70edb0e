"""``display://N`` sink: a window on the local screen (X11 or Wayland).

Through GStreamer when it is there (``appsrc ! videoconvert ! autovideosink sync=false``, which on
a Jetson picks its EGL/3D sink), else an OpenCV window (needs an OpenCV with GUI support, not the
``-headless`` wheel). Without a display (no ``DISPLAY``/``WAYLAND_DISPLAY``: a server, SSH without
X forwarding, this project's CI) ``start()`` is a one-line :class:`StreamError` pointing at the
``--preview`` page instead. Not verified here: no display on the build machine.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping

from ._common import SizeKeeper
from ._deps import gst_available, need_cv2, need_gst, one_line
from .base import SINKS, Frame, SinkError, StreamError, Uri, VideoOptions

log = logging.getLogger(__name__)


def no_display_reason(env: Mapping[str, str] | None = None) -> str | None:
    """Why no window can open here, or None when a display is configured."""
    env = os.environ if env is None else env
    if env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"):
        return None
    return ("no display here (DISPLAY and WAYLAND_DISPLAY are unset): run it on the machine's desktop, over "
            "ssh -X, or watch the --preview page in a browser instead")


class DisplaySink:
    """A window titled with the URI. Counters: ``frames``."""

    def __init__(self, uri: Uri, options: VideoOptions):
        self.uri = uri
        self.options = options
        self.what = f"display {uri.text}"
        self.counters: dict[str, int] = {"frames": 0}
        self._fit = SizeKeeper(self.what)
        self._pipe: Any = None
        self._src: Any = None
        self._cv2: Any = None

    def start(self) -> None:
        reason = no_display_reason()
        if reason:
            raise StreamError(f"{self.uri.text}: {reason}")
        if gst_available("appsrc", "videoconvert", "autovideosink"):
            Gst, _, _ = need_gst(self.what, "appsrc", "videoconvert", "autovideosink")
            self._Gst = Gst
            self._pipe = Gst.parse_launch("appsrc name=src is-live=true format=time do-timestamp=true block=false "
                                          "max-buffers=2 leaky-type=downstream ! videoconvert ! "
                                          "autovideosink sync=false")
            self._src = self._pipe.get_by_name("src")
            if self._pipe.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
                self._pipe.set_state(Gst.State.NULL)
                raise StreamError(f"{self.what}: GStreamer could not open a window on this display")
            return
        cv2 = need_cv2(self.what)
        try:
            cv2.namedWindow(self.uri.text, cv2.WINDOW_NORMAL)
        except cv2.error as e:
            raise StreamError(f"{self.what}: this OpenCV has no window support ({one_line(e)}); "
                              f"pip install opencv-python (not -headless) or install GStreamer") from None
        self._cv2 = cv2

    def write(self, frame: Frame) -> None:
        image = self._fit(frame.image)
        if self._src is not None:
            Gst = self._Gst
            if self.counters["frames"] == 0:
                h, w = image.shape[:2]
                self._src.set_property("caps", Gst.Caps.from_string(
                    f"video/x-raw,format=RGB,width={w},height={h},framerate=0/1"))
            ret = self._src.emit("push-buffer", Gst.Buffer.new_wrapped(image.tobytes()))
            if ret != Gst.FlowReturn.OK:
                raise SinkError(f"{self.what}: the window was closed ({ret.value_nick})")
        elif self._cv2 is not None:
            self._cv2.imshow(self.uri.text, image[:, :, ::-1])
            self._cv2.waitKey(1)
        else:
            raise StreamError(f"{self.what}: write() before start()")
        self.counters["frames"] += 1

    def close(self) -> None:
        if self._pipe is not None:
            self._pipe.set_state(self._Gst.State.NULL)
            self._pipe = self._src = None
        if self._cv2 is not None:
            self._cv2.destroyWindow(self.uri.text)
            self._cv2 = None

    def describe(self) -> dict[str, Any]:
        return {"uri": self.uri.text, "kind": "display"}


SINKS.add("display", DisplaySink)

__all__ = ["DisplaySink", "no_display_reason"]
