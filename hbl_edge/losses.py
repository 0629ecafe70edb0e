"""Loss terms of the loss search space and their weighted combination (DESIGN §4).

ŷ = prediction, y = reference, both ``N×3×H×W`` float RGB in ``[0, 1]``.

========== =====================================================================================
term       definition
========== =====================================================================================
l1         mean |ŷ − y|
l2         mean (ŷ − y)²
color      0.1 × mean per-pixel angle, in degrees, between the RGB vectors of ŷ and y
ssim       10 × (1 − SSIM(ŷ, y)), Gaussian window 11, σ 1.5 (``kornia.metrics.ssim``)
vgg        L1 between VGG19 feature maps of ŷ and y (needs ``--vgg-weights PATH``)
lpips      LPIPS distance, AlexNet or VGG16 backbone, inputs scaled to [−1, 1] (needs ``--lpips-weights PATH``)
tv         total variation of ŷ: mean |neighbour differences|
laplacian  mean squared 3×3 Laplacian response of ŷ
========== =====================================================================================

Every term is a pure function (``l1_loss`` …) plus a small ``nn.Module``; the modules are
registered in :data:`LOSS_TERMS` by :func:`register_term` and combined by :class:`WeightedLoss`,
built by the one factory :func:`build_loss` from a :class:`LossSpec` (a plain versioned JSON
file, format ``hbl-loss/1``, or a ``"l1=1,ssim=0.5"`` string, see :func:`parse_loss_spec`).

Pretrained weights are never downloaded: ``vgg`` and ``lpips`` are built only from local files
given explicitly (:func:`load_vgg19_features`, :func:`load_lpips`); without them the term is left
out with one warning naming the flag that enables it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import kornia
import torch
from torch import nn

from .errors import LossSpecError
from .registry import Registry
from .runio import read_json

log = logging.getLogger(__name__)

__all__ = [
    "FORMAT",
    "LOSS_TERMS",
    "TermSpec",
    "register_term",
    "LossSpec",
    "parse_loss_spec",
    "WeightedLoss",
    "build_loss",
    "l1_loss",
    "l2_loss",
    "color_angle",
    "color_loss",
    "ssim_loss",
    "tv_loss",
    "laplacian_loss",
    "VGG19Features",
    "VGG_TAPS",
    "VGG_DEFAULT_TAPS",
    "load_vgg19_features",
    "vgg_loss",
    "VGGLoss",
    "LPIPS",
    "LPIPS_BACKBONES",
    "load_lpips",
    "lpips_distance",
    "LPIPSLoss",
]

FORMAT = "hbl-loss/1"
PathLike = Union[str, "os.PathLike[str]"]


# --------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------


def _check_image(x: Any, name: str, rgb: bool = False) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must have shape N×C×H×W, got {tuple(x.shape)}")
    if rgb and x.shape[1] != 3:
        raise ValueError(f"{name} must be RGB (N×3×H×W), got {x.shape[1]} channels")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")


def _check_pair(pred: Any, target: Any, rgb: bool = False) -> None:
    _check_image(pred, "pred", rgb)
    _check_image(target, "target", rgb)
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}"
        )


# --------------------------------------------------------------------------------------------
# weight-free terms: pure functions
# --------------------------------------------------------------------------------------------


def l1_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    r"""Mean absolute error :math:`\frac{1}{NCHW}\sum |\hat y - y|`.

    Args:
        pred, target: :math:`(N, C, H, W)`.

    Returns:
        scalar tensor.

    Example:
        >>> l1_loss(torch.zeros(1, 3, 2, 2), torch.full((1, 3, 2, 2), 0.5))
        tensor(0.5000)
    """
    _check_pair(pred, target)
    return (pred - target).abs().mean()


def l2_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    r"""Mean squared error :math:`\frac{1}{NCHW}\sum (\hat y - y)^2`.

    Args:
        pred, target: :math:`(N, C, H, W)`.

    Returns:
        scalar tensor.
    """
    _check_pair(pred, target)
    return (pred - target).pow(2).mean()


def color_angle(
    pred: torch.Tensor, target: torch.Tensor, shift: float = 1e-6, eps: float = 1e-12
) -> torch.Tensor:
    r"""Per-pixel angle, in degrees, between the RGB vectors of ``pred`` and ``target``.

    .. math::

        \theta = \operatorname{atan2}\!\Big(\sqrt{\lVert u \times v\rVert^2 + \epsilon^2} - \epsilon,\;
        u \cdot v\Big)\cdot\frac{180}{\pi},\qquad u = \hat y + \delta,\; v = y + \delta

    Why this form rather than ``acos`` of the cosine: ``atan2`` is well conditioned near 0°
    (``acos`` has an infinite slope at 1), the ε-smoothed cross-product norm has a finite
    gradient at ŷ = y (θ = 0 exactly), and the shift δ gives black pixels the grey direction so
    black vs. black is 0° instead of 0/0. Both change angles of non-black pixels by ~1e-6°.

    Args:
        pred, target: :math:`(N, 3, H, W)`.
        shift: δ added to every channel.
        eps: ε smoothing the cross-product norm.

    Returns:
        :math:`(N, H, W)` angles in degrees, in ``[0, 180]``.

    Reference:
        Hordley & Finlayson, "Reevaluation of color constancy algorithm performance", JOSA A
        2006 (angular error); as a loss, e.g. Wang et al., "Underexposed Photo Enhancement
        using Deep Illumination Estimation", CVPR 2019.
    """
    _check_pair(pred, target, rgb=True)
    u = pred + shift
    v = target + shift
    cross = torch.linalg.cross(u, v, dim=1)
    sin_part = torch.sqrt(cross.pow(2).sum(dim=1) + eps * eps) - eps
    cos_part = (u * v).sum(dim=1)
    return torch.rad2deg(torch.atan2(sin_part, cos_part))


def color_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    r"""``0.1 ×`` mean per-pixel RGB angle in degrees (:func:`color_angle`).

    Example: ŷ = (1, 0, 0), y = (0, 1, 0) everywhere gives 0.1 × 90 = 9.0.
    """
    return 0.1 * color_angle(pred, target).mean()


SSIM_WINDOW = 11  # kornia's Gaussian window has σ = 1.5 whatever its size


def ssim_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    r"""``10 × (1 − SSIM)``, SSIM averaged over the whole batch.

    SSIM map from ``kornia.metrics.ssim`` (Gaussian window 11, σ = 1.5, data range 1,
    reflect padding so any image size ≥ 6 works). Note ``kornia.losses.ssim_loss`` is
    ``(1 − SSIM)/2``, a different scale; this is the DESIGN §4 definition.

    Reference:
        Wang et al., "Image Quality Assessment: From Error Visibility to Structural Similarity",
        IEEE TIP 2004.
    """
    _check_pair(pred, target)
    if min(pred.shape[-2:]) <= SSIM_WINDOW // 2:
        raise ValueError(f"ssim needs H and W > {SSIM_WINDOW // 2}, got {tuple(pred.shape[-2:])}")
    smap = kornia.metrics.ssim(pred, target, SSIM_WINDOW, max_val=1.0, padding="same")
    return 10.0 * (1.0 - smap.mean())


def tv_loss(pred: torch.Tensor) -> torch.Tensor:
    r"""Anisotropic total variation, as means of neighbour differences.

    .. math::

        \mathrm{TV}(\hat y) = \operatorname{mean}_{n,c}\Big(
        \operatorname{mean}|\hat y_{i+1,j} - \hat y_{i,j}| + \operatorname{mean}|\hat y_{i,j+1} - \hat y_{i,j}|\Big)

    (``kornia.losses.total_variation(reduction="mean")`` averaged over batch and channels.)
    A 4×4 image whose two left columns are 0 and two right columns 1 has TV = 1/3.

    Args:
        pred: :math:`(N, C, H, W)`.
    """
    _check_image(pred, "pred")
    return kornia.losses.total_variation(pred, reduction="mean").mean()


def laplacian_loss(pred: torch.Tensor) -> torch.Tensor:
    r"""Mean squared 3×3 Laplacian response, per channel.

    Kernel: kornia's 8-neighbour stencil ``[[1,1,1],[1,-8,1],[1,1,1]]``, not normalised,
    reflect border (``kornia.filters.laplacian(x, 3, normalized=False)``). A unit delta in
    the middle of a 5×5 zero image gives (8² + 8·1²)/25 = 2.88.

    Args:
        pred: :math:`(N, C, H, W)`.
    """
    _check_image(pred, "pred")
    if min(pred.shape[-2:]) < 2:
        raise ValueError(f"laplacian needs H and W ≥ 2 (reflect border), got {tuple(pred.shape[-2:])}")
    return kornia.filters.laplacian(pred, 3, border_type="reflect", normalized=False).pow(2).mean()


# --------------------------------------------------------------------------------------------
# pretrained-weight loading
# --------------------------------------------------------------------------------------------


def _load_state_dict(path: PathLike, term: str, flag: str) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or ``.pth/.pt`` (``weights_only``) file."""
    p = Path(path)
    if not p.is_file():
        raise LossSpecError(f"{term} weight file not found: {p}; pass an existing local file with {flag}")
    suffix = p.suffix.lower()
    if suffix not in (".safetensors", ".pth", ".pt"):
        raise LossSpecError(
            f"{term} weight file {p} must end in .safetensors, .pth or .pt (got {suffix or 'no suffix'!r})"
        )
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            sd: Any = load_file(str(p))
        else:
            sd = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file or a pickle holding more than tensors: a user file problem
        reason = (str(exc).strip().splitlines() or [""])[0][:200]
        raise LossSpecError(
            f"cannot read {term} weight file {p} ({type(exc).__name__}: {reason}); "
            "expected a state dict saved with safetensors or torch.save"
        ) from exc
    # Some checkpoints wrap the state dict.
    if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise LossSpecError(f"{term} weight file {p} does not hold a flat state dict of tensors")
    return dict(sd)


def _fill(
    net: nn.Module,
    found: Mapping[str, torch.Tensor | None],
    path: PathLike,
    term: str,
    expected: str,
    file_key: Callable[[str], str] = str,
) -> None:
    """Copy ``found[name]`` into ``net``'s parameter ``name``, or fail saying what is missing/wrong.

    ``file_key`` maps a parameter name to the key the user's file should use; missing keys are
    reported per group (backbone ``features.*`` / heads) so one message says everything.
    """
    params = dict(net.named_parameters())
    missing = [file_key(k) for k, v in found.items() if v is None]
    if missing:
        groups: dict[str, list[str]] = {}
        for k in missing:
            groups.setdefault("backbone" if k.startswith("features.") else "head", []).append(k)
        parts = [
            f"{len(ks)} {g} key{'s' if len(ks) > 1 else ''} ({', '.join(ks[:3])}{', …' if len(ks) > 3 else ''})"
            for g, ks in groups.items()
        ]
        raise LossSpecError(f"{term} weight file {path} lacks {' and '.join(parts)}; the file should hold {expected}")
    for name, value in found.items():
        assert value is not None
        if tuple(value.shape) != tuple(params[name].shape):
            raise LossSpecError(
                f"{term} weight file {path}: {file_key(name)} has shape {tuple(value.shape)}, expected "
                f"{tuple(params[name].shape)}; the file should hold {expected}"
            )
    with torch.no_grad():
        for name, value in found.items():
            assert value is not None
            params[name].copy_(value.to(params[name].dtype))


def _vgg_features(cfg: Sequence[int | str], init_weights: bool = True) -> nn.Sequential:
    """torchvision's ``vgg*.features`` layout: conv3×3(pad 1)+ReLU per int, MaxPool2d(2) per 'M'.

    ``init_weights=False`` allocates the convs uninitialised (built on the meta device), for
    loaders that overwrite every parameter: it saves the random init of ~20 M weights.
    """
    device = None if init_weights else torch.device("meta")
    layers: list[nn.Module] = []
    c_in = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            assert isinstance(v, int)
            layers += [nn.Conv2d(c_in, v, kernel_size=3, padding=1, device=device), nn.ReLU(inplace=False)]
            c_in = v
    seq = nn.Sequential(*layers)
    return seq if init_weights else seq.to_empty(device="cpu")


def _freeze(m: nn.Module) -> nn.Module:
    for p in m.parameters():
        p.requires_grad_(False)
    return m.eval()


def _conv_keys(seq: nn.Sequential) -> list[int]:
    return [i for i, m in enumerate(seq) if isinstance(m, nn.Conv2d)]


def _find_backbone(
    features: nn.Sequential, sd: Mapping[str, torch.Tensor], prefixes: Callable[[int], list[str]]
) -> dict[str, torch.Tensor | None]:
    """``features.N.weight/bias`` → the tensor found in ``sd`` under one of ``prefixes(N)`` (or None)."""
    found: dict[str, torch.Tensor | None] = {}
    for i in _conv_keys(features):
        for kind in ("weight", "bias"):
            value = None
            for prefix in prefixes(i):
                value = sd.get(f"{prefix}{kind}")
                if value is not None:
                    break
            found[f"features.{i}.{kind}"] = value
    return found


# --------------------------------------------------------------------------------------------
# VGG19 perceptual loss
# --------------------------------------------------------------------------------------------

VGG19_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
    512, 512, 512, 512, "M", 512, 512, 512, 512, "M",
)  # fmt: skip
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Candidate taps per block: every ReLU output of the block, as (name, index in ``features``).
VGG_TAPS: tuple[tuple[tuple[str, int], ...], ...] = (
    (("relu1_1", 1), ("relu1_2", 3)),
    (("relu2_1", 6), ("relu2_2", 8)),
    (("relu3_1", 11), ("relu3_2", 13), ("relu3_3", 15), ("relu3_4", 17)),
    (("relu4_1", 20), ("relu4_2", 22), ("relu4_3", 24), ("relu4_4", 26)),
    (("relu5_1", 29), ("relu5_2", 31), ("relu5_3", 33), ("relu5_4", 35)),
)
VGG_TAP_INDEX: dict[str, int] = {name: i for block in VGG_TAPS for name, i in block}
VGG_N_BLOCKS = len(VGG_TAPS)
VGG_TAPS_PER_BLOCK = max(len(b) for b in VGG_TAPS)
#: Default fixed taps: the last ReLU of each block.
VGG_DEFAULT_TAPS: tuple[str, ...] = tuple(block[-1][0] for block in VGG_TAPS)
VGG_EXPECTED = (
    "a torchvision vgg19 state dict: keys features.N.weight/bias (or N.weight/bias) for the 16 "
    "convs N = 0,2,5,7,10,12,14,16,19,21,23,25,28,30,32,34"
)


class VGG19Features(nn.Module):
    r"""Frozen VGG19 ``features`` stack with torchvision's layer indexing, ImageNet-normalised input.

    ``self.features[N]`` is torchvision's ``vgg19().features[N]``, so a torchvision state dict
    loads unchanged (:func:`load_vgg19_features`). Parameters never require grad and the module
    stays in eval mode (``train()`` is a no-op), but gradients flow to the input.

    ``init_weights=False`` leaves the convs uninitialised (for :func:`load_vgg19_features`).

    Args:
        x: :math:`(N, 3, H, W)` RGB in ``[0, 1]``.
        indices: the ``features`` indices whose outputs to return.

    Returns:
        dict index → feature map; computation stops after the deepest requested index.

    Reference:
        Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
        Recognition", ICLR 2015.
    """

    def __init__(self, init_weights: bool = True) -> None:
        super().__init__()
        self.features = _vgg_features(VGG19_CFG, init_weights)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        _freeze(self)

    def train(self, mode: bool = True) -> "VGG19Features":
        return super().train(False)

    def forward(self, x: torch.Tensor, indices: Sequence[int]) -> dict[int, torch.Tensor]:
        _check_image(x, "x", rgb=True)
        wanted = set(indices)
        last = max(wanted)
        h = (x - self.mean) / self.std
        out: dict[int, torch.Tensor] = {}
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in wanted:
                out[i] = h
            if i == last:
                break
        return out


def load_vgg19_features(path: PathLike) -> VGG19Features:
    """Build a frozen :class:`VGG19Features` from a local torchvision ``vgg19`` state dict.

    Accepts ``.safetensors`` or ``.pth/.pt``; keys ``features.N.weight/bias`` (a full
    ``torchvision.models.vgg19().state_dict()``; ``classifier.*`` is ignored) or ``N.weight/bias``
    (a ``.features`` state dict). Raises :class:`LossSpecError` naming what is missing.
    """
    sd = _load_state_dict(path, "vgg", "--vgg-weights PATH")
    net = VGG19Features(init_weights=False)
    found = _find_backbone(net.features, sd, lambda i: [f"features.{i}.", f"{i}."])
    _fill(net, found, path, "vgg", VGG_EXPECTED)
    return _freeze(net)  # type: ignore[return-value]


def _resolve_taps(taps: Sequence[str] | None) -> tuple[str, ...]:
    if taps is None:
        return VGG_DEFAULT_TAPS
    taps = tuple(dict.fromkeys(taps))
    if not taps:
        raise LossSpecError("vgg_taps is empty; give tap names such as " + ",".join(VGG_DEFAULT_TAPS))
    unknown = [t for t in taps if t not in VGG_TAP_INDEX]
    if unknown:
        raise LossSpecError(
            f"unknown vgg tap(s) {', '.join(map(repr, unknown))}; known: {', '.join(VGG_TAP_INDEX)}"
        )
    return taps


def _tap_mask(device: torch.device) -> torch.Tensor:
    mask = torch.zeros(VGG_N_BLOCKS, VGG_TAPS_PER_BLOCK, dtype=torch.bool, device=device)
    for b, block in enumerate(VGG_TAPS):
        mask[b, : len(block)] = True
    return mask


def vgg_tap_weights(tap_logits: torch.Tensor) -> torch.Tensor:
    """Per-block softmax over the valid candidates of ``tap_logits`` (padding entries get 0)."""
    if tap_logits.shape != (VGG_N_BLOCKS, VGG_TAPS_PER_BLOCK):
        raise ValueError(
            f"tap_logits must have shape ({VGG_N_BLOCKS}, {VGG_TAPS_PER_BLOCK}), got {tuple(tap_logits.shape)}"
        )
    mask = _tap_mask(tap_logits.device)
    return torch.softmax(tap_logits.masked_fill(~mask, float("-inf")), dim=1)


def vgg_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    net: VGG19Features,
    taps: Sequence[str] | None = None,
    tap_logits: torch.Tensor | None = None,
    target_features: Callable[[Callable[[], dict[int, torch.Tensor]], tuple[int, ...]], dict[int, torch.Tensor]] | None = None,
) -> torch.Tensor:
    r"""L1 distance between VGG19 feature maps of ``pred`` and ``target``.

    Fixed taps (``tap_logits is None``), with :math:`\phi_t` the output of tap *t*:

    .. math:: \mathcal L = \frac{1}{|T|}\sum_{t\in T} \operatorname{mean}|\phi_t(\hat y) - \phi_t(y)|

    with :math:`T` = ``taps`` or :data:`VGG_DEFAULT_TAPS` (relu1_2, relu2_2, relu3_4, relu4_4,
    relu5_4). Searched taps: ``tap_logits`` of shape ``(5, 4)`` (block × candidate; candidates
    are the block's ReLU outputs in order, :data:`VGG_TAPS`; blocks 1–2 have only two, their
    columns 2–3 are ignored) give a softmax-weighted mix within each block, averaged over blocks:

    .. math:: \mathcal L = \frac{1}{5}\sum_b \sum_j \operatorname{softmax}_j(\alpha_{b})\,
              \operatorname{mean}|\phi_{bj}(\hat y) - \phi_{bj}(y)|

    The target's features are computed without grad (``target_features(compute, indices)``,
    when given, may return them from a cache instead of calling ``compute()``).

    Args:
        pred, target: :math:`(N, 3, H, W)` in ``[0, 1]``, H and W ≥ 16 for the deepest block.

    Reference:
        Johnson et al., "Perceptual Losses for Real-Time Style Transfer and Super-Resolution", ECCV 2016.
    """
    _check_pair(pred, target, rgb=True)

    def features_of_target(idx: list[int]) -> dict[int, torch.Tensor]:
        def compute() -> dict[int, torch.Tensor]:
            with torch.no_grad():
                return net(target, idx)

        return compute() if target_features is None else target_features(compute, tuple(idx))

    if tap_logits is None:
        names = _resolve_taps(taps)
        idx = [VGG_TAP_INDEX[n] for n in names]
        fp = net(pred, idx)
        ft = features_of_target(idx)
        return torch.stack([(fp[i] - ft[i]).abs().mean() for i in idx]).mean()
    weights = vgg_tap_weights(tap_logits)
    idx = [i for block in VGG_TAPS for _, i in block]
    fp = net(pred, idx)
    ft = features_of_target(idx)
    per_block = []
    for b, block in enumerate(VGG_TAPS):
        d = torch.stack([(fp[i] - ft[i]).abs().mean() for _, i in block])
        per_block.append((weights[b, : len(block)] * d).sum())
    return torch.stack(per_block).mean()


class TargetFeatureCache:
    """The frozen network's features of the last few targets, so passes over one batch
    compute them once.

    A second-order search step evaluates the loss five times, four of them on the same target
    tensor (the virtual step, the two finite-difference points and the lower step): the
    target's VGG/LPIPS features are the same each time. Entries are keyed by the tensor object
    itself (a weak reference: a freed tensor whose memory is reused never matches), its
    version counter (an in-place change invalidates) and the requested taps; a target that
    requires grad is never cached (its features must stay in the graph).
    """

    def __init__(self, size: int = 2) -> None:
        self.size = size
        self._entries: list[tuple[Any, int, Any, Any]] = []

    def get(self, target: torch.Tensor, key: Any, compute: Callable[[], Any]) -> Any:
        if target.requires_grad:
            return compute()
        for ref, version, k, value in self._entries:
            if ref() is target and version == target._version and k == key:
                return value
        value = compute()
        live = [e for e in self._entries if e[0]() is not None][-(self.size - 1):] if self.size > 1 else []
        self._entries = [*live, (weakref.ref(target), target._version, key, value)]
        return value

    def clear(self) -> None:
        self._entries = []


class VGGLoss(nn.Module):
    """Module form of :func:`vgg_loss`; ``search_taps=True`` adds learnable ``tap_logits`` (5×4, zeros).

    The target's features are cached (:class:`TargetFeatureCache`) across calls on the same
    target tensor."""

    def __init__(self, net: VGG19Features, taps: Sequence[str] | None = None, search_taps: bool = False) -> None:
        super().__init__()
        self.net = net
        self.cache = TargetFeatureCache()
        self.taps = _resolve_taps(taps)
        self.tap_logits: nn.Parameter | None = (
            nn.Parameter(torch.zeros(VGG_N_BLOCKS, VGG_TAPS_PER_BLOCK)) if search_taps else None
        )

    def chosen_taps(self) -> tuple[str, ...]:
        """The fixed taps in use, or the arg-max tap of each block when searching."""
        if self.tap_logits is None:
            return self.taps
        w = vgg_tap_weights(self.tap_logits.detach())
        return tuple(VGG_TAPS[b][int(w[b].argmax())][0] for b in range(VGG_N_BLOCKS))

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return vgg_loss(pred, target, self.net, self.taps, self.tap_logits,
                        target_features=lambda compute, idx: self.cache.get(target, idx, compute))


# --------------------------------------------------------------------------------------------
# LPIPS (AlexNet or VGG16 backbone)
# --------------------------------------------------------------------------------------------

VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip


def _alexnet_features(init_weights: bool = True) -> nn.Sequential:
    """torchvision's ``alexnet().features`` layout, so its state-dict keys load unchanged.

    0 conv 11×11/4 (pad 2) 3→64, 1 ReLU, 2 maxpool 3/2, 3 conv 5×5 (pad 2) 64→192, 4 ReLU,
    5 maxpool 3/2, 6 conv 3×3 192→384, 7 ReLU, 8 conv 3×3 384→256, 9 ReLU, 10 conv 3×3
    256→256, 11 ReLU, 12 maxpool 3/2. ``init_weights=False``: allocated uninitialised.
    """
    device = None if init_weights else torch.device("meta")

    def conv(c_in: int, c_out: int, k: int, stride: int = 1, pad: int = 1) -> nn.Conv2d:
        return nn.Conv2d(c_in, c_out, k, stride=stride, padding=pad, device=device)

    seq = nn.Sequential(
        conv(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
        conv(64, 192, 5, 1, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
        conv(192, 384, 3), nn.ReLU(), conv(384, 256, 3), nn.ReLU(), conv(256, 256, 3), nn.ReLU(),
        nn.MaxPool2d(3, 2),
    )  # fmt: skip
    return seq if init_weights else seq.to_empty(device="cpu")


@dataclass(frozen=True)
class LPIPSBackbone:
    """One LPIPS backbone: its ``features`` stack, tap indices, tap widths and the slices of
    the lpips package (``net.slice{k}`` holds ``features[a:b]`` under their global index)."""

    name: str
    build: Callable[[bool], nn.Sequential]
    taps: tuple[int, ...]
    channels: tuple[int, ...]
    slices: tuple[tuple[int, int], ...]
    first_conv_shape: tuple[int, ...]  # features.0.weight: tells the backbones apart in a file

    def slice_of(self, i: int) -> int:
        return next(k + 1 for k, (a, b) in enumerate(self.slices) if a <= i < b)


LPIPS_BACKBONES: Registry[LPIPSBackbone] = Registry(
    "LPIPS backbone", LossSpecError, "pass --lpips-net alex or vgg, or leave it to the weight file"
)
LPIPS_BACKBONES.add("alex", LPIPSBackbone(
    "alex", _alexnet_features, taps=(1, 4, 7, 9, 11), channels=(64, 192, 384, 256, 256),
    slices=((0, 2), (2, 5), (5, 8), (8, 10), (10, 12)), first_conv_shape=(64, 3, 11, 11),
))  # fmt: skip
LPIPS_BACKBONES.add("vgg", LPIPSBackbone(
    "vgg", lambda init: _vgg_features(VGG16_CFG, init), taps=(3, 8, 15, 22, 29),
    channels=(64, 128, 256, 512, 512), slices=((0, 4), (4, 9), (9, 16), (16, 23), (23, 30)),
    first_conv_shape=(64, 3, 3, 3),
))  # fmt: skip

#: LPIPS taps of the VGG16 backbone in torchvision vgg16 ``features`` indexing: relu1_2, relu2_2,
#: relu3_3, relu4_3, relu5_3 (kept for callers of the VGG-only version).
LPIPS_TAPS = LPIPS_BACKBONES.get("vgg").taps
LPIPS_CHANNELS = LPIPS_BACKBONES.get("vgg").channels
#: lpips' ScalingLayer constants (applied to inputs already in [−1, 1]).
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
_LPIPS_SLICE_OF = {i: LPIPS_BACKBONES.get("vgg").slice_of(i) for i in range(30)}


def _lpips_expected(backbone: LPIPSBackbone, features: nn.Sequential) -> str:
    convs = ",".join(str(i) for i in _conv_keys(features))
    tv = "alexnet" if backbone.name == "alex" else "vgg16"
    return (
        f"the {backbone.name} backbone as torchvision {tv} keys features.N.weight/bias "
        f"(N = {convs}; N.* or lpips' net.sliceK.N.* also accepted) and the 5 heads as in the lpips "
        f"package (weights/v0.1/{backbone.name}.pth), lin0.model.1.weight … lin4.model.1.weight "
        "(or lins.K.model.1.weight)"
    )


class LPIPS(nn.Module):
    r"""LPIPS distance ("lin" variant), frozen, with an AlexNet or a VGG16 backbone.

    .. math::

        d(x, x_0) = \sum_l \frac{1}{H_l W_l}\sum_{h,w}
        \big\lVert w_l \odot (\hat f^l_{hw} - \hat f^l_{0,hw}) \big\rVert_2^2,\qquad
        \hat f = f / (\lVert f \rVert_{2,\text{channels}} + 10^{-10})

    where :math:`f^l` are the five tapped ReLU activations of the backbone (AlexNet: relu1 …
    relu5; VGG16: relu1_2 … relu5_3) on :math:`(2x - 1 - \text{shift}) / \text{scale}` and
    :math:`w_l \ge 0` the 1×1 "lin" heads. AlexNet (the lpips package's default) costs about
    1/25 of VGG16 per image pair. ``init_weights=False`` leaves the backbone uninitialised (for
    :func:`load_lpips`).

    Args:
        x, x0: :math:`(N, 3, H, W)` RGB in ``[0, 1]`` (scaled to ``[−1, 1]`` inside); the
            AlexNet backbone needs H, W ≥ 31 (a stride-4 conv and two 3/2 max-pools before
            relu5), VGG16 H, W ≥ 16.

    Returns:
        :math:`(N,)` distances.

    Reference:
        Zhang et al., "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric",
        CVPR 2018; weights layout of https://github.com/richzhang/PerceptualSimilarity.
    """

    def __init__(self, init_weights: bool = True, net: str = "vgg") -> None:
        super().__init__()
        self.backbone = LPIPS_BACKBONES.get(net)
        self.features = self.backbone.build(init_weights)[: self.backbone.taps[-1] + 1]
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in self.backbone.channels)
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        _freeze(self)

    @property
    def net(self) -> str:
        return self.backbone.name

    def train(self, mode: bool = True) -> "LPIPS":
        return super().train(False)

    def _feats(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = ((2.0 * x - 1.0) - self.shift) / self.scale
        taps = self.backbone.taps
        out = []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in taps:
                out.append(h / (h.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10))
        return out

    def forward(self, x: torch.Tensor, x0: torch.Tensor,
                x0_features: Optional[list[torch.Tensor]] = None) -> torch.Tensor:
        """``x0_features``: :meth:`tap_features` of ``x0``, when the caller has them already."""
        _check_pair(x, x0, rgb=True)
        d = x.new_zeros(x.shape[0])
        f0s = self._feats(x0) if x0_features is None else x0_features
        for head, f, f0 in zip(self.heads, self._feats(x), f0s):
            d = d + head((f - f0).pow(2)).mean(dim=(1, 2, 3))
        return d

    def tap_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The normalised tap features of ``x`` (what :meth:`forward` compares)."""
        return self._feats(x)

    def extra_repr(self) -> str:
        return f"net={self.net!r}"


def _detect_lpips_net(sd: Mapping[str, torch.Tensor]) -> str | None:
    """The backbone whose first conv has the shape of the file's (None when none matches)."""
    for key in ("features.0.weight", "0.weight", "net.slice1.0.weight"):
        if key in sd:
            shape = tuple(sd[key].shape)
            return next((n for n, b in LPIPS_BACKBONES.items() if b.first_conv_shape == shape), None)
    return None


def load_lpips(path: PathLike, net: str | None = None) -> LPIPS:
    """Build a frozen :class:`LPIPS` from ONE local file holding backbone and heads.

    ``net``: ``"alex"`` or ``"vgg"``; ``None`` reads the backbone off the file (the shape of
    its first conv: 11×11 is AlexNet, 3×3 is VGG16; VGG16 when the file has no backbone key).
    Expected keys: the backbone as in ``torchvision.models.alexnet().state_dict()`` or
    ``vgg16().state_dict()`` (``features.N.weight/bias``; ``classifier.*`` ignored) and the heads
    as in the lpips package's ``weights/v0.1/{alex,vgg}.pth`` (``lin0.model.1.weight`` …
    ``lin4.model.1.weight``, shapes ``[1, C, 1, 1]``). A full ``lpips.LPIPS(net=...).state_dict()``
    (``net.sliceK.N.*``, ``lins.K.model.1.weight``) also loads. To combine the two official
    files::

        sd = torchvision_alexnet_state_dict | torch.load("alex.pth")
        safetensors.torch.save_file(sd, "lpips_alex.safetensors")
    """
    sd = _load_state_dict(path, "lpips", "--lpips-weights PATH")
    detected = _detect_lpips_net(sd)
    if net is None:
        net = detected or "vgg"
    backbone = LPIPS_BACKBONES.get(net)
    if detected is not None and detected != net:
        raise LossSpecError(
            f"lpips weight file {path} holds the {detected} backbone, not {net}; pass --lpips-net {detected} "
            "or a file with the other backbone"
        )
    model = LPIPS(init_weights=False, net=net)
    found = _find_backbone(
        model.features, sd, lambda i: [f"features.{i}.", f"{i}.", f"net.slice{backbone.slice_of(i)}.{i}."]
    )
    for k in range(len(backbone.channels)):
        found[f"heads.{k}.weight"] = sd.get(f"lin{k}.model.1.weight", sd.get(f"lins.{k}.model.1.weight"))

    def file_key(name: str) -> str:  # heads.K.weight is lin{K}.model.1.weight in the lpips package
        return f"lin{name.split('.')[1]}.model.1.weight" if name.startswith("heads.") else name

    _fill(model, found, path, "lpips", _lpips_expected(backbone, model.features), file_key)
    return _freeze(model)  # type: ignore[return-value]


def lpips_distance(pred: torch.Tensor, target: torch.Tensor, net: LPIPS) -> torch.Tensor:
    """Batch-mean LPIPS distance (scalar); see :class:`LPIPS` for the per-image values."""
    return net(pred, target).mean()


class LPIPSLoss(nn.Module):
    """Module form of :func:`lpips_distance`; the target's features are cached across calls on
    the same target tensor (:class:`TargetFeatureCache`)."""

    def __init__(self, net: LPIPS) -> None:
        super().__init__()
        self.net = net
        self.cache = TargetFeatureCache()

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        def compute() -> list[torch.Tensor]:
            with torch.no_grad():
                return self.net.tap_features(target)

        f0 = None if target.requires_grad else self.cache.get(target, "lpips", compute)
        return self.net(pred, target, x0_features=f0).mean()


# --------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------


TermFactory = Callable[..., nn.Module]


@dataclass(frozen=True)
class TermSpec:
    """A registered loss term.

    ``make(weights_path, **options)`` builds the term's module ``(pred, target) -> scalar``;
    ``weights_flag`` is the CLI flag supplying the weight file (None for weight-free terms).
    """

    name: str
    make: TermFactory
    weights_flag: str | None = None
    doc: str = ""


LOSS_TERMS: dict[str, TermSpec] = {}


def register_term(name: str, weights_flag: str | None = None) -> Callable[[TermFactory], TermFactory]:
    """Register a term factory ``make(weights_path, **options) -> nn.Module`` under ``name``."""

    def deco(make: TermFactory) -> TermFactory:
        if name in LOSS_TERMS:
            raise ValueError(f"loss term {name!r} registered twice")
        doc = (make.__doc__ or "").strip().splitlines()[0] if make.__doc__ else ""
        LOSS_TERMS[name] = TermSpec(name, make, weights_flag, doc)
        return make

    return deco


class _PairTerm(nn.Module):
    """Thin module around a pure ``fn(pred, target)`` term."""

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.fn(pred, target)

    def extra_repr(self) -> str:
        return self.fn.__name__


class _PredTerm(_PairTerm):
    """Thin module around a regulariser ``fn(pred)`` (the target is ignored)."""

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.fn(pred)  # type: ignore[call-arg]


@register_term("l1")
def _make_l1(weights_path: PathLike | None = None, **_: Any) -> nn.Module:
    """mean |ŷ − y|"""
    return _PairTerm(l1_loss)


@register_term("l2")
def _make_l2(weights_path: PathLike | None = None, **_: Any) -> nn.Module:
    """mean (ŷ − y)²"""
    return _PairTerm(l2_loss)


@register_term("color")
def _make_color(weights_path: PathLike | None = None, **_: Any) -> nn.Module:
    """0.1 × mean per-pixel RGB angle in degrees"""
    return _PairTerm(color_loss)


@register_term("ssim")
def _make_ssim(weights_path: PathLike | None = None, **_: Any) -> nn.Module:
    """10 × (1 − SSIM), Gaussian window 11, σ 1.5"""
    return _PairTerm(ssim_loss)


@register_term("vgg", weights_flag="--vgg-weights PATH")
def _make_vgg(
    weights_path: PathLike | None = None, vgg_taps: Sequence[str] | None = None, search_vgg_taps: bool = False, **_: Any
) -> nn.Module:
    """L1 between VGG19 features (fixed taps, or softmax-searched taps per block)"""
    if weights_path is None:
        raise LossSpecError("the vgg term needs a VGG19 weight file; pass --vgg-weights PATH")
    return VGGLoss(load_vgg19_features(weights_path), vgg_taps, search_vgg_taps)


@register_term("lpips", weights_flag="--lpips-weights PATH")
def _make_lpips(weights_path: PathLike | None = None, lpips_net: str | None = None, **_: Any) -> nn.Module:
    """LPIPS distance (AlexNet or VGG16 backbone), inputs scaled to [−1, 1]"""
    if weights_path is None:
        raise LossSpecError("the lpips term needs an LPIPS weight file; pass --lpips-weights PATH")
    return LPIPSLoss(load_lpips(weights_path, lpips_net))


@register_term("tv")
def _make_tv(weights_path: PathLike | None = None, **_: Any) -> nn.Module:
    """total variation of ŷ (mean |neighbour differences|)"""
    return _PredTerm(tv_loss)


@register_term("laplacian")
def _make_laplacian(weights_path: PathLike | None = None, **_: Any) -> nn.Module:
    """mean squared 3×3 Laplacian response of ŷ"""
    return _PredTerm(laplacian_loss)


# --------------------------------------------------------------------------------------------
# loss spec
# --------------------------------------------------------------------------------------------

_SPEC_KEYS = {"format", "terms", "vgg_taps", "objective", "provenance"}


def _known_terms() -> str:
    return ", ".join(LOSS_TERMS)


@dataclass
class LossSpec:
    """Which loss terms, with which weights λ_k ≥ 0 (file format ``hbl-loss/1``).

    ``terms`` keeps order (the order of :attr:`WeightedLoss.names`). ``vgg_taps`` optionally
    fixes the VGG taps (names from :data:`VGG_TAPS`, e.g. the arg-max of a tap search);
    ``objective`` names the upper-level objective that produced the spec; ``provenance`` is
    free-form metadata (data, seed, version) written by the search.
    """

    terms: dict[str, float]
    vgg_taps: list[str] | None = None
    objective: str | None = None
    provenance: dict[str, Any] | None = field(default=None)

    def __post_init__(self) -> None:
        self.terms = {str(k): v for k, v in dict(self.terms).items()}
        self.validate()

    def validate(self) -> None:
        if not self.terms:
            raise LossSpecError(f"the loss spec has no terms; give some of: {_known_terms()}")
        for name, w in self.terms.items():
            if name not in LOSS_TERMS:
                raise LossSpecError(f"unknown loss term {name!r}; known terms: {_known_terms()}")
            if isinstance(w, bool) or not isinstance(w, (int, float)):
                raise LossSpecError(f"weight of loss term {name!r} must be a number, got {w!r}")
            if math.isnan(w) or math.isinf(w) or w < 0:
                raise LossSpecError(f"weight of loss term {name!r} must be a finite number ≥ 0, got {w}")
            self.terms[name] = float(w)
        if all(w == 0 for w in self.terms.values()):
            raise LossSpecError("every loss weight is 0; give at least one term a positive weight")
        if self.vgg_taps is not None:
            if isinstance(self.vgg_taps, str) or not isinstance(self.vgg_taps, (list, tuple)):
                raise LossSpecError(f"vgg_taps must be a list of tap names, got {self.vgg_taps!r}")
            self.vgg_taps = list(_resolve_taps(self.vgg_taps))
        if self.objective is not None and not isinstance(self.objective, str):
            raise LossSpecError(f"objective must be a string, got {self.objective!r}")
        if self.provenance is not None and not isinstance(self.provenance, dict):
            raise LossSpecError(f"provenance must be a JSON object, got {type(self.provenance).__name__}")

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"format": FORMAT, "terms": dict(self.terms)}
        if self.vgg_taps is not None:
            d["vgg_taps"] = list(self.vgg_taps)
        if self.objective is not None:
            d["objective"] = self.objective
        if self.provenance is not None:
            d["provenance"] = self.provenance
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LossSpec":
        if not isinstance(d, Mapping):
            raise LossSpecError(f"a loss spec must be a JSON object, got {type(d).__name__}")
        fmt = d.get("format")
        if fmt != FORMAT:
            raise LossSpecError(f"unknown loss spec format {fmt!r}; this version of hbl-edge reads {FORMAT!r}")
        extra = sorted(set(d) - _SPEC_KEYS)
        if extra:
            allowed = ", ".join(sorted(_SPEC_KEYS))
            raise LossSpecError(f"unknown key(s) {', '.join(extra)} in loss spec; allowed: {allowed}")
        terms = d.get("terms")
        if not isinstance(terms, Mapping):
            raise LossSpecError('loss spec needs "terms": {"name": weight, ...}')
        return cls(
            terms=dict(terms),
            vgg_taps=d.get("vgg_taps"),
            objective=d.get("objective"),
            provenance=d.get("provenance"),
        )

    def save(self, path: PathLike) -> Path:
        p = Path(path)
        p.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return p

    def __str__(self) -> str:
        return ",".join(f"{k}={v:g}" for k, v in self.terms.items())


def _parse_text(text: str) -> LossSpec:
    terms: dict[str, float] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, value = item.partition("=")
        name = name.strip()
        if name not in LOSS_TERMS:
            raise LossSpecError(f"unknown loss term {name!r}; known terms: {_known_terms()}")
        if name in terms:
            raise LossSpecError(f"loss term {name!r} given twice in {text!r}")
        if not sep:
            terms[name] = 1.0
            continue
        try:
            terms[name] = float(value)
        except ValueError:
            raise LossSpecError(
                f"bad weight {value.strip()!r} for loss term {name!r}; write e.g. 'l1=1,ssim=0.5'"
            ) from None
    return LossSpec(terms)


def parse_loss_spec(text_or_path: Union[str, "os.PathLike[str]", LossSpec]) -> LossSpec:
    """Parse ``"l1=1,ssim=0.5"`` (bare ``"l1"`` means weight 1) or a ``loss.json`` path.

    A :class:`pathlib.Path`, an existing file, or a string ending in ``.json`` is read as an
    ``hbl-loss/1`` file. Every problem raises :class:`LossSpecError` with a one-line message.

    Example:
        >>> parse_loss_spec("l1, ssim=0.5").terms
        {'l1': 1.0, 'ssim': 0.5}
    """
    if isinstance(text_or_path, LossSpec):
        return text_or_path
    text = str(text_or_path).strip()
    is_path = isinstance(text_or_path, os.PathLike) or text.lower().endswith(".json") or "/" in text or os.sep in text
    if not is_path:
        return _parse_text(text)
    p = Path(text_or_path)
    if not p.is_file():
        raise LossSpecError(
            f"loss spec file not found: {p}; give an existing loss.json or a string like 'l1=1,ssim=0.5'"
        )
    data = read_json(p, LossSpecError, "loss spec")
    try:
        return LossSpec.from_dict(data)
    except LossSpecError as exc:
        raise LossSpecError(f"{p}: {exc}") from None


# --------------------------------------------------------------------------------------------
# weighted combination
# --------------------------------------------------------------------------------------------


class WeightedLoss(nn.Module):
    r"""The lower-level loss :math:`\sum_k \lambda_k \ell_k(\hat y, y)` over the active terms.

    Attributes:
        names: the active term names, in spec order.
        terms: ``nn.ModuleDict`` name → term module.
        weights: ``nn.Parameter`` of shape ``[len(names)]``, the λ_k (≥ 0). ``requires_grad`` is
            False by default; the loss search turns it on and calls :meth:`project_` after each
            optimiser step.

    ``forward(pred, target)`` returns ``(total, {name: unweighted term value})``; the total is
    differentiable w.r.t. ``pred``, ``weights`` and, when searching, the VGG ``tap_logits``.
    """

    def __init__(self, terms: Mapping[str, nn.Module], weights: Sequence[float]) -> None:
        super().__init__()
        if not terms:
            raise LossSpecError(f"no loss terms left to use; give some of: {_known_terms()}")
        if len(weights) != len(terms):
            raise ValueError(f"{len(terms)} terms but {len(weights)} weights")
        self.names: list[str] = list(terms)
        self.terms = nn.ModuleDict(dict(terms))
        self.weights = nn.Parameter(torch.tensor([float(w) for w in weights]), requires_grad=False)

    @torch.no_grad()
    def project_(self) -> "WeightedLoss":
        """Project λ onto the non-negative orthant in place (after each search step)."""
        self.weights.clamp_min_(0.0)
        return self

    @property
    def vgg_tap_logits(self) -> nn.Parameter | None:
        """The VGG tap logits (shape 5×4) when the vgg term searches its taps, else None."""
        term = self.terms["vgg"] if "vgg" in self.terms else None
        return term.tap_logits if isinstance(term, VGGLoss) else None

    def to_spec(self, objective: str | None = None, provenance: dict[str, Any] | None = None) -> LossSpec:
        """The current weights (and chosen VGG taps) as a :class:`LossSpec`."""
        w = self.weights.detach().clamp_min(0).tolist()
        vgg = self.terms["vgg"] if "vgg" in self.terms else None
        taps = list(vgg.chosen_taps()) if isinstance(vgg, VGGLoss) else None
        return LossSpec(dict(zip(self.names, w)), vgg_taps=taps, objective=objective, provenance=provenance)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        _check_pair(pred, target)
        values = {name: self.terms[name](pred, target) for name in self.names}
        stacked = torch.stack([values[n].to(pred.dtype) for n in self.names])
        total = (self.weights.to(pred.dtype) * stacked).sum()
        return total, values

    def extra_repr(self) -> str:
        return ", ".join(f"{n}={w:g}" for n, w in zip(self.names, self.weights.tolist()))


def build_loss(
    spec: LossSpec | str | "os.PathLike[str]",
    vgg_weights: PathLike | None = None,
    lpips_weights: PathLike | None = None,
    search_vgg_taps: bool = False,
    lpips_net: str | None = None,
) -> WeightedLoss:
    """Build the :class:`WeightedLoss` of ``spec``.

    Terms needing pretrained weights (vgg, lpips) without a weight file are left out with one
    warning naming the flag that enables them; if nothing is left, :class:`LossSpecError`.
    ``search_vgg_taps=True`` gives the vgg term learnable tap logits (see :func:`vgg_loss`).
    ``lpips_net`` (``"alex"``, ``"vgg"``, None = read off the file) picks the LPIPS backbone.

    Example:
        >>> loss = build_loss("l1=1,ssim=0.5")
        >>> total, parts = loss(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16))
    """
    spec = parse_loss_spec(spec)
    weight_files = {"vgg": vgg_weights, "lpips": lpips_weights}
    modules: dict[str, nn.Module] = {}
    weights: list[float] = []
    for name, w in spec.terms.items():
        ts = LOSS_TERMS[name]
        path = weight_files.get(name)
        if ts.weights_flag is not None and path is None:
            log.warning("loss term %r left out: it needs pretrained weights; enable it with %s", name, ts.weights_flag)
            continue
        modules[name] = ts.make(path, vgg_taps=spec.vgg_taps, search_vgg_taps=search_vgg_taps, lpips_net=lpips_net)
        weights.append(w)
    if not modules:
        raise LossSpecError(
            f"no usable loss terms in {str(spec)!r}: vgg needs --vgg-weights PATH, lpips needs --lpips-weights PATH; "
            "or add a weight-free term such as l1"
        )
    return WeightedLoss(modules, weights)
