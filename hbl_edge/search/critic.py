r"""The quality critic: a small "is this image clean?" classifier for stage L (DESIGN §4–5).

The paper's upper objective of the loss search scores restored validation images with a
frozen per-task classifier of "high quality" whose weights were never published. We train
that classifier ourselves, in seconds, from the same training data the search uses:

* positives (label 1): clean target patches of the **training** split;
* negatives (label 0): the paired degraded input patches (the task's degradation), plus a
  share of *over-enhanced* clean patches (over-exposed, over-saturated, over-contrasted or
  colour-cast; :func:`over_enhance`).

Why the over-enhanced negatives: with clean-vs-degraded pairs alone the cheapest rule that
separates them is one-sided ("brighter is cleaner" for low light, "more contrast / more
saturated is cleaner" for haze and water). A critic that learned such a rule rewards an
enhancer for overshooting, which is exactly the failure an image-quality objective must not
have. Showing it clean patches pushed *past* clean, labelled 0, makes "clean" a region of
image statistics rather than one end of a scale, so the upper objective has a minimum near
the clean image instead of at saturation. Measured (low light, 100 steps, seeds 0/1): trained
without them, the critic gave the bright val crop of "astronaut" a logit of +83 to +197
(i.e. it had learned brightness); with a quarter of the negatives over-enhanced it ranks
clean above over-enhanced and degraded, all logits within a few units of 0, at the cost of
that one bright crop sitting near the decision boundary.

Training is deterministic: the network is initialised from ``seed`` (without touching the
global RNG), batches come from :class:`hbl_edge.data.TrainSampler` (a pure function of
``(seed, step)``) and the over-enhancement draws from ``default_rng([seed, step, 0xE])``.
Held-out accuracy is measured on the **val** split (never seen in training).

A critic is a plain safetensors file (format ``hbl-critic/1``) whose metadata carries the
task, the architecture (so :func:`load_critic` rebuilds it without this module's defaults)
and the training report; it holds no pickles. Used as an objective it is frozen:
:func:`freeze` puts it in eval mode with ``requires_grad`` off, so gradients flow through it
to the restored image but never into it.

Example::

    >>> critic, report = train_critic("lowlight", steps=200)          # doctest: +SKIP
    >>> report["val"]["accuracy"]                                     # doctest: +SKIP
    1.0
    >>> save_critic(critic, "run/critic.safetensors", {"task": "lowlight", "report": report})
    >>> critic = load_critic("run/critic.safetensors", task="lowlight")   # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hbl_edge.errors import ConfigError
from hbl_edge.runio import atomic_path

log = logging.getLogger(__name__)

__all__ = [
    "FORMAT",
    "ARCH",
    "MIN_SIZE",
    "CriticConfig",
    "QualityCritic",
    "freeze",
    "over_enhance",
    "evaluate_critic",
    "train_critic",
    "save_critic",
    "load_critic",
    "read_critic_meta",
]

FORMAT = "hbl-critic/1"
ARCH = "hbl-critic-cnn/1"   # bump when the forward computation changes for the same config
MIN_SIZE = 32               # four stride-2 convolutions: 32 px -> 2 px before pooling
OVER_KINDS = ("exposure", "saturation", "contrast", "cast")


# ----------------------------------------------------------------------------- network

@dataclass(frozen=True)
class CriticConfig:
    """Architecture of a :class:`QualityCritic`; saved in every critic file.

    Attributes:
        channels: output channels of the stride-2 3×3 convolutions (one per stage). The
            default (16, 32, 48, 64) has 46,737 parameters: enough to see noise, haze veils
            and colour statistics, small enough to train in a few seconds on a CPU and to
            cost little next to the supernet in every upper step.
    """

    channels: tuple[int, ...] = (16, 32, 48, 64)

    def __post_init__(self) -> None:
        chans = tuple(int(c) for c in self.channels)
        if not chans or any(c < 1 for c in chans):
            raise ConfigError(f"critic channels must be positive integers, got {self.channels!r}")
        object.__setattr__(self, "channels", chans)


class QualityCritic(nn.Module):
    r"""Clean-vs-degraded classifier: ``N×3×H×W`` in [0, 1] → ``N`` logits of "clean".

    Architecture: input mapped to [−1, 1]; per stage a 3×3 convolution with stride 2 and
    zero padding (after the mapping that pads with mid-grey, a neutral border; reflect
    padding cost twice the time on CPU for no measured gain) followed by SiLU (smooth, so the
    hypergradient's finite differences see a smooth objective); global average pooling;
    one linear layer to a single logit. No normalisation layers: the critic behaves the same
    in train and eval mode and for any batch size, including 1.

    Any H, W ≥ :data:`MIN_SIZE` (32) works; global pooling makes the score an average of local
    evidence, so a full validation image and a 64² training crop are judged alike.
    ``sigmoid(logit)`` is the probability that the image is clean.

    Example:
        >>> critic = QualityCritic()
        >>> critic(torch.rand(2, 3, 48, 40)).shape
        torch.Size([2])
    """

    def __init__(self, config: CriticConfig | None = None) -> None:
        super().__init__()
        self.config = config or CriticConfig()
        layers: list[nn.Module] = []
        c_in = 3
        for c_out in self.config.channels:
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1),
                       nn.SiLU()]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"critic input must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"critic input must have shape N×3×H×W, got {tuple(x.shape)}")
        if min(x.shape[-2:]) < MIN_SIZE:
            raise ValueError(f"critic input must be at least {MIN_SIZE}×{MIN_SIZE}, "
                             f"got {tuple(x.shape[-2:])}")
        h = self.features(x * 2.0 - 1.0)
        return self.head(h.mean(dim=(2, 3))).squeeze(1)

    def prob_clean(self, x: torch.Tensor) -> torch.Tensor:
        """``sigmoid(forward(x))``: probability of "clean" per image, shape ``N``."""
        return torch.sigmoid(self(x))


def freeze(critic: QualityCritic) -> QualityCritic:
    """Eval mode and ``requires_grad=False`` on every parameter (in place); returns it.

    A frozen critic still passes gradients to its *input*, which is what the stage-L
    objective needs: ∂Q/∂restored flows back into the network weights w.
    """
    critic.eval()
    for p in critic.parameters():
        p.requires_grad_(False)
    return critic


# ------------------------------------------------------------------- over-enhancement

def _luma(x: torch.Tensor) -> torch.Tensor:
    w = x.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def over_enhance(clean: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    r"""Push clean images past clean, one random kind per image (the critic's extra negatives).

    Kinds, drawn uniformly per image (always 5 draws per image, so the stream of a seeded
    ``rng`` does not depend on which kinds come up):

    ============ ===========================================================================
    exposure     clip(g·x)^γ, g ~ U[1.6, 2.6], γ ~ U[0.6, 0.9] (blown, washed-out highlights)
    saturation   clip(Y + s·(x − Y)), s ~ U[1.8, 3.0], Y = Rec.601 luma
    contrast     clip(m + k·(x − m)), k ~ U[1.8, 2.8], m = the image's mean luma
    cast         clip(x ⊙ c), c = 1 per channel except one ×U[1.25, 1.6] and one ×U[0.6, 0.8]
    ============ ===========================================================================

    Args:
        clean: ``N×3×H×W`` in [0, 1].
        rng: numpy generator (all randomness comes from it).

    Returns:
        ``N×3×H×W`` in [0, 1].
    """
    out = []
    for x in clean:
        x = x[None]
        kind = OVER_KINDS[int(rng.integers(len(OVER_KINDS)))]
        a, b, ch_up, ch_down = rng.random(), rng.random(), int(rng.integers(3)), int(rng.integers(2))
        if kind == "exposure":
            y = (x * (1.6 + 1.0 * a)).clamp(0, 1) ** (0.6 + 0.3 * b)
        elif kind == "saturation":
            lum = _luma(x)
            y = lum + (1.8 + 1.2 * a) * (x - lum)
        elif kind == "contrast":
            m = _luma(x).mean()
            y = m + (1.8 + 1.0 * a) * (x - m)
        else:
            gains = torch.ones(3, dtype=x.dtype)
            gains[ch_up] = 1.25 + 0.35 * a
            gains[[c for c in range(3) if c != ch_up][ch_down]] = 0.6 + 0.2 * b
            y = x * gains.view(1, 3, 1, 1)
        out.append(y.clamp(0.0, 1.0))
    return torch.cat(out) if out else clean.clone()


# --------------------------------------------------------------------------- training

@torch.no_grad()
def evaluate_critic(critic: QualityCritic, source: Any, *, eval_crop: int | None = 256,
                    seed: int = 0) -> dict[str, Any]:
    """Held-out accuracy of ``critic`` on a :class:`~hbl_edge.data.PairSource` (val split).

    Every sample gives a clean target (should score > 0) and a degraded input (should score
    < 0), centre-cropped to ``eval_crop`` (``None``: full images); an over-enhanced copy of
    each target (fixed rng from ``seed``) is scored separately. Samples smaller than
    :data:`MIN_SIZE` are skipped and counted.

    Returns:
        ``{"accuracy", "accuracy_clean", "accuracy_degraded", "accuracy_over_enhanced",
        "ranking", "ranking_over_enhanced", "p_clean": {"clean", "degraded", "over_enhanced"}
        (means of sigmoid), "n", "skipped"}``. ``accuracy`` is the balanced clean-vs-degraded
        accuracy at logit 0; ``ranking`` the share of pairs whose clean target scores above
        its own degraded input (what the objective relies on: it only needs "cleaner scores
        higher", not a calibrated threshold). On the embedded data the clean targets repeat
        (2 degradations per region), so one misjudged clean region costs 2/12.
    """
    from hbl_edge.data import val_batches

    was_training = critic.training
    critic.eval()
    rng = np.random.default_rng([seed, 0xA1])
    logits: dict[str, list[float]] = {"clean": [], "degraded": [], "over_enhanced": []}
    skipped = 0
    try:
        for _, inp, tgt in val_batches(source, crop=eval_crop):
            if min(tgt.shape[-2:]) < MIN_SIZE:
                skipped += 1
                continue
            logits["clean"].append(float(critic(tgt)[0]))
            logits["degraded"].append(float(critic(inp)[0]))
            logits["over_enhanced"].append(float(critic(over_enhance(tgt, rng))[0]))
    finally:
        critic.train(was_training)
    n = len(logits["clean"])
    if n == 0:
        return {"accuracy": float("nan"), "n": 0, "skipped": skipped}
    acc_clean = float(np.mean([v > 0 for v in logits["clean"]]))
    acc_deg = float(np.mean([v <= 0 for v in logits["degraded"]]))
    acc_over = float(np.mean([v <= 0 for v in logits["over_enhanced"]]))
    ranking = float(np.mean([c > d for c, d in zip(logits["clean"], logits["degraded"])]))
    ranking_over = float(np.mean([c > o for c, o in zip(logits["clean"], logits["over_enhanced"])]))
    sig = lambda vs: float(np.mean(1.0 / (1.0 + np.exp(-np.asarray(vs)))))  # noqa: E731
    return {
        "accuracy": 0.5 * (acc_clean + acc_deg),
        "accuracy_clean": acc_clean,
        "accuracy_degraded": acc_deg,
        "accuracy_over_enhanced": acc_over,
        "ranking": ranking,
        "ranking_over_enhanced": ranking_over,
        "p_clean": {k: sig(v) for k, v in logits.items()},
        "n": n,
        "skipped": skipped,
    }


def train_critic(
    task: Any,
    data: str | os.PathLike[str] = "embedded",
    steps: int = 200,
    crop: int = 64,
    batch_size: int = 16,
    seed: int = 0,
    lr: float = 6e-3,
    *,
    over_fraction: float = 0.25,
    weight_decay: float = 1e-4,
    eval_crop: int | None = 256,
    config: CriticConfig | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> tuple[QualityCritic, dict[str, Any]]:
    """Train a :class:`QualityCritic` for ``task`` on clean vs degraded training patches.

    Each step takes ``batch_size`` (input, target) crops from
    ``TrainSampler(train split, crop, batch_size, seed).batch(step)``; the targets are
    positives; the inputs are negatives, except that the first
    ``round(over_fraction · batch_size)`` of them are replaced by :func:`over_enhance` of
    their own targets (see the module docstring for why). The classes stay balanced. Loss:
    binary cross-entropy with logits; optimiser: AdamW(``lr``, ``weight_decay``) with a
    cosine decay to 0 over ``steps``.

    Args:
        task: task name or :class:`~hbl_edge.tasks.Task`.
        data: ``"embedded"`` or a dataset folder (as :func:`hbl_edge.data.open_dataset`).
        steps: optimisation steps (200 ≈ a few seconds on 2 CPU cores with the defaults).
        crop: training patch side (≥ :data:`MIN_SIZE`).
        batch_size: crops per step (as many positives and as many negatives).
        seed: initialisation, data order and over-enhancement draws.
        lr: peak learning rate.
        over_fraction: share of negatives that are over-enhanced clean patches, in [0, 1].
        weight_decay: AdamW decoupled weight decay.
        eval_crop: centre crop of the val images for the held-out accuracy (``None``: full).
        config: architecture (default :class:`CriticConfig`).
        progress: called as ``progress(step, loss)`` after every step.

    Returns:
        ``(critic, report)``: the critic frozen (:func:`freeze`), and a JSON-able report with
        the settings, the final training loss (mean of the last 10 %% of steps), wall time
        and ``val`` (:func:`evaluate_critic` on the val split).

    Raises:
        ConfigError: on bad settings; DataError from opening the data.
    """
    from hbl_edge.data import TrainSampler, open_dataset
    from hbl_edge.tasks import get_task

    task_obj = get_task(task)
    if steps < 1:
        raise ConfigError(f"critic steps must be ≥ 1, got {steps}")
    if crop < MIN_SIZE:
        raise ConfigError(f"critic crop must be ≥ {MIN_SIZE} px, got {crop}")
    if batch_size < 1:
        raise ConfigError(f"critic batch size must be ≥ 1, got {batch_size}")
    if not 0.0 <= over_fraction <= 1.0:
        raise ConfigError(f"over_fraction must be in [0, 1], got {over_fraction}")
    if not (lr > 0 and math.isfinite(lr)):
        raise ConfigError(f"critic learning rate must be positive, got {lr}")
    config = config or CriticConfig()

    started = time.perf_counter()
    train_src = open_dataset(data, task_obj, "train", seed=seed)
    sampler = TrainSampler(train_src, task_obj, crop=crop, batch_size=batch_size, seed=seed)
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(seed)
        critic = QualityCritic(config)
    critic.train()
    opt = torch.optim.AdamW(critic.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, steps) / steps)))
    n_over = int(round(over_fraction * batch_size))
    labels = torch.cat([torch.ones(batch_size), torch.zeros(batch_size)])
    losses: list[float] = []
    for step in range(steps):
        inputs, targets = sampler.batch(step)
        negatives = inputs
        if n_over:
            rng = np.random.default_rng([seed, step, 0xE])
            negatives = torch.cat([over_enhance(targets[:n_over], rng), inputs[n_over:]])
        logits = critic(torch.cat([targets, negatives]))
        loss = F.binary_cross_entropy_with_logits(logits, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(step, losses[-1])
    freeze(critic)
    train_seconds = time.perf_counter() - started

    val_src = open_dataset(data, task_obj, "val", seed=seed)
    val = evaluate_critic(critic, val_src, eval_crop=eval_crop, seed=seed)
    tail = losses[-max(1, steps // 10):]
    report: dict[str, Any] = {
        "task": task_obj.name,
        "data": str(data),
        "steps": steps,
        "crop": crop,
        "batch_size": batch_size,
        "seed": seed,
        "lr": lr,
        "weight_decay": weight_decay,
        "over_fraction": over_fraction,
        "eval_crop": eval_crop,
        "config": asdict(config),
        "train_loss": float(np.mean(tail)),
        "train_seconds": round(train_seconds, 3),
        "val": val,
    }
    if val.get("n", 0) and val["accuracy"] < 0.75:
        log.warning("quality critic for %s reaches only %.0f%% held-out accuracy on %s; the "
                    "critic objective will be a weak signal: train it longer (more steps) or "
                    "use the fidelity objective", task_obj.name, 100 * val["accuracy"],
                    val_src.description)
    return critic, report


# ---------------------------------------------------------------------------- file I/O

def save_critic(critic: QualityCritic, path: str | os.PathLike[str],
                meta: Mapping[str, Any] | None = None) -> Path:
    """Write ``critic`` to a safetensors file (atomically) and return its path.

    Metadata (all JSON strings, as safetensors requires): ``format`` (``hbl-critic/1``),
    ``arch`` (:data:`ARCH`), ``config`` (:class:`CriticConfig`), and every entry of ``meta``
    (typically ``task`` and ``report``, the dict :func:`train_critic` returns).
    """
    from safetensors.torch import save_file

    if not isinstance(critic, QualityCritic):
        raise TypeError(f"save_critic needs a QualityCritic, got {type(critic).__name__}")
    header = {"format": FORMAT, "arch": ARCH, "config": json.dumps(asdict(critic.config))}
    for key, value in (meta or {}).items():
        if key in header:
            raise ValueError(f"metadata key {key!r} is reserved")
        header[str(key)] = value if isinstance(value, str) else json.dumps(value, default=str)
    state = {k: v.detach().to("cpu").contiguous() for k, v in critic.state_dict().items()}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=header)
    return path


def _fail(path: Path, why: str) -> ConfigError:
    return ConfigError(f"critic file {path}: {why}; pass a critic written by hbl-edge "
                       f"(search stage L or save_critic), or omit --critic to train one")


def read_critic_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata of a critic file, JSON values decoded (``task``, ``report``, ``config``…).

    Raises:
        ConfigError: missing file, not safetensors, or not an ``hbl-critic/1`` file.
    """
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"critic file {p} not found; pass an existing .safetensors file "
                          f"written by save_critic, or omit --critic to train one")
    try:
        with safe_open(str(p), framework="pt") as f:
            raw = f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise _fail(p, f"not a readable safetensors file ({' '.join(str(err).split())[:160]})") from None
    if raw.get("format") != FORMAT:
        raise _fail(p, f"format is {raw.get('format')!r}, expected {FORMAT!r}")
    meta: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            meta[key] = json.loads(value)
        except (json.JSONDecodeError, TypeError):
            meta[key] = value  # plain strings (format, arch, task) are stored as they are
    return meta


def load_critic(path: str | os.PathLike[str], task: Any | None = None) -> QualityCritic:
    """Load a critic written by :func:`save_critic`, frozen (:func:`freeze`), on the CPU.

    Safetensors only (never a pickle). ``task``, when given, must match the task the critic
    was trained for (a low-light critic says nothing about haze). The metadata is attached
    as ``critic.meta``.

    Raises:
        ConfigError: with a one-line message, for a missing, corrupt or foreign file, an
            unknown architecture, missing/unexpected/mis-shaped tensors, non-finite weights or
            a task mismatch.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    meta = read_critic_meta(p)
    if meta.get("arch") != ARCH:
        raise _fail(p, f"architecture {meta.get('arch')!r} is not {ARCH!r} (written by another "
                       f"version of hbl-edge?)")
    try:
        cfg = meta.get("config")
        config = CriticConfig(**cfg) if isinstance(cfg, dict) else CriticConfig()
    except (TypeError, ConfigError) as err:
        raise _fail(p, f"bad architecture config {meta.get('config')!r} ({err})") from None
    if task is not None:
        from hbl_edge.tasks import get_task

        want, have = get_task(task).name, meta.get("task")
        if have is not None and have != want:
            raise ConfigError(f"critic file {p} was trained for task '{have}', not '{want}'; "
                              f"pass a critic trained for {want}, or omit --critic to train one")
    try:
        state = load_file(str(p))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise _fail(p, f"tensors unreadable ({' '.join(str(err).split())[:160]})") from None
    critic = QualityCritic(config)
    expected = {k: tuple(v.shape) for k, v in critic.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        parts = ([f"missing {', '.join(missing[:3])}{' …' if len(missing) > 3 else ''}"] if missing else []) + \
                ([f"unexpected {', '.join(extra[:3])}{' …' if len(extra) > 3 else ''}"] if extra else [])
        raise _fail(p, f"tensors do not fit the architecture ({'; '.join(parts)})")
    for key, shape in expected.items():
        if tuple(state[key].shape) != shape:
            raise _fail(p, f"{key} has shape {tuple(state[key].shape)}, expected {shape}")
        if not state[key].is_floating_point() or not bool(torch.isfinite(state[key]).all()):
            raise _fail(p, f"{key} holds non-finite or non-float values")
    critic.load_state_dict({k: v.to(torch.float32) for k, v in state.items()})
    critic.meta = meta  # type: ignore[attr-defined]  # plain attribute, not a buffer
    return freeze(critic)
