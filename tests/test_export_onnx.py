"""ONNX export (hbl_edge.export.onnx_export): graph contract, parity, FP16, export.json."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from hbl_edge.bundle import save_bundle
from hbl_edge.export import ExportError, export_onnx, parity_images
from hbl_edge.export.cache import file_sha256
from hbl_edge.export.onnx_export import (
    DEFAULT_OPSET,
    EXPORTER,
    FP16_NAME,
    FP32_TOLERANCE,
    META_NAME,
    ONNX_NAME,
    ExportGraph,
)
from hbl_edge.genotype import NAMED_GENOTYPES, Genotype
from hbl_edge.network import Network, fold_batchnorm, iter_batchnorms
from hbl_edge.runtime.ort_runner import OrtRunner

_S = "skip_connect"
# Every HNU op kind that folding rewrites (conv, identity, residual conv, dense block) appears.
TINY = Genotype(
    encoder=["conv_3x3", "conv_1x1", "dilconv_3x3", "conv_3x3", "conv_5x5", "conv_3x3", "conv_1x1", "conv_3x3", "conv_3x3"],
    decoder=["conv_3x3"] * 8 + ["conv_1x1"],
    hnu=[["conv_3x3", _S, "resconv_3x3", "denseblocks_1x1", "resdilconv_3x3", "dilconv_3x3", _S, "conv_1x1"]],
    channels=(4, 8),
    units=1,
)
# Small parity set: odd sides, sides below the padding multiple, a batch, a 1×1 image.
SMALL = [(1, 1, 1), (1, 2, 3), (2, 9, 14), (1, 21, 17)]


def make_net(genotype: Genotype = TINY, seed: int = 0) -> Network:
    """A network with non-trivial BatchNorm statistics, so folding is actually exercised."""
    torch.manual_seed(seed)
    net = Network(genotype)
    with torch.no_grad():
        for bn in iter_batchnorms(net):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 2.0)
    return net.eval()


@pytest.fixture(scope="module")
def tiny():
    return make_net()


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    return export_onnx(tiny, out, fp16=True, images=parity_images(0, SMALL))


def reference(net: Network, batch: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(batch)).clamp(0, 1).numpy()


class TestGraph:
    def test_files_and_checker(self, exported):
        files = sorted(p.name for p in exported.out_dir.iterdir())
        assert files == sorted([ONNX_NAME, FP16_NAME, META_NAME])  # single self-contained files
        for path in (exported.onnx_path, exported.fp16_path):
            model = onnx.load(str(path))
            onnx.checker.check_model(model, full_check=True)
            assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)

    def test_io_names_and_dynamic_dims(self, exported):
        model = onnx.load(str(exported.onnx_path))
        assert model.opset_import[0].version == DEFAULT_OPSET
        (inp,), (out,) = model.graph.input, model.graph.output
        assert (inp.name, out.name) == ("image", "enhanced")
        for value in (inp, out):
            assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
            dims = value.type.tensor_type.shape.dim
            assert [d.dim_param for d in dims] == ["batch", "", "height", "width"]
            assert dims[1].dim_value == 3

    def test_batchnorm_folded_and_clamp_in_graph(self, exported):
        ops = [n.op_type for n in onnx.load(str(exported.onnx_path)).graph.node]
        assert "BatchNormalization" not in ops
        assert ops[-1] == "Clip"  # the output is clamped to [0, 1] inside the graph

    def test_export_graph_equals_network_eagerly(self, tiny):
        # Sizes where pad_to_multiple reflects, replicates (a side ≤ its pad) or does nothing.
        graph = ExportGraph(fold_batchnorm(tiny)).eval()
        for shape in [(1, 3, 1, 1), (1, 3, 2, 7), (1, 3, 7, 2), (1, 3, 6, 9), (2, 3, 8, 12), (1, 3, 3, 3)]:
            x = torch.rand(shape)
            with torch.no_grad():
                assert torch.allclose(graph(x), tiny(x).clamp(0, 1), atol=1e-5), shape


class TestParity:
    def test_recorded_parity_passes(self, exported):
        assert exported.parity.passed and exported.parity.max_abs <= FP32_TOLERANCE
        assert exported.fp16_parity.passed
        assert len(exported.parity.cases) == len(SMALL) + 2  # + two photo-like scenes

    @pytest.mark.parametrize("shape", [(1, 3, 1, 1), (1, 3, 5, 3), (3, 3, 13, 10), (1, 3, 31, 45)])
    def test_ort_matches_pytorch_any_size(self, exported, tiny, shape):
        x = np.random.default_rng(1).random(shape, dtype=np.float32)
        got = OrtRunner(exported.onnx_path, threads=1).run(x)
        assert got.shape == shape
        assert np.abs(got - reference(tiny, x)).max() < FP32_TOLERANCE
        assert got.min() >= 0.0 and got.max() <= 1.0

    def test_parity_failure_raises_and_is_recorded(self, tiny, tmp_path, monkeypatch):
        from hbl_edge.export import onnx_export

        original = onnx_export.torch_reference
        monkeypatch.setattr(onnx_export, "torch_reference", lambda m: (lambda b: original(m)(b) + 0.01))
        with pytest.raises(ExportError, match="parity check failed.*do not deploy"):
            export_onnx(tiny, tmp_path, images=parity_images(0, [(1, 5, 6)]))
        meta = json.loads((tmp_path / META_NAME).read_text())
        assert meta["parity"]["passed"] is False and meta["parity"]["max_abs"] == pytest.approx(0.01, abs=1e-4)


class TestFp16:
    def test_fp16_types(self, exported):
        model = onnx.load(str(exported.fp16_path))
        assert {t.data_type for t in model.graph.initializer if t.data_type in (1, 10)} == {onnx.TensorProto.FLOAT16}
        assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT

    def test_fp16_close_to_fp32(self, exported):
        x = np.random.default_rng(2).random((1, 3, 19, 23), dtype=np.float32)
        a = OrtRunner(exported.onnx_path, threads=1).run(x)
        b = OrtRunner(exported.fp16_path, threads=1).run(x)
        assert b.dtype == np.float32 and np.abs(a - b).max() < 2e-2


class TestMetadata:
    def test_export_json(self, exported):
        meta = json.loads(exported.meta_path.read_text())
        assert meta["format"] == "hbl-export/2"
        assert meta["genotype"] == TINY.to_dict() and meta["genotype_summary"] == TINY.summary()
        assert meta["input"]["pad_multiple"] == 4 and meta["task"] is None  # a bare Network: no task
        assert meta["opset"] == DEFAULT_OPSET and meta["exporter"] == EXPORTER
        assert meta["artifacts"][ONNX_NAME]["sha256"] == file_sha256(exported.onnx_path) == exported.sha256
        assert meta["artifacts"][FP16_NAME]["sha256"] == file_sha256(exported.fp16_path)
        assert meta["parity"]["passed"] and meta["fp16_parity"]["passed"]
        assert {"torch", "onnx", "onnxruntime", "hbl_edge"} <= set(meta["versions"])
        assert meta["input"]["min_side"] == 1

    def test_bad_opset(self, tiny, tmp_path):
        with pytest.raises(ExportError, match="opset 9 is not supported"):
            export_onnx(tiny, tmp_path, opset=9)


def test_bundle_export_paper_genotype(tmp_path):
    """The paper's LOL genotype (7 HNUs, every op kind), from a saved bundle, at small sizes."""
    net = make_net(NAMED_GENOTYPES["hbl-lol-2022"], seed=3)
    bundle = save_bundle(tmp_path / "run", net, task="lowlight", loss={"l1": 1.0})
    result = export_onnx(bundle, tmp_path / "export", fp16=True, images=parity_images(0, [(1, 7, 10), (1, 16, 20)]))
    assert result.parity.passed and result.fp16_parity.passed
    meta = json.loads(result.meta_path.read_text())
    assert meta["source"]["kind"] == "bundle" and meta["source"]["task"] == "lowlight"
    props = {p.key: p.value for p in onnx.load(str(result.onnx_path)).metadata_props}
    assert props["hbl_edge.task"] == "lowlight" and props["hbl_edge.precision"] == "fp32"
