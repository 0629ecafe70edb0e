"""Model bundles: round trip, no pickle, clear errors for broken bundles."""

import json

import pytest
import torch

from hbl_edge.bundle import FORMAT, META, WEIGHTS, load_bundle, read_meta, save_bundle
from hbl_edge.errors import BundleError
from hbl_edge.genotype import Genotype
from hbl_edge.network import Network


def tiny_genotype(op="conv_3x3"):
    return Genotype(encoder=["conv_3x3"] * 9, decoder=["conv_3x3"] * 9, hnu=[[op] * 8], channels=(4, 8), units=1)


@pytest.fixture
def trained(tmp_path):
    torch.manual_seed(0)
    model = Network(tiny_genotype())
    model.train()
    for _ in range(2):
        model(torch.rand(2, 3, 16, 16))  # non-trivial BatchNorm running statistics
    model.eval()
    save_bundle(tmp_path, model, task="lowlight", loss={"format": "hbl-loss/1", "terms": {"l1": 1.0}},
                provenance={"steps": 2}, metrics={"val_psnr": 20.0})
    return model, tmp_path


def test_round_trip_same_function(trained):
    model, path = trained
    b = load_bundle(path)
    x = torch.rand(1, 3, 19, 23)
    with torch.no_grad():
        assert torch.equal(b.model(x), model(x))
    assert not b.model.training
    assert b.task == "lowlight" and b.genotype == model.genotype


def test_meta_contents(trained):
    _, path = trained
    meta = json.loads((path / META).read_text())
    assert meta["format"] == FORMAT
    assert meta["genotype"]["format"] == "hbl-genotype/1"
    assert meta["input"]["layout"] == "NCHW" and meta["input"]["range"] == [0.0, 1.0]
    assert {"hbl_edge", "torch", "python"} <= set(meta["versions"])
    assert meta["provenance"] == {"steps": 2} and meta["metrics"] == {"val_psnr": 20.0}
    assert meta["parameters"] > 0


def test_accepts_file_paths(trained):
    _, path = trained
    assert load_bundle(path / META).path == path
    assert load_bundle(path / WEIGHTS).path == path


def test_missing_bundle(tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nope")
    with pytest.raises(BundleError, match="no model.json"):
        load_bundle(tmp_path)


def test_missing_weights(trained):
    _, path = trained
    (path / WEIGHTS).unlink()
    with pytest.raises(BundleError, match="incomplete"):
        load_bundle(path)


def test_corrupt_weights(trained):
    _, path = trained
    (path / WEIGHTS).write_bytes(b"\x00" * 7)
    with pytest.raises(BundleError, match="not a readable safetensors"):
        load_bundle(path)


def test_wrong_format_and_bad_genotype(trained):
    _, path = trained
    meta = json.loads((path / META).read_text())
    (path / META).write_text(json.dumps({**meta, "format": "hbl-bundle/99"}))
    with pytest.raises(BundleError, match="unknown bundle format"):
        read_meta(path)
    bad = {**meta}
    bad["genotype"] = {**meta["genotype"], "hnu": [["nope_op"] * 8]}
    (path / META).write_text(json.dumps(bad))
    with pytest.raises(BundleError, match="nope_op"):
        load_bundle(path)
    (path / META).write_text("{not json")
    with pytest.raises(BundleError, match="malformed JSON"):
        read_meta(path)


def test_weights_that_do_not_fit_the_genotype(trained, tmp_path):
    _, path = trained
    other = Network(tiny_genotype("denseblocks_3x3"))
    save_bundle(tmp_path / "other", other, task="lowlight", loss={})
    (path / WEIGHTS).write_bytes((tmp_path / "other" / WEIGHTS).read_bytes())
    with pytest.raises(BundleError, match="do not match the genotype"):
        load_bundle(path)


def test_weights_file_is_not_pickle(trained):
    _, path = trained
    head = (path / WEIGHTS).read_bytes()[:16]
    assert not head.startswith(b"\x80")  # pickle protocol marker


def test_artifacts_get_normal_permissions(trained):
    _, path = trained
    import os

    mask = os.umask(0)
    os.umask(mask)
    for name in (META, WEIGHTS):
        assert (path / name).stat().st_mode & 0o777 == 0o666 & ~mask
