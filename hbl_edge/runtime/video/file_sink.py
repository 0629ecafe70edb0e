"""File sinks: a video file (``out.mp4``, ``file://out.mkv``) and image frames (a folder,
``images://folder``, or a pattern such as ``out/%06d.jpg``).

Video: H.264 (``--output-codec h265``: H.265) through PyAV. mp4/mov are written *fragmented*
(``frag_keyframe+empty_moov``): the file is playable up to its last keyframe even when the process
is killed or the power goes, and :meth:`FileSink.close` (Ctrl-C, SIGTERM: the pipeline's drain)
writes the rest and the index. mkv, avi and ts are written as they are.

Images: PNG (or JPEG/BMP/TIFF/WebP by the pattern's suffix), written atomically (a frame appears
complete or not at all), numbered from 0 in the order written.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from ._common import AvVideoWriter
from ._deps import need_av, need_encoder, one_line
from .base import SINKS, Frame, SinkError, StreamError, Uri, VideoOptions
from .file_source import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

#: suffix → (PyAV format, container options)
CONTAINERS: dict[str, tuple[str, dict[str, str]]] = {
    ".mp4": ("mp4", {"movflags": "frag_keyframe+empty_moov+default_base_moof", "flush_packets": "1"}),
    ".m4v": ("mp4", {"movflags": "frag_keyframe+empty_moov+default_base_moof", "flush_packets": "1"}),
    ".mov": ("mov", {"movflags": "frag_keyframe+empty_moov+default_base_moof", "flush_packets": "1"}),
    ".mkv": ("matroska", {}),
    ".avi": ("avi", {}),
    ".ts": ("mpegts", {}),
}


def check_writable_folder(folder: Path, what: str) -> None:
    """Create ``folder`` if needed and prove we can write in it, or raise :class:`StreamError`."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StreamError(f"{what}: cannot create the folder {folder} ({e.strerror}); choose another place") from None
    probe = folder / f".hbl-edge-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise StreamError(f"{what}: cannot write in {folder} ({e.strerror}); choose a writable folder") from None


class FileSink:
    """A video file. Counters: ``frames``, ``keyframes``, ``bytes`` (encoded)."""

    def __init__(self, uri: Uri, options: VideoOptions):
        self.uri = uri
        self.options = options
        self.path = Path(uri.path).expanduser()
        self.what = f"video file {self.path}"
        suffix = self.path.suffix.lower()
        if suffix not in CONTAINERS:
            raise StreamError(f"{self.path}: cannot write videos with extension {suffix!r}; "
                              f"use {', '.join(CONTAINERS)} (or a folder / pattern for images)")
        self.format, self.container_options = CONTAINERS[suffix]
        self.counters: dict[str, int] = {"frames": 0, "keyframes": 0, "bytes": 0}
        self._writer: AvVideoWriter | None = None
        self._av: Any = None
        self._failed = False

    def start(self) -> None:
        self._av = need_av(self.what)
        need_encoder(self._av, self.options.output_codec, self.what)
        if self.path.is_dir():
            raise StreamError(f"{self.path}: is a folder; give a file name such as {self.path / 'out.mp4'}")
        check_writable_folder(self.path.parent, self.what)

    def write(self, frame: Frame) -> None:
        if self._failed:
            raise SinkError(f"{self.what}: stopped after an earlier error")
        av = self._av
        if av is None:
            raise StreamError(f"{self.what}: write() before start()")
        try:
            if self._writer is None:
                container = av.open(str(self.path), "w", format=self.format, container_options=self.container_options)
                self._writer = AvVideoWriter(av, container, self.options, live=False, what=self.what)
            self._writer.write(frame)
        except SinkError:
            self._failed = True
            raise
        except (OSError, av.error.FFmpegError) as e:
            self._failed = True
            raise SinkError(f"{self.what}: {one_line(e)}") from None
        self._sync()

    def _sync(self) -> None:
        w = self._writer
        if w is not None:
            self.counters.update(frames=w.frames, keyframes=w.keyframes, bytes=w.bytes)

    def close(self) -> None:
        w, self._writer = self._writer, None
        if w is not None:
            try:
                w.close()
            finally:
                self.counters.update(frames=w.frames, keyframes=w.keyframes, bytes=w.bytes)
            log.info("%s: %d frames written", self.what, w.frames)

    def describe(self) -> dict[str, Any]:
        return {"uri": self.uri.text, "kind": "file", "path": str(self.path), "codec": self.options.output_codec}


class ImageSink:
    """Frames as image files: ``folder/000000.png``… or a ``%d`` pattern (``out/f%05d.jpg``)."""

    def __init__(self, uri: Uri, options: VideoOptions, pattern: str | None = None):
        self.uri = uri
        self.options = options
        if pattern is None:
            pattern = str(Path(uri.path).expanduser() / "%06d.png")
        try:
            pattern % 0
        except (TypeError, ValueError):
            raise StreamError(f"{pattern}: an image pattern needs one %d-style number, e.g. out/%06d.png") from None
        self.pattern = pattern
        suffix = Path(pattern).suffix.lower()
        if suffix not in IMAGE_SUFFIXES:
            raise StreamError(f"{pattern}: cannot write images with extension {suffix!r}; use {', '.join(IMAGE_SUFFIXES)}")
        self.folder = Path(pattern).parent
        self.what = f"image frames {pattern}"
        self.counters: dict[str, int] = {"frames": 0}

    def start(self) -> None:
        check_writable_folder(self.folder, self.what)

    def write(self, frame: Frame) -> None:
        path = Path(self.pattern % self.counters["frames"])
        try:
            save_frame(path, frame.image)
        except OSError as e:
            raise SinkError(f"{self.what}: cannot write {path.name} ({e.strerror or one_line(e)})") from None
        self.counters["frames"] += 1

    def close(self) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        return {"uri": self.uri.text, "kind": "images", "pattern": self.pattern}


_PIL_FORMATS = {".png": ("PNG", {"compress_level": 1}), ".jpg": ("JPEG", {"quality": 95}),
                ".jpeg": ("JPEG", {"quality": 95}), ".bmp": ("BMP", {}), ".tif": ("TIFF", {}),
                ".tiff": ("TIFF", {}), ".webp": ("WEBP", {"quality": 95})}


def save_frame(path: Path, image: np.ndarray) -> None:
    """Write an H×W×3 uint8 RGB frame atomically (temporary file + rename); OSError on failure.

    PNG at compression level 1: a video's frames are many and large, level 6 is ~5× slower for
    a few percent smaller files.
    """
    from PIL import Image

    from ...runio import atomic_path

    fmt, kwargs = _PIL_FORMATS[path.suffix.lower()]
    with atomic_path(path) as tmp:
        Image.fromarray(image, "RGB").save(tmp, format=fmt, **kwargs)


def file_sink(uri: Uri, options: VideoOptions) -> Any:
    path = uri.path
    if Path(path).suffix.lower() in IMAGE_SUFFIXES:
        if "%" not in path:
            raise StreamError(f"{path}: a single image cannot hold a stream; write frames with a pattern such as "
                              f"{Path(path).with_name(Path(path).stem + '-%06d' + Path(path).suffix)} or a folder")
        return ImageSink(uri, options, pattern=str(Path(path).expanduser()))
    return FileSink(uri, options)


SINKS.add("file", file_sink)
SINKS.add("images", ImageSink)

__all__ = ["CONTAINERS", "FileSink", "ImageSink", "check_writable_folder", "file_sink", "save_frame"]
