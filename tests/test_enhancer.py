"""hbl_edge.Enhancer: frames in and out, BGR, sizes the model cannot run, the lazy export, streams."""

from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import pytest
import torch

from hbl_edge.bundle import save_bundle
from hbl_edge.errors import ConfigError
from hbl_edge.export import export_onnx
from hbl_edge.export.onnx_export import parity_images
from hbl_edge.genotype import Genotype
from hbl_edge.network import Network
from hbl_edge.runtime.enhancer import Enhancer, PassThrough, to_chw, to_hwc_uint8
from hbl_edge.runtime.model import LoadedModel
from hbl_edge.runtime.temporal import TemporalFilter

from pipeline_fakes import FakeSink, FakeSource, pattern

TINY = Genotype(
    encoder=["conv_3x3"] * 9, decoder=["conv_3x3"] * 9,
    hnu=[["conv_3x3", "skip_connect", "resconv_3x3", "denseblocks_1x1"] * 2], channels=(4, 8), units=1,
)


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("enhancer")
    torch.manual_seed(0)
    bundle = save_bundle(root / "run", Network(TINY).eval(), task="lowlight", loss={"l1": 1.0})
    export_onnx(bundle, root / "run" / "export", images=parity_images(0, [(1, 5, 7)]))
    return root / "run" / "export"


@pytest.fixture(scope="module")
def enhancer(export_dir):
    with Enhancer(export_dir, backend="ort", threads=1) as e:
        yield e


def frame(h=24, w=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


class TestConversions:
    def test_round_trip(self):
        imgs = [frame(5, 7, s) for s in range(3)]
        x = to_chw(imgs)
        assert x.shape == (3, 3, 5, 7) and x.dtype == np.float32
        assert x[1, 2, 3, 4] == pytest.approx(imgs[1][3, 4, 2] / 255)
        back = to_hwc_uint8(x)
        for a, b in zip(imgs, back):
            np.testing.assert_array_equal(a, b)

    def test_rounds_and_clips(self):
        y = np.array([-0.1, 0.0, 0.5 / 255, 0.4 / 255, 1.0, 1.7], np.float32).reshape(1, 1, 1, 6).repeat(3, axis=1)
        np.testing.assert_array_equal(to_hwc_uint8(y)[0][0, :, 0], [0, 0, 1, 0, 255, 255])


class TestEnhance:
    def test_equals_the_runner_on_the_same_input(self, enhancer):
        img = frame()
        out = enhancer.enhance(img)
        assert out.shape == img.shape and out.dtype == np.uint8
        ref = enhancer.model.runner.run(img.transpose(2, 0, 1)[None].astype(np.float32) / 255)[0]
        expected = np.clip(np.rint(ref.transpose(1, 2, 0) * 255), 0, 255)
        assert np.abs(out.astype(int) - expected).max() <= 1  # rounding at .5 only
        assert not np.array_equal(out, img)

    def test_bgr(self, enhancer):
        rgb = frame(seed=3)
        out_bgr = enhancer.enhance(np.ascontiguousarray(rgb[:, :, ::-1]), bgr=True)
        np.testing.assert_array_equal(out_bgr, enhancer.enhance(rgb)[:, :, ::-1])

    @pytest.mark.parametrize("bad, message", [
        (np.zeros((8, 8), np.uint8), r"H×W×3 uint8 image, got shape \(8, 8\) uint8"),
        (np.zeros((8, 8, 3), np.float32), "got shape .* float32"),
        (np.zeros((8, 8, 4), np.uint8), r"\(8, 8, 4\)"),
    ])
    def test_bad_frames(self, enhancer, bad, message):
        with pytest.raises(ConfigError, match=message):
            enhancer.enhance(bad)

    def test_info(self, enhancer, export_dir):
        assert enhancer.backend == "ort" and enhancer.info["task"] == "lowlight"
        assert enhancer.describe()["model"].endswith("model.onnx")

    def test_missing_onnx_is_a_one_line_error(self, tmp_path):
        from hbl_edge.errors import BundleError

        with pytest.raises(BundleError, match="no model.onnx here"):
            Enhancer(tmp_path)


class _Limited:
    """A runner that records input sizes; the model supports only up to 32×24 (an engine profile)."""

    name = "limited"

    def __init__(self):
        self.shapes = []

    def run(self, batch):
        self.shapes.append(batch.shape)
        return np.clip(batch * 2, 0, 1)

    def close(self):
        pass


class TestSupportedSizes:
    def make(self):
        runner = _Limited()
        model = LoadedModel(runner, "trt", {"task": "lowlight", "backend": "trt", "model": "x.engine"})
        model.supports = lambda w, h: w <= 32 and h <= 24  # type: ignore[attr-defined]
        return Enhancer(model), runner

    def test_inside_runs_as_is(self):
        enh, runner = self.make()
        enh.enhance(frame(24, 32))
        assert runner.shapes == [(1, 3, 24, 32)] and enh.resized == 0

    def test_outside_is_resized_with_one_warning(self, caplog):
        enh, runner = self.make()
        img = np.full((48, 64, 3), 60, np.uint8)
        with caplog.at_level(logging.WARNING, logger="hbl_edge.runtime.enhancer"):
            out1 = enh.enhance(img)
            out2 = enh.enhance(img)
        assert runner.shapes == [(1, 3, 24, 32)] * 2  # half size: the first scale the model runs
        assert out1.shape == (48, 64, 3) and np.all(out1 == 120) and np.array_equal(out1, out2)
        warnings = [r.getMessage() for r in caplog.records]
        assert warnings == ["frames of 64x48 are outside the model's supported sizes; resizing them to 32x24 for "
                            "the model (output scaled back)"]
        assert enh.resized == 2

    def test_nothing_fits(self):
        from hbl_edge.runtime.runners import BackendError

        enh, _ = self.make()
        enh._supports = lambda w, h: False
        with pytest.raises(BackendError, match="runs none of 64x48"):
            enh.enhance(frame(48, 64))


class _Engine(_Limited):
    """A runner with an engine's optimisation profiles (what TrtRunner exposes), N×3×H×W."""

    def __init__(self, profiles):
        super().__init__()
        self.profiles = profiles

    def run(self, batch):
        n, _, h, w = batch.shape
        assert any(all(a <= s <= b for a, s, b in zip(lo, batch.shape, hi)) for lo, _, hi in self.profiles), batch.shape
        return super().run(batch)


class TestEngineProfiles:
    """LoadedModel.supports()/max_size() from an engine's profiles, through the Enhancer and the pipeline."""

    PROFILES = [((1, 3, 16, 16), (1, 3, 240, 320), (1, 3, 180, 320))]  # 16×16 … 320×180

    def make(self):
        runner = _Engine(self.PROFILES)
        model = LoadedModel(runner, "trt", {"task": "lowlight", "backend": "trt", "model": "x.engine"})
        assert model.max_size() == (320, 180) and model.supports(320, 180) and not model.supports(321, 180)
        return Enhancer(model), runner

    def test_resolution_changes_mid_stream(self, caplog):
        from hbl_edge.runtime.pipeline import Pipeline, PipelineConfig

        sizes = {0: (160, 90), 1: (640, 360), 2: (1000, 600), 3: (8, 8), 4: (320, 180)}
        src = FakeSource(10, sizes=lambda i: sizes[i // 2])
        sink = FakeSink(keep_images=True)
        enh, runner = self.make()
        with caplog.at_level(logging.WARNING, logger="hbl_edge.runtime.enhancer"):
            final = Pipeline(src, [sink], enh, PipelineConfig(handle_signals=False)).run()
        # Inside the profile as they are; beyond its max, the largest of the same aspect ratio that
        # fits (640×360 → 320×180, 1000×600 → 300×180); below its min, 2× (8×8 → 16×16).
        ran = [(s[3], s[2]) for s in runner.shapes]
        assert ran == [(160, 90)] * 2 + [(320, 180)] * 2 + [(300, 180)] * 2 + [(16, 16)] * 2 + [(320, 180)] * 2
        # Raw and enhanced keep lining up: every output has its input's size.
        assert [im.shape[1::-1] for im in sink.images] == [sizes[i // 2] for i in range(10)]
        assert final["frames"]["resized"] == 6 and final["frames"]["out"] == 10
        assert len([r for r in caplog.records if "outside the model's supported sizes" in r.getMessage()]) == 3


def test_load_model_is_the_one_place_backend_names_are_checked(export_dir, monkeypatch):
    import hbl_edge.runtime.model as model_mod

    calls = []
    real = model_mod.load_model

    def spy(path, backend="auto", **kw):
        calls.append(backend)
        return real(path, backend, **kw)

    monkeypatch.setattr(model_mod, "load_model", spy)
    with pytest.raises(ConfigError, match="unknown backend 'tensorflow'; choose from auto, trt, trt-rtx, ort, torch"):
        Enhancer(export_dir, backend="tensorflow")
    assert calls == ["tensorflow"]


def test_allow_spinning_reaches_the_onnxruntime_session(export_dir):
    key = "session.intra_op.allow_spinning"
    for value, entry in ((False, "0"), (True, "1")):
        with Enhancer(export_dir, backend="ort", threads=2, allow_spinning=value) as enh:
            assert enh.model.runner.session.get_session_options().get_session_config_entry(key) == entry
            assert enh.describe()["allow_spinning"] is value
    with Enhancer(export_dir, backend="ort", threads=2) as enh:  # None: onnxruntime's own default, not set
        with pytest.raises(Exception, match="does not have configuration with key"):
            enh.model.runner.session.get_session_options().get_session_config_entry(key)


def test_close_closes_the_model_it_loaded_only(export_dir, monkeypatch):
    closed = []
    with Enhancer(export_dir, backend="ort", threads=1) as enh:
        monkeypatch.setattr(enh.model.runner, "close", lambda: closed.append("owned"))
    assert closed == ["owned"] and enh.model.closed  # LoadedModel.close (saves an RTX runtime cache)
    loaded = LoadedModel(_Limited(), "trt", {"model": "x"})
    Enhancer(loaded).close()
    assert not loaded.closed  # the caller's


class TestTemporalInProcess:
    def test_static_frames_are_averaged(self):
        enh = Enhancer(LoadedModel(_Limited(), "x", {"task": None, "backend": "x", "model": None}))
        rng = np.random.default_rng(0)
        base = np.full((24, 32, 3), 60.0)
        frames = [np.clip(base + rng.normal(0, 4, base.shape), 0, 255).astype(np.uint8) for _ in range(12)]
        filt = TemporalFilter()
        plain = [enh.process([f])[0] for f in frames]
        smooth = [enh.process([f], temporal=filt)[0] for f in frames]
        np.testing.assert_array_equal(smooth[0], plain[0])  # the first frame passes through
        d_plain = np.abs(np.diff(np.asarray(plain, float), axis=0)).mean()
        d_smooth = np.abs(np.diff(np.asarray(smooth[4:], float), axis=0)).mean()
        assert d_smooth < 0.5 * d_plain


def test_stream_with_objects(enhancer):
    sink = FakeSink(keep_images=True)
    final = enhancer.stream(FakeSource(6), sink, handle_signals=False)
    assert final["frames"]["out"] == 6 and final["model"]["backend"] == "ort"
    for i in (0, 5):
        np.testing.assert_array_equal(sink.images[i], enhancer.enhance(pattern(i)))


def test_stream_rejects_unknown_options(enhancer):
    with pytest.raises(ConfigError, match="unknown stream option\\(s\\) colour"):
        enhancer.stream(FakeSource(2), colour="red")


def test_pass_through():
    img = frame()
    assert PassThrough().process([img])[0] is not None and np.array_equal(PassThrough().process([img])[0], img)


def test_import_is_light_and_lazy():
    code = (
        "import sys, hbl_edge\n"
        "heavy = [m for m in ('torch', 'onnxruntime', 'numpy', 'PIL') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "E = hbl_edge.Enhancer\n"
        "assert E.__module__ == 'hbl_edge.runtime.enhancer'\n"
        "assert 'torch' not in sys.modules\n"
        "assert 'Enhancer' in dir(hbl_edge)\n"
        "try:\n    hbl_edge.Nope\nexcept AttributeError as e:\n    assert 'Nope' in str(e)\nelse:\n    raise SystemExit('no error')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_gstreamer_then_cpp_exceptions_do_not_abort(tmp_path):
    """hbl_edge keeps libgcc_s's unwinder first: GStreamer's libunwind must not turn a C++
    exception (torch's ONNX tracer throws and catches one) into an abort of the process."""
    pytest.importorskip("gi")
    code = (
        "import hbl_edge\n"
        "import gi\n"
        "gi.require_version('Gst', '1.0')\n"
        "from gi.repository import Gst\n"
        "Gst.init(None)\n"
        "Gst.ElementFactory.find('x264enc')\n"
        "import torch\n"
        f"torch.onnx.export(torch.nn.Conv2d(3, 3, 3), (torch.zeros(1, 3, 8, 8),), {str(tmp_path / 'c.onnx')!r}, dynamo=False)\n"
        "print('exported')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "exported" in proc.stdout, proc.stderr[-2000:]


def test_ros2_example_conversions(enhancer):
    """examples/ros2_enhance_node.py without ROS: its Image ↔ array helpers with stand-in messages."""
    import importlib.util
    from pathlib import Path
    from types import SimpleNamespace

    path = Path(__file__).resolve().parents[1] / "examples" / "ros2_enhance_node.py"
    spec = importlib.util.spec_from_file_location("ros2_enhance_node", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # imports no rclpy at module level
    rgb = frame(6, 5, seed=7)
    padded = np.zeros((6, 5 * 3 + 3), np.uint8)  # rows padded to a step of 18 bytes
    padded[:, :15] = rgb[:, :, ::-1].reshape(6, 15)
    msg = SimpleNamespace(header="hdr", height=6, width=5, step=18, encoding="bgr8", data=padded.tobytes())
    img, bgr = mod.image_to_array(msg)
    assert bgr and np.array_equal(img[:, :, ::-1], rgb)
    out = mod.array_to_image(enhancer.enhance(img, bgr=True), msg, SimpleNamespace)
    assert (out.header, out.height, out.width, out.step, out.encoding) == ("hdr", 6, 5, 15, "bgr8")
    back = np.frombuffer(out.data, np.uint8).reshape(6, 5, 3)
    np.testing.assert_array_equal(back[:, :, ::-1], enhancer.enhance(rgb))
    with pytest.raises(ValueError, match="mono8"):
        mod.image_to_array(SimpleNamespace(encoding="mono8"))
