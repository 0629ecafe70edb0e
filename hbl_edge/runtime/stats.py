"""Live statistics of a stream: per-stage latency percentiles, rates, drops, gaps.

Everything here is bounded: latencies are kept in fixed-size rings (the last
:data:`WINDOW` samples per stage), rates are counted over the last :data:`RATE_WINDOW_S`
seconds, gaps keep the last :data:`MAX_GAPS`, so a run of days uses the same memory as a run
of seconds. All methods are thread-safe (the capture, inference and sink threads record into
one :class:`StreamStats`; the terminal line, the preview page and ``--stats-json`` read it).

Stages (milliseconds), as the pipeline records them:

=================  ===========================================================================
``read``           inside ``source.read()``: demux + decode for a file; for a live source this
                   also holds the wait for the next frame (≈ the frame interval)
``queue``          from the frame's decode (``Frame.t_capture``) to the start of its inference
``infer``          pre-processing, the model, temporal filter, post-processing (per frame)
``sink_queue``     per sink: from the end of inference to the start of that sink's ``write``
``write``          per sink: inside ``sink.write()`` (encode + send / mux)
``glass``          per sink and overall: ``write`` done − ``Frame.t_capture``
=================  ===========================================================================
"""

from __future__ import annotations

import collections
import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..runio import write_json

#: Latency samples kept per stage (the percentiles are over the last WINDOW frames).
WINDOW = 4096
#: FPS is counted over the last RATE_WINDOW_S seconds.
RATE_WINDOW_S = 2.0
#: Gaps (source losses) kept in the report; the counters keep counting past it.
MAX_GAPS = 32
STATS_FORMAT = "hbl-stream-stats/1"


class LatencyWindow:
    """The last ``size`` samples (ms) of one stage in a ring; p50/p99/mean/max over them."""

    def __init__(self, size: int = WINDOW) -> None:
        self._ring = np.zeros(size, dtype=np.float64)
        self._n = 0  # samples ever added
        self._lock = threading.Lock()

    def add(self, ms: float) -> None:
        with self._lock:
            self._ring[self._n % self._ring.size] = ms
            self._n += 1

    @property
    def count(self) -> int:
        return self._n

    def summary(self) -> dict[str, float | int] | None:
        """``{"p50", "p99", "mean", "max", "n"}`` (ms; ``n`` = samples ever) or None before the first."""
        with self._lock:
            n = self._n
            if n == 0:
                return None
            v = self._ring[: min(n, self._ring.size)].copy()
        p50, p99 = np.percentile(v, [50, 99])
        return {"p50": round(float(p50), 3), "p99": round(float(p99), 3), "mean": round(float(v.mean()), 3),
                "max": round(float(v.max()), 3), "n": n}


class RateMeter:
    """Events per second over the last ``window_s`` seconds (a deque of timestamps, bounded),
    and on average over the whole run (first to last event)."""

    def __init__(self, window_s: float = RATE_WINDOW_S, max_events: int = 4096) -> None:
        self.window_s = window_s
        self._t: collections.deque[float] = collections.deque(maxlen=max_events)
        self._first: float | None = None
        self._last = 0.0
        self._count = 0
        self._lock = threading.Lock()

    def tick(self, t: float | None = None) -> None:
        t = time.monotonic() if t is None else t
        with self._lock:
            self._t.append(t)
            if self._first is None:
                self._first = t
            self._last = t
            self._count += 1

    def average(self) -> float:
        """(events − 1) / (last − first): the run's mean rate (0 before two events)."""
        with self._lock:
            if self._first is None or self._count < 2 or self._last <= self._first:
                return 0.0
            return (self._count - 1) / (self._last - self._first)

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        with self._lock:
            while self._t and self._t[0] < now - self.window_s:
                self._t.popleft()
            n = len(self._t)
            first = self._t[0] if n else now
        # n events span n − 1 intervals; dividing by the time since the first one lets the rate
        # decay to 0 within the window once events stop.
        return (n - 1) / max(now - first, 1e-6) if n >= 2 else 0.0


class SinkStats:
    """Counters and latencies of one sink."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.written = 0
        self.dropped = 0  # frames this sink skipped because it was slower than the stream (live only)
        self.failed: str | None = None  # one-line reason once it failed and was dropped
        self.gap_frames = 0  # "waiting for source" pictures sent during source gaps
        self.sink_queue = LatencyWindow()
        self.write = LatencyWindow()
        self.glass = LatencyWindow()
        self.rate = RateMeter()


class StreamStats:
    """Everything the pipeline counts; :meth:`snapshot` is the ``--stats-json`` document.

    Schema (``format`` = ``hbl-stream-stats/1``)::

        format, time (Unix s), uptime_s, state ("starting" | "running" | "waiting" | "ended"),
        source {uri, live, ...describe()}, model {...}, temporal (bool),
        frames {in, out, dropped, corrupt, resized},
        fps {in, out (over the last 2 s), in_avg, out_avg (first to last frame of the run)},
        latency_ms {read, queue, infer, glass: {p50, p99, mean, max, n} | null},
        sinks {NAME: {written, dropped, gap_frames, failed, fps, fps_avg, sink_queue_ms, write_ms, glass_ms}},
        gaps {count, reconnects, total_s, current_s (null unless waiting), last [{at_frame, start, duration_s}]}
    """

    STAGES = ("read", "queue", "infer", "glass")

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.latency = {s: LatencyWindow() for s in self.STAGES}
        self.rate_in = RateMeter()
        self.rate_out = RateMeter()
        self.frames_in = 0
        self.frames_out = 0
        self.dropped = 0  # frames of a live source overwritten before inference took them
        self.resized = 0  # frames resized to a size the model supports
        self.corrupt_base = 0  # corrupt frames of source objects already replaced
        self.sinks: dict[str, SinkStats] = {}
        self.state = "starting"
        self.source: dict[str, Any] = {}
        self.model: dict[str, Any] = {}
        self.temporal = False
        self.gaps: collections.deque[dict[str, Any]] = collections.deque(maxlen=MAX_GAPS)
        self.gap_count = 0
        self.reconnects = 0
        self.gap_total_s = 0.0
        self._gap_start: float | None = None
        self._source_counters: dict[str, int] | None = None
        self._lock = threading.Lock()

    # -- recording ----------------------------------------------------------------------
    def sink(self, name: str) -> SinkStats:
        with self._lock:
            if name not in self.sinks:
                self.sinks[name] = SinkStats(name)
            return self.sinks[name]

    def watch_source(self, counters: dict[str, int]) -> None:
        """Read corrupt-frame counts from the source's own counters (it counts; we report)."""
        self._source_counters = counters

    def frame_in(self, read_ms: float) -> None:
        with self._lock:
            self.frames_in += 1
        self.rate_in.tick()
        self.latency["read"].add(read_ms)

    def frame_out(self, queue_ms: float, infer_ms: float) -> None:
        with self._lock:
            self.frames_out += 1
        self.rate_out.tick()
        self.latency["queue"].add(queue_ms)
        self.latency["infer"].add(infer_ms)

    def drop(self, n: int = 1) -> None:
        with self._lock:
            self.dropped += n

    def gap_started(self, at: float | None = None) -> None:
        """A live source was lost; ``at``: when its last frame came (the gap starts there, not
        when the silence was noticed ``timeout_s`` later)."""
        with self._lock:
            if self._gap_start is None:
                self._gap_start = time.monotonic() if at is None else at
                self.gap_count += 1
                self.state = "waiting"

    def reconnect_attempt(self) -> None:
        with self._lock:
            self.reconnects += 1

    def gap_ended(self) -> float | None:
        """Close the open gap (the first frame after it arrived); returns its length in seconds."""
        with self._lock:
            self.state = "running"
            if self._gap_start is None:
                return None
            now = time.monotonic()
            d = now - self._gap_start
            self.gap_total_s += d
            self.gaps.append({"at_frame": self.frames_in, "start": round(self._gap_start - self.t0, 3),
                              "duration_s": round(d, 3)})
            self._gap_start = None
            return d

    # -- reading ------------------------------------------------------------------------
    @property
    def corrupt(self) -> int:
        c = self._source_counters or {}
        return self.corrupt_base + int(c.get("corrupt", 0))

    @property
    def waiting_s(self) -> float | None:
        g = self._gap_start
        return None if g is None else time.monotonic() - g

    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        with self._lock:
            sinks = list(self.sinks.values())
            gap_current = None if self._gap_start is None else round(now - self._gap_start, 3)
            doc: dict[str, Any] = {
                "format": STATS_FORMAT,
                "time": round(time.time(), 3),
                "uptime_s": round(now - self.t0, 3),
                "state": self.state,
                "source": dict(self.source),
                "model": dict(self.model),
                "temporal": self.temporal,
                "frames": {"in": self.frames_in, "out": self.frames_out, "dropped": self.dropped,
                           "corrupt": self.corrupt, "resized": self.resized},
                "gaps": {"count": self.gap_count, "reconnects": self.reconnects,
                         "total_s": round(self.gap_total_s + (gap_current or 0.0), 3), "current_s": gap_current,
                         "last": list(self.gaps)},
            }
        doc["fps"] = {"in": round(self.rate_in.rate(now), 2), "out": round(self.rate_out.rate(now), 2),
                      "in_avg": round(self.rate_in.average(), 2), "out_avg": round(self.rate_out.average(), 2)}
        doc["latency_ms"] = {s: w.summary() for s, w in self.latency.items()}
        doc["sinks"] = {
            s.name: {"written": s.written, "dropped": s.dropped, "gap_frames": s.gap_frames, "failed": s.failed,
                     "fps": round(s.rate.rate(now), 2),
                     "fps_avg": round(s.rate.average(), 2),
                     "sink_queue_ms": s.sink_queue.summary(), "write_ms": s.write.summary(), "glass_ms": s.glass.summary()}
            for s in sinks
        }
        return doc

    def line(self) -> str:
        """One terminal line: state, FPS in/out, p50/p99 of inference and glass-to-glass, drops, gaps."""
        snap = self.snapshot()
        return format_line(snap)


def _pct(summary: dict[str, Any] | None) -> str:
    return "–" if not summary else f"{summary['p50']:.1f}/{summary['p99']:.1f}"


def format_line(snap: dict[str, Any]) -> str:
    f, fps, lat, g = snap["frames"], snap["fps"], snap["latency_ms"], snap["gaps"]
    state = snap["state"]
    if state == "waiting" and g["current_s"] is not None:
        state = f"waiting for source {g['current_s']:.1f}s"
    parts = [
        state,
        f"in {fps['in']:.1f} fps",
        f"out {fps['out']:.1f} fps",
        f"infer {_pct(lat['infer'])} ms",
        f"glass {_pct(lat['glass'])} ms (p50/p99)",
        f"frames {f['out']}",
        f"dropped {f['dropped']}",
    ]
    if f["corrupt"]:
        parts.append(f"corrupt {f['corrupt']}")
    if g["count"]:
        parts.append(f"gaps {g['count']} ({g['total_s']:.1f}s)")
    failed = [n for n, s in snap["sinks"].items() if s["failed"]]
    if failed:
        parts.append(f"failed sinks {len(failed)}")
    return " · ".join(parts)


class StatsWriter:
    """``--stats-json PATH``: the snapshot written atomically every ``every_s`` seconds and at exit."""

    def __init__(self, stats: StreamStats, path: str | Path, every_s: float = 1.0) -> None:
        self.stats = stats
        self.path = Path(path)
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> None:
        """Fail before start when the folder cannot be written (a one-line ConfigError)."""
        from ..errors import ConfigError

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_json(self.path, self.stats.snapshot())
        except OSError as e:
            raise ConfigError(f"--stats-json {self.path}: cannot write there ({e.strerror or e}); pick another path") from None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="hbl-stats-json", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.write()

    def write(self) -> None:
        try:
            write_json(self.path, self.stats.snapshot())
        except OSError:
            pass  # a full disk must not stop the video; the final write reports it

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        write_json(self.path, self.stats.snapshot())


def read_stats(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


__all__ = ["LatencyWindow", "RateMeter", "STATS_FORMAT", "SinkStats", "StatsWriter", "StreamStats", "format_line",
           "read_stats"]
