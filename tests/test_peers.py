"""hbl_edge.peers (the fast peers' inference architectures), training a module, ONNX timing of any graph."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hbl_edge import peers
from hbl_edge.errors import ConfigError


def test_registry_knows_each_peer_its_task_and_published_size():
    assert peers.PEERS.names() == ["sci", "zerodce++", "aodnet", "physicalnn"]
    assert {n: (p.task, p.parameters) for n, p in peers.PEERS.items()} == {
        "sci": ("lowlight", 258), "zerodce++": ("lowlight", 10_561), "aodnet": ("dehaze", 1_761),
        "physicalnn": ("underwater", 2_027)}
    for name, peer in peers.PEERS.items():
        assert peers.count_parameters(peers.peer_module(name)) == peer.parameters
        assert peer.factory.task == peer.task and peer.architecture and peer.peers_md and peer.recipe
    assert [p.label for p in peers.PEERS.values()] == ["SCI", "Zero-DCE++", "AOD-Net", "PhysicalNN"]


def test_sci_sized_net_has_258_parameters():
    # 3 convs 3×3 3→3 (81 weights + 3 biases each) and one BatchNorm of 3 channels (3 γ + 3 β)
    assert peers.count_parameters(peers.SCI()) == 3 * (3 * 3 * 3 * 3 + 3) + 2 * 3 == 258


def test_unknown_peer_is_a_one_line_error():
    with pytest.raises(ConfigError) as e:
        peers.peer_module("scii")
    assert str(e.value) == "unknown peer 'scii'; known: sci, zerodce++, aodnet, physicalnn (hbl_edge.peers)"


@pytest.mark.parametrize("name", ["sci", "zerodce++", "aodnet", "physicalnn"])
def test_outputs_are_images_of_the_input_size(name):
    m = peers.peer_module(name)
    x = torch.rand(2, 3, 25, 37)  # odd sizes, batch 2
    with torch.no_grad():
        y = m(x)
    assert y.shape == x.shape and float(y.min()) >= 0.0 and float(y.max()) <= 1.0


def test_peer_module_is_seeded():
    a, b, c = peers.peer_module("sci", seed=1), peers.peer_module("sci", seed=1), peers.peer_module("sci", seed=2)
    assert torch.equal(a.inc.weight, b.inc.weight) and not torch.equal(a.inc.weight, c.inc.weight)
    assert torch.equal(a.blocks[0][1].running_var, b.blocks[0][1].running_var)


def test_deploy_side_does_not_import_the_peers():
    import subprocess
    import sys

    code = ("import sys, hbl_edge.runtime.runners, hbl_edge.runtime.model, hbl_edge.runtime.machine; "
            "print('hbl_edge.peers' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


# ---------------------------------------------------------------------------------------------
# TrainSession(model=…): a module trained by the package's loop, saved as weights
# ---------------------------------------------------------------------------------------------
def test_a_peer_module_trains_through_the_package_loop(tmp_path):
    from hbl_edge.bundle import load_weights
    from hbl_edge.data import TrainSampler, open_dataset
    from hbl_edge.train import TrainConfig, TrainSession

    cfg = TrainConfig(task="lowlight", genotype=None, loss="l1=1", data="embedded", out=str(tmp_path / "sci"), steps=3,
                      batch_size=2, crop=32, lr=1e-3, val_every=3, ckpt_every=3, val_crop=32)
    module = peers.peer_module("sci")
    before = {k: v.clone() for k, v in module.state_dict().items()}
    # the first step's batch is the stage-T sampler's: a pure function of (seed, step)
    expected_first = TrainSampler(open_dataset("embedded", "lowlight", "train", seed=0), "lowlight", crop=32,
                                  batch_size=2, seed=0).batch(0)
    session = TrainSession(cfg, model=module)
    assert all(torch.equal(a, b) for a, b in zip(session.sampler.batch(0), expected_first))
    res = session.run()
    assert res.steps == 3 and not res.interrupted
    assert not torch.equal(module.inc.weight, before["inc.weight"])  # it trained
    assert not (tmp_path / "sci" / "model.json").exists()  # no genotype: weights, not a bundle
    meta = json.loads((tmp_path / "sci" / "weights.json").read_text())
    assert meta["format"] == "hbl-weights/1" and meta["module"] == "SCI" and meta["parameters"] == 258
    assert meta["loss"]["terms"] == {"l1": 1.0} and meta["provenance"]["config"]["genotype"] is None
    again = peers.peer_module("sci", seed=5)
    load_weights(tmp_path / "sci", again)
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(x), module.eval()(x), rtol=0, atol=0)
    with pytest.raises(ConfigError, match="already holds a training run"):
        TrainSession(cfg, model=peers.peer_module("sci"))


def test_train_session_takes_a_genotype_or_a_module_not_both(tmp_path):
    from hbl_edge.bundle import load_weights
    from hbl_edge.errors import BundleError
    from hbl_edge.train import TrainConfig, TrainSession

    with pytest.raises(ConfigError, match="either a genotype"):
        TrainSession(TrainConfig(out=str(tmp_path / "a")), model=peers.peer_module("sci"))
    with pytest.raises(ConfigError, match="either a genotype"):
        TrainSession(TrainConfig(genotype=None, out=str(tmp_path / "b")))
    with pytest.raises(BundleError, match="cannot read the weights metadata"):
        load_weights(tmp_path, peers.peer_module("sci"))


# ---------------------------------------------------------------------------------------------
# measure_onnx: any ONNX graph, timed by the search's deployed-runner method
# ---------------------------------------------------------------------------------------------
def test_measure_onnx_is_the_deployed_method(monkeypatch, tmp_path):
    from hbl_edge.search import deployed

    class Clock:
        now = 0.0

        def __call__(self):
            return self.now

    log, clock = [], Clock()

    class Runner:
        def __init__(self, path, device, threads, spinning):
            log.append(("open", path.name, threads, spinning))
            self.name, self.ms = path.name, {"a.onnx": 2.0, "b.onnx": 7.0}[path.name]

        def run(self, x):
            assert x.shape == (1, 3, 12, 20) and x.dtype == np.float32
            log.append(("run", self.name))
            clock.now += self.ms / 1e3

        def close(self):
            log.append(("close", self.name))

    monkeypatch.setattr(deployed, "clock", clock)
    monkeypatch.setattr(deployed, "_ort_opener", lambda path, *a: (lambda: Runner(path, *a)))
    got = deployed.measure_onnx([tmp_path / "a.onnx", tmp_path / "b.onnx"], (20, 12), repeats=2, warmup=1, rounds=2,
                                threads=2, allow_spinning=False)
    assert got == [pytest.approx([2.0] * 4), pytest.approx([7.0] * 4)]
    opened = [e[1] for e in log if e[0] == "open"]
    assert opened == ["a.onnx", "b.onnx", "b.onnx", "a.onnx"]  # a fresh runner per round, every other reversed
    assert all(e[2:] == (2, False) for e in log if e[0] == "open")  # the runner settings passed through
    assert log[:5] == [("open", "a.onnx", 2, False), ("run", "a.onnx"), ("run", "a.onnx"), ("run", "a.onnx"), ("close", "a.onnx")]


def test_measure_onnx_runs_a_peer_through_the_ort_runner(tmp_path):
    pytest.importorskip("onnxruntime")
    from hbl_edge.search.deployed import measure_onnx

    path = peers.export_peer(peers.peer_module("sci"), tmp_path / "sci.onnx")
    (runs,) = measure_onnx([path], (18, 14), repeats=3, warmup=1, rounds=2, threads=1, allow_spinning=False)
    assert len(runs) == 6 and min(runs) > 0


def test_time_baselines_times_every_baseline_each_round(monkeypatch):
    from hbl_edge import baselines

    seen = []
    real = baselines.get_baseline

    def spy(name):
        b = real(name)
        return type(b)(b.name, b.task, lambda img, f=b.fn, n=name: (seen.append((n, img.shape, img.dtype)), f(img))[1],
                       b.doc)

    monkeypatch.setattr(baselines, "get_baseline", spy)
    got = baselines.time_baselines(["gamma", "grayworld"], (20, 12), warmup=1, repeats=3)
    assert list(got) == ["gamma", "grayworld"] and [len(v) for v in got.values()] == [3, 3]
    assert seen == [("gamma", (12, 20, 3), np.float32), ("grayworld", (12, 20, 3), np.float32)] * 4
