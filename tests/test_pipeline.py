"""The stream pipeline (hbl_edge.runtime.pipeline) with scripted sources and sinks.

Queues (newest-only for live sources, lossless for files), several sinks, slow and failing
sinks, reconnect with backoff and gap accounting, stop/drain (signals, --duration, --frames),
batching, resolution changes and the stats document. Real sockets and codecs: test_drone*.py.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
import time

import numpy as np
import pytest

from hbl_edge.runtime.pipeline import END, LatestSlot, Pipeline, PipelineConfig, PipelineError, backoff_delay
from hbl_edge.runtime.stats import STATS_FORMAT, read_stats
from hbl_edge.runtime.video.base import StreamError

from pipeline_fakes import FakeSink, FakeSource, Gain, pattern


def run(source, sinks, processor=None, **config):
    config.setdefault("handle_signals", False)
    pipe = Pipeline(source, sinks, processor or Gain(), PipelineConfig(**config))
    return pipe, pipe.run()


def doubled(i, w=32, h=24):
    return np.minimum(pattern(i, w, h).astype(np.uint16) * 2, 255).astype(np.uint8)


class TestQueues:
    def test_latest_slot_keeps_the_newest(self):
        q = LatestSlot()
        assert q.put(1) is False
        assert q.put(2) is True  # 1 was never taken: dropped
        assert q.get(0.01) == 2
        assert q.get(0.01) is None
        q.put(3)
        q.close()
        assert q.get(0.01) == 3 and q.get(0.01) is END
        assert q.put(4) is False and q.get(0.01) is END

    def test_backoff_is_capped_and_jittered(self):
        rng = random.Random(1)
        delays = [backoff_delay(a, 0.25, 2.0, rng) for a in range(12)]
        for a, d in enumerate(delays):
            full = min(2.0, 0.25 * 2 ** a)
            assert 0.5 * full <= d <= full
        assert max(delays) <= 2.0 and len(set(delays)) == len(delays)  # jitter: no two alike
        assert delays[0] < 0.25 and delays[-1] > 0.99


class TestFiles:
    def test_every_frame_to_every_sink_in_order(self):
        a, b = FakeSink("a.mp4", keep_images=True), FakeSink("b/")
        src = FakeSource(25)
        pipe, final = run(src, [a, b])
        assert a.indices == list(range(25)) and b.indices == list(range(25))
        for i, img in enumerate(a.images):
            np.testing.assert_array_equal(img, doubled(i))
        assert (a.closed, b.closed, src.closes) == (1, 1, 1)
        f = final["frames"]
        assert (f["in"], f["out"], f["dropped"]) == (25, 25, 0)
        assert final["sinks"]["a.mp4"]["written"] == 25 and final["state"] == "ended"

    def test_slow_sink_drops_nothing_from_a_file(self):
        slow, fast = FakeSink("slow.mp4", delay=0.01), FakeSink("fast.mp4")
        _, final = run(FakeSource(30), [slow, fast], file_queue=2)
        assert slow.indices == list(range(30)) and fast.indices == list(range(30))
        assert final["sinks"]["slow.mp4"]["dropped"] == 0 and final["frames"]["dropped"] == 0

    def test_batches_frames_of_one_size(self):
        proc = Gain(delay=0.01)
        sink = FakeSink(keep_images=True)
        # Size changes at frame 10: a batch never mixes sizes.
        src = FakeSource(22, sizes=lambda i: (32, 24) if i < 10 else (16, 12))
        run(src, [sink], proc, batch=4, file_queue=8)
        assert sum(proc.calls) == 22 and max(proc.calls) <= 4 and max(proc.calls) > 1
        assert sink.indices == list(range(22))
        assert sink.images[9].shape == (24, 32, 3) and sink.images[10].shape == (12, 16, 3)
        np.testing.assert_array_equal(sink.images[15], doubled(15, 16, 12))

    def test_max_frames_is_exact(self):
        sink = FakeSink()
        _, final = run(FakeSource(None), [sink], max_frames=7)
        assert sink.indices == list(range(7)) and final["frames"]["out"] == 7 and sink.closed == 1

    def test_corrupt_frames_are_counted(self):
        _, final = run(FakeSource(20, corrupt_every=5), [FakeSink()])
        assert final["frames"]["corrupt"] == 4  # indices 4, 9, 14, 19 skipped by the source

    def test_stats_json_written_at_exit(self, tmp_path):
        path = tmp_path / "s" / "stats.json"
        run(FakeSource(12), [FakeSink("x.mp4")], stats_json=path, stats_every_s=0.05)
        doc = read_stats(path)
        assert doc["format"] == STATS_FORMAT and doc["state"] == "ended"
        assert doc["frames"] == {"in": 12, "out": 12, "dropped": 0, "corrupt": 0, "resized": 0}
        assert doc["latency_ms"]["infer"]["n"] == 12 and doc["latency_ms"]["glass"]["n"] == 12
        assert doc["sinks"]["x.mp4"]["write_ms"]["n"] == 12
        assert doc["model"] == {"backend": "fake", "model": "gain2", "task": "lowlight"}
        assert doc["gaps"]["count"] == 0 and doc["source"]["live"] is False


class TestLive:
    def test_slow_inference_keeps_only_the_newest(self):
        # Camera at 100 fps, inference 20 ms: about half the frames are dropped, latency stays flat.
        src = FakeSource(80, live=True, fps=100)
        sink = FakeSink()
        _, final = run(src, [sink], Gain(delay=0.02))
        f = final["frames"]
        assert f["in"] == 80 and f["dropped"] > 20
        assert f["out"] + f["dropped"] == f["in"]  # every frame read was either enhanced or counted as dropped
        assert sink.indices == sorted(sink.indices) and len(sink.indices) == f["out"]
        # Queue wait never exceeds about one inference (no backlog builds up).
        assert final["latency_ms"]["queue"]["p99"] < 45

    def test_slow_sink_does_not_hold_back_the_others(self):
        # The camera waits for the fast sink (paced_by): the slow one must drop by itself.
        slow, fast = FakeSink("slow.mp4", delay=0.1), FakeSink("fast.mp4")
        src = FakeSource(60, live=True, fps=40, paced_by=lambda: len(fast.indices))
        _, final = run(src, [slow, fast])
        assert fast.indices == list(range(60))  # the fast one got every frame
        s = final["sinks"]["slow.mp4"]
        assert s["dropped"] > 20 and s["written"] + s["dropped"] <= 60 and s["written"] == len(slow.indices)
        assert slow.indices[-1] == 59  # but always the newest

    def test_failing_sink_is_dropped_others_go_on(self, caplog):
        bad, good = FakeSink("full.mp4", fail_at=3), FakeSink("good.mp4")
        # Each frame once both sinks took the previous one (the failed one no longer counts).
        src = FakeSource(30, live=True, fps=50,
                         paced_by=lambda: min(len(good.indices), 1 << 30 if bad.failed else bad.attempts))
        with caplog.at_level(logging.ERROR, logger="hbl_edge.runtime.pipeline"):
            _, final = run(src, [bad, good])
        assert good.indices == list(range(30)) and bad.indices == [0, 1, 2] and bad.closed == 1
        assert final["sinks"]["good.mp4"]["dropped"] == 0 and final["frames"]["dropped"] == 0
        assert final["sinks"]["full.mp4"]["failed"] == "No space left on device"
        msgs = [r.getMessage() for r in caplog.records if "full.mp4" in r.getMessage()]
        assert msgs == ["output full.mp4 failed and was dropped (No space left on device); the other outputs keep going"]

    def test_every_sink_failing_ends_the_run(self):
        with pytest.raises(PipelineError, match="every output failed"):
            run(FakeSource(None, live=True, fps=50), [FakeSink(fail_at=2)])

    def test_reconnect_counts_the_gap_and_sinks_stay_up(self):
        # Frames for 0.4 s, then the server is gone for 1 s (reopen refused), then back.
        sink, stream = FakeSink(), FakeSink("rtp://127.0.0.1:5601")
        src = FakeSource(None, live=True, fps=50, outages=[(0.4, 1.4)], refuse_open=True, timeout_s=0.2,
                         paced_by=lambda: min(len(sink.indices), len(stream.indices)))
        pipe, final = run(src, [sink, stream], duration_s=2.2, reconnect_base_s=0.05, reconnect_cap_s=0.2,
                          gap_frames_s=0.25)
        g = final["gaps"]
        assert g["count"] == 1 and g["current_s"] is None
        # The gap runs from the last frame before the loss (0.4 s) to the first one after 1.4 s.
        assert 0.9 <= g["total_s"] <= 1.4, g
        assert g["reconnects"] >= 2 and src.opens == g["reconnects"] + 1
        assert sink.closed == 1 and sink.started  # one sink lifetime across the gap
        gaps = np.diff(sink.write_times)
        assert gaps.max() > 0.6 and np.sort(gaps)[-2] < 0.2  # one hole, regular frames around it
        after = len(gaps) - int(np.argmax(gaps))
        assert after >= 25  # frames resumed: ~0.8 s at 50 fps after the source came back
        assert sink.indices == list(range(len(sink.indices)))  # nothing lost outside the outage
        assert len(g["last"]) == 1 and g["last"][0]["duration_s"] == pytest.approx(g["total_s"], abs=1e-3)
        # The stream output showed "waiting for source" (about 4 per second of gap, at the video's size);
        # the file got none.
        assert stream.indices == sink.indices and not sink.placeholders
        assert 2 <= len(stream.placeholders) <= 5 and stream.placeholders[0].shape == (24, 32, 3)
        assert final["sinks"]["rtp://127.0.0.1:5601"]["gap_frames"] == len(stream.placeholders)
        assert final["sinks"]["rtp://127.0.0.1:5601"]["written"] == len(stream.indices)

    def test_live_source_absent_at_start_is_waited_for(self):
        src = FakeSource(None, live=True, fps=50, outages=[(0.0, 0.5)], refuse_open=True, timeout_s=0.2)
        sink = FakeSink()
        pipe = Pipeline(src, [sink], Gain(), PipelineConfig(duration_s=1.2, handle_signals=False, reconnect_base_s=0.05,
                                                           reconnect_cap_s=0.1))
        pipe.prepare()
        assert pipe.stats.state == "waiting"
        final = pipe.run()
        assert final["gaps"]["count"] == 0  # waiting at start is not a gap
        assert len(sink.indices) > 10

    def test_max_frames_live(self):
        sink = FakeSink()
        _, final = run(FakeSource(None, live=True, fps=50), [sink], max_frames=5)
        # Exactly 5 enhanced and written (a live source may drop one while the threads start).
        assert len(sink.indices) == 5 and sink.indices == sorted(sink.indices) and final["frames"]["out"] == 5

    def test_sigint_drains_and_closes(self):
        a, b = FakeSink("a.mp4"), FakeSink("b.mp4")
        src = FakeSource(None, live=True, fps=100, paced_by=lambda: min(len(a.indices), len(b.indices)))
        before = signal.getsignal(signal.SIGINT)
        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
        t0 = time.monotonic()
        final = Pipeline(src, [a, b], Gain(), PipelineConfig()).run()
        assert time.monotonic() - t0 < 3
        assert a.closed == 1 and b.closed == 1 and src.closes >= 1
        assert len(a.indices) == final["frames"]["out"] > 20 and a.indices == b.indices
        assert signal.getsignal(signal.SIGINT) is before


class TestPrepare:
    def test_sink_start_error_closes_what_started(self):
        ok = FakeSink("ok.mp4")
        bad = FakeSink("rtp://127.0.0.1:5601", start_error=StreamError("rtp://127.0.0.1:5601: port in use"))
        src = FakeSource(5)
        pipe = Pipeline(src, [ok, bad], Gain(), PipelineConfig(handle_signals=False))
        with pytest.raises(StreamError, match="port in use"):
            pipe.prepare()
        assert ok.started and ok.closed == 1 and src.closes == 1

    def test_file_source_error_is_a_stream_error(self):
        src = FakeSource(5, open_error=StreamError("clip.mp4: no such file"))
        sink = FakeSink()
        with pytest.raises(StreamError, match="no such file"):
            Pipeline(src, [sink], Gain(), PipelineConfig(handle_signals=False)).prepare()
        assert not sink.started

    def test_unwritable_stats_json(self, tmp_path):
        from hbl_edge.errors import ConfigError

        blocker = tmp_path / "file"
        blocker.write_text("x")
        with pytest.raises(ConfigError, match="--stats-json .*cannot write there"):
            Pipeline(FakeSource(3), [], Gain(), PipelineConfig(stats_json=blocker / "s.json")).prepare()

    @pytest.mark.parametrize("kwargs, message", [
        ({"duration_s": 0}, "--duration must be positive"),
        ({"max_frames": 0}, "--frames must be at least 1"),
    ])
    def test_bad_config(self, kwargs, message):
        from hbl_edge.errors import ConfigError

        with pytest.raises(ConfigError, match=message):
            PipelineConfig(**kwargs)
