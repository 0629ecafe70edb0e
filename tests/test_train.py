"""Stage T training: end to end on the embedded data, exact resume, run-directory safety."""

import json
import os
import signal

import pytest
import torch

from hbl_edge.bundle import load_bundle
from hbl_edge.errors import ConfigError, GenotypeError, LossSpecError
from hbl_edge.genotype import Genotype
from hbl_edge.train import STATE, TrainConfig, train

SMALL = Genotype(
    encoder=["conv_3x3"] * 9, decoder=["conv_3x3"] * 9,
    hnu=[["conv_3x3", "conv_1x1", "resconv_3x3", "conv_1x1", "skip_connect", "conv_1x1", "skip_connect", "conv_1x1"]] * 2,
    channels=(8, 16), units=2,
)


@pytest.fixture
def small_genotype(tmp_path):
    return str(SMALL.save(tmp_path / "small.json"))


def cfg_for(tmp_path, genotype, name="run", **kw):  # kw override any TrainConfig field
    base = dict(task="lowlight", genotype=genotype, data="embedded", out=str(tmp_path / name), steps=6,
                batch_size=2, crop=32, val_every=3, ckpt_every=3, val_crop=64, lr=2e-3)
    base.update(kw)
    return TrainConfig(**base)


def test_end_to_end_loss_falls_and_psnr_beats_input(tmp_path, small_genotype):
    cfg = cfg_for(tmp_path, small_genotype, steps=80, batch_size=4, crop=48, val_every=40, ckpt_every=40, lr=3e-3)
    res = train(cfg)
    losses = [r["loss"] for r in res.history]
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:10]) / 10
    assert res.metrics["val_psnr"] > res.metrics["val_input_psnr"] + 1.0
    out = tmp_path / "run"
    for f in ("model.safetensors", "model.json", "config.json", "log.jsonl", "plots/train_curves.png", STATE):
        assert (out / f).exists(), f
    meta = json.loads((out / "model.json").read_text())
    assert meta["task"] == "lowlight" and meta["loss"]["terms"] == {"l1": 1.0, "ssim": 1.0}
    assert meta["provenance"]["steps"] == 80 and meta["metrics"]["val_psnr"] == res.metrics["val_psnr"]
    assert load_bundle(out).genotype == SMALL


def test_schedule_steps(tmp_path, small_genotype):
    res = train(cfg_for(tmp_path, small_genotype, steps=6, schedule="cosine"))
    lrs = [r["lr"] for r in res.history]
    assert lrs[0] > lrs[-1] and lrs == sorted(lrs, reverse=True)


def test_resume_after_signal_is_exact(tmp_path, small_genotype):
    straight = train(cfg_for(tmp_path, small_genotype, name="a"))

    def interrupt(step, rec):
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)

    cfg_b = cfg_for(tmp_path, small_genotype, name="b")
    part = train(cfg_b, progress=interrupt)
    assert part.interrupted and part.steps == 2
    assert torch.load(tmp_path / "b" / STATE, weights_only=True)["step"] == 2
    resumed = train(cfg_b, resume=True)
    assert resumed.steps == 6
    a, b = load_bundle(tmp_path / "a").model.state_dict(), load_bundle(tmp_path / "b").model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [r["loss"] for r in straight.history] == [r["loss"] for r in resumed.history]


def test_resume_after_crash_drops_unsaved_log_records(tmp_path, small_genotype):
    cfg = cfg_for(tmp_path, small_genotype)

    def crash(step, rec):
        if step == 4:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError):
        train(cfg, progress=crash)
    res = train(cfg, resume=True)
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6] and res.steps == 6


def test_run_directory_is_never_overwritten(tmp_path, small_genotype):
    cfg = cfg_for(tmp_path, small_genotype, steps=3)
    train(cfg)
    before = (tmp_path / "run" / "model.safetensors").read_bytes()
    with pytest.raises(ConfigError, match="already holds a training run"):
        train(cfg)
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == before
    with pytest.raises(ConfigError, match="different settings"):
        train(cfg_for(tmp_path, small_genotype, steps=3, lr=0.1), resume=True)
    with pytest.raises(ConfigError, match="has no checkpoint"):
        train(cfg_for(tmp_path, small_genotype, name="fresh"), resume=True)


@pytest.mark.parametrize(
    "kw, err, match",
    [
        ({"task": "fog"}, ConfigError, "unknown task"),
        ({"genotype": "nope"}, GenotypeError, "neither a built-in name"),
        ({"loss": "l1=1,perceptual=2"}, LossSpecError, "perceptual"),
        ({"batch_size": 1}, ConfigError, "batch-size"),
        ({"crop": 30}, ConfigError, "multiple of 4"),
        ({"optimizer": "lion"}, ConfigError, "unknown optimizer"),
        ({"data": "/no/such/folder"}, Exception, "/no/such/folder"),
    ],
)
def test_config_errors(tmp_path, small_genotype, kw, err, match):
    with pytest.raises(err, match=match):
        train(cfg_for(tmp_path, **{"genotype": small_genotype, **kw}))
    assert not (tmp_path / "run" / "model.json").exists()


def test_a_run_saved_before_synthetic_mix_existed_resumes(tmp_path, small_genotype):
    def interrupt(step, rec):
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)

    cfg = cfg_for(tmp_path, small_genotype)
    assert train(cfg, progress=interrupt).interrupted
    saved = tmp_path / "run" / "config.json"
    old = json.loads(saved.read_text())
    del old["synthetic_mix"]  # what an older version wrote
    saved.write_text(json.dumps(old))
    assert train(cfg, resume=True).steps == 6
    with pytest.raises(ConfigError, match="synthetic_mix"):  # a real change is still refused
        train(cfg_for(tmp_path, small_genotype, synthetic_mix=0.5), resume=True)


def test_synthetic_mix_must_be_a_probability(tmp_path, small_genotype):
    with pytest.raises(ConfigError, match="synthetic-mix"):
        train(cfg_for(tmp_path, small_genotype, synthetic_mix=-0.1))
