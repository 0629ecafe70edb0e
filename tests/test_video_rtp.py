"""RTP and MPEG-TS over UDP on loopback, for real: the BlueOS side (H.264 RTP into rtp://@:PORT),
the re-stream for QGroundControl (rtp:// sink + SDP), udp:// MPEG-TS both ways, faults."""

from __future__ import annotations

import socket
import statistics
import threading
import time
from pathlib import Path

import pytest
from streams import (
    RtpSender, StreamReceiver, free_udp_port, keyframe_gaps, looks_like_ball, requires_gst, synth_frame,
)

from hbl_edge.runtime.video import Frame, SourceLost, StreamError, VideoOptions, open_sink, open_source
from hbl_edge.runtime.video.rtp_depay import Depacketizer
from hbl_edge.runtime.video.sdp import make_sdp, read_sdp
from hbl_edge.runtime.video.stamp import read_stamp

RECEIVERS = ["packets", pytest.param("gstreamer", marks=requires_gst), "pyav"]


def receive(src, n: int, limit: float = 8.0) -> list[Frame]:
    """Up to ``n`` frames from an open source, within ``limit`` seconds."""
    out: list[Frame] = []
    end = time.monotonic() + limit
    while len(out) < n and time.monotonic() < end:
        out.append(src.read())
    return out


def feed(sink, frames: int, fps: float = 30, start: int = 0, base: float | None = None) -> float:
    """Write stamped frames to a sink at real-time pace; returns ``base``.

    Frame ``i`` is captured at ``base + i / fps`` exactly (its ``t_capture``, the encoder's clock):
    what the sink does with time (keyframes, RTP timestamps) is then checked against a known
    timeline, whatever the scheduler does to this thread on a busy machine. The sink's own
    tolerance of late frames is tested in test_video_units.py.
    """
    base = time.monotonic() - start / fps if base is None else base
    t0 = time.monotonic()
    for i in range(start, start + frames):
        delay = t0 + (i - start) / fps - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        sink.write(Frame(synth_frame(i, stamp=True), i, t_capture=base + i / fps))
    return base


def udp_bound(port: int) -> bool:
    """Whether a socket of this machine is bound to UDP ``port`` (any address), read off /proc.

    Read, never probed by binding: a probe that binds the port itself, even for a moment, makes
    a receiver that binds in that moment fail with "address in use" (a flaky test under load).
    """
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local = line.split()[1]  # ADDRESS:PORT, both hex
            if int(local.rsplit(":", 1)[1], 16) == port:
                return True
    return False


def wait_udp_listener(port: int, timeout: float = 10.0) -> None:
    """Wait until something (a receiver under test) has bound UDP ``port``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if udp_bound(port):
            return
        time.sleep(0.01)
    raise AssertionError(f"nothing listens on udp port {port} after {timeout} s")


@pytest.fixture
def port() -> int:
    return free_udp_port()


class TestRtpSource:
    @pytest.mark.parametrize("receiver", RECEIVERS)
    def test_decodes_the_stream_in_order(self, port, receiver):
        src = open_source(f"rtp://127.0.0.1:{port}", VideoOptions(receiver=receiver))
        src.open()
        assert src.live and src.describe()["receiver"] == receiver
        with RtpSender(port, fps=30) as sender:
            frames = receive(src, 30)
        src.close()
        assert sender.error is None
        stamps = [read_stamp(f.image) for f in frames]
        assert len(frames) == 30 and frames[0].image.shape == (240, 320, 3)
        assert stamps == list(range(stamps[0], stamps[0] + 30))  # nothing lost, nothing reordered
        assert [f.index for f in frames] == list(range(30))
        assert src.counters["frames"] == 30 and src.counters["corrupt"] == 0

    @pytest.mark.parametrize("receiver", ["packets", pytest.param("gstreamer", marks=requires_gst)])
    def test_h265(self, port, receiver):
        src = open_source(f"rtp://127.0.0.1:{port}?codec=h265", VideoOptions(receiver=receiver))
        src.open()
        with RtpSender(port, codec="h265"):
            frames = receive(src, 10)
        src.close()
        stamps = [read_stamp(f.image) for f in frames]
        assert stamps == list(range(stamps[0], stamps[0] + 10))

    def test_packets_receiver_does_not_hold_a_frame(self, port):
        """libavformat's demuxer (the ``pyav`` receiver) holds each frame for one interval (33 ms
        at 30 fps); assembling by marker bit must not: compare both on the same sender."""
        medians = {}
        for receiver in ("packets", "pyav"):
            src = open_source(f"rtp://127.0.0.1:{port}", VideoOptions(receiver=receiver))
            src.open()
            with RtpSender(port, fps=30) as sender:
                frames = receive(src, 45)
            src.close()
            lat = [f.t_capture - sender.sent[s] for f in frames[5:] if (s := read_stamp(f.image)) in sender.sent]
            medians[receiver] = statistics.median(lat) * 1000
        assert medians["pyav"] > 25, medians  # the held frame: ≈ 33 ms
        assert medians["packets"] < medians["pyav"] - 20, medians

    @pytest.mark.parametrize("receiver", RECEIVERS)
    def test_silence_is_source_lost_and_reopen_resumes(self, port, receiver):
        src = open_source(f"rtp://127.0.0.1:{port}", VideoOptions(receiver=receiver, timeout_s=0.6))
        src.open()
        with RtpSender(port) as sender:
            receive(src, 5)
            sender.pause()
            paused_at = sender.frames_sent
            t = time.monotonic()
            with pytest.raises(SourceLost):
                while True:
                    src.read()
            waited = time.monotonic() - t
            src.close()
            assert waited < 0.6 + 1.0
            time.sleep(0.3)
            sender.resume()
            src.open()  # the same object, reopened: what the pipeline's reconnect does
            frames = receive(src, 5)
        src.close()
        assert len(frames) == 5 and min(read_stamp(f.image) for f in frames) > paused_at
        assert frames[0].index > 4  # indices continue across reconnects

    @requires_gst
    @pytest.mark.parametrize("receiver", ["packets", "gstreamer"])
    def test_a_gstreamer_sender_with_parameter_sets_before_every_slice(self, port, receiver):
        """BlueOS's camera manager is GStreamer (rtph264pay config-interval=-1): with a sliced encoder
        SPS/PPS come before every slice of a keyframe; access units by marker bit keep them whole."""
        from hbl_edge.runtime.video._deps import need_gst

        Gst, _, _ = need_gst("test")
        sender = Gst.parse_launch(
            "videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=30/1 ! "
            "x264enc tune=zerolatency speed-preset=ultrafast key-int-max=15 ! "
            f"rtph264pay config-interval=-1 pt=96 ! udpsink host=127.0.0.1 port={port} sync=false")
        src = open_source(f"rtp://127.0.0.1:{port}", VideoOptions(receiver=receiver))
        src.open()
        sender.set_state(Gst.State.PLAYING)
        try:
            frames = receive(src, 40)
        finally:
            sender.set_state(Gst.State.NULL)
            src.close()
        assert len(frames) == 40 and all(looks_like_ball(f.image) for f in frames)
        assert src.counters["corrupt"] == 0

    def test_nobody_sending_is_source_lost_after_the_timeout(self, port):
        src = open_source(f"rtp://127.0.0.1:{port}", VideoOptions(timeout_s=0.3))
        src.open()
        t = time.monotonic()
        with pytest.raises(SourceLost, match="no RTP packets"):
            src.read()
        assert 0.25 < time.monotonic() - t < 1.0
        src.close()

    @pytest.mark.parametrize("receiver", ["packets", pytest.param("gstreamer", marks=requires_gst)])
    def test_corrupt_packets_are_counted_and_skipped(self, port, receiver):
        src = open_source(f"rtp://127.0.0.1:{port}", VideoOptions(receiver=receiver))
        src.open()
        with RtpSender(port, keyint=30) as sender:
            frames = receive(src, 5)
            first = read_stamp(frames[0].image)
            sender.inject_garbage(3)
            sender.truncate_fragments(2)
            sender.drop_packets(2)
            # Until the next keyframe the decoder conceals the missing pieces (smeared pictures,
            # stamps unreadable); from it on, pictures are exact again.
            while sender.frames_sent < 40:
                frames.append(src.read())
            frames += receive(src, 10)
        src.close()
        assert sender.faults_applied == 4
        c = src.counters
        assert c["lost_packets"] == 2
        tail = [read_stamp(f.image) for f in frames[-10:]]
        assert tail == list(range(tail[0], tail[0] + 10)) and tail[0] >= 30
        if receiver == "packets":
            assert c["corrupt"] == 3 + 2 + 2  # 3 datagrams, 2 truncated units, 2 units with a lost packet
            assert len(frames) == tail[-1] - first + 1 - 4  # every picture but the 4 broken ones decoded
        else:  # GStreamer drops/conceals by its own rules; we count the datagrams and its warnings
            assert c["bad_packets"] == 3 and c["corrupt"] >= 3
            assert len(frames) >= tail[-1] - first + 1 - 4

    @pytest.mark.parametrize("receiver", RECEIVERS)
    def test_port_in_use_is_a_stream_error(self, port, receiver):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", port))
            with pytest.raises(StreamError, match=f"udp port {port} is already in use"):
                open_source(f"rtp://127.0.0.1:{port}", VideoOptions(receiver=receiver)).open()

    @pytest.mark.parametrize("receiver", RECEIVERS)
    def test_sdp_file_input(self, tmp_path, port, receiver):
        sdp = tmp_path / "bluerov.sdp"
        sdp.write_text(make_sdp("127.0.0.1", port, codec="h264", payload_type=96))
        src = open_source(str(sdp), VideoOptions(receiver=receiver, codec="h265"))  # the SDP's codec wins
        src.open()
        with RtpSender(port):
            frames = receive(src, 8)
        src.close()
        assert len(frames) == 8 and read_stamp(frames[-1].image) - read_stamp(frames[0].image) == 7

    def test_missing_sdp_file(self, tmp_path):
        with pytest.raises(StreamError, match="no such SDP file"):
            open_source(str(tmp_path / "none.sdp"))


class TestRtpSink:
    def test_restream_with_sdp_keyframes_and_parameter_sets(self, tmp_path, port):
        sdp = tmp_path / "enhanced.sdp"
        sink = open_sink(f"rtp://127.0.0.1:{port}", VideoOptions(sdp_path=str(sdp)))
        sink.start()
        assert sink.describe()["sdp"] == str(sdp)
        # A raw socket on the port sees every packet: check the units with our own depacketizer. It is
        # drained by a thread of its own: a writer that falls behind on a busy machine must not
        # leave the socket's buffer (208 kB by default, ~15 frames here) to overflow.
        raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        raw.bind(("127.0.0.1", port))
        raw.settimeout(0.05)
        packets: list[bytes] = []
        done = threading.Event()

        def drain() -> None:
            while not done.is_set():
                try:
                    packets.append(raw.recv(65536))
                except socket.timeout:
                    pass

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        captured = []
        t0 = time.monotonic()
        for i in range(75):
            delay = t0 + i / 30 - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            frame = Frame(synth_frame(i, stamp=True), i, t_capture=t0 + i / 30)  # the encoder's clock: exact
            captured.append(frame.t_capture)
            sink.write(frame)
        sink.close()
        n = -1
        while len(packets) != n:  # until the socket is empty
            n = len(packets)
            time.sleep(0.2)
        done.set()
        reader.join()
        raw.close()
        depay = Depacketizer("h264", 96)
        units = [u for pkt in packets for u in depay.push(pkt)]
        assert depay.stats.lost == 0 and depay.stats.dropped == 0 and len(units) == 75
        keys = [k for k, u in enumerate(units) if u.keyframe]
        # At least one per second at 30 fps: 29 frames apart, one frame interval of slack for a late frame
        assert keys == [0, 29, 58]
        assert all({7, 8} <= set(units[k].nal_types) for k in keys)  # SPS/PPS before every keyframe
        # RTP timestamps follow the frames' capture times on the 90 kHz clock
        dt = [(b.timestamp - a.timestamp) / 90000 for a, b in zip(units, units[1:])]
        assert dt == pytest.approx([b - a for a, b in zip(captured, captured[1:])], abs=2 / 90000)
        info = read_sdp(sdp)
        assert (info.port, info.payload_type, info.codec) == (port, 96, "h264")
        assert info.fmtp["packetization-mode"] == "1" and "sprop-parameter-sets" in info.fmtp
        assert sink.counters["frames"] == 75 and sink.counters["keyframes"] == 3 and sink.counters["send_errors"] == 0

    def test_sdp_plays_in_libavformat_and_a_late_receiver_gets_a_picture_within_a_second(self, tmp_path, port):
        sdp = tmp_path / "out.sdp"
        sink = open_sink(f"rtp://127.0.0.1:{port}", VideoOptions(sdp_path=str(sdp), keyframe_interval_s=0.5))
        sink.start()
        base = feed(sink, 20)  # nobody listens yet: the receiver joins late, mid-GOP
        rx = StreamReceiver(sdp, stamped=True)
        wait_udp_listener(port)  # it listens from frame 20 on, however long its start took
        feed(sink, 60, start=20, base=base)
        rx.wait_stamp(79)
        rx.stop()
        sink.close()
        assert rx.error is None
        stamps = [f.stamp for f in rx.frames]
        assert len(stamps) >= 30 and stamps == list(range(stamps[0], stamps[0] + len(stamps)))
        # Its first picture is whole (a keyframe) and comes ≤ 0.5 s (15 frames) after it joined at frame 20.
        assert rx.frames[0].key and stamps[0] <= 20 + 15
        assert keyframe_gaps(rx.frames) and max(keyframe_gaps(rx.frames)) <= 0.5 + 1e-6

    def test_receiver_absent_is_fine_and_bad_host_is_an_error(self, tmp_path, port):
        sink = open_sink(f"rtp://127.0.0.1:{port}", VideoOptions(sdp_path=str(tmp_path / "a.sdp")))
        sink.start()
        feed(sink, 5, fps=100)
        sink.close()
        assert sink.counters["frames"] == 5 and sink.counters["send_errors"] == 0
        with pytest.raises(StreamError, match="cannot resolve host"):
            open_sink("rtp://no-such-host.invalid:5600", VideoOptions(sdp_path=str(tmp_path / "b.sdp"))).start()

    def test_rtp_sink_into_rtp_source(self, tmp_path, port):
        """The relay's two ends: what we send, our receiver decodes (the loopback BlueOS recipe)."""
        src = open_source(f"rtp://127.0.0.1:{port}")
        src.open()
        sink = open_sink(f"rtp://127.0.0.1:{port}", VideoOptions(sdp_path=str(tmp_path / "x.sdp")))
        sink.start()
        feed(sink, 10)
        frames = receive(src, 10, limit=2)
        sink.close()
        src.close()
        assert [read_stamp(f.image) for f in frames] == list(range(10))


class TestUdpMpegTs:
    def test_sink_to_libavformat_with_keyframes(self, port):
        sink = open_sink(f"udp://127.0.0.1:{port}")
        sink.start()
        rx = StreamReceiver(f"udp://127.0.0.1:{port}", stamped=True)
        wait_udp_listener(port)
        feed(sink, 75)
        rx.wait_stamp(74, timeout=5)  # (UDP: the last frame may be lost)
        rx.stop()
        sink.close()
        assert rx.error is None
        stamps = [f.stamp for f in rx.frames]
        # UDP may drop a datagram on a loaded machine (a frame then fails to decode): in order, most there
        assert len(stamps) >= 40 and all(b > a for a, b in zip(stamps, stamps[1:]))
        assert max(keyframe_gaps(rx.frames)) <= 1.0 + 1e-6

    def test_source_reads_the_sink_and_reports_silence(self, port):
        src = open_source(f"udp://127.0.0.1:{port}", VideoOptions(timeout_s=1.0))
        sink = open_sink(f"udp://127.0.0.1:{port}")
        sink.start()
        import threading

        writer = threading.Thread(target=feed, args=(sink, 60))
        writer.start()
        src.open()  # probes the stream: needs data flowing
        frames = receive(src, 20, limit=4)
        writer.join()
        sink.close()
        with pytest.raises(SourceLost):
            while True:
                src.read()
        src.close()
        stamps = [read_stamp(f.image) for f in frames]
        assert len(frames) == 20 and stamps == list(range(stamps[0], stamps[0] + 20))

    def test_port_in_use(self, port):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", port))
            with pytest.raises(StreamError, match="already in use"):
                open_source(f"udp://127.0.0.1:{port}").open()
