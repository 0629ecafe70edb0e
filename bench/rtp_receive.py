"""Receive latency of every live-source receiver, side by side on loopback.

    flock /tmp/hbl-timing.lock nice -n -10 python bench/rtp_receive.py [--rounds 3] [--seconds 4]
        [--size 320x240] [--fps 30] [--out bench/results/rtp_receive.json]

What is timed: sender → decoded RGB frame in our process. A sender process (BlueOS emulation:
``tests/streams.RtpSender``, PyAV/libx264 ultrafast+zerolatency, RTP payload 96, frames stamped
with their index in pixel blocks) prints, for every frame, ``time.monotonic()`` read just before
its last packet is sent (read after, a sender descheduled by a busy machine would make some
latencies negative); the receiver reads the stamp back from the decoded picture and subtracts
(CLOCK_MONOTONIC is one clock for every process of the machine). So the figure covers the
network stack, depacketizing, any buffering, decoding and the conversion to RGB, not the encoder.

Receivers, taken in turns within every round (a shared machine's load hits them alike):

- RTP (``rtp://127.0.0.1:PORT``): ``packets`` (ours: access units by marker bit → PyAV decoder),
  ``gstreamer`` (udpsrc → rtph264depay → avdec_h264 → appsink), ``pyav`` (libavformat from an SDP).
- RTSP (``--rtsp``, on by default): our ``rtsp://`` server sink fed stamped frames, read by the
  ``gstreamer`` (rtspsrc latency=0) and ``pyav`` clients; there the time includes the server's
  x264 encode (same for both clients).
- MPEG-TS (``udp://``): our ``udp://`` sink → the PyAV ``udp://@:PORT`` source.

Reported per receiver: latency median/p90/p99/max (ms), frames received / sent while it listened,
CPU seconds per frame of this process (all its threads; the sender is another process). The
machine's load (os.getloadavg before/after, /proc/pressure/cpu) goes into the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the loopback fixtures (streams.py)
sys.path.insert(0, str(ROOT))

RTP_RECEIVERS = ("packets", "gstreamer", "pyav")
RTSP_RECEIVERS = ("gstreamer", "pyav")


# ---------------------------------------------------------------------------------------------
# Senders (run as subprocesses: ``--serve KIND PORT``); one line "index t_sent" per frame.
# ---------------------------------------------------------------------------------------------
def serve(kind: str, port: int, fps: float, size: tuple[int, int], seconds: float) -> None:
    from streams import RtpSender, synth_frame

    from hbl_edge.runtime.video import Frame, VideoOptions, open_sink

    end = time.monotonic() + seconds
    out = sys.stdout
    if kind == "rtp":
        sender = RtpSender(port, fps=fps, size=size, keyint=round(fps))
        done = 0
        while time.monotonic() < end:
            time.sleep(0.05)
            while done in sender.sent:
                out.write(f"{done} {sender.sent[done]:.6f}\n")
                done += 1
            out.flush()
        sender.stop()
        return
    uri = f"rtsp://127.0.0.1:{port}/bench" if kind == "rtsp" else f"udp://127.0.0.1:{port}"
    sink = open_sink(uri, VideoOptions(rate=fps, keyframe_interval_s=1.0))
    sink.start()
    out.write("ready\n")
    out.flush()
    t0 = time.monotonic()
    i = 0
    while time.monotonic() < end:
        delay = t0 + i / fps - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        sink.write(Frame(synth_frame(i, size, stamp=True), i))
        out.write(f"{i} {time.monotonic():.6f}\n")
        out.flush()
        i += 1
    sink.close()


class Sender:
    """A sender subprocess and the send times it reports."""

    def __init__(self, kind: str, port: int, fps: float, size: tuple[int, int], seconds: float):
        self.sent: dict[int, float] = {}
        self.ready = threading.Event()
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", kind, str(port), "--fps", str(fps), "--size", f"{size[0]}x{size[1]}",
             "--seconds", str(seconds)], stdout=subprocess.PIPE, text=True, env={**os.environ})
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line.startswith("ready"):
                self.ready.set()
                continue
            i, t = line.split()
            self.sent[int(i)] = float(t)
            self.ready.set()  # frames flow

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self._reader.join(timeout=5)


# ---------------------------------------------------------------------------------------------
# Measuring one receiver for a while
# ---------------------------------------------------------------------------------------------
def listen(uri: str, receiver: str | None, seconds: float, sender: Sender, warmup: int = 10) -> dict:
    from hbl_edge.runtime.video import SourceLost, VideoOptions, open_source
    from hbl_edge.runtime.video.stamp import read_stamp

    opts = VideoOptions(receiver=receiver or "auto", timeout_s=3.0)
    src = open_source(uri, opts)
    got: list[tuple[int, float]] = []
    t_open = time.monotonic()
    src.open()
    end = t_open + 15.0  # until the first frame: a keyframe may be a GOP away, PyAV probes
    cpu0 = None
    frames_after_warmup = 0
    try:
        while time.monotonic() < end:
            f = src.read()
            n = read_stamp(f.image)
            if n is None:
                continue
            if not got:
                end = time.monotonic() + seconds
            got.append((n, f.t_capture))
            if len(got) == warmup:
                cpu0 = time.process_time()
                frames_after_warmup = 0
            elif len(got) > warmup:
                frames_after_warmup += 1
    except SourceLost as e:
        print(f"  {uri} {receiver}: lost ({e})", file=sys.stderr)
    cpu = (time.process_time() - cpu0) if cpu0 is not None else None
    src.close()
    time.sleep(0.3)  # the sender's report of the last frames
    measured = got[warmup:]
    lat = [(t - sender.sent[n]) * 1000 for n, t in measured if n in sender.sent]
    stamps = [n for n, _ in measured]
    expected = (max(stamps) - min(stamps) + 1) if stamps else 0
    return {"latencies_ms": lat, "received": len(set(stamps)), "expected": expected,
            "cpu_s_per_frame": (cpu / frames_after_warmup) if cpu and frames_after_warmup else None,
            "first_frame_s": (got[0][1] - t_open) if got else None}


def summarise(samples: list[dict]) -> dict:
    lat = sorted(x for s in samples for x in s["latencies_ms"])
    if not lat:
        return {"n": 0}

    def q(p: float) -> float:
        return lat[min(len(lat) - 1, int(round(p * (len(lat) - 1))))]

    cpu = [s["cpu_s_per_frame"] for s in samples if s["cpu_s_per_frame"]]
    return {"n": len(lat), "median_ms": round(statistics.median(lat), 2), "p90_ms": round(q(0.9), 2),
            "p99_ms": round(q(0.99), 2), "max_ms": round(lat[-1], 2), "mean_ms": round(statistics.fmean(lat), 2),
            "round_medians_ms": [round(statistics.median(s["latencies_ms"]), 2) for s in samples if s["latencies_ms"]],
            "received": sum(s["received"] for s in samples), "expected": sum(s["expected"] for s in samples),
            "cpu_ms_per_frame": round(1000 * statistics.median(cpu), 3) if cpu else None}


def pressure() -> str | None:
    try:
        return Path("/proc/pressure/cpu").read_text().strip()
    except OSError:
        return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=4.0, help="listening time per receiver and round")
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--size", default="320x240")
    ap.add_argument("--no-rtsp", action="store_true")
    ap.add_argument("--no-ts", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "rtp_receive.json")
    ap.add_argument("--serve", nargs=2, metavar=("KIND", "PORT"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    w, h = (int(v) for v in a.size.lower().split("x"))
    if a.serve:
        serve(a.serve[0], int(a.serve[1]), a.fps, (w, h), a.seconds)
        return 0

    from streams import free_tcp_port, free_udp_port

    from hbl_edge.runio import versions, write_json
    from hbl_edge.runtime.machine import cpu_model
    from hbl_edge.runtime.video._deps import gst_available

    have_gst = gst_available("udpsrc", "rtph264depay", "avdec_h264", "appsink")
    have_rtsp = gst_available("appsrc", "x264enc", "rtph264pay", "rtspsrc", rtsp_server=True)
    plan: list[tuple[str, str, str | None]] = [("rtp", r, r) for r in RTP_RECEIVERS if r != "gstreamer" or have_gst]
    if not a.no_rtsp and have_rtsp:
        plan += [("rtsp", r, r) for r in RTSP_RECEIVERS]
    if not a.no_ts:
        plan.append(("udp", "pyav", None))
    load_before = os.getloadavg()
    psi_before = pressure()
    samples: dict[str, list[dict]] = {f"{k}/{r}": [] for k, r, _ in plan}
    per_listen = a.seconds + 6  # the sender outlives the receiver's open, probe and window
    for rnd in range(a.rounds):
        order = plan[rnd % len(plan):] + plan[: rnd % len(plan)]  # rotate who goes first
        for kind, name, receiver in order:
            port = free_tcp_port() if kind == "rtsp" else free_udp_port()
            sender = Sender(kind, port, a.fps, (w, h), per_listen + 3)
            sender.ready.wait(10)
            uri = {"rtp": f"rtp://127.0.0.1:{port}", "rtsp": f"rtsp://127.0.0.1:{port}/bench",
                   "udp": f"udp://127.0.0.1:{port}"}[kind]
            try:
                result = listen(uri, receiver, a.seconds, sender)
            finally:
                sender.stop()
            samples[f"{kind}/{name}"].append(result)
            lat = result["latencies_ms"]
            print(f"round {rnd + 1} {kind:4s} {name:9s}: median {statistics.median(lat) if lat else float('nan'):6.2f} ms"
                  f" over {len(lat)} frames", flush=True)
    load_after = os.getloadavg()
    results = {key: summarise(s) for key, s in samples.items()}
    report = {
        "what": "sender (last packet sent) → decoded RGB frame in the receiving process, loopback, frame stamps",
        "settings": {"fps": a.fps, "size": [w, h], "rounds": a.rounds, "seconds_per_receiver": a.seconds,
                     "sender": "PyAV libx264 ultrafast/zerolatency, keyint = fps, RTP payload 96, 1200-byte packets",
                     "rtsp_server": "hbl-edge rtsp:// sink (gst-rtsp-server, x264enc zerolatency); time includes its encode",
                     "ts_sender": "hbl-edge udp:// sink (PyAV mpegts, 1316-byte datagrams)"},
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "loadavg_before": load_before,
                    "loadavg_after": load_after, "pressure_cpu_before": psi_before, "pressure_cpu_after": pressure(),
                    "versions": versions()},
        "results": results,
    }
    try:
        import av

        report["machine"]["versions"]["av"] = av.__version__
    except ImportError:
        pass
    if have_gst:
        from hbl_edge.runtime.video._deps import need_gst

        report["machine"]["versions"]["gstreamer"] = need_gst("bench")[0].version_string()
    write_json(a.out, report)
    print(json.dumps({k: {x: v.get(x) for x in ("median_ms", "p90_ms", "p99_ms", "received", "expected",
                                                 "cpu_ms_per_frame")} for k, v in results.items()}, indent=1))
    print(f"load {load_before} → {load_after}; written {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
