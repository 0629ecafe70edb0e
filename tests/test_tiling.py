"""Tiled inference equals whole-image inference for local operators and stays close for the network."""

import numpy as np
import pytest
import torch

from hbl_edge.genotype import Genotype
from hbl_edge.network import Network
from hbl_edge.runtime.tiling import _ramp, _starts, run_image, run_tiled
from hbl_edge.runtime.torch_runner import TorchRunner


def test_starts_cover_the_image():
    for size, tile, step in [(10, 4, 3), (100, 64, 48), (64, 64, 48), (5, 8, 4)]:
        starts = _starts(size, tile, step)
        covered = np.zeros(size, bool)
        for s in starts:
            covered[s:s + tile] = True
        assert covered.all() and starts[-1] + min(tile, size) == size


def test_ramp_weights():
    w = _ramp(10, 4, at_start=False, at_end=True)
    assert np.all(np.diff(w[:4]) > 0) and np.all(w[4:] == 1)
    assert np.all(_ramp(10, 4, True, True) == 1)


def test_pointwise_function_is_exact():
    img = np.random.default_rng(0).random((3, 70, 90), dtype=np.float32)
    f = lambda b: b * 0.5 + 0.1  # a pointwise op: tiles must reproduce it exactly
    np.testing.assert_allclose(run_tiled(f, img, tile=32, overlap=8), f(img[None])[0], atol=1e-6)


def test_network_tiles_close_to_whole():
    torch.manual_seed(0)
    g = Genotype(encoder=["conv_3x3"] * 9, decoder=["conv_3x3"] * 9, hnu=[["conv_3x3"] * 8], channels=(4, 8), units=1)
    net = Network(g)
    net.train()
    net(torch.rand(2, 3, 32, 32))
    runner = TorchRunner(net.eval())
    img = np.random.default_rng(1).random((96, 130, 3), dtype=np.float32)
    whole = run_image(runner.run, img)
    tiled = run_image(runner.run, img, tile=64, overlap=24)
    assert tiled.shape == whole.shape == img.shape
    assert np.abs(tiled - whole).mean() < 5e-3


def test_auto_tiling_above_max_pixels():
    calls = []

    def f(b):
        calls.append(b.shape)
        return b

    img = np.zeros((40, 50, 3), np.float32)
    run_image(f, img, max_pixels=10_000)
    assert len(calls) == 1
    run_image(f, img, tile=24, overlap=4)
    assert len(calls) > 2 and all(s[2] <= 24 and s[3] <= 24 for s in calls[1:])


def test_tile_must_exceed_overlap():
    with pytest.raises(ValueError, match="larger than twice"):
        run_tiled(lambda b: b, np.zeros((3, 10, 10), np.float32), tile=8, overlap=4)
