"""The stream pipeline end to end: file → file throughput against the raw runner, and
glass-to-glass latency of an RTP relay against a pass-through with no model.

    flock /tmp/hbl-timing.lock nice -n -10 python bench/pipeline.py [--rounds 3] [--frames 150]
        [--size 320x240] [--seconds 8] [--batches 1,4] [--spinning default,off]
        [--out bench/results/pipeline.json]

Model: the demo's searched genotype (bench/results/demo_searched_genotype.json, C = 8/16,
3 HNUs) at its full compute cost, with the weights of ``tests/pipeline_fakes.gain_model`` (an
identity path × 1.6: the output is a picture, frame stamps survive it); ONNX Runtime on the CPU.

1. **Throughput** (``--frames`` of a synthetic H.264 mp4, ``tests/streams.make_clip``):

   - ``raw``: ``runner.run`` on every frame, already decoded and converted to N×3×H×W float32,
     one call per frame (what ``hbl-edge bench`` times);
   - ``pipeline``: ``Pipeline(file source → Enhancer → mp4 sink)``: decode, convert, infer,
     convert back, x264 encode and mux, in their threads, from start to the closed file;
     variants: ``batch`` (frames per inference call), ORT ``threads`` and ``spin`` (ORT's
     ``session.intra_op.allow_spinning``: ``default`` leaves onnxruntime's, on; ``off`` stops its
     idle intra-op threads busy-waiting, which leaves the cores to decode and encode). The raw
     runner is timed with each spinning setting too.

   Rounds interleave raw and every pipeline variant; medians of frames/s, and the ratio
   pipeline / raw (the goal is ≥ 0.9).

2. **Glass-to-glass latency**: a sender process (``tests/streams.RtpSender``, BlueOS emulation,
   30 fps, frames stamped with their index in pixel blocks) → a relay process
   (``rtp://@:P`` → model or pass-through → ``rtp://127.0.0.1:Q``, the stream pipeline as
   ``hbl-edge stream`` runs it) → a receiver in this process (the ``rtp://`` packet receiver)
   that reads the stamp back. Latency = receive time − the time the sender's last packet of that
   frame left (CLOCK_MONOTONIC is one clock for all processes). Two encodes, two decodes, the
   network stack, and (with the model) inference. p50/p90/p99 per config, configs interleaved.

The machine's load (os.getloadavg before/after, /proc/pressure/cpu) goes into the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # loopback fixtures (streams.py), gain_model (pipeline_fakes.py)
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from hbl_edge.runio import parse_resolution, write_json  # noqa: E402
from hbl_edge.runtime.machine import machine_load  # noqa: E402


def load() -> dict:
    """Measured machine load (:func:`hbl_edge.runtime.machine.machine_load`: loadavg, /proc/pressure/cpu)."""
    return machine_load()


def pct(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    v = np.asarray(values)
    p50, p90, p99 = np.percentile(v, [50, 90, 99])
    return {"n": int(v.size), "p50": round(float(p50), 2), "p90": round(float(p90), 2), "p99": round(float(p99), 2),
            "max": round(float(v.max()), 2)}


# ---------------------------------------------------------------------------------------------
# 1. Throughput
# ---------------------------------------------------------------------------------------------
#: --spinning names → the allow_spinning argument (None: onnxruntime's default, on)
SPIN = {"default": None, "off": False, "on": True}


def raw_fps(model: Path, frames: list[np.ndarray], threads: int, spin: str = "default") -> float:
    from hbl_edge.runtime.enhancer import to_chw
    from hbl_edge.runtime.runners import create_runner

    runner = create_runner("ort", model / "model.onnx", threads=threads, allow_spinning=SPIN[spin])
    batches = [to_chw([f]) for f in frames]
    for b in batches[:3]:
        runner.run(b)
    t0 = time.perf_counter()
    for b in batches:
        runner.run(b)
    dt = time.perf_counter() - t0
    runner.close()
    return len(batches) / dt


def pipeline_fps(model: Path, clip: Path, out: Path, threads: int, batch: int, spin: str = "default") -> tuple[float, dict]:
    from hbl_edge.runtime.enhancer import Enhancer
    from hbl_edge.runtime.pipeline import Pipeline, PipelineConfig
    from hbl_edge.runtime.video import VideoOptions, open_sink, open_source

    enh = Enhancer(model, backend="ort", threads=threads, allow_spinning=SPIN[spin])
    enh.process([np.zeros((64, 64, 3), np.uint8)])  # the session's first call allocates
    opts = VideoOptions()
    pipe = Pipeline(open_source(str(clip), opts), [open_sink(str(out), opts)], enh,
                    PipelineConfig(batch=batch, handle_signals=False))
    t0 = time.perf_counter()
    final = pipe.run()  # prepare (open, start) is inside: the whole job counts
    dt = time.perf_counter() - t0
    enh.close()
    return final["frames"]["out"] / dt, final


def throughput(model: Path, work: Path, size: tuple[int, int], n: int, rounds: int, batches: tuple[int, ...] = (1, 4),
               spins: tuple[str, ...] = ("default",)) -> dict:
    import av

    from streams import make_clip

    clip = make_clip(work / "clip.mp4", frames=n, size=size, pattern="moving")
    with av.open(str(clip)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    cpus = os.cpu_count() or 1
    thread_counts = sorted({cpus, max(1, cpus - 1)})

    def spin_tag(s: str) -> str:
        return "" if s == "default" else f" spin={s}"

    variants = {f"pipeline threads={t} batch={b}{spin_tag(s)}": (t, b, s) for t in thread_counts for b in batches
                for s in spins}
    raw_keys = {(t, s): f"threads={t}{spin_tag(s)}" for t in thread_counts for s in spins}
    raws: dict[tuple[int, str], list[float]] = {k: [] for k in raw_keys}
    pipes: dict[str, list[float]] = {k: [] for k in variants}
    last: dict = {}
    for r in range(rounds):
        for t, s in raws:
            raws[t, s].append(raw_fps(model, frames, t, s))
        for name, (t, b, s) in variants.items():
            fps, final = pipeline_fps(model, clip, work / f"out_{r}.mp4", t, b, s)
            pipes[name].append(fps)
            last[name] = {k: final["latency_ms"][k] for k in ("read", "infer")} | {
                "write": final["sinks"][str(work / f"out_{r}.mp4")]["write_ms"]}
        print(f"  round {r + 1}/{rounds}: raw {', '.join(f'{raw_keys[k]} {v[-1]:.1f}' for k, v in raws.items())} fps; "
              + "; ".join(f"{k.split(' ', 1)[1]} {v[-1]:.1f}" for k, v in pipes.items()), flush=True)
    raw_best = max(statistics.median(v) for v in raws.values())
    out = {"frames": n, "size": list(size), "raw_fps": {raw_keys[k]: round(statistics.median(v), 2) for k, v in raws.items()},
           "raw_fps_rounds": {raw_keys[k]: [round(x, 2) for x in v] for k, v in raws.items()},
           "pipeline_fps": {k: round(statistics.median(v), 2) for k, v in pipes.items()},
           "pipeline_fps_rounds": {k: [round(x, 2) for x in v] for k, v in pipes.items()},
           "stage_ms_last_round": last}
    out["ratio_to_best_raw"] = {k: round(v / raw_best, 3) for k, v in out["pipeline_fps"].items()}
    # Each spinning setting against onnxruntime's default, round by round (side by side: the load
    # of the moment cancels out): frames/s with the setting ÷ frames/s with the default.
    if "default" in spins and len(spins) > 1:
        per_round: dict[str, list[float]] = {}
        for (t, s), v in raws.items():
            if s != "default":
                per_round[f"raw {raw_keys[t, s]}"] = [round(a / b, 3) for a, b in zip(v, raws[t, "default"])]
        for name, (t, b, s) in variants.items():
            if s != "default":
                base = pipes[f"pipeline threads={t} batch={b}"]
                per_round[name] = [round(x / y, 3) for x, y in zip(pipes[name], base)]
        out["spin_vs_default_rounds"] = per_round
        out["spin_vs_default_median"] = {k: round(statistics.median(v), 3) for k, v in per_round.items()}
    # against the raw runner at the same threads and onnxruntime's default spinning (what `hbl-edge bench` times)
    out["ratio_same_threads"] = {k: round(out["pipeline_fps"][k] / out["raw_fps"][f"threads={variants[k][0]}"], 3)
                                 for k in variants} if "default" in spins else {}
    return out


# ---------------------------------------------------------------------------------------------
# 2. Glass-to-glass latency
# ---------------------------------------------------------------------------------------------
SENDER = r"""
import json, sys, time
sys.path.insert(0, {tests!r})
from streams import RtpSender
s = RtpSender({port}, fps={fps}, size=({w}, {h}))
time.sleep({seconds})
s.stop()
print(json.dumps({{"sent": s.sent, "error": repr(s.error) if s.error else None}}))
"""

RELAY = r"""
import sys
sys.path.insert(0, {root!r})
from hbl_edge.runtime.enhancer import Enhancer, PassThrough
from hbl_edge.runtime.pipeline import build_pipeline
proc = PassThrough() if {model!r} is None else Enhancer({model!r}, backend="ort", threads={threads})
if {model!r} is not None:
    import numpy as np
    proc.process([np.zeros(({h}, {w}, 3), np.uint8)])
pipe = build_pipeline(proc, "rtp://@:{p_in}", "rtp://127.0.0.1:{p_out}", timeout_s=2.0, sdp_path={sdp!r},
                      stats_json={stats!r}, handle_signals=True)
pipe.run()
"""


def relay_latency(model: Path | None, work: Path, size: tuple[int, int], seconds: float, fps: float, threads: int) -> dict:
    from hbl_edge.runtime.video import VideoOptions, open_source
    from hbl_edge.runtime.video.base import SourceLost
    from hbl_edge.runtime.video.stamp import read_stamp

    from streams import free_udp_port

    p_in, p_out = free_udp_port(), free_udp_port()
    stats = work / f"relay_{p_in}.json"
    rx = open_source(f"rtp://@:{p_out}", VideoOptions(timeout_s=1.0, receiver="packets"))
    rx.open()
    got: list[tuple[int, float]] = []
    stop = threading.Event()

    def receive() -> None:
        while not stop.is_set():
            try:
                f = rx.read()
            except SourceLost:
                continue
            if f is None:
                return
            s = read_stamp(f.image)
            if s is not None:
                got.append((s, f.t_capture))  # t_capture: decoded, in this process

    th = threading.Thread(target=receive, daemon=True)
    th.start()
    w, h = size
    relay = subprocess.Popen([sys.executable, "-c", RELAY.format(
        root=str(ROOT), model=None if model is None else str(model), threads=threads, w=w, h=h, p_in=p_in,
        p_out=p_out, sdp=str(work / "relay.sdp"), stats=str(stats))], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not stats.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    sender = subprocess.run([sys.executable, "-c", SENDER.format(tests=str(ROOT / "tests"), port=p_in, fps=fps, w=w, h=h,
                                                                  seconds=seconds)],
                            capture_output=True, text=True, timeout=seconds + 60)
    time.sleep(0.5)
    relay.send_signal(2)
    relay.wait(30)
    stop.set()
    th.join(5)
    rx.close()
    sent = {int(k): v for k, v in json.loads(sender.stdout.strip().splitlines()[-1])["sent"].items()}
    lat = []
    seen = set()
    for s, t in got:
        if s in sent and s not in seen:  # the first decode of each frame; a misread stamp is dropped
            d = (t - sent[s]) * 1e3
            if 0 <= d < 2000:
                lat.append(d)
                seen.add(s)
    inner = json.loads(stats.read_text())
    return {"latency_ms": pct(lat), "frames_sent": len(sent), "frames_received": len(seen),
            "relay_stats": {"glass_ms": inner["latency_ms"]["glass"], "infer_ms": inner["latency_ms"]["infer"],
                            "dropped": inner["frames"]["dropped"], "fps_out_avg": inner["fps"]["out_avg"]}}


def latency(model: Path, work: Path, size: tuple[int, int], seconds: float, rounds: int, threads: int) -> dict:
    configs = {"pass-through (no model)": None, "model": model}
    rows: dict[str, list[dict]] = {k: [] for k in configs}
    for r in range(rounds):
        for name, m in configs.items():
            rows[name].append(relay_latency(m, work, size, seconds, 30.0, threads))
            lm = rows[name][-1]["latency_ms"]
            print(f"  round {r + 1}/{rounds} {name}: p50 {lm.get('p50')} p99 {lm.get('p99')} ms "
                  f"({rows[name][-1]['frames_received']}/{rows[name][-1]['frames_sent']} frames)", flush=True)
    out = {}
    for name, rs in rows.items():
        out[name] = {"rounds": rs, "p50_median": round(statistics.median(r["latency_ms"]["p50"] for r in rs), 2),
                     "p99_median": round(statistics.median(r["latency_ms"]["p99"] for r in rs), 2)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument("--size", default="320x240")
    ap.add_argument("--seconds", type=float, default=8.0, help="latency: seconds of stream per config and round")
    ap.add_argument("--threads", type=int, default=None, help="latency: ORT threads of the relay (default: cores − 1)")
    ap.add_argument("--genotype", default=str(ROOT / "bench" / "results" / "demo_searched_genotype.json"))
    ap.add_argument("--skip", choices=["throughput", "latency"], default=None)
    ap.add_argument("--batches", default="1,4", help="throughput: pipeline batch sizes, comma-separated")
    ap.add_argument("--spinning", default="default",
                    help="throughput: ORT spinning settings to compare, comma-separated: default, off, on")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "pipeline.json"))
    args = ap.parse_args(argv)

    from hbl_edge.genotype import load_genotype
    from pipeline_fakes import gain_model

    size = parse_resolution(args.size)
    threads = args.threads or max(1, (os.cpu_count() or 1) - 1)
    report: dict = {"what": "stream pipeline: file→file throughput vs the raw runner; RTP relay glass-to-glass latency",
                    "machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                                "python": platform.python_version()},
                    "genotype": args.genotype, "model": "identity path × 1.6 at the genotype's full compute (gain_model)",
                    "load_before": load()}
    try:
        import onnxruntime
        import av

        report["machine"].update(onnxruntime=onnxruntime.__version__, av=av.__version__)
        from hbl_edge.runtime.machine import cpu_model

        report["machine"]["cpu"] = cpu_model()
    except ImportError:
        pass
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = gain_model(work / "model", 1.6, load_genotype(args.genotype))
        if args.skip != "throughput":
            print(f"throughput, {args.frames} frames {size[0]}x{size[1]}:", flush=True)
            spins = tuple(s.strip() for s in args.spinning.split(","))
            if not spins or any(s not in SPIN for s in spins):
                ap.error(f"--spinning: choose from {', '.join(SPIN)}")
            report["throughput"] = throughput(model, work, size, args.frames, args.rounds,
                                              tuple(int(b) for b in args.batches.split(",")), spins)
        if args.skip != "latency":
            print(f"glass-to-glass latency, {args.seconds:.0f} s at 30 fps per config and round (relay threads={threads}):",
                  flush=True)
            report["latency"] = latency(model, work, size, args.seconds, args.rounds, threads)
            report["latency_settings"] = {"seconds": args.seconds, "fps": 30, "relay_threads": threads, "size": list(size)}
    report["load_after"] = load()
    write_json(args.out, report)
    if "throughput" in report:
        t = report["throughput"]
        print(f"raw runner: {t['raw_fps']} fps")
        for k, v in t["pipeline_fps"].items():
            same = t["ratio_same_threads"].get(k)
            print(f"{k}: {v} fps = " + (f"{same:.2f}× raw at the same threads, " if same is not None else "")
                  + f"{t['ratio_to_best_raw'][k]:.2f}× the best raw")
        for k, v in t.get("spin_vs_default_median", {}).items():
            print(f"{k} ÷ default spinning, per round: {t['spin_vs_default_rounds'][k]} (median {v})")
    if "latency" in report:
        for k, v in report["latency"].items():
            print(f"{k}: glass-to-glass p50 {v['p50_median']} ms, p99 {v['p99_median']} ms (median of rounds)")
    print(f"load {report['load_before']['loadavg']} → {report['load_after']['loadavg']}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
