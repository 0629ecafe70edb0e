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
