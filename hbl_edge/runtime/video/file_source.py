"""Finite sources: a video file (``clip.mp4``, ``file://clip.mkv``) and an image sequence (a
folder, a glob such as ``'frames/*.png'``, or ``images://folder``).

Not live: nothing is dropped (the pipeline waits for its consumers), ``read()`` returns None at
the end, ``--input-loop N`` plays N more times (-1 forever). Frames carry ``pts`` on the file's
timeline (continuing across loops), so a file sink keeps the original speed.
"""

from __future__ import annotations

import glob
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from ._common import Conditioner, RgbConverter, av_errors
from ._deps import need_av, one_line
from .base import SOURCES, VIDEO_EXTENSIONS, Frame, StreamError, Uri, VideoOptions

log = logging.getLogger(__name__)


class FileSource:
    """A video file decoded by PyAV (any container/codec its FFmpeg reads; mp4, mkv, mov, avi tested).

    Counters: ``frames``, ``corrupt`` (packets the decoder rejected), ``loops``.
    """

    live = False

    def __init__(self, uri: Uri, options: VideoOptions):
        self.uri = uri
        self.options = options
        self.path = Path(uri.path).expanduser()
        self.what = f"video file {self.path}"
        self.counters: dict[str, int] = {"frames": 0, "corrupt": 0, "loops": 0}
        self._cond = Conditioner(options, False, self.counters, resize=False)
        self._rgb = RgbConverter(options)
        self._container: Any = None
        self._packets: Any = None
        self._ready: list[Any] = []
        self._index = 0
        self._loops_left = options.loop
        self._offset = 0.0  # pts offset of the current pass
        self._last_pts = 0.0
        self._step = 1 / 30
        self.rate: float | None = None
        self.size: tuple[int, int] | None = None

    def open(self) -> None:
        if not self.path.is_file():
            raise StreamError(f"{self.path}: no such video file; check the path"
                              if not self.path.exists() else f"{self.path}: not a file")
        av = need_av(self.what)
        self._av = av
        self._errors = av_errors(av)
        try:
            self._container = av.open(str(self.path))
        except (av.error.FFmpegError, OSError) as e:
            raise StreamError(f"{self.path}: cannot read this video ({one_line(e)}); is it a video file?") from None
        if not self._container.streams.video:
            self._container.close()
            raise StreamError(f"{self.path}: has no video stream")
        stream = self._container.streams.video[0]
        # Files want throughput, not latency: frame threads are fine here.
        stream.thread_type = "AUTO"
        self._stream = stream
        self.rate = float(stream.average_rate) if stream.average_rate else None
        self._step = 1 / (self.rate or 30)
        self.size = (stream.codec_context.width, stream.codec_context.height)
        self._packets = self._container.demux(stream)
        self._ready = []
        self._loops_left = self.options.loop
        self._offset = 0.0
        self._last_pts = -self._step
        self._start: float | None = None

    def read(self) -> Frame | None:
        if self._container is None:
            raise StreamError(f"{self.what}: read() before open()")
        pending = self._cond.pending()
        if pending is not None:
            return pending
        while True:
            while self._ready:
                vf = self._ready.pop(0)
                if vf.time is None:
                    pts = self._last_pts + self._step
                else:
                    if self._start is None:  # files may start at any time (avi: one frame late): start at 0
                        self._start = float(vf.time)
                    pts = self._offset + float(vf.time) - self._start
                self._last_pts = pts
                frame = self._cond.admit(lambda p, vf=vf, pts=pts: self._frame(vf, pts if p is None else p), pts)
                if frame is not None:
                    return frame
            if self._packets is None:
                return None
            try:
                packet = next(self._packets)
            except StopIteration:
                if not self._rewind():
                    self._packets = None
                continue
            except self._errors:
                self.counters["corrupt"] += 1
                continue
            try:
                self._ready.extend(packet.decode())
            except self._errors:
                self.counters["corrupt"] += 1

    def _rewind(self) -> bool:
        if self._loops_left == 0:
            return False
        if self._loops_left > 0:
            self._loops_left -= 1
        self.counters["loops"] += 1
        self._offset = self._last_pts + self._step
        self._start = None
        self._container.seek(0)
        self._packets = self._container.demux(self._stream)
        return True

    def _frame(self, vf: Any, pts: float) -> Frame:
        image = self._cond.image(self._rgb(vf))
        frame = Frame(image, self._index, time.monotonic(), pts, {})
        self._index += 1
        self.counters["frames"] += 1
        return frame

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
        self._container = self._packets = None
        self._ready = []

    def describe(self) -> dict[str, Any]:
        return {"uri": self.uri.text, "kind": "file", "live": False, "path": str(self.path), "rate": self.rate,
                "size": self.size, "loop": self.options.loop}


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class ImageSource:
    """A folder of images or a glob pattern as a frame sequence (sorted by name).

    Frames are timed at ``--input-rate`` (default 30 fps); files that cannot be read are skipped and
    counted in ``corrupt``. Sizes may differ between images: the sinks scale to the first one.
    """

    live = False

    def __init__(self, uri: Uri, options: VideoOptions):
        self.uri = uri
        self.options = options
        self.what = f"image sequence {uri.path}"
        self.counters: dict[str, int] = {"frames": 0, "corrupt": 0, "loops": 0}
        self.rate = float(options.rate or 30.0)
        self._files: list[Path] = []
        self._pos = 0
        self._index = 0
        self._loops_left = options.loop
        self._opened = False
        self._cond = Conditioner(options, False, self.counters, resize=True)

    def _list(self) -> list[Path]:
        path = self.uri.path
        if glob.has_magic(path):
            files = [Path(p) for p in sorted(glob.glob(str(Path(path).expanduser())))]
        elif Path(path).expanduser().is_file():
            files = [Path(path).expanduser()]  # one picture: a one-frame sequence (loops like the others)
        else:
            folder = Path(path).expanduser()
            if not folder.is_dir():
                raise StreamError(f"{folder}: no such folder of images; check the path")
            files = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
        files = [p for p in files if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        if not files:
            raise StreamError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) found there")
        return files

    def open(self) -> None:
        self._files = self._list()
        self._pos = 0
        self._loops_left = self.options.loop
        self._opened = True

    def read(self) -> Frame | None:
        if not self._opened:
            raise StreamError(f"{self.what}: read() before open()")
        from ...imageio import load_image  # Pillow-based and torch-free at import
        from ...errors import ImageLoadError

        while True:
            if self._pos >= len(self._files):
                if self._loops_left == 0:
                    return None
                if self._loops_left > 0:
                    self._loops_left -= 1
                self.counters["loops"] += 1
                self._pos = 0
            path = self._files[self._pos]
            n = self.counters["loops"] * len(self._files) + self._pos
            self._pos += 1
            try:
                image = load_image(path)
            except ImageLoadError as e:
                log.warning("%s", e)
                self.counters["corrupt"] += 1
                continue
            pixels = np.round(image * 255.0).astype(np.uint8)
            frame = Frame(self._cond.image(pixels), self._index, time.monotonic(), n / self.rate, {"path": str(path)})
            self._index += 1
            self.counters["frames"] += 1
            return frame

    def close(self) -> None:
        self._opened = False

    def describe(self) -> dict[str, Any]:
        return {"uri": self.uri.text, "kind": "images", "live": False, "count": len(self._files), "rate": self.rate,
                "loop": self.options.loop}


def file_source(uri: Uri, options: VideoOptions) -> Any:
    suffix = Path(uri.path).suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return ImageSource(Uri(uri.text, "images", path=uri.path), options)
    if suffix not in VIDEO_EXTENSIONS:
        log.info("%s: unusual video extension; trying PyAV anyway", uri.path)
    return FileSource(uri, options)


SOURCES.add("file", file_source)
SOURCES.add("images", ImageSource)

__all__ = ["FileSource", "IMAGE_SUFFIXES", "ImageSource", "file_source"]
