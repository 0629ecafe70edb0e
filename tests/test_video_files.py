"""File and image-folder sources and sinks, for real (PyAV, Pillow) on small generated clips."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import av
import numpy as np
import pytest
from streams import make_clip, synth_frame

from hbl_edge.runtime.video import Frame, SinkError, StreamError, VideoOptions, open_sink, open_source
from hbl_edge.runtime.video.stamp import read_stamp

SIZE = (320, 240)  # wide enough for a 16-block stamp at 16 px per block


def read_all(uri: str, options: VideoOptions | None = None) -> tuple[list[Frame], dict]:
    src = open_source(uri, options)
    src.open()
    frames = []
    while (f := src.read()) is not None:
        frames.append(f)
    src.close()
    return frames, src.counters


def decode_file(path: Path) -> list[av.VideoFrame]:
    with av.open(str(path)) as c:
        return list(c.decode(video=0))


class TestFileSource:
    @pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".mov", ".avi"])
    def test_every_frame_in_order(self, tmp_path, suffix):
        clip = make_clip(tmp_path / f"clip{suffix}", frames=12, size=SIZE, stamp=True)
        frames, counters = read_all(str(clip))
        assert [read_stamp(f.image) for f in frames] == list(range(12))
        assert [f.index for f in frames] == list(range(12))
        assert frames[0].image.shape == (240, 320, 3) and frames[0].image.dtype == np.uint8
        assert frames[3].pts == pytest.approx(3 / 30, abs=1e-3)
        assert counters == {"frames": 12, "corrupt": 0, "loops": 0}

    def test_file_uri_and_describe(self, tmp_path):
        clip = make_clip(tmp_path / "c.mp4", frames=3, size=(64, 48), fps=25)
        src = open_source(f"file://{clip}")
        src.open()
        assert src.describe()["rate"] == pytest.approx(25) and src.describe()["size"] == (64, 48)
        assert src.live is False
        src.close()

    def test_loop_continues_the_timeline(self, tmp_path):
        clip = make_clip(tmp_path / "c.mp4", frames=5, size=SIZE, stamp=True)
        frames, counters = read_all(str(clip), VideoOptions(loop=2))
        assert [read_stamp(f.image) for f in frames] == list(range(5)) * 3
        pts = [f.pts for f in frames]
        assert all(b > a for a, b in zip(pts, pts[1:]))
        assert pts[5] == pytest.approx(5 / 30, abs=1e-3) and counters["loops"] == 2

    def test_loop_forever_is_reopenable(self, tmp_path):
        clip = make_clip(tmp_path / "c.mp4", frames=4, size=SIZE, stamp=True)
        src = open_source(str(clip), VideoOptions(loop=-1))
        src.open()
        got = [read_stamp(src.read().image) for _ in range(10)]
        src.close()
        src.open()  # the pipeline may reopen any source: it starts over
        again = read_stamp(src.read().image)
        src.close()
        assert got == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1] and again == 0

    def test_size_rate_and_flip(self, tmp_path):
        clip = make_clip(tmp_path / "c.mp4", frames=12, size=SIZE, stamp=True)
        plain, _ = read_all(str(clip))
        half, c = read_all(str(clip), VideoOptions(rate=15))
        assert [read_stamp(f.image) for f in half] == [0, 2, 4, 6, 8, 10] and c["rate_dropped"] == 6
        assert [f.pts for f in half] == pytest.approx([k / 15 for k in range(6)])
        small, _ = read_all(str(clip), VideoOptions(width=160, height=120))
        assert small[0].image.shape == (120, 160, 3)
        flipped, _ = read_all(str(clip), VideoOptions(flip="horizontal"))
        assert np.array_equal(flipped[4].image, plain[4].image[:, ::-1])

    def test_missing_and_non_video_files_are_one_line_errors(self, tmp_path):
        with pytest.raises(StreamError, match="no such video file"):
            open_source(str(tmp_path / "nope.mp4")).open()
        text = tmp_path / "notes.mp4"
        text.write_text("not a video")
        with pytest.raises(StreamError, match="cannot read this video") as e:
            open_source(str(text)).open()
        assert "\n" not in str(e.value)

    def test_truncated_file_ends_without_error(self, tmp_path):
        clip = make_clip(tmp_path / "c.mkv", frames=30, size=SIZE, stamp=True, pattern="noise")
        data = clip.read_bytes()
        cut = tmp_path / "cut.mkv"
        cut.write_bytes(data[: len(data) // 2])
        frames, _ = read_all(str(cut))
        stamps = [read_stamp(f.image) for f in frames]
        assert 5 < len(frames) < 30 and stamps == list(range(len(frames)))


class TestImageSource:
    def test_folder_glob_loop_and_unreadable_files(self, tmp_path):
        from PIL import Image

        folder = tmp_path / "frames"
        folder.mkdir()
        for i in range(4):
            Image.fromarray(synth_frame(i, SIZE, stamp=True)).save(folder / f"{i:03d}.png")
        (folder / "002b.png").write_bytes(b"not a png")  # sorted between 002 and 003
        (folder / "readme.txt").write_text("ignored")
        frames, counters = read_all(str(folder), VideoOptions(loop=1, rate=10))
        assert [read_stamp(f.image) for f in frames] == [0, 1, 2, 3] * 2
        assert counters == {"frames": 8, "corrupt": 2, "loops": 1}
        assert frames[1].pts == pytest.approx(0.1)
        globbed, _ = read_all(str(folder / "00[13].png"))
        assert [read_stamp(f.image) for f in globbed] == [1, 3]
        assert np.array_equal(globbed[0].image, synth_frame(1, SIZE, stamp=True))

    def test_empty_or_missing_folder(self, tmp_path):
        (tmp_path / "empty").mkdir()
        with pytest.raises(StreamError, match="no images"):
            open_source(str(tmp_path / "empty")).open()
        with pytest.raises(StreamError, match="no such folder"):
            open_source(f"images://{tmp_path / 'nothing'}").open()


def write_frames(uri: str, frames: list[np.ndarray], options: VideoOptions | None = None, fps: float = 30):
    sink = open_sink(uri, options)
    sink.start()
    for i, img in enumerate(frames):
        sink.write(Frame(img, i, pts=i / fps))
    sink.close()
    return sink


class TestFileSink:
    @pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
    def test_write_close_reopen_count(self, tmp_path, suffix):
        out = tmp_path / f"out{suffix}"
        sink = write_frames(str(out), [synth_frame(i, SIZE, stamp=True) for i in range(75)])
        frames = decode_file(out)
        assert len(frames) == 75 and sink.counters["frames"] == 75
        assert [read_stamp(f.to_ndarray(format="rgb24")) for f in frames] == list(range(75))
        keys = [round((f.time - frames[0].time) * 30) for f in frames if f.key_frame]
        assert keys[0] == 0 and max(b - a for a, b in zip(keys, keys[1:])) <= 30  # ≤ 1 s at 30 fps
        sink.close()  # twice is fine

    def test_mp4_survives_a_killed_writer(self, tmp_path):
        out = tmp_path / "killed.mp4"
        code = textwrap.dedent(f"""
            import os, signal, sys
            sys.path.insert(0, {str(Path(__file__).parent)!r})
            from streams import synth_frame
            from hbl_edge.runtime.video import Frame, open_sink
            sink = open_sink({str(out)!r}); sink.start()
            for i in range(100):
                sink.write(Frame(synth_frame(i, (320, 240), stamp=True), i, pts=i / 30))
            os.kill(os.getpid(), signal.SIGKILL)  # no close(): power cut
        """)
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        # Fragments end at keyframes (every 30 frames); what was complete before the kill plays (the
        # torn last fragment is skipped as corrupt).
        frames, _ = read_all(str(out))
        assert len(frames) >= 60
        assert [read_stamp(f.image) for f in frames] == list(range(len(frames)))

    def test_h265_and_odd_or_changing_sizes(self, tmp_path):
        out = tmp_path / "odd.mkv"
        imgs = [synth_frame(i, (321, 241)) for i in range(5)] + [synth_frame(i, (160, 120)) for i in range(3)]
        write_frames(str(out), imgs, VideoOptions(output_codec="h265"))
        with av.open(str(out)) as c:
            assert c.streams.video[0].codec_context.name == "hevc"
            frames = list(c.decode(video=0))
        assert len(frames) == 8 and {(f.width, f.height) for f in frames} == {(320, 240)}

    def test_disk_full_is_a_sink_error(self, tmp_path):
        out = tmp_path / "full.mkv"
        out.symlink_to("/dev/full")  # every write: ENOSPC
        sink = open_sink(str(out))
        sink.start()
        with pytest.raises(SinkError, match="No space left") as e:
            for i in range(200):
                sink.write(Frame(synth_frame(i, SIZE, pattern="noise"), i, pts=i / 30))
            sink.close()
        assert "\n" not in str(e.value)
        with pytest.raises(SinkError):
            sink.write(Frame(synth_frame(0, SIZE), 0))

    def test_bad_paths_fail_at_start(self, tmp_path):
        blocker = tmp_path / "file"
        blocker.write_text("x")
        with pytest.raises(StreamError, match="cannot create the folder"):
            open_sink(str(blocker / "sub" / "out.mp4")).start()
        with pytest.raises(StreamError, match="extension"):
            open_sink(str(tmp_path / "out.flv"))


class TestImageSink:
    def test_png_frames_are_exact(self, tmp_path):
        imgs = [synth_frame(i, (64, 48)) for i in range(3)]
        write_frames(f"images://{tmp_path / 'png'}", imgs)
        from PIL import Image

        files = sorted((tmp_path / "png").iterdir())
        assert [f.name for f in files] == ["000000.png", "000001.png", "000002.png"]
        assert all(np.array_equal(np.asarray(Image.open(f)), img) for f, img in zip(files, imgs))

    def test_jpeg_pattern(self, tmp_path):
        write_frames(str(tmp_path / "jpg" / "f%03d.jpg"), [synth_frame(i, SIZE, stamp=True) for i in range(2)])
        from PIL import Image

        assert read_stamp(np.asarray(Image.open(tmp_path / "jpg" / "f001.jpg"))) == 1

    def test_unwritable_place_fails_at_start(self, tmp_path):
        blocker = tmp_path / "file"
        blocker.write_text("x")
        with pytest.raises(StreamError, match="cannot create the folder"):
            open_sink(f"images://{blocker / 'frames'}").start()

    def test_folder_gone_mid_stream_is_one_line(self, tmp_path):
        folder = tmp_path / "frames"
        sink = open_sink(f"images://{folder}")
        sink.start()
        sink.write(Frame(synth_frame(0, (32, 24)), 0))
        # Replace the folder by a file: writes fail for every user, root included.
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()
        folder.write_text("in the way")
        with pytest.raises(SinkError, match="cannot write 000001.png") as e:
            sink.write(Frame(synth_frame(1, (32, 24)), 1))
        assert "\n" not in str(e.value)

    def test_disk_full_mid_stream(self, tmp_path, monkeypatch):
        from hbl_edge.runtime.video import file_sink

        sink = open_sink(f"images://{tmp_path / 'f'}")
        sink.start()

        def full(path, image):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(file_sink, "save_frame", full)
        with pytest.raises(SinkError, match="No space left on device"):
            sink.write(Frame(synth_frame(0, (32, 24)), 0))
