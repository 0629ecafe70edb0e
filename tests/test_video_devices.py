"""Cameras and the display: the option plumbing with fake devices (always), the real devices
where there are some (V4L2 camera, Jetson CSI camera, a display: skipped here, each with why)."""

from __future__ import annotations

import errno
import glob
import os

import numpy as np
import pytest
from streams import make_clip, requires_gst

from hbl_edge.runtime.video import SourceLost, StreamError, VideoOptions, open_sink, open_source
from hbl_edge.runtime.video import device_source
from hbl_edge.runtime.video._deps import gst_available
from hbl_edge.runtime.video.device_source import CvCsiSource, GstCsiSource, V4l2Source, csi_pipeline, v4l2_options
from hbl_edge.runtime.video.stamp import read_stamp

HAVE_V4L2 = bool(glob.glob("/dev/video*"))
HAVE_CSI = gst_available("nvarguscamerasrc", "nvvidconv")
HAVE_DISPLAY = bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


class TestV4l2:
    def test_mode_options(self):
        assert v4l2_options(VideoOptions(width=640, height=480, rate=30), {"format": "mjpeg"}) == {
            "video_size": "640x480", "framerate": "30", "input_format": "mjpeg"}
        assert v4l2_options(VideoOptions(rate=29.97)) == {"framerate": "30000/1001"}
        assert v4l2_options(VideoOptions()) == {}
        with pytest.raises(StreamError, match="format=rgbx"):
            v4l2_options(VideoOptions(), {"format": "rgbx"})

    def test_uris(self):
        for uri in ("/dev/video3", "v4l2:///dev/video3"):
            src = open_source(uri)
            assert isinstance(src, V4l2Source) and src.path == "/dev/video3" and src.live

    @pytest.mark.skipif(HAVE_V4L2, reason="this machine has V4L2 devices")
    def test_missing_device_is_a_one_line_stream_error(self):
        with pytest.raises(StreamError, match=r"/dev/video0: no such V4L2 device \(cameras here: none\)") as e:
            open_source("/dev/video0").open()
        assert "\n" not in str(e.value)

    def test_fake_camera_plumbing_scaling_flip_and_unplug(self, tmp_path, monkeypatch):
        """The device replaced by a clip: the mode asked is passed to FFmpeg; a camera that gives
        another size is scaled; the flip applies; once it worked, unplugging is SourceLost."""
        clip = make_clip(tmp_path / "cam.mkv", frames=8, size=(320, 240), stamp=True)
        import av

        calls = []
        state = {"plugged": True}

        def fake_open(av_, path, options, timeout):
            calls.append((path, dict(options), timeout))
            if not state["plugged"]:
                raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))
            return av.open(str(clip))

        monkeypatch.setattr(V4l2Source, "device_exists", staticmethod(lambda path: state["plugged"]))
        monkeypatch.setattr(V4l2Source, "open_container", staticmethod(fake_open))
        src = open_source("v4l2:///dev/video1?format=mjpeg",
                          VideoOptions(width=640, height=480, rate=30, flip="rotate-180", timeout_s=1.5))
        src.open()
        assert calls == [("/dev/video1", {"video_size": "640x480", "framerate": "30", "input_format": "mjpeg"}, 1.5)]
        frame = src.read()
        assert frame.image.shape == (480, 640, 3)  # the "camera" gave 320×240: scaled to the mode asked
        # flipped back and scaled down, it is the clip's first picture
        from PIL import Image

        unflipped = np.asarray(Image.fromarray(np.ascontiguousarray(frame.image[::-1, ::-1])).resize((320, 240)))
        assert read_stamp(unflipped) == 0
        with pytest.raises(SourceLost, match="camera stopped"):  # a live device that ends is lost, not done
            while True:
                src.read()
        src.close()
        state["plugged"] = False
        with pytest.raises(SourceLost, match="gone"):
            src.open()

    def test_frames_held_by_the_decoder_come_out_before_the_camera_stopped(self, tmp_path, monkeypatch):
        """A camera sending B-frames: the decoder holds the reordered ones; when the camera stops
        they are still handed out (``drain``), so all 12 pictures come before SourceLost."""
        clip = make_clip(tmp_path / "cam.mkv", frames=12, size=(320, 240), stamp=True, preset="medium")
        import av

        monkeypatch.setattr(V4l2Source, "device_exists", staticmethod(lambda path: True))
        monkeypatch.setattr(V4l2Source, "open_container", staticmethod(lambda av_, path, options, t: av.open(str(clip))))
        src = open_source("/dev/video1", VideoOptions(timeout_s=1.5))
        src.open()
        stamps = []
        with pytest.raises(SourceLost, match="camera /dev/video1: the camera stopped"):
            while True:
                stamps.append(read_stamp(src.read().image))
        src.close()
        assert sorted(stamps) == list(range(12)) and src.counters == {"frames": 12, "corrupt": 0}

    @pytest.mark.skipif(not HAVE_V4L2, reason="no V4L2 camera (/dev/video*) on this machine")
    def test_real_camera(self):
        src = open_source(sorted(glob.glob("/dev/video*"))[0], VideoOptions(timeout_s=5))
        src.open()
        frames = [src.read() for _ in range(5)]
        src.close()
        assert all(f.image.ndim == 3 and f.image.shape[2] == 3 for f in frames)


class TestCsi:
    def test_pipeline_from_options(self):
        p = csi_pipeline(1, VideoOptions(width=1920, height=1080, rate=59.94, flip="vertical"))
        assert p.startswith("nvarguscamerasrc sensor-id=1 ! video/x-raw(memory:NVMM),width=1920,height=1080,"
                            "framerate=60000/1001,format=NV12 ! nvvidconv flip-method=6 ! video/x-raw,format=BGRx ! ")
        assert p.endswith("video/x-raw,format=RGB ! appsink name=sink sync=false max-buffers=4 drop=true "
                          "emit-signals=false")
        default = csi_pipeline(0, VideoOptions())
        assert "width=1280,height=720,framerate=30/1" in default and "flip-method=0" in default
        assert "flip-method=2" in csi_pipeline(0, VideoOptions(flip="rotate-180"))
        assert "flip-method=4" in csi_pipeline(0, VideoOptions(flip="horizontal"))

    @pytest.mark.skipif(HAVE_CSI, reason="this is a Jetson with nvarguscamerasrc")
    def test_not_a_jetson_is_a_one_line_stream_error(self):
        with pytest.raises(StreamError, match="csi:// cameras need a Jetson") as e:
            open_source("csi://0").open()
        assert "\n" not in str(e.value)

    @requires_gst
    def test_fake_camera_through_the_gstreamer_path(self):
        """The Jetson elements replaced by generic ones (videotestsrc for the sensor, system memory,
        videoflip for nvvidconv's flip): the same appsink path reads frames of the mode asked."""

        class FakeCsi(GstCsiSource):
            elements = ("videotestsrc", "videoflip", "videoconvert", "appsink")

            def description(self) -> str:
                return (super().description()
                        .replace(f"nvarguscamerasrc sensor-id={self.sensor}", "videotestsrc is-live=true pattern=ball")
                        .replace("(memory:NVMM)", "")
                        .replace("nvvidconv flip-method=2", "videoflip method=rotate-180 ! videoconvert"))

        src = FakeCsi(open_source("csi://0").uri, VideoOptions(width=320, height=240, rate=30, flip="rotate-180"))
        src.open()
        frames = [src.read() for _ in range(5)]
        src.close()
        assert "videoflip method=rotate-180" in src.description()
        assert [f.image.shape for f in frames] == [(240, 320, 3)] * 5 and [f.index for f in frames] == list(range(5))

    def test_fake_opencv_with_gstreamer(self, monkeypatch):
        """JetPack's OpenCV is built with GStreamer: the same pipeline, BGR out, through VideoCapture."""
        opened = []

        class Capture:
            def __init__(self, pipeline, api):
                opened.append((pipeline, api))
                self.n = 0

            def isOpened(self):
                return True

            def read(self):
                self.n += 1
                if self.n > 3:
                    return False, None
                img = np.zeros((720, 1280, 3), np.uint8)
                img[..., 0] = 255  # blue in BGR
                return True, img

            def release(self):
                pass

        class FakeCv2:
            CAP_GSTREAMER = 1800
            VideoCapture = Capture

            @staticmethod
            def getBuildInformation():
                return "Video I/O:\n    GStreamer:                   YES (1.20.3)\n"

        monkeypatch.setattr(device_source, "need_cv2", lambda what: FakeCv2)
        src = CvCsiSource(open_source("csi://2").uri, VideoOptions(flip="horizontal"))
        src.open()
        frames = [src.read() for _ in range(3)]
        with pytest.raises(SourceLost):
            src.read()
        src.close()
        pipeline, api = opened[0]
        assert api == 1800 and "sensor-id=2" in pipeline and "flip-method=4" in pipeline
        assert "video/x-raw,format=BGR ! appsink" in pipeline
        assert frames[0].image.shape == (720, 1280, 3) and tuple(frames[0].image[0, 0]) == (0, 0, 255)  # RGB

    @pytest.mark.skipif(not HAVE_CSI, reason="not a Jetson: no nvarguscamerasrc (JetPack) on this machine")
    def test_real_csi_camera(self):
        src = open_source("csi://0", VideoOptions(width=1280, height=720, rate=30, timeout_s=5))
        src.open()
        frames = [src.read() for _ in range(5)]
        src.close()
        assert [f.image.shape for f in frames] == [(720, 1280, 3)] * 5


class TestDisplay:
    def test_no_display_is_a_one_line_stream_error(self, monkeypatch):
        monkeypatch.delenv("DISPLAY", raising=False)
        monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
        with pytest.raises(StreamError, match="display://0: no display here.*--preview") as e:
            open_sink("display://0").start()
        assert "\n" not in str(e.value)

    @pytest.mark.skipif(not HAVE_DISPLAY, reason="no display on this machine (DISPLAY/WAYLAND_DISPLAY unset)")
    def test_real_window(self):
        from hbl_edge.runtime.video import Frame

        sink = open_sink("display://0")
        sink.start()
        for i in range(10):
            sink.write(Frame(np.full((120, 160, 3), i * 20, np.uint8), i))
        sink.close()
        assert sink.counters["frames"] == 10
