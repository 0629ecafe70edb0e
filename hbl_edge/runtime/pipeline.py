"""The stream pipeline: capture, inference and output in separate threads with bounded queues.

::

    source ──read──▶ [capture] ──q_in──▶ [inference] ──┬─q──▶ [sink 1] ──write──▶ rtp://…
                        │                      │        ├─q──▶ [sink 2] ──write──▶ out.mp4
                        │ SourceLost:          │        └───▶ preview (newest pair only)
                        └ close, back off,     └ model, --temporal, resize when the model
                          reopen, count gap      cannot run the frame's size

Queues:

- a **live** source (network, camera) feeds a one-slot queue that keeps only the newest frame:
  latency never grows when inference is slower than the camera, overwritten frames are counted
  as dropped. Each sink also gets a newest-only slot, so a slow sink drops its own frames and
  never holds back inference or the other sinks.
- a **file** source feeds blocking bounded queues end to end: nothing is dropped; the pipeline
  runs at the pace of its slowest stage (sinks included).

Faults: a live source that raises :class:`SourceLost` (from ``read`` or ``open``) is closed,
reopened after a capped, jittered exponential backoff, and the gap is logged and counted; the
sinks keep running meanwhile (an RTP/RTSP output stays up; the preview says "waiting for
source"). A finite source that ends, ends. A sink whose ``write`` fails is reported in one line,
closed and dropped; the rest go on (when every sink has failed and there is no preview, the
run ends with :class:`PipelineError`).

Stopping: :meth:`Pipeline.stop` (SIGINT/SIGTERM when :meth:`Pipeline.run` runs in the main
thread), ``duration_s`` or ``max_frames``: capture stops, what is queued is enhanced and
written, every sink is closed (an mp4 plays), and :meth:`run` returns the final stats. A
second signal stops draining (sinks are still closed).
"""

from __future__ import annotations

import logging
import queue
import random
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import HblError
from .stats import StatsWriter, StreamStats
from .temporal import TemporalFilter
from .video.base import Frame, Sink, SinkError, Source, SourceLost, StreamError, VideoOptions, open_sink, open_source

log = logging.getLogger(__name__)


class PipelineError(HblError):
    """The stream cannot go on (every output failed, the source cannot be reopened): one line."""


class _End:
    """Queue marker: no more frames."""


END = _End()


# ---------------------------------------------------------------------------------------------
# Queues
# ---------------------------------------------------------------------------------------------
class LatestSlot:
    """A one-item queue that keeps the newest item (live streams): ``put`` never blocks.

    :meth:`put` returns True when it overwrote an item nobody took (a dropped frame).
    :meth:`close` lets the consumer take what is there, then :data:`END`.
    """

    def __init__(self) -> None:
        self._item: Any = None
        self._full = False
        self._closed = False
        self._cond = threading.Condition()

    def put(self, item: Any) -> bool:
        with self._cond:
            if self._closed:
                return False
            dropped = self._full
            self._item, self._full = item, True
            self._cond.notify()
            return dropped

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def get(self, timeout: float) -> Any:
        """The item, :data:`END` once closed and empty, or None after ``timeout`` seconds."""
        with self._cond:
            if not self._full and not self._closed:
                self._cond.wait(timeout)
            if self._full:
                item, self._item, self._full = self._item, None, False
                return item
            return END if self._closed else None

    def discard(self) -> int:
        with self._cond:
            n, self._item, self._full = int(self._full), None, False
            return n


class BlockingQueue:
    """A bounded FIFO (files): ``put`` waits for room (so nothing is dropped) unless aborted."""

    def __init__(self, maxsize: int, abort: threading.Event) -> None:
        self._q: queue.Queue[Any] = queue.Queue(maxsize)
        self._abort = abort

    def put(self, item: Any) -> bool:
        while not self._abort.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return False
            except queue.Full:
                continue
        return False

    def close(self) -> None:
        # END must get in even when aborting: the consumer may be waiting for it.
        while True:
            try:
                self._q.put(END, timeout=0.1)
                return
            except queue.Full:
                if self._abort.is_set():
                    self.discard()

    def get(self, timeout: float) -> Any:
        try:
            return self._q.get(timeout=timeout)
        except queue.Empty:
            return None

    def get_nowait(self) -> Any:
        try:
            return self._q.get_nowait()
        except queue.Empty:
            return None

    def discard(self) -> int:
        n = 0
        while True:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                return n
            if item is END:  # keep the marker: the consumer must still see the end
                self._q.put_nowait(END)
                return n
            n += 1


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------
@dataclass
class PipelineConfig:
    """How a stream runs (the model and the URIs are given separately).

    Args:
        temporal: ``--temporal`` (motion-gated gain-map smoothing, :mod:`.temporal`).
        duration_s: stop after this many seconds (``--duration``).
        max_frames: stop after this many enhanced frames (``--frames``).
        batch: frames per inference call for a file source (1: off; live sources always use 1).
        file_queue: depth of each queue of a file source.
        reconnect_base_s, reconnect_cap_s: backoff of a lost live source: the n-th attempt
            waits ``min(cap, base·2ⁿ)`` × a uniform jitter in [0.5, 1].
        stats_json: write the stats snapshot here every ``stats_every_s`` and at exit.
        gap_frames_s: while a live source is lost, send a "waiting for source" picture this often
            to the streaming outputs (rtp, udp, rtsp, display; not files), so a pilot's player
            shows that the camera is gone instead of a frozen last frame (None: send nothing).
        handle_signals: install SIGINT/SIGTERM handlers in :meth:`Pipeline.run` (main thread only).
        tick_s: how often ``on_tick`` is called with the stats snapshot (terminal line).
    """

    temporal: bool = False
    duration_s: float | None = None
    max_frames: int | None = None
    batch: int = 1
    file_queue: int = 8
    reconnect_base_s: float = 0.25
    reconnect_cap_s: float = 2.0
    stats_json: str | Path | None = None
    stats_every_s: float = 1.0
    gap_frames_s: float | None = 0.5
    handle_signals: bool = True
    tick_s: float = 0.5

    def __post_init__(self) -> None:
        from ..errors import ConfigError

        if self.duration_s is not None and self.duration_s <= 0:
            raise ConfigError(f"--duration must be positive seconds, got {self.duration_s}")
        if self.max_frames is not None and self.max_frames < 1:
            raise ConfigError(f"--frames must be at least 1, got {self.max_frames}")
        if self.batch < 1 or self.file_queue < 1:
            raise ConfigError("batch and queue sizes must be at least 1")
        if not 0 < self.reconnect_base_s <= self.reconnect_cap_s:
            raise ConfigError("reconnect backoff: need 0 < base ≤ cap")


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Seconds before reconnect attempt ``attempt`` (0, 1, …): capped exponential, jittered in [½, 1]×."""
    return min(cap, base * (2.0 ** min(attempt, 30))) * rng.uniform(0.5, 1.0)


# ---------------------------------------------------------------------------------------------
# Sinks
# ---------------------------------------------------------------------------------------------
#: Sink schemes that get "waiting for source" pictures during a gap.
STREAMING = ("rtp", "udp", "rtsp", "display")


class _SinkWorker:
    """One sink in its own thread, with its own queue (newest-only for live sources)."""

    def __init__(self, sink: Sink, name: str, live: bool, depth: int, abort: threading.Event, stats: StreamStats,
                 on_fail: Callable[["_SinkWorker"], None]) -> None:
        self.sink = sink
        self.name = name
        self.live = live
        self.q: LatestSlot | BlockingQueue = LatestSlot() if live else BlockingQueue(depth, abort)
        self.abort = abort
        self.stats = stats.sink(name)
        self.overall = stats
        self.on_fail = on_fail
        self.dead = False
        #: gets "waiting for source" pictures during a gap (streams and displays, not files)
        self.gap_frames = bool(getattr(sink, "gap_frames", getattr(getattr(sink, "uri", None), "scheme", "") in STREAMING))
        self.thread = threading.Thread(target=self._loop, name=f"hbl-sink-{name}", daemon=True)

    def put(self, frame: Frame) -> None:
        if self.dead:
            return
        if self.q.put(frame):
            self.stats.dropped += 1

    def _loop(self) -> None:
        try:
            while True:
                item = self.q.get(0.2)
                if item is None:
                    continue
                if item is END:
                    return
                if self.abort.is_set():
                    continue  # second signal: skip what is queued, still close below
                t0 = time.monotonic()
                try:
                    self.sink.write(item)
                except Exception as e:  # noqa: BLE001 - any failure of one sink must spare the others
                    self._fail(e)
                    return
                t1 = time.monotonic()
                if item.meta.get("placeholder"):
                    self.stats.gap_frames += 1
                    continue
                self.stats.sink_queue.add((t0 - item.meta.get("t_enhanced", t0)) * 1e3)
                self.stats.write.add((t1 - t0) * 1e3)
                glass = (t1 - item.t_capture) * 1e3
                self.stats.glass.add(glass)
                self.overall.latency["glass"].add(glass)
                self.stats.written += 1
                self.stats.rate.tick(t1)
        finally:
            if not self.dead:
                self._close()

    def _fail(self, e: BaseException) -> None:
        self.dead = True
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if not isinstance(e, (SinkError, HblError, OSError)):
            reason = f"{type(e).__name__}: {reason}"
            log.debug("sink %s failed", self.name, exc_info=e)
        self.stats.failed = reason
        log.error("output %s failed and was dropped (%s); the other outputs keep going", self.name, reason)
        self.q.discard()
        self._close()
        self.on_fail(self)

    def _close(self) -> None:
        try:
            self.sink.close()
        except Exception as e:  # noqa: BLE001 - closing one sink must not stop closing the others
            log.error("output %s did not close cleanly (%s)", self.name, e)


def _name(obj: Any) -> str:
    uri = getattr(obj, "uri", None)
    return getattr(uri, "text", None) or str(uri or type(obj).__name__)


def _unique_names(sinks: Sequence[Any]) -> list[str]:
    """Sink names for the stats (their URI; ``#2``, ``#3`` … when the same URI appears twice)."""
    seen: dict[str, int] = {}
    out = []
    for s in sinks:
        n = _name(s)
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}#{seen[n]}")
    return out


# ---------------------------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------------------------
class Pipeline:
    """Run ``source`` → ``processor`` → ``sinks`` (+ ``preview``) until the source ends or :meth:`stop`.

    Args:
        source: a :class:`~hbl_edge.runtime.video.base.Source` (not opened yet, or opened).
        sinks: :class:`~hbl_edge.runtime.video.base.Sink` objects (not started yet, or started).
        processor: ``process(list of H×W×3 uint8, temporal=None) -> list of H×W×3 uint8`` plus
            ``describe()`` and ``resized``: an :class:`~hbl_edge.runtime.enhancer.Enhancer` or
            :class:`~hbl_edge.runtime.enhancer.PassThrough`.
        config: :class:`PipelineConfig`.
        preview: a :class:`~hbl_edge.runtime.preview.Preview` (not started yet) or None.
        on_tick: called with the stats snapshot every ``config.tick_s`` (the terminal line).

    Use :meth:`prepare` to fail early (it opens the source, starts the sinks and the preview and
    raises the first user error after closing what it started), then :meth:`run`.
    """

    def __init__(self, source: Source, sinks: Sequence[Sink], processor: Any, config: PipelineConfig | None = None, *,
                 preview: Any = None, on_tick: Callable[[dict[str, Any]], None] | None = None,
                 seed: int | None = None) -> None:
        self.source = source
        self.sinks = list(sinks)
        self.processor = processor
        self.config = config or PipelineConfig()
        self.preview = preview
        self.on_tick = on_tick
        self.stats = StreamStats()
        self.stats.source = {"uri": _name(source), "live": bool(source.live), **_describe(source)}
        self.stats.model = processor.describe()
        self.stats.temporal = self.config.temporal
        self.stats.watch_source(source.counters)
        self.temporal = TemporalFilter() if self.config.temporal else None
        self.live = bool(source.live)
        self._rng = random.Random(seed)
        self._stop = threading.Event()  # stop reading; drain
        self._abort = threading.Event()  # stop draining
        self._done = threading.Event()
        self._errors: list[BaseException] = []
        self._prepared = False
        self._source_open = False
        self._started_sinks: list[Sink] = []
        self._writer: StatsWriter | None = None
        self._workers: list[_SinkWorker] = []
        self._threads: list[threading.Thread] = []
        self._last_out: tuple[int, tuple[int, int]] | None = None  # (index, (h, w)) of the last output
        self._last_gap_frame = 0.0

    # -- preparing ----------------------------------------------------------------------
    def prepare(self) -> None:
        """Open the source, start sinks, preview and stats file; the first user error is raised
        (one line) after closing whatever was started."""
        if self._prepared:
            return
        try:
            if self.config.stats_json is not None:
                self._writer = StatsWriter(self.stats, self.config.stats_json, self.config.stats_every_s)
                self._writer.check()
            try:
                self.source.open()
                self._source_open = True
                self.stats.state = "running"
            except SourceLost as e:
                if not self.live:
                    raise StreamError(f"{_name(self.source)}: {e}") from None
                log.warning("source %s is not there yet (%s); waiting for it", _name(self.source), e)
                self.stats.state = "waiting"
            for sink in self.sinks:
                sink.start()
                self._started_sinks.append(sink)
            if self.preview is not None:
                self.preview.stats = self.stats.snapshot
                self.preview.state = lambda: self.stats.state
                self.preview.start()
        except BaseException:
            self._close_everything()
            raise
        self._prepared = True

    def _close_everything(self) -> None:
        for sink in self._started_sinks:
            try:
                sink.close()
            except Exception as e:  # noqa: BLE001
                log.error("output %s did not close cleanly (%s)", _name(sink), e)
        self._started_sinks = []
        if self._source_open:
            self._close_source()
        if self.preview is not None:
            self.preview.close()

    def _close_source(self) -> None:
        try:
            self.source.close()
        except Exception as e:  # noqa: BLE001
            log.warning("closing the source raised %s", e)
        self._source_open = False

    # -- running ------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop reading; what is queued is still enhanced and written (drain)."""
        self._stop.set()

    def abort(self) -> None:
        """Stop draining too (sinks are still closed)."""
        self._stop.set()
        self._abort.set()

    def run(self) -> dict[str, Any]:
        """Run to the end (or :meth:`stop`); returns the final stats snapshot.

        Raises :class:`PipelineError` when every output failed, and re-raises an error that
        stopped a thread (a bug, or a source that cannot be reopened) after closing everything.
        """
        self.prepare()
        handlers = self._install_signals()
        t_start = time.monotonic()
        cfg = self.config
        q_in: LatestSlot | BlockingQueue = LatestSlot() if self.live else BlockingQueue(cfg.file_queue, self._abort)
        self._workers = [_SinkWorker(s, n, self.live, cfg.file_queue, self._abort, self.stats, self._sink_failed)
                         for s, n in zip(self.sinks, _unique_names(self.sinks))]
        self._threads = [
            threading.Thread(target=self._guard(self._capture, q_in), name="hbl-capture", daemon=True),
            threading.Thread(target=self._guard(self._infer, q_in), name="hbl-infer", daemon=True),
        ]
        if self._writer is not None:
            self._writer.start()
        for w in self._workers:
            w.thread.start()
        for t in self._threads:
            t.start()
        try:
            next_tick = time.monotonic()
            while not self._done.wait(0.05):
                now = time.monotonic()
                if cfg.duration_s is not None and now - t_start >= cfg.duration_s:
                    self.stop()
                if self.on_tick is not None and now >= next_tick:
                    next_tick = now + cfg.tick_s
                    self.on_tick(self.stats.snapshot())
        finally:
            self._restore_signals(handlers)
            if self._errors:
                self.abort()
            self._shutdown()
        if self.on_tick is not None:
            self.on_tick(self.stats.snapshot())
        if self._errors:
            raise self._errors[0]
        if self._workers and all(w.dead for w in self._workers) and self.preview is None:
            raise PipelineError("every output failed (see above); nothing left to write to")
        return self.stats.snapshot()

    def _shutdown(self) -> None:
        self._stop.set()
        # Capture returns within about the source's timeout (a read never blocks longer).
        timeout = float(getattr(self.source.options, "timeout_s", 2.0)) + 3.0
        for t in self._threads:
            t.join(timeout=timeout)
            if t.is_alive():
                log.error("thread %s did not stop within %.0f s; closing anyway", t.name, timeout)
                self.abort()
        for w in self._workers:
            w.thread.join(timeout=timeout + 10)
            if w.thread.is_alive():
                log.error("output %s did not finish within %.0f s; leaving it", w.name, timeout + 10)
        if self._source_open:
            self._close_source()
        if self.preview is not None:
            self.preview.close()
        self.stats.state = "ended"
        if self._writer is not None:
            try:
                self._writer.close()
            except OSError as e:
                log.error("--stats-json %s: could not write the final stats (%s)", self._writer.path, e)

    def _guard(self, fn: Callable[..., None], *args: Any) -> Callable[[], None]:
        def run() -> None:
            try:
                fn(*args)
            except BaseException as e:  # noqa: BLE001 - reported by run() in the main thread
                self._errors.append(e)
                self._stop.set()
                self._abort.set()
                self._done.set()

        return run

    def _sink_failed(self, worker: _SinkWorker) -> None:
        if all(w.dead for w in self._workers) and self.preview is None:
            self.stop()

    # -- signals ------------------------------------------------------------------------
    def _install_signals(self) -> dict[int, Any]:
        if not self.config.handle_signals or threading.current_thread() is not threading.main_thread():
            return {}
        old: dict[int, Any] = {}

        def handler(signum: int, _frame: Any) -> None:
            if self._stop.is_set():
                log.warning("second %s: not draining, closing the outputs", signal.Signals(signum).name)
                self.abort()
            else:
                log.warning("%s: finishing the queued frames and closing the outputs (again to skip draining)",
                            signal.Signals(signum).name)
                self.stop()

        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, handler)
        return old

    @staticmethod
    def _restore_signals(old: dict[int, Any]) -> None:
        for sig, h in old.items():
            signal.signal(sig, h)

    # -- capture ------------------------------------------------------------------------
    def _capture(self, q_in: LatestSlot | BlockingQueue) -> None:
        src, cfg, stats = self.source, self.config, self.stats
        attempt = 0
        lost_at: float | None = None if self._source_open else time.monotonic()
        read_count = 0
        last_frame_at: float | None = None
        try:
            while not self._stop.is_set():
                if not self._source_open:
                    if lost_at is not None and (attempt > 0 or stats.frames_in > 0):
                        delay = backoff_delay(attempt, cfg.reconnect_base_s, cfg.reconnect_cap_s, self._rng)
                        if self._stop.wait(delay):
                            break
                    attempt += 1
                    stats.reconnect_attempt()
                    try:
                        src.open()
                        self._source_open = True
                    except SourceLost as e:
                        log.info("source %s still not there (%s); attempt %d", _name(src), e, attempt)
                        continue
                t0 = time.monotonic()
                try:
                    frame = src.read()
                except SourceLost as e:
                    self._lost(e, last_frame_at)
                    lost_at = time.monotonic()
                    continue
                if frame is None:
                    return  # a finite source ended
                t1 = time.monotonic()
                if attempt or stats.waiting_s is not None:
                    gap = stats.gap_ended()
                    if gap is not None:
                        log.warning("source %s is back after %.1f s (reconnect attempts: %d)", _name(src), gap, attempt)
                    attempt = 0
                    lost_at = None
                    if self.temporal is not None:
                        self.temporal.reset()
                elif stats.state != "running":
                    stats.state = "running"
                stats.frame_in((t1 - t0) * 1e3)
                last_frame_at = t1
                if q_in.put(frame):
                    stats.drop()
                read_count += 1
                if not self.live and cfg.max_frames is not None and read_count >= cfg.max_frames:
                    return
        finally:
            q_in.close()

    def _lost(self, e: BaseException, last_frame_at: float | None) -> None:
        first = self.stats.waiting_s is None
        if first and self.stats.frames_in > 0:
            self.stats.gap_started(last_frame_at)
            log.warning("source %s lost (%s); reconnecting with backoff, outputs stay up", _name(self.source), e)
        elif first:
            self.stats.state = "waiting"
        self._close_source()

    # -- inference ----------------------------------------------------------------------
    def _infer(self, q_in: LatestSlot | BlockingQueue) -> None:
        cfg, stats = self.config, self.stats
        batch = 1 if self.live else cfg.batch
        pending: Any = None
        try:
            while True:
                item = pending if pending is not None else q_in.get(0.1)
                pending = None
                if item is None:
                    if self.live and cfg.gap_frames_s is not None:
                        self._gap_frame(cfg.gap_frames_s)
                    continue
                if item is END:
                    return
                if self._abort.is_set():
                    continue
                if cfg.max_frames is not None and stats.frames_out >= cfg.max_frames:
                    self.stop()
                    continue  # discard until END
                frames = [item]
                while len(frames) < batch and isinstance(q_in, BlockingQueue):
                    nxt = q_in.get_nowait()
                    if nxt is None:
                        break
                    if nxt is END or nxt.image.shape != item.image.shape:
                        pending = nxt
                        break
                    frames.append(nxt)
                if cfg.max_frames is not None:
                    frames = frames[: cfg.max_frames - stats.frames_out]
                self._enhance(frames)
                if cfg.max_frames is not None and stats.frames_out >= cfg.max_frames:
                    self.stop()
        finally:
            for w in self._workers:
                if w.dead:
                    w.q.discard()  # nobody reads a failed sink's queue: make room for END
                w.q.close()
            self._done_when_sinks_finish()

    def _done_when_sinks_finish(self) -> None:
        def wait() -> None:
            for w in self._workers:
                w.thread.join()
            self._done.set()

        threading.Thread(target=wait, name="hbl-wait-sinks", daemon=True).start()

    def _gap_frame(self, every_s: float) -> None:
        """During a source gap, a "waiting for source" picture to the streaming sinks (last output's size)."""
        waiting = self.stats.waiting_s
        if waiting is None or self._last_out is None or time.monotonic() - self._last_gap_frame < every_s:
            return
        from .preview import placeholder

        self._last_gap_frame = time.monotonic()
        index, (h, w) = self._last_out
        frame = Frame(placeholder(f"waiting for source … {waiting:.0f} s", w, h), index,
                      meta={"placeholder": True, "t_enhanced": time.monotonic()})
        for wk in self._workers:
            if wk.gap_frames:
                wk.put(frame)

    def _enhance(self, frames: list[Frame]) -> None:
        stats = self.stats
        t0 = time.monotonic()
        before = self.processor.resized
        outs = self.processor.process([f.image for f in frames], temporal=self.temporal)
        t1 = time.monotonic()
        stats.resized += self.processor.resized - before
        per_frame = (t1 - t0) * 1e3 / len(frames)
        for f, out in zip(frames, outs):
            stats.frame_out((t0 - f.t_capture) * 1e3, per_frame)
            enhanced = Frame(out, f.index, f.t_capture, f.pts, {**f.meta, "t_enhanced": t1})
            for w in self._workers:
                w.put(enhanced)
        self._last_out = (frames[-1].index, outs[-1].shape[:2])
        if self.preview is not None:
            self.preview.publish(frames[-1].image, outs[-1])


def _describe(obj: Any) -> dict[str, Any]:
    d = getattr(obj, "describe", None)
    try:
        return dict(d()) if d is not None else {}
    except Exception:  # noqa: BLE001 - a description is informative only
        return {}


# ---------------------------------------------------------------------------------------------
# One call: URIs (or objects) in, final stats out
# ---------------------------------------------------------------------------------------------
_VIDEO_FIELDS = set(VideoOptions.__dataclass_fields__)
_PIPELINE_FIELDS = set(PipelineConfig.__dataclass_fields__)


def build_pipeline(processor: Any, source: Any, *sinks: Any, options: VideoOptions | None = None,
                   preview: str | int | None = None, on_tick: Callable[[dict[str, Any]], None] | None = None,
                   **kwargs: Any) -> Pipeline:
    """A :class:`Pipeline` from URIs or objects (see :func:`run_stream` for the arguments); not prepared yet."""
    from ..errors import ConfigError

    unknown = sorted(set(kwargs) - _VIDEO_FIELDS - _PIPELINE_FIELDS)
    if unknown:
        raise ConfigError(f"unknown stream option(s) {', '.join(unknown)}; use VideoOptions fields "
                          f"({', '.join(sorted(_VIDEO_FIELDS))}) or pipeline ones ({', '.join(sorted(_PIPELINE_FIELDS))})")
    video = {k: v for k, v in kwargs.items() if k in _VIDEO_FIELDS}
    if options is not None and video:
        raise ConfigError("give either options=VideoOptions(...) or its fields as keywords, not both")
    opts = options or VideoOptions(**video)
    config = PipelineConfig(**{k: v for k, v in kwargs.items() if k in _PIPELINE_FIELDS})
    src = open_source(source, opts) if _is_uri(source) else source
    outs = [open_sink(s, opts) if _is_uri(s) else s for s in sinks]
    pv = None
    if preview is not None:
        from .preview import Preview

        pv = Preview(preview)
    return Pipeline(src, outs, processor, config, preview=pv, on_tick=on_tick)


def _is_uri(obj: Any) -> bool:
    return isinstance(obj, (str, Path)) or hasattr(obj, "scheme")


def run_stream(processor: Any, source: Any, *sinks: Any, **kwargs: Any) -> dict[str, Any]:
    """Enhance ``source`` into ``sinks`` with ``processor`` (an Enhancer) and return the final stats.

    ``source`` and ``sinks`` are URIs (``"rtp://@:5600"``, ``"out.mp4"``) or Source/Sink objects
    (e.g. a ROS publisher of your own; sinks not started yet). Keyword options: any
    :class:`VideoOptions` field (``width``, ``codec``, ``loop``, ``bitrate_kbps`` …) or an
    ``options=VideoOptions(...)``, any :class:`PipelineConfig` field (``temporal``,
    ``duration_s``, ``max_frames``, ``stats_json`` …), ``preview="8080"`` and ``on_tick``
    (called with the stats snapshot twice a second).
    """
    return build_pipeline(processor, source, *sinks, **kwargs).run()


__all__ = ["BlockingQueue", "END", "LatestSlot", "Pipeline", "PipelineConfig", "PipelineError", "backoff_delay",
           "build_pipeline", "run_stream"]
