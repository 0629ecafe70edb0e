"""Quality critic (stage L's image-quality judge) and the selectable stage-L objectives."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from hbl_edge.data import open_dataset, val_batches
from hbl_edge.errors import ConfigError, HblError
from hbl_edge.search.critic import (
    FORMAT,
    CriticConfig,
    QualityCritic,
    freeze,
    load_critic,
    over_enhance,
    read_critic_meta,
    save_critic,
    train_critic,
)
from hbl_edge.search.objectives import (
    OBJECTIVES,
    CriticObjective,
    build_objective,
    critic_objective,
    fidelity_objective,
)

STEPS = 100          # enough for > 0.85 held-out accuracy on seeds 0 and 1 (measured 0.92–1.0)
MIN_ACCURACY = 0.85  # one clean val region of six may sit near the boundary (see evaluate_critic)


@pytest.fixture(scope="module")
def trained():
    return train_critic("lowlight", "embedded", steps=STEPS, seed=0)


@pytest.fixture(scope="module")
def val_pairs():
    src = open_dataset("embedded", "lowlight", "val")
    return [(inp, tgt) for _, inp, tgt in val_batches(src, crop=256)]


def _random_critic(seed: int = 0) -> QualityCritic:
    torch.manual_seed(seed)
    return QualityCritic()


# ----------------------------------------------------------------------------- network

class TestQualityCritic:
    @pytest.mark.parametrize("shape", [(1, 3, 32, 32), (3, 3, 48, 40), (2, 3, 64, 97)])
    def test_any_size(self, shape):
        out = _random_critic()(torch.rand(shape))
        assert out.shape == (shape[0],)
        assert torch.isfinite(out).all()

    def test_parameter_count(self):
        n = sum(p.numel() for p in QualityCritic().parameters())
        assert 20_000 <= n <= 50_000

    @pytest.mark.parametrize("shape, match", [((1, 3, 31, 64), "at least 32"),
                                              ((1, 1, 64, 64), "N×3×H×W"),
                                              ((3, 64, 64), "N×3×H×W")])
    def test_wrong_input(self, shape, match):
        with pytest.raises(ValueError, match=match):
            QualityCritic()(torch.rand(shape))

    def test_bad_config(self):
        with pytest.raises(ConfigError, match="positive"):
            CriticConfig(channels=(16, 0))

    def test_freeze_passes_gradient_to_input_only(self):
        critic = freeze(_random_critic())
        assert not critic.training
        assert not any(p.requires_grad for p in critic.parameters())
        x = torch.rand(2, 3, 40, 40, requires_grad=True)
        critic(x).sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
        assert all(p.grad is None for p in critic.parameters())

    def test_over_enhance(self):
        clean = torch.rand(8, 3, 32, 32) * 0.8
        a = over_enhance(clean, np.random.default_rng(3))
        b = over_enhance(clean, np.random.default_rng(3))
        assert torch.equal(a, b)
        assert a.shape == clean.shape and a.min() >= 0 and a.max() <= 1
        assert (a - clean).abs().flatten(1).mean(1).min() > 0.01  # every image changed


# --------------------------------------------------------------------------- training

class TestTraining:
    def test_report_and_accuracy(self, trained):
        critic, report = trained
        val = report["val"]
        assert report["task"] == "lowlight" and report["steps"] == STEPS
        assert val["n"] == 12 and val["skipped"] == 0
        assert val["accuracy"] > MIN_ACCURACY, val
        assert val["ranking"] == 1.0, val  # each clean target beats its own degraded input
        assert math.isfinite(report["train_loss"]) and report["train_loss"] < 0.6
        assert not critic.training and not any(p.requires_grad for p in critic.parameters())

    def test_clean_scores_above_degraded(self, trained, val_pairs):
        critic, _ = trained
        with torch.no_grad():
            clean = torch.stack([critic.prob_clean(t)[0] for _, t in val_pairs])
            degraded = torch.stack([critic.prob_clean(i)[0] for i, _ in val_pairs])
        assert clean.mean() > degraded.mean() + 0.3
        assert clean.mean() > 0.5 > degraded.mean()

    def test_not_a_brightness_detector(self, trained):
        # The over-enhanced negatives make "clean" more than "bright": on average, clean val
        # images score above over-enhanced copies of themselves.
        p = trained[1]["val"]["p_clean"]
        assert p["clean"] > p["over_enhanced"] > p["degraded"]

    @pytest.mark.slow
    def test_second_seed(self):
        _, report = train_critic("lowlight", "embedded", steps=STEPS, seed=1)
        assert report["val"]["accuracy"] > MIN_ACCURACY, report["val"]

    @pytest.mark.parametrize("kwargs, match", [({"steps": 0}, "steps"), ({"crop": 16}, "crop"),
                                               ({"over_fraction": 1.5}, "over_fraction"),
                                               ({"lr": -1.0}, "learning rate")])
    def test_bad_settings(self, kwargs, match):
        with pytest.raises(ConfigError, match=match):
            train_critic("lowlight", **kwargs)

    def test_unknown_task(self):
        with pytest.raises(ConfigError, match="unknown task"):
            train_critic("denoise", steps=1)


# ---------------------------------------------------------------------------- file I/O

class TestSaveLoad:
    def test_round_trip(self, tmp_path):
        critic = _random_critic(1)
        report = {"val": {"accuracy": 0.9}, "steps": 3}
        path = save_critic(critic, tmp_path / "critic.safetensors",
                           {"task": "lowlight", "report": report})
        loaded = load_critic(path, task="low-light")
        x = torch.rand(2, 3, 48, 56)
        with torch.no_grad():
            assert torch.equal(critic.eval()(x), loaded(x))
        assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
        meta = read_critic_meta(path)
        assert meta["format"] == FORMAT and meta["task"] == "lowlight"
        assert meta["report"] == report and loaded.meta["report"] == report
        assert meta["config"] == {"channels": [16, 32, 48, 64]}

    def test_custom_config_round_trip(self, tmp_path):
        critic = QualityCritic(CriticConfig(channels=(8, 16, 16)))
        path = save_critic(critic, tmp_path / "c.safetensors", {"task": "dehaze"})
        assert load_critic(path).config.channels == (8, 16, 16)

    def test_task_mismatch(self, tmp_path):
        path = save_critic(_random_critic(), tmp_path / "c.safetensors", {"task": "dehaze"})
        with pytest.raises(ConfigError, match="trained for task 'dehaze', not 'lowlight'"):
            load_critic(path, task="lowlight")

    def test_missing_file(self, tmp_path):
        with pytest.raises(ConfigError, match="not found"):
            load_critic(tmp_path / "nope.safetensors")

    def test_corrupt_bytes(self, tmp_path):
        path = tmp_path / "c.safetensors"
        path.write_bytes(b"\x00\x13garbage, not a safetensors header" * 10)
        with pytest.raises(ConfigError, match="not a readable safetensors file"):
            load_critic(path)

    def test_truncated(self, tmp_path):
        path = save_critic(_random_critic(), tmp_path / "c.safetensors", {"task": "lowlight"})
        data = path.read_bytes()
        path.write_bytes(data[: len(data) - 1000])
        with pytest.raises(ConfigError, match="critic file"):
            load_critic(path)

    def test_pickle_is_refused(self, tmp_path):
        path = tmp_path / "c.pt"
        torch.save(_random_critic().state_dict(), path)
        with pytest.raises(ConfigError, match="not a readable safetensors file"):
            load_critic(path)

    def test_foreign_safetensors(self, tmp_path):
        path = tmp_path / "c.safetensors"
        save_file(dict(_random_critic().state_dict()), str(path))  # no hbl-critic metadata
        with pytest.raises(ConfigError, match="format is None, expected 'hbl-critic/1'"):
            load_critic(path)

    def test_wrong_keys(self, tmp_path):
        path = tmp_path / "c.safetensors"
        save_file({"weight": torch.zeros(3)},
                  str(path), metadata={"format": FORMAT, "arch": "hbl-critic-cnn/1"})
        with pytest.raises(ConfigError, match=r"missing features\.0\.bias, .*; unexpected weight\)"):
            load_critic(path)

    def test_wrong_shape(self, tmp_path):
        path = tmp_path / "c.safetensors"
        state = {k: v.clone() for k, v in _random_critic().state_dict().items()}
        state["head.weight"] = torch.zeros(1, 7)
        save_file(state, str(path), metadata={"format": FORMAT, "arch": "hbl-critic-cnn/1"})
        with pytest.raises(ConfigError, match=r"head.weight has shape \(1, 7\), expected \(1, 64\)"):
            load_critic(path)

    def test_non_finite(self, tmp_path):
        critic = _random_critic()
        with torch.no_grad():
            critic.head.bias.fill_(float("nan"))
        path = save_critic(critic, tmp_path / "c.safetensors")
        with pytest.raises(ConfigError, match="non-finite"):
            load_critic(path)

    def test_errors_are_user_errors(self, tmp_path):
        with pytest.raises(HblError):
            load_critic(tmp_path / "nope.safetensors")


# -------------------------------------------------------------------------- objectives

class TestObjectives:
    def test_registry(self):
        assert set(OBJECTIVES) == {"critic", "fidelity"}
        with pytest.raises(ConfigError, match="unknown objective 'psnr'; known: critic, fidelity"):
            build_objective("psnr")
        with pytest.raises(ConfigError, match="needs a quality critic"):
            build_objective("critic")

    @pytest.mark.parametrize("name", ["critic", "fidelity"])
    def test_gradient_wrt_restored(self, name):
        obj = build_objective(name, critic=_random_critic())
        restored = torch.rand(2, 3, 40, 40, requires_grad=True)
        value = obj(restored, torch.rand(2, 3, 40, 40))
        assert value.dim() == 0 and torch.isfinite(value)
        (grad,) = torch.autograd.grad(value, restored)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0

    def test_critic_objective_is_bce_of_clean(self):
        critic = freeze(_random_critic())
        x = torch.rand(3, 3, 32, 32)
        logits = critic(x)
        expected = torch.nn.functional.softplus(-logits).mean()
        assert torch.allclose(critic_objective(x, critic), expected)
        obj = CriticObjective(critic)
        assert torch.allclose(obj(x), expected) and torch.allclose(obj(x, torch.rand_like(x)), expected)
        obj.train()
        assert not obj.critic.training
        assert list(p for p in obj.parameters() if p.requires_grad) == []

    def test_critic_objective_decreases_towards_clean(self, trained, val_pairs):
        critic, _ = trained
        obj = build_objective("critic", critic=critic)
        values = []
        with torch.no_grad():
            for t in (0.0, 0.5, 1.0):
                values.append(np.mean([float(obj((1 - t) * i + t * c)) for i, c in val_pairs]))
        assert values[0] > values[1] > values[2], values

    def test_fidelity_zero_at_target(self):
        y = torch.rand(2, 3, 24, 24)
        assert abs(float(fidelity_objective(y, y))) < 1e-6
        assert float(fidelity_objective(y + 0.05 * torch.randn_like(y), y)) > 0.1

    def test_fidelity_hand_computed(self):
        # ŷ = 0, y = 0.1: MSE 0.01 -> PSNR_ε = 10·log10(1/0.01001); SSIM of two constant
        # images = C1 / (0.1² + C1), C1 = 0.01².
        c1 = 0.01**2
        expected = (1 - 10 * math.log10(1 / (0.01 + 1e-5)) / 50) + (1 - c1 / (0.01 + c1))
        got = fidelity_objective(torch.zeros(1, 3, 16, 16), torch.full((1, 3, 16, 16), 0.1))
        assert float(got) == pytest.approx(expected, rel=1e-5)
        assert expected == pytest.approx(1.5902, abs=1e-4)

    def test_fidelity_is_mean_over_images(self):
        a, b = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
        y = torch.rand(2, 3, 16, 16)
        both = fidelity_objective(torch.cat([a, b]), y)
        each = (fidelity_objective(a, y[:1]) + fidelity_objective(b, y[1:])) / 2
        assert torch.allclose(both, each, atol=1e-6)

    def test_fidelity_gradcheck(self):
        y = torch.rand(1, 3, 12, 12, dtype=torch.float64)
        x = (y + 0.1 * torch.randn_like(y)).requires_grad_(True)
        assert torch.autograd.gradcheck(lambda z: fidelity_objective(z, y), (x,), fast_mode=True)

    def test_fidelity_wrong_input(self):
        with pytest.raises(ValueError, match="same shape"):
            fidelity_objective(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 17))
        with pytest.raises(ValueError, match="H and W ≥ 11"):
            fidelity_objective(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))
