"""The deploy path: an ``export/`` folder alone, on a machine without torch.

- ``load_model`` resolution (bundle, its export/, a copied export/, folders with nothing to run),
  backend choice (auto order, torch needs the bundle), ``supports()``, image-level ``enhance``.
- The ``hbl-export/2`` manifest (and reading ``hbl-export/1`` and manifest-less folders).
- ``enhance``, ``bench`` and ``export DIR --engine tensorrt-rtx`` run in a subprocess in which
  torch, torchvision and kornia cannot be imported (``tests/torchless.py``), from a COPY of an
  export/ folder, and their outputs are checked against the ort runner in this process.

The tiny bundle and its export are made once per module (fast: a 4/8-channel, 1-unit network).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hbl_edge.bundle import save_bundle
from hbl_edge.errors import BundleError, ConfigError
from hbl_edge.export import export_onnx
from hbl_edge.export.cache import file_sha256
from hbl_edge.export.manifest import FORMAT, read_manifest
from hbl_edge.genotype import Genotype
from hbl_edge.imageio import load_image
from hbl_edge.network import PAD_MULTIPLE, Network, count_parameters
from hbl_edge.runtime import model as model_mod
from hbl_edge.runtime.model import AUTO_ORDER, LoadedModel, choose_backend, load_model, resolve_model_path
from hbl_edge.runtime.ort_runner import OrtRunner
from hbl_edge.runtime.runners import BackendError

from torchless import run_torchless, tiny_export

TINY = Genotype(encoder=["conv_3x3"] * 9, decoder=["conv_3x3"] * 9, hnu=[["conv_1x1"] * 8], channels=(4, 8), units=1)  # tiny_export's
needs_rtx = pytest.mark.skipif(
    importlib.util.find_spec("tensorrt_rtx") is None,
    reason="tensorrt_rtx is not installed (wheels exist for x86-64 Linux and Windows only; the dev extra installs it there)",
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(bundle, bundle/export, a copy of export/ elsewhere: what a device receives)."""
    return tiny_export(tmp_path_factory.mktemp("deploy"), task="underwater", fp16=True, seed=7)


@pytest.fixture
def device_copy(exported, tmp_path):
    """A fresh copy of the export folder for tests that write into it."""
    return Path(shutil.copytree(exported[2], tmp_path / "copy"))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(3)
    for name, (h, w) in {"a": (21, 30), "b": (9, 13)}.items():
        Image.fromarray((rng.random((h, w, 3)) * 120).astype(np.uint8)).save(folder / f"{name}.png")
    return folder


def one_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


# ---------------------------------------------------------------------------------------------
# Resolution
# ---------------------------------------------------------------------------------------------
class TestResolve:
    def test_bundle_export_and_copy(self, exported):
        bundle, export, device = exported
        s = resolve_model_path(bundle)
        assert (s.export_dir, s.bundle_dir, s.kind) == (export, bundle, "bundle")
        s = resolve_model_path(export)
        assert (s.export_dir, s.bundle_dir, s.kind) == (export, bundle, "export")  # torch can use the parent bundle
        s = resolve_model_path(device)
        assert (s.export_dir, s.bundle_dir, s.kind) == (device, None, "export")
        assert resolve_model_path(device / "export.json").export_dir == device
        assert resolve_model_path(bundle / "model.json").bundle_dir == bundle

    def test_nothing_to_run_is_one_line(self, tmp_path):
        with pytest.raises(BundleError) as e:
            resolve_model_path(tmp_path)
        assert "no model.onnx here or in" in one_line(str(e.value)) and "no model bundle" in str(e.value)
        (tmp_path / "export.json").write_text("{}")
        with pytest.raises(BundleError, match="export.json but no model.onnx here; copy the whole export/ folder"):
            resolve_model_path(tmp_path)
        with pytest.raises(BundleError, match="does not exist"):
            resolve_model_path(tmp_path / "missing")
        (tmp_path / "b").mkdir()
        (tmp_path / "b" / "model.json").write_text("{}")
        with pytest.raises(BundleError, match="model.safetensors is missing"):
            resolve_model_path(tmp_path / "b")

    def test_torch_from_an_export_folder_alone(self, exported):
        with pytest.raises(BackendError) as e:
            load_model(exported[2], "torch")
        msg = one_line(str(e.value))
        assert "backend 'torch' cannot run" in msg and "needs the model bundle (model.json + model.safetensors)" in msg
        assert "backends that can: " in msg and "ort" in msg.rsplit("backends that can: ", 1)[1].split(", ")

    def test_ort_from_a_bundle_without_export(self, tmp_path):
        bundle = save_bundle(tmp_path / "run", Network(TINY).eval(), task="lowlight", loss={"l1": 1.0})
        with pytest.raises(BackendError, match="needs model.onnx and .* has no export/ folder yet"):
            load_model(bundle, "ort")
        assert load_model(bundle, "auto").backend == "torch"  # torch can, from the bundle


class TestAutoOrder:
    def _fake(self, monkeypatch, missing):
        monkeypatch.setattr(model_mod, "unavailable_reason", lambda name: f"not installed: {name}" if name in missing else None)

    def test_first_runnable_in_order(self, monkeypatch, exported):
        bundle, _, device = exported
        assert AUTO_ORDER == ("trt", "trt-rtx", "ort", "torch")
        cases = [((), "trt"), (("trt",), "trt-rtx"), (("trt", "trt-rtx"), "ort"), (("trt", "trt-rtx", "ort"), "torch")]
        for missing, expected in cases:
            self._fake(monkeypatch, missing)
            assert choose_backend(resolve_model_path(bundle)) == expected, missing
        self._fake(monkeypatch, ("trt", "trt-rtx", "ort"))
        with pytest.raises(BackendError) as e:  # an export copy: torch cannot stand in
            choose_backend(resolve_model_path(device))
        msg = one_line(str(e.value))
        assert "no backend can run" in msg and "trt: not installed: trt" in msg and "torch: it needs the model bundle" in msg
        with pytest.raises(ConfigError, match="unknown backend 'cuda'"):
            choose_backend(resolve_model_path(device), "cuda")


# ---------------------------------------------------------------------------------------------
# The manifest
# ---------------------------------------------------------------------------------------------
class TestManifest:
    def test_v2_fields(self, exported):
        bundle, export, _ = exported
        m = read_manifest(export)
        meta = json.loads((bundle / "model.json").read_text())
        assert m.format == FORMAT == "hbl-export/2" and m.task == "underwater"
        assert m.genotype == meta["genotype"] and m.genotype_summary == TINY.summary()
        assert m.parameters == count_parameters(Network(TINY))
        assert m.pad_multiple == PAD_MULTIPLE == 4
        spec = m.input
        assert spec["shape"] == ["batch", 3, "height", "width"] and spec["dtype"] == "float32"
        assert spec["channels"] == "RGB" and spec["range"] == [0.0, 1.0] and spec["min_side"] == 1
        assert spec["dynamic"] == ["batch", "height", "width"]
        for name in ("model.onnx", "model.fp16.onnx"):
            assert m.artifacts[name]["sha256"] == file_sha256(export / name)
        assert m.weights_sha256 == file_sha256(bundle / "model.safetensors")
        assert m.data["parity"]["passed"] and m.data["fp16_parity"]["passed"]
        assert {"onnx", "onnxruntime", "torch", "hbl_edge"} <= set(m.data["versions"])

    def test_reads_v1_and_no_manifest(self, exported, tmp_path):
        _, export, _ = exported
        v2 = json.loads((export / "export.json").read_text())
        v1 = {k: v for k, v in v2.items() if k not in ("task", "genotype", "genotype_summary", "parameters", "weights_sha256")}
        v1["format"] = "hbl-export/1"
        v1["input"] = {k: v for k, v in v2["input"].items() if k not in ("pad_multiple", "dynamic", "padding")}
        old = tmp_path / "v1"
        old.mkdir()
        shutil.copy(export / "model.onnx", old / "model.onnx")
        (old / "export.json").write_text(json.dumps(v1))
        m = read_manifest(old)
        assert m.format == "hbl-export/1" and m.task == "underwater" and m.genotype == v2["genotype"]
        assert m.genotype_summary == TINY.summary()  # from the ONNX metadata, as v1 exports wrote it
        assert m.pad_multiple == 4 and m.weights_sha256 == v2["weights_sha256"]
        (old / "export.json").unlink()
        bare = read_manifest(old)
        assert bare.format == "onnx-metadata" and bare.task == "underwater" and bare.genotype_summary == TINY.summary()
        with load_model(old, "ort") as loaded:  # runs without any manifest
            assert loaded.info["task"] == "underwater" and loaded.info["manifest"] == "onnx-metadata"

    def test_bad_manifests(self, device_copy):
        (device_copy / "export.json").write_text('{"format": "hbl-export/9"}')
        with pytest.raises(BundleError, match=r"unknown export manifest format 'hbl-export/9'.*reads hbl-export/1, hbl-export/2"):
            read_manifest(device_copy)
        (device_copy / "export.json").write_text("{broken")
        with pytest.raises(BundleError, match="malformed JSON at line 1"):
            load_model(device_copy, "ort")

    def test_a_changed_onnx_is_refused(self, device_copy):
        data = bytearray((device_copy / "model.onnx").read_bytes())
        data[-1] ^= 0xFF
        (device_copy / "model.onnx").write_bytes(bytes(data))
        with pytest.raises(BundleError) as e:
            load_model(device_copy, "ort")
        assert "differs from" in one_line(str(e.value)) and "copy the export/ folder again" in str(e.value)

    def test_stale_export_is_reported(self, tmp_path, caplog):
        bundle = save_bundle(tmp_path / "run", Network(TINY).eval(), task="lowlight", loss={"l1": 1.0})
        export_onnx(bundle, bundle / "export", images=[("r", np.zeros((1, 3, 4, 4), np.float32))])
        torch.manual_seed(99)
        save_bundle(bundle, Network(TINY).eval(), task="lowlight", loss={"l1": 1.0})  # retrained: new weights
        with load_model(bundle, "ort"):
            pass
        assert "was exported from other weights" in caplog.text


# ---------------------------------------------------------------------------------------------
# LoadedModel: supports(), enhance(), batches, close
# ---------------------------------------------------------------------------------------------
class FakeEngineRunner:
    """A runner with TensorRT-style profiles: out = 1 − x; records the shapes it was given."""

    name = "trt"

    def __init__(self, profiles):
        self.profiles = profiles
        self.shapes: list[tuple[int, ...]] = []
        self.closed = 0

    def run(self, batch):
        x = np.asarray(batch, np.float32)
        self.shapes.append(x.shape)
        assert any(all(a <= s <= b for a, s, b in zip(lo, x.shape, hi)) for lo, _, hi in self.profiles), x.shape
        return 1.0 - x

    def close(self):
        self.closed += 1


PROFILES = [((1, 3, 1, 1), (1, 3, 32, 48), (2, 3, 40, 60))]


class TestLoadedModel:
    def test_supports_and_max_size(self, exported):
        m = LoadedModel(FakeEngineRunner(PROFILES), "trt", {})
        assert m.supports(60, 40) and m.supports(1, 1) and m.supports(60, 40, batch=2)
        assert not m.supports(61, 40) and not m.supports(60, 41) and not m.supports(10, 10, batch=3)
        assert not m.supports(0, 5) and m.max_size() == (60, 40)
        with load_model(exported[2], "ort") as ort:
            assert ort.profiles is None and ort.supports(4000, 3000) and ort.max_size() is None

    def test_enhance_tiles_beyond_the_profiles_and_keeps_the_dtype(self):
        runner = FakeEngineRunner(PROFILES)
        m = LoadedModel(runner, "trt", {})
        img = (np.random.default_rng(0).random((100, 150, 3)) * 255).astype(np.uint8)
        out = m.enhance(img)
        assert out.dtype == np.uint8 and out.shape == img.shape
        assert np.array_equal(out, 255 - img)  # 1 − x per pixel: tiling with feathered overlaps is exact
        assert len(runner.shapes) > 1 and all(s[2] <= 40 and s[3] <= 40 for s in runner.shapes)  # square tiles ≤ 40
        runner.shapes.clear()
        small = np.random.default_rng(1).random((30, 50, 3))  # float64, inside the profile: one call
        got = m.enhance(small)
        assert got.dtype == np.float64 and runner.shapes == [(1, 3, 30, 50)]
        np.testing.assert_allclose(got, 1.0 - small, atol=1e-6)
        with pytest.raises(ValueError, match=r"expected an H×W×3 RGB image, got shape \(4, 4\)"):
            m.enhance(np.zeros((4, 4)))

    def test_batches_above_the_engine_max_are_split(self):
        runner = FakeEngineRunner(PROFILES)
        m = LoadedModel(runner, "trt", {})
        x = np.random.default_rng(0).random((5, 3, 8, 8), dtype=np.float32)
        np.testing.assert_allclose(m.run(x), 1.0 - x)
        assert [s[0] for s in runner.shapes] == [2, 2, 1]

    def test_close_is_idempotent_and_a_context_manager(self):
        runner = FakeEngineRunner(PROFILES)
        with LoadedModel(runner, "trt", {}) as m:
            pass
        m.close()
        assert runner.closed == 1 and m.closed

    def test_ort_enhance_matches_the_runner(self, exported):
        _, _, device = exported
        img = np.random.default_rng(5).random((17, 26, 3)).astype(np.float32)
        with load_model(device, "ort", threads=1) as m:
            assert m.info["task"] == "underwater" and m.info["backend"] == "ort"
            assert m.info["model"] == str(device / "model.onnx") and m.info["genotype"] == TINY.summary()
            expected = OrtRunner(device / "model.onnx", threads=1).run(img.transpose(2, 0, 1)[None].copy())[0]
            np.testing.assert_allclose(m.enhance(img), expected.transpose(1, 2, 0), atol=1e-6)
        with load_model(device, "ort", fp16=True) as half:
            assert half.info["model"].endswith("model.fp16.onnx") and half.info["precision"] == "fp16"

    def test_fp16_without_the_fp16_onnx(self, device_copy):
        (device_copy / "model.fp16.onnx").unlink()
        with pytest.raises(BackendError) as e:
            load_model(device_copy, "ort", fp16=True)
        assert "has no model.fp16.onnx (it was exported without --fp16)" in one_line(str(e.value))


@needs_rtx
def test_trt_rtx_through_load_model_builds_into_a_read_only_folders_cache(exported, tmp_path, monkeypatch):
    """Everything but the final runner is real: engine built (TensorRT-RTX on the CPU), cache keyed,
    runtime-cache path chosen; the runner itself needs pycuda + a GPU and is faked."""
    from hbl_edge.export import engines

    folder = Path(shutil.copytree(exported[2], tmp_path / "ro"))
    monkeypatch.setattr(engines, "is_writable", lambda f: False)
    monkeypatch.setenv("HBL_EDGE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(model_mod, "unavailable_reason", lambda name: None)
    made = {}

    def fake_create_runner(backend, artifact, **options):
        made.update(backend=backend, artifact=Path(artifact), **options)
        return FakeEngineRunner([((1, 3, 1, 1), (1, 3, 32, 32), (1, 3, 64, 64))])

    monkeypatch.setattr(model_mod, "create_runner", fake_create_runner)
    with load_model(folder, "trt-rtx", shapes=["min=1x1,opt=32x32,max=64x64"], workspace_mb=64) as m:
        assert m.backend == "trt-rtx" and m.info["engine_built"] is True
    engine = made["artifact"]
    assert made["backend"] == "trt-rtx" and engine.parent.parent == tmp_path / "cache" / "engines"
    assert engine.is_file() and json.loads(engine.with_suffix(".json").read_text())["key_ingredients"]["library"] == "tensorrt-rtx"
    rc = made["runtime_cache"]
    assert rc.parent == engine.parent and rc.name.startswith(engine.stem + ".runtime.") and rc.suffix == ".cache"
    assert not list(folder.glob("*.engine"))  # nothing written into the read-only folder


# ---------------------------------------------------------------------------------------------
# The commands, with torch unimportable, from a copy of export/ only
# ---------------------------------------------------------------------------------------------
def test_runtime_and_cli_import_no_torch_and_no_training_side():
    code = (
        "import sys\n"
        "import hbl_edge.cli, hbl_edge.enhance, hbl_edge.runtime.model, hbl_edge.runtime.benchmark\n"
        "import hbl_edge.runtime.runners, hbl_edge.runtime.ort_runner, hbl_edge.runtime.trt_runner, hbl_edge.runtime.tiling\n"
        "import hbl_edge.export.engines, hbl_edge.export.cache, hbl_edge.export.manifest, hbl_edge.export.pipeline\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'kornia', 'safetensors', 'matplotlib', 'skimage')\n"
        "             or m in ('hbl_edge.network', 'hbl_edge.bundle', 'hbl_edge.data', 'hbl_edge.metrics', 'hbl_edge.evaluate'))\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


class TestTorchless:
    def test_the_blocker_blocks(self, tmp_path):
        proc = run_torchless(["python", "-c", "import kornia"], tmp_path / "blk")
        assert proc.returncode == 1 and "blocked by tests/torchless.py" in proc.stderr

    def test_enhance_from_a_copy(self, exported, photos, tmp_path):
        _, _, device = exported
        out = tmp_path / "out"
        proc = run_torchless(["enhance", str(photos), "--model", str(device), "--out", str(out), "--threads", "1"],
                             tmp_path / "blk")
        assert proc.returncode == 0, proc.stderr + proc.stdout
        assert "wrote 2 image(s)" in proc.stdout and "with ort" in proc.stdout
        runner = OrtRunner(device / "model.onnx", threads=1)
        for name in ("a", "b"):
            got = np.asarray(Image.open(out / f"{name}.png"), dtype=np.int16)
            img = load_image(photos / f"{name}.png")
            ref = np.round(runner.run(img.transpose(2, 0, 1)[None].copy())[0].transpose(1, 2, 0) * 255).astype(np.int16)
            assert got.shape == img.shape and np.abs(got - ref).max() <= 1
            assert np.abs(got - np.round(img * 255)).mean() > 2  # the model did something

    def test_enhance_errors_are_one_line_and_name_what_works(self, exported, tmp_path):
        _, _, device = exported
        junk = tmp_path / "junk"
        junk.mkdir()
        (junk / "x.png").write_bytes(b"nope")
        (junk / "y.png").write_bytes(b"")
        proc = run_torchless(["enhance", str(junk), "--model", str(device), "--out", str(tmp_path / "o")], tmp_path / "blk")
        assert proc.returncode == 2
        assert "none of the 2 input image(s) could be read, nothing was written" in one_line(proc.stderr)
        assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
        proc = run_torchless(["enhance", str(junk), "--model", str(device), "--backend", "torch"], tmp_path / "blk")
        line = one_line(proc.stderr)
        assert proc.returncode == 2 and "backend 'torch' cannot run" in line and "backends that can: ort" in line
        assert "Traceback" not in proc.stderr

    def test_bench_from_a_copy(self, exported, tmp_path):
        _, _, device = exported
        report = tmp_path / "bench.json"
        proc = run_torchless(["bench", str(device), "--backend", "ort,torch", "--resolution", "24x16", "--iters", "3",
                              "--warmup", "1", "--threads", "1", "--json", str(report)], tmp_path / "blk")
        assert proc.returncode == 0, proc.stderr + proc.stdout
        data = json.loads(report.read_text())
        rows = {r["backend"]: r for r in data["rows"]}
        assert rows["ort"]["status"] == "ok" and rows["ort"]["stats"]["calls"] == 3
        assert rows["ort"]["detail"]["model"] == str(device / "model.onnx")
        assert rows["torch"]["status"] == "unavailable" and "torch" in rows["torch"]["reason"]
        assert data["settings"]["resolution"] == [24, 16] and data["settings"]["backends"] == ["ort", "torch"]

    def test_export_without_engine_is_one_line(self, exported, tmp_path):
        proc = run_torchless(["export", str(exported[2])], tmp_path / "blk")
        assert proc.returncode == 2 and "is an export folder (already exported); add --engine" in one_line(proc.stderr)

    @needs_rtx
    def test_export_engine_from_a_copy(self, device_copy, tmp_path):
        args = ["export", str(device_copy), "--engine", "tensorrt-rtx", "--shapes", "min=1x1,opt=24x16,max=48x32",
                "--workspace-mb", "64"]
        proc = run_torchless(args, tmp_path / "blk")
        assert proc.returncode == 0, proc.stderr + proc.stdout
        engines = sorted(device_copy.glob("model.tensorrt-rtx.*.engine"))
        assert len(engines) == 1 and engines[0].stat().st_size > 1000 and "built" in proc.stdout
        side = json.loads(engines[0].with_suffix(".json").read_text())
        assert side["key_ingredients"]["onnx_sha256"] == file_sha256(device_copy / "model.onnx")
        assert side["key_ingredients"]["profiles"] == ["min=1x1,opt=24x16,max=48x32"]
        record = read_manifest(device_copy).engines
        assert [e["path"] for e in record] == [engines[0].name] and record[0]["kind"] == "tensorrt-rtx"
        proc = run_torchless(args, tmp_path / "blk")  # the same request again: the cache answers
        assert proc.returncode == 0 and "cached" in proc.stdout, proc.stderr + proc.stdout
        assert sorted(device_copy.glob("model.tensorrt-rtx.*.engine")) == engines
