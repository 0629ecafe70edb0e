"""Which loss terms stage L weighs, on which network, and edge networks' default training loss
(docs/benchmarks.md, "The loss terms of an edge network")."""

import pytest

from hbl_edge.errors import HblError
from hbl_edge.genotype import load_genotype
from hbl_edge.losses import parse_loss_spec
from hbl_edge.search.config import DEFAULT_TERMS, EDGE_DEFAULT_TERMS, SearchConfig
from hbl_edge.search.driver import _stage_l_network, run_search
from hbl_edge.search.stages import make_optimizers
from hbl_edge.tasks import get_task


def test_default_terms_follow_the_network_family():
    paper = SearchConfig()
    paper.validate()
    assert paper.terms == DEFAULT_TERMS == ("l1", "l2", "color", "ssim", "tv", "laplacian")
    edge = SearchConfig(macro="edge", latency_budget=20.0)
    edge.validate()
    assert edge.terms == EDGE_DEFAULT_TERMS == ("l1", "l2", "color")
    chosen = SearchConfig(macro="edge", latency_budget=20.0, terms=("l1", "ssim"))
    chosen.validate()
    assert chosen.terms == ("l1", "ssim")  # --terms wins over the family's default
    # a resolved config re-read from config.json keeps its terms
    assert SearchConfig.from_dict(vars(edge)).terms == ("l1", "l2", "color")


@pytest.mark.parametrize("terms, match", [(("l1", "sharpness"), "unknown loss term 'sharpness'"),
                                          (("l1", "l1"), "names a term twice"), ((), "at least one loss term")])
def test_bad_terms_are_one_line_errors(terms, match):
    with pytest.raises(HblError, match=match):
        SearchConfig(terms=terms).validate()


def test_lambda_lr_sets_the_loss_weights_learning_rate_only_in_stage_l():
    cfg = SearchConfig(channels=(4, 8), units=1, lambda_lr=0.02)
    cfg.validate()
    net, family = _stage_l_network(cfg)
    lam = __import__("torch").ones(3, requires_grad=True)
    _, u_opt = make_optimizers(cfg, net, [lam], upper_lr=cfg.lambda_lr)
    assert u_opt.param_groups[0]["lr"] == 0.02 and family == "paper paper 4/8x1"
    _, u_opt = make_optimizers(cfg, net, [lam])  # stage A: the upper learning rate
    assert u_opt.param_groups[0]["lr"] == cfg.upper_lr == 5e-4
    with pytest.raises(HblError, match="--lambda-lr"):
        SearchConfig(lambda_lr=-1.0).validate()


def test_edge_stage_l_searches_lambda_on_the_cheapest_edge_candidate(tmp_path):
    from hbl_edge.search.macro import EdgeSupernet

    cfg = SearchConfig(out=str(tmp_path / "run"), stages="L", space="edge", channels=(4, 8), units=1, crop=32,
                       batch_size=2, steps_l=2, critic_steps=3, ckpt_every=2, w_lr=0.02, upper_lr=0.05,
                       macro="edge", macro_scales=(2, 4), macro_widths=((4, 8), (8, 16)), macro_units=(1, 2),
                       macro_refine=((), ("conv_3x3",)), deterministic=True)
    cfg.validate()
    net, family = _stage_l_network(cfg)
    assert isinstance(net, EdgeSupernet) and family == "edge s4 4/8x1 refine:none"
    assert net.macro.scale == 4 and net.refine is None and len(net.units) == 1
    run_search(cfg)
    spec = parse_loss_spec(tmp_path / "run" / "loss.json")
    assert set(spec.terms) == {"l1", "l2", "color"}
    assert spec.provenance["network"] == "edge s4 4/8x1 refine:none"


def test_an_edge_genotype_trains_with_l1_by_default_and_a_paper_one_with_the_tasks_loss():
    task = get_task("lowlight")
    assert task.default_loss_for(load_genotype("edge-lol-s8")) == {"l1": 1.0}
    assert task.default_loss_for(load_genotype("hbl-lol-2022")) == {"l1": 1.0, "ssim": 1.0}


def test_train_writes_the_edge_default_loss_into_the_bundle(tmp_path):
    from hbl_edge.bundle import read_meta
    from hbl_edge.train import TrainConfig, train

    out = tmp_path / "m"
    train(TrainConfig(task="lowlight", genotype="edge-lol-s8", data="embedded", out=str(out), steps=2, batch_size=2,
                      crop=32, val_every=2, ckpt_every=2, threads=1))
    assert read_meta(out)["loss"]["terms"] == {"l1": 1.0}


def test_exposure_calibration_fits_the_least_squares_gain_and_survives_export_and_reload(tmp_path):
    """A retinex edge network whose output is half the reference everywhere gets c* = 2 exactly;
    the gain is in the weights (reload) and in the ONNX graph (onnxruntime parity)."""
    import numpy as np
    import torch

    from hbl_edge.bundle import load_bundle, save_bundle
    from hbl_edge.edge_network import EdgeNetwork

    torch.manual_seed(0)
    net = EdgeNetwork(load_genotype("edge-lol-s8")).eval()
    frames = []
    for _ in range(3):
        x = torch.rand(1, 3, 40, 56) * 0.2
        with torch.no_grad():
            o = net(x).clamp(0, 1)
        frames.append((x, 2.0 * o))  # the reference: exactly twice what the network gives
    assert net.calibrate_exposure(frames) == pytest.approx(2.0, rel=1e-5)
    assert EdgeNetwork(load_genotype("edge-haze-s4")).calibrate_exposure(frames) is None  # no gain to fit
    x = frames[0][0]
    with torch.no_grad():
        assert torch.allclose(net(x), 2.0 * (frames[0][1] / 2.0), atol=1e-5)  # before the clamp: 2 × the old output
    out = save_bundle(tmp_path / "b", net, task="lowlight", loss={"terms": {"l1": 1.0}})
    again = load_bundle(out).model
    assert float(again.head.exposure) == pytest.approx(2.0, rel=1e-6)
    from hbl_edge.export.onnx_export import export_onnx
    import onnxruntime as ort

    path = export_onnx(again, tmp_path / "onnx", check=False).onnx_path
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = again(x).clamp(0, 1).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_a_bundle_written_before_the_exposure_gain_loads_with_gain_one(tmp_path):
    from safetensors.torch import load_file, save_file

    from hbl_edge.bundle import WEIGHTS, load_bundle, save_bundle
    from hbl_edge.edge_network import EdgeNetwork

    out = save_bundle(tmp_path / "old", EdgeNetwork(load_genotype("edge-lol-s8")).eval(), task="lowlight",
                      loss={"terms": {"l1": 1.0}})
    state = load_file(str(out / WEIGHTS))
    del state["head.exposure"]  # what a bundle of the previous version holds
    save_file(state, str(out / WEIGHTS), metadata={"format": "hbl-bundle/1"})
    assert float(load_bundle(out).model.head.exposure) == 1.0


def test_training_an_edge_network_calibrates_its_exposure_unless_told_not_to(tmp_path):
    from hbl_edge.bundle import read_meta
    from hbl_edge.train import TrainConfig, train

    for flag, name in ((True, "on"), (False, "off")):
        out = tmp_path / name
        train(TrainConfig(task="lowlight", genotype="edge-lol-s8", data="embedded", out=str(out), steps=2, batch_size=2,
                          crop=32, val_every=2, ckpt_every=2, threads=1, calibrate_exposure=flag))
        metrics = read_meta(out)["metrics"]
        assert ("exposure_gain" in metrics) is flag
    gain = read_meta(tmp_path / "on")["metrics"]["exposure_gain"]
    from hbl_edge.bundle import load_bundle

    assert float(load_bundle(tmp_path / "on").model.head.exposure) == pytest.approx(gain, rel=1e-6) and gain > 0


def test_quick_trains_edge_networks_on_whole_frame_sized_crops():
    from hbl_edge.search.config import quick_overrides

    paper, edge = quick_overrides(), quick_overrides("edge")
    assert (paper["train_crop"], paper["steps_t"]) == (64, 300)
    assert (edge["train_crop"], edge["steps_t"], edge["train_lr"], edge["macro_train_steps"],
            edge["macro_proxy_seeds"]) == (256, 600, 1e-3, 100, 1)
    edge_only = ("train_crop", "steps_t", "train_lr", "macro_train_steps", "macro_proxy_seeds")
    assert {k: v for k, v in edge.items() if k not in edge_only} == {k: v for k, v in paper.items() if k not in edge_only}


def test_edge_search_crops_default_by_macro_and_stay_when_given():
    from hbl_edge.search.config import SearchConfig, default_crops

    paper = SearchConfig()
    paper.validate()
    edge = SearchConfig(macro="edge", latency_budget=10.0)
    edge.validate()
    assert (paper.crop, paper.train_crop) == default_crops(None) == (64, 128)
    assert (edge.crop, edge.train_crop) == default_crops("edge") == (128, 256)
    given = SearchConfig(macro="edge", latency_budget=10.0, crop=96, train_crop=160)
    given.validate()
    assert (given.crop, given.train_crop) == (96, 160)
    from hbl_edge.errors import ConfigError

    with pytest.raises(ConfigError, match="--macro-train-steps"):
        SearchConfig(macro="edge", latency_budget=10.0, macro_train_steps=-1).validate()
    with pytest.raises(ConfigError, match="--macro-proxy-seeds must be ≥ 1, got 0"):
        SearchConfig(macro="edge", latency_budget=10.0, macro_proxy_seeds=0).validate()
