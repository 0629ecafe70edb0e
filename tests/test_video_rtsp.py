"""RTSP on loopback, for real: the Blueye side (our client against a gst-rtsp-server that goes
away and comes back) and our own RTSP server sink (players connect to it)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from streams import HAVE_RTSP_SERVER, RtspServer, looks_like_ball, StreamReceiver, free_tcp_port, keyframe_gaps, requires_rtsp_server, synth_frame

from hbl_edge.runtime.video import Frame, SourceLost, StreamError, VideoOptions, open_sink, open_source
from hbl_edge.runtime.video.stamp import read_stamp

RECEIVERS = [pytest.param("gstreamer", marks=requires_rtsp_server), pytest.param("pyav", marks=requires_rtsp_server)]


def read_until_lost(src, limit: float = 6.0) -> float:
    """Read until SourceLost; returns how long it took."""
    t = time.monotonic()
    with pytest.raises(SourceLost):
        while time.monotonic() - t < limit:
            src.read()
    return time.monotonic() - t


class TestRtspSource:
    @pytest.mark.parametrize("transport", ["tcp", "udp"])
    @pytest.mark.parametrize("receiver", RECEIVERS)
    def test_blueye_server_goes_away_and_comes_back(self, receiver, transport):
        with RtspServer() as server:
            src = open_source(server.url, VideoOptions(receiver=receiver, transport=transport, timeout_s=1.0))
            assert src.describe()["receiver"] == receiver
            src.open()
            frames = [src.read() for _ in range(10)]
            assert frames[0].image.shape == (240, 320, 3) and [f.index for f in frames] == list(range(10))
            assert all(looks_like_ball(f.image) for f in frames)
            server.stop()  # the vehicle powers off: clients dropped, port closed
            assert read_until_lost(src) < 1.0 + 1.5
            src.close()
            before = src.counters["frames"]  # 10, or a frame more that was on its way
            with pytest.raises(SourceLost):  # still down: the pipeline backs off and retries
                src.open()
                src.read()
            src.close()
            server.start()  # same port
            src.open()
            again = [src.read() for _ in range(5)]
            src.close()
        assert again[0].index == before and src.counters["frames"] == before + 5
        assert all(looks_like_ball(f.image) for f in again)

    @requires_rtsp_server
    def test_gstreamer_receiver_takes_parameter_sets_before_every_slice(self):
        """Many gst-rtsp-server cameras repeat SPS/PPS before every slice of a keyframe
        (config-interval=-1 with a sliced encoder); the default receiver must decode that intact."""
        with RtspServer(config_interval=-1) as server:
            src = open_source(server.url)
            assert src.describe()["receiver"] == "gstreamer"
            src.open()
            frames = [src.read() for _ in range(40)]
            src.close()
        assert all(looks_like_ball(f.image) for f in frames)

    @requires_rtsp_server
    def test_latency_option_and_wrong_path(self):
        with RtspServer(path="/test") as server:
            src = open_source(server.url.replace("/test", "/nothing"), VideoOptions(receiver="gstreamer", timeout_s=1.0))
            with pytest.raises(SourceLost, match="(?i)not found"):
                src.open()
                src.read()
            src.close()
            src = open_source(server.url, VideoOptions(receiver="gstreamer", latency_ms=200))
            assert "latency=200" in src.description() and "protocols=tcp" in src.description()
            src.open()
            assert src.read().image.shape == (240, 320, 3)
            src.close()

    def test_no_server_is_source_lost(self):
        port = free_tcp_port()
        for receiver in ("pyav",) + (("gstreamer",) if HAVE_RTSP_SERVER else ()):
            src = open_source(f"rtsp://127.0.0.1:{port}/test", VideoOptions(receiver=receiver, timeout_s=1.0))
            with pytest.raises(SourceLost):
                src.open()
                src.read()
            src.close()


def feed(sink, frames: int, fps: float = 30, start: int = 0, until: threading.Event | None = None) -> None:
    """Write ``frames`` stamped frames at real-time pace (fewer if ``until`` is set first)."""
    t0 = time.monotonic()
    for i in range(start, start + frames):
        if until is not None and until.is_set():
            return
        delay = t0 + (i - start) / fps - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        sink.write(Frame(synth_frame(i, stamp=True), i))


@requires_rtsp_server
class TestRtspSink:
    def test_players_connect_and_get_the_stream(self):
        port = free_tcp_port()
        sink = open_sink(f"rtsp://127.0.0.1:{port}/enhanced")
        sink.start()
        assert sink.describe()["url"] == f"rtsp://127.0.0.1:{port}/enhanced"
        feed(sink, 5)  # nobody watches yet
        assert sink.counters["idle_frames"] == 5
        # Frames at 30 fps until the second player got 75 of them (2.5 s: at least two keyframe
        # gaps to check), however long the players take to connect on a busy machine.
        enough = threading.Event()
        writer = threading.Thread(target=feed, args=(sink, 600), kwargs={"start": 5, "until": enough})
        writer.start()
        ours = open_source(f"rtsp://127.0.0.1:{port}/enhanced", VideoOptions(receiver="gstreamer"))
        ours.open()
        rx = StreamReceiver(f"rtsp://127.0.0.1:{port}/enhanced", stamped=True)  # a second player, libavformat
        got = [ours.read() for _ in range(30)]
        rx.wait_frames(75, timeout=15)
        enough.set()
        writer.join()
        rx.stop()
        ours.close()
        sink.close()
        # Every frame in order, but for those the encoder's 2-frame input queue dropped because it
        # fell behind on a busy CPU (counted by the sink, and then missing for every player alike).
        dropped = set(sink.dropped_indices)
        assert sink.counters["dropped"] == len(dropped) < sink.counters["frames"] // 4

        def expected(first: int, n: int) -> list[int]:
            return [s for s in range(first, first + n + len(dropped)) if s not in dropped][:n]

        stamps = [read_stamp(f.image) for f in got]
        assert stamps[0] is not None and stamps == expected(stamps[0], 30)
        # whole pictures, not only the stamp band: compare with what was sent
        assert max(float(np.abs(f.image.astype(int) - synth_frame(s, stamp=True)).mean()) for f, s in
                   zip(got, stamps)) < 8
        theirs = [f.stamp for f in rx.frames]
        assert len(theirs) >= 20 and theirs == expected(theirs[0], len(theirs))
        assert rx.frames[0].key  # its first picture is whole (a keyframe was asked for when it started playing)
        assert max(keyframe_gaps(rx.frames)) <= 1.0 + 0.05
        assert sink.counters["clients"] == 2

    def test_a_slow_model_still_gets_a_keyframe_every_second(self):
        """Frames at 10 fps (a model slower than the camera) into a 30 fps stream: x264's GOP (30
        frames) alone would put keyframes 3 s apart; the sink asks for one when the time is up."""
        port = free_tcp_port()
        sink = open_sink(f"rtsp://127.0.0.1:{port}/slow")
        sink.start()
        enough = threading.Event()  # 3.2 s of frames at the player: at least two keyframe gaps
        writer = threading.Thread(target=feed, args=(sink, 300), kwargs={"fps": 10, "until": enough})
        writer.start()
        rx = StreamReceiver(f"rtsp://127.0.0.1:{port}/slow", stamped=True)
        rx.wait_frames(32, timeout=20)
        enough.set()
        writer.join()
        rx.stop()
        sink.close()
        assert rx.error is None and len(rx.frames) >= 32
        assert rx.frames[0].key  # a player's first picture is whole
        gaps = keyframe_gaps(rx.frames)
        assert len(gaps) >= 2 and max(gaps) <= 1.0 + 0.05, gaps

    def test_frames_the_encoder_cannot_take_are_dropped_and_counted(self):
        """A burst written faster than the encoder runs: its 2-frame input queue drops the oldest
        (latency stays bounded); each dropped frame is counted, and every other one reaches the
        player (TCP: nothing is lost on the way)."""
        port = free_tcp_port()
        sink = open_sink(f"rtsp://127.0.0.1:{port}/burst")
        sink.start()
        writer = threading.Thread(target=feed, args=(sink, 30))
        writer.start()
        rx = StreamReceiver(f"rtsp://127.0.0.1:{port}/burst", stamped=True)
        writer.join()
        rx.wait_open()  # playing: the burst goes to the encoder, not to idle_frames
        before = sink.counters["dropped"]
        for i in range(30, 60):  # back to back: 30 frames in a few ms
            sink.write(Frame(synth_frame(i, stamp=True), i))
        feed(sink, 15, start=60)  # then real time again, so the burst's survivors are flushed out
        rx.wait_stamp(74)
        rx.stop()
        sink.close()
        dropped = set(sink.dropped_indices)
        received = {f.stamp for f in rx.frames}
        burst = set(range(30, 60))
        assert sink.counters["dropped"] - before >= 10  # 30 frames at once do not fit a 2-frame queue
        assert len(dropped) == sink.counters["dropped"] and not (dropped & received)
        assert (burst - dropped) <= received  # what the queue kept was encoded and sent
        assert burst <= received | dropped  # and the rest is accounted for

    def test_port_in_use_is_a_stream_error(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen(1)
            port = s.getsockname()[1]
            with pytest.raises(StreamError, match=f"tcp port {port} is already in use"):
                open_sink(f"rtsp://127.0.0.1:{port}/x").start()

    def test_close_is_prompt_with_a_client_connected(self):
        port = free_tcp_port()
        sink = open_sink(f"rtsp://127.0.0.1:{port}/x")
        sink.start()
        writer = threading.Thread(target=feed, args=(sink, 30))
        writer.start()
        src = open_source(f"rtsp://127.0.0.1:{port}/x", VideoOptions(receiver="gstreamer", timeout_s=1.0))
        src.open()
        src.read()
        writer.join()
        t = time.monotonic()
        sink.close()
        assert time.monotonic() - t < 2.0
        assert read_until_lost(src) < 2.5  # the player sees the server go
        src.close()
        sink.close()  # twice is fine

    def test_close_is_prompt_with_a_player_waiting_for_the_first_frame(self):
        """A player's DESCRIBE waits (on the server's thread) for the media's first frame; closing
        before any frame was written answers it 503 at once instead of waiting for a frame."""
        port = free_tcp_port()
        sink = open_sink(f"rtsp://127.0.0.1:{port}/x")
        sink.start()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as player:
            player.sendall(f"DESCRIBE rtsp://127.0.0.1:{port}/x RTSP/1.0\r\nCSeq: 1\r\n\r\n".encode())
            time.sleep(0.5)  # the media is configured and waits for a frame
            assert sink.counters["frames"] == 0
            t = time.monotonic()
            sink.close()
            assert time.monotonic() - t < 2.0
            assert player.recv(100).startswith(b"RTSP/1.0 503 ")


TALKING_PLAYER = """
import os, socket, sys, threading, time
from streams import RtspServer, free_tcp_port
from hbl_edge.runtime.video import open_sink

def serve(kind, port):
    if kind == "sink":
        sink = open_sink(f"rtsp://127.0.0.1:{port}/x")
        sink.start()
        return sink.close
    return RtspServer(port, "/x").stop

def drain(s):
    try:
        while s.recv(65536):
            pass
    except OSError:
        pass

def talk(port, done):
    # Pipelined OPTIONS with a long header: the server reads requests a byte at a time, so its
    # client thread is nearly always in the middle of one when the server closes.
    request = (f"OPTIONS rtsp://127.0.0.1:{port}/x RTSP/1.0\\r\\nCSeq: 1\\r\\n"
               f"X-Pad: {'a' * 3000}\\r\\n\\r\\n").encode() * 64
    with socket.create_connection(("127.0.0.1", port)) as s:
        threading.Thread(target=drain, args=(s,), daemon=True).start()
        try:
            while not done.is_set():
                s.sendall(request)
        except OSError:
            pass  # the server closed the connection

for _ in range(3):
    port = free_tcp_port()
    close = serve(sys.argv[1], port)
    done = threading.Event()
    player = threading.Thread(target=talk, args=(port, done), daemon=True)
    player.start()
    time.sleep(0.2)
    close()
    done.set()
    player.join(5)
cpu = time.process_time()
time.sleep(0.5)
print("CPU", time.process_time() - cpu, flush=True)
os._exit(0)  # a thread left spinning must not keep the process alive
"""


@requires_rtsp_server
@pytest.mark.parametrize("server", ["sink", "fixture"])
def test_close_while_a_player_is_talking_leaves_no_busy_loop(server):
    """Closing the server while a player's request is being read (a TEARDOWN, a keepalive) once
    left gst-rtsp-server's client thread spinning at 100 % of a core, logging
    g_pollable_input_stream_read_nonblocking CRITICALs hundreds of thousands of times a second, for
    the life of the process: close() ran in another thread than the one reading the connection.
    Three closes mid-request (each hit the race about 9 times in 10 before the fix), in a
    subprocess so its stderr (fd 2) is all there and a spinning thread dies with it."""
    out = subprocess.run([sys.executable, "-c", TALKING_PLAYER, server], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    glib = [line for line in out.stderr.splitlines() if "CRITICAL **" in line or "WARNING **" in line]
    assert not glib, f"{len(glib)} GLib criticals/warnings on stderr, the first: {glib[0]}"
    assert out.returncode == 0, out.stderr[-2000:]
    cpu = [float(line.split()[1]) for line in out.stdout.splitlines() if line.startswith("CPU ")]
    assert cpu and cpu[0] < 0.2, (out.stdout, out.stderr[-2000:])  # idle after close: nothing spins


def test_without_gstreamer_the_errors_say_what_to_install(tmp_path):
    """gi made unimportable in a subprocess: RTSP serving and the GStreamer receivers fail in one
    line naming the packages; the RTSP client falls back to PyAV."""
    code = textwrap.dedent("""
        import sys
        sys.modules["gi"] = None  # import gi → ImportError
        from hbl_edge.runtime.video import StreamError, VideoOptions, open_sink, open_source
        for make in (lambda: open_sink("rtsp://127.0.0.1:8554/x").start(),
                     lambda: open_source("rtp://127.0.0.1:5600", VideoOptions(receiver="gstreamer")).open()):
            try:
                make()
            except StreamError as e:
                print("ERR", e)
        print("AUTO", open_source("rtsp://127.0.0.1:8554/x").describe()["receiver"])
        print("AUTO", open_source("rtp://127.0.0.1:5600").describe()["receiver"])
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    lines = out.stdout.splitlines()
    errors = [line for line in lines if line.startswith("ERR")]
    assert len(errors) == 2, out.stdout + out.stderr
    for line in errors:
        assert "apt-get install" in line and "gir1.2-gst-rtsp-server-1.0" in line and 'pygobject<3.51' in line
    assert lines[-2:] == ["AUTO pyav", "AUTO packets"]


@requires_rtsp_server
def test_without_pyav_rtp_falls_back_to_gstreamer_and_files_say_what_to_install(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        sys.modules["av"] = None
        from hbl_edge.runtime.video import StreamError, open_source
        print("AUTO", open_source("rtp://127.0.0.1:5600").describe()["receiver"])
        try:
            open_source({str(tmp_path / 'x.mp4')!r}).open()
        except StreamError as e:
            print("ERR", e)
    """)
    (tmp_path / "x.mp4").write_bytes(b"0")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.stdout.splitlines() == [
        "AUTO gstreamer",
        f"ERR video file {tmp_path / 'x.mp4'} needs PyAV, which is not installed: install PyAV (pip install av, "
        "or pip install 'hbl-edge[video]')"], out.stderr
