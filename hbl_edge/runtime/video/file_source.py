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

from ._common import AvReader, Conditioner
from ._deps import need_av, one_line
from .base import SOURCES, VIDEO_EXTENSIONS, Frame, StreamError, Uri, VideoOptions

log = logging.getLogger(__name__)


class FileSource(AvReader):
    """A video file decoded by PyAV (any container/codec its FFmpeg reads; mp4, mkv, mov, avi tested).

    Counters: ``frames``, ``corrupt`` (packets the decoder rejected), ``loops``.
    """

    live = False
    drain = True  # the frame threads hold the file's last frames until the decoder is flushed

    def __init__(self, uri: Uri, options: VideoOptions):
        self.uri = uri
        self.path = Path(uri.path).expanduser()
        super().__init__(options, f"video file {self.path}")
        self.counters["loops"] = 0
        self._loops_left = options.loop
        self._offset = 0.0  # pts offset of the current pass
        self._last_pts = 0.0
        self._step = 1 / 30
        self._t0: float | None = None  # the file's time of the pass's first frame
        self.rate: float | None = None
        self.size: tuple[int, int] | None = None

    def open(self) -> None:
        if not self.path.is_file():
            raise StreamError(f"{self.path}: no such video file; check the path"
                              if not self.path.exists() else f"{self.path}: not a file")
        av = need_av(self.what)
        try:
            container = av.open(str(self.path))
        except (av.error.FFmpegError, OSError) as e:
            raise StreamError(f"{self.path}: cannot read this video ({one_line(e)}); is it a video file?") from None
        self._start(av, container, StreamError(f"{self.path}: has no video stream"))
        self._loops_left = self.options.loop
        self._offset = 0.0
        self._last_pts = -self._step
        self._t0 = None

    def _configure(self, stream: Any) -> None:
        # Files want throughput, not latency: frame threads are fine here.
        stream.thread_type = "AUTO"
        self._stream = stream
        self.rate = float(stream.average_rate) if stream.average_rate else None
        self._step = 1 / (self.rate or 30)
        self.size = (stream.codec_context.width, stream.codec_context.height)

    def _admit(self, vf: Any) -> Frame | None:
        """pts on the file's timeline from 0, continuing across loops (one nominal frame after the
        last pass); a frame without a time comes one nominal frame after the previous one."""
        if vf.time is None:
            pts = self._last_pts + self._step
        else:
            if self._t0 is None:  # files may start at any time (avi: one frame late): start at 0
                self._t0 = float(vf.time)
            pts = self._offset + float(vf.time) - self._t0
        self._last_pts = pts
        return self._cond.admit(lambda p: self._frame(vf, pts if p is None else p), pts)

    def _ended(self) -> Any:
        """Rewind for the next pass (``--input-loop``), or None when the file is done."""
        if self._loops_left == 0:
            return None
        if self._loops_left > 0:
            self._loops_left -= 1
        self.counters["loops"] += 1
        self._offset = self._last_pts + self._step
        self._t0 = None
        self._container.seek(0)
        return self._container.demux(self._stream)

    def _failed(self, e: Exception) -> BaseException:
        return e  # a file that fails to read mid-way (an I/O error) has no connection to reopen: the error as it is

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
