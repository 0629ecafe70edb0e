"""The fast peers' inference architectures, re-built from their papers (torch; training side).

``shared/PEERS.md`` timed the peers in PyTorch with their own code. To compare like with like,
the benchmarks (``bench/peers.py``) and ``make demo`` (:mod:`hbl_edge.demo`) re-build each fast
peer's published *inference* architecture as a torch module, export it with the same tracer and
dynamic N/H/W as our models (:func:`export_peer`) and time it through the same ONNX Runtime
path. Weights are random (seeded) unless someone trains them: the demo trains the SCI-sized net
supervised on its data; nothing here is the peer's own training recipe.

============  ==========  ====================================================================
peer          task        inference architecture (parameters)
============  ==========  ====================================================================
sci           lowlight    SCI (Ma et al., CVPR 2022), illumination net "medium": conv 3×3 3→3 +
                          ReLU; one residual block conv 3×3 3→3 + BN + ReLU; conv 3×3 3→3 +
                          sigmoid; L = clamp(out + y, 1e-4, 1); x = clamp(y ⊘ L, 0, 1)  (258)
zerodce++     lowlight    Zero-DCE++ (Li et al., TPAMI 2021): bilinear ↓12, 7 depthwise-separable
                          3×3 convs (32 wide, skip concats 3+4, 2+5, 1+6), tanh, bilinear ↑ to
                          the input size, 8 curve iterations x ← x + r (x² − x)  (10,561)
aodnet        dehaze      AOD-Net (Li et al., ICCV 2017): 5 full-resolution convs 1×1, 3×3, 5×5,
                          7×7, 3×3 with concats, K; J = ReLU(K·y − K + 1)  (1,761)
physicalnn    underwater  PhysicalNN (Chen et al., TCSVT 2020): A-net (2 convs 3×3, PReLU, global
                          average, 2 convs 1×1) and t-net (4 convs 3×3 6→8→8→8→3, dilations 1, 2,
                          5, 1, PReLU) on [A, y]; J = clamp((y − A)·t + A)  (2,027)
============  ==========  ====================================================================

Every module maps N×3×H×W in [0, 1] to N×3×H×W in [0, 1] (the forward ends with a clamp, like
our exported graphs), for any H, W ≥ 1 (Zero-DCE++: H, W ≥ 12, its 1/12 branch needs a pixel).
Never imported by ``hbl_edge/runtime/`` (the deploy side has no torch).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError
from .registry import Registry


def _conv(c_in: int, c_out: int, k: int, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, k, padding=dilation * (k // 2), dilation=dilation)


class SCI(nn.Module):
    """SCI's inference path: the illumination estimator (``blocks`` blocks of ``channels``) and y ⊘ L."""

    task = "lowlight"

    def __init__(self, channels: int = 3, blocks: int = 1) -> None:
        super().__init__()
        self.inc = _conv(3, channels, 3)
        self.blocks = nn.ModuleList(
            nn.Sequential(_conv(channels, channels, 3), nn.BatchNorm2d(channels), nn.ReLU()) for _ in range(blocks)
        )
        self.outc = _conv(channels, 3, 3)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        f = torch.relu(self.inc(y))
        for block in self.blocks:
            f = f + block(f)
        illumination = torch.clamp(torch.sigmoid(self.outc(f)) + y, 1e-4, 1.0)
        return torch.clamp(y / illumination, 0.0, 1.0)


class _DepthwiseSeparable(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(c_in, c_in, 3, padding=1, groups=c_in)
        self.pointwise = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class ZeroDCEPP(nn.Module):
    """Zero-DCE++: curve parameters estimated at 1/``scale``, ``iterations`` curve steps at full scale."""

    task = "lowlight"

    def __init__(self, width: int = 32, scale: int = 12, iterations: int = 8) -> None:
        super().__init__()
        self.scale, self.iterations = scale, iterations
        n = width
        self.e1, self.e2, self.e3, self.e4 = (_DepthwiseSeparable(a, b) for a, b in ((3, n), (n, n), (n, n), (n, n)))
        self.e5, self.e6 = _DepthwiseSeparable(2 * n, n), _DepthwiseSeparable(2 * n, n)
        self.e7 = _DepthwiseSeparable(2 * n, 3)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        small = F.interpolate(y, scale_factor=1.0 / self.scale, mode="bilinear", align_corners=False)
        x1 = torch.relu(self.e1(small))
        x2 = torch.relu(self.e2(x1))
        x3 = torch.relu(self.e3(x2))
        x4 = torch.relu(self.e4(x3))
        x5 = torch.relu(self.e5(torch.cat([x3, x4], 1)))
        x6 = torch.relu(self.e6(torch.cat([x2, x5], 1)))
        r = torch.tanh(self.e7(torch.cat([x1, x6], 1)))
        r = F.interpolate(r, size=y.shape[-2:], mode="bilinear", align_corners=False)
        x = y
        for _ in range(self.iterations):
            x = x + r * (x * x - x)
        return x.clamp(0.0, 1.0)


class AODNet(nn.Module):
    """AOD-Net: K(y) from five full-resolution convs; J = ReLU(K·y − K + 1)."""

    task = "dehaze"

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = _conv(3, 3, 1), _conv(3, 3, 3)
        self.c3, self.c4 = _conv(6, 3, 5), _conv(6, 3, 7)
        self.c5 = _conv(12, 3, 3)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        x1 = torch.relu(self.c1(y))
        x2 = torch.relu(self.c2(x1))
        x3 = torch.relu(self.c3(torch.cat([x1, x2], 1)))
        x4 = torch.relu(self.c4(torch.cat([x2, x3], 1)))
        k = torch.relu(self.c5(torch.cat([x1, x2, x3, x4], 1)))
        return torch.relu(k * y - k + 1.0).clamp(0.0, 1.0)


class PhysicalNN(nn.Module):
    """PhysicalNN: background light A (global) and transmission t; J = (y − A)·t + A."""

    task = "underwater"

    def __init__(self) -> None:
        super().__init__()
        self.a_net = nn.Sequential(
            _conv(3, 3, 3), nn.PReLU(), _conv(3, 3, 3), nn.PReLU(), nn.AdaptiveAvgPool2d(1),
            _conv(3, 3, 1), nn.PReLU(), _conv(3, 3, 1), nn.PReLU(),
        )
        self.t_net = nn.Sequential(
            _conv(6, 8, 3), nn.PReLU(), _conv(8, 8, 3, 2), nn.PReLU(), _conv(8, 8, 3, 5), nn.PReLU(),
            _conv(8, 3, 3), nn.PReLU(),
        )

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        a = self.a_net(y)
        t = self.t_net(torch.cat([y * 0 + a, y], 1))
        return ((y - a) * t + a).clamp(0.0, 1.0)


@dataclass(frozen=True)
class Peer:
    """One fast peer: how to build its inference architecture and what that architecture is.

    ``parameters`` is the published model's count (the re-implementation is checked against
    it); ``peers_md`` the row name in ``shared/PEERS.md``; ``architecture`` the one-paragraph
    description of what is re-built (the module docstring's table); ``recipe`` how the paper
    trained it (which a comparison that trains the architecture otherwise must say it does not use).
    """

    name: str
    task: str
    factory: Callable[[], nn.Module]
    parameters: int
    peers_md: str
    architecture: str
    recipe: str

    @property
    def label(self) -> str:
        """The paper's name for it ("SCI", "Zero-DCE++", …)."""
        return self.peers_md.split(" (")[0]


PEERS: Registry[Peer] = Registry("peer", ConfigError, hint="hbl_edge.peers")
for _peer in (
    Peer("sci", "lowlight", SCI, 258, "SCI (medium)",
         "SCI (Ma et al., CVPR 2022) illumination net 'medium': conv 3x3 3->3 + ReLU, one residual block "
         "(conv 3x3 3->3 + BN + ReLU), conv 3x3 3->3 + sigmoid; L = clamp(out + y, 1e-4, 1), x = clamp(y / L, 0, 1)",
         "unsupervised: no reference images, self-calibrated illumination learning"),
    Peer("zerodce++", "lowlight", ZeroDCEPP, 10_561, "Zero-DCE++ (net at 1/12 scale)",
         "Zero-DCE++ (Li et al., TPAMI 2021): bilinear down 12x, 7 depthwise-separable 3x3 convs (32 wide, skip "
         "concats 3+4, 2+5, 1+6), tanh, bilinear up, 8 curve iterations x <- x + r (x^2 - x)",
         "zero-reference: no paired images, non-reference losses (exposure, colour, spatial consistency, smoothness)"),
    Peer("aodnet", "dehaze", AODNet, 1_761, "AOD-Net",
         "AOD-Net (Li et al., ICCV 2017): 5 full-resolution convs 1x1, 3x3, 5x5, 7x7, 3x3 with concats give K; "
         "J = ReLU(K y - K + 1)",
         "supervised, MSE on synthetic hazy/clean pairs"),
    Peer("physicalnn", "underwater", PhysicalNN, 2_027, "PhysicalNN",
         "PhysicalNN (Chen et al., TCSVT 2020): A-net (2 convs 3x3, PReLU, global average, 2 convs 1x1) and t-net "
         "(4 convs 3x3 6->8->8->8->3, dilations 1, 2, 5, 1, PReLU) on [A, y]; J = clamp((y - A) t + A)",
         "supervised on paired underwater images"),
):
    PEERS.add(_peer.name, _peer)


def get_peer(name: str) -> Peer:
    """The registry entry; an unknown name raises ``ConfigError`` ("unknown peer 'x'; known: …")."""
    return PEERS.get(name)


def peer_module(name: str, seed: int = 0) -> nn.Module:
    """The peer's inference architecture in eval mode, random weights from ``seed``.

    BatchNorm running statistics are drawn too (mean ~ U(−0.1, 0.1), var ~ U(0.5, 1.5)), so
    an untrained module's timing is that of a non-degenerate network.
    """
    peer = get_peer(name)
    torch.manual_seed(seed)
    module = peer.factory().eval()
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return module


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def export_peer(module: nn.Module, path: str | Path, opset: int = 17) -> Path:
    """``path`` (an .onnx file) of ``module`` with the tracer and dynamic N/H/W of :func:`hbl_edge.export.export_onnx`.

    Input ``image`` and output ``enhanced`` (N×3×H×W float32), as our exported models, so the
    deploy runners take either.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    dims = {0: "batch", 2: "height", 3: "width"}
    was_training = module.training
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(), (example,), str(path), dynamo=False, export_params=True, do_constant_folding=True,
            opset_version=opset, input_names=["image"], output_names=["enhanced"],
            dynamic_axes={"image": dims, "enhanced": dims},
        )
    module.train(was_training)
    return path


__all__ = ["PEERS", "Peer", "AODNet", "PhysicalNN", "SCI", "ZeroDCEPP", "count_parameters", "export_peer",
           "get_peer", "peer_module"]
