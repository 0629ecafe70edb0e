"""The resolved configuration of a search run (saved as ``config.json`` in the run directory)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from ..errors import ConfigError
from ..ops import get_space
from ..tasks import get_task
from .hypergrad import ORDERS
from .stages import LOWER_STEPS
from .selection import SELECTIONS
from .supernet import HNU_NORMS

STAGES = ("L", "A", "T")
LATENCY_FORMS = ("additive", "multiplicative", "hinge")
#: Loss terms stage L searches over when none are given (vgg/lpips join when weights are passed).
DEFAULT_TERMS = ("l1", "l2", "color", "ssim", "tv", "laplacian")
#: ... under ``--macro edge``. An edge network divides by a smooth map at full resolution and has
#: nothing there to denoise with (unless a refinement branch is on), so a term that rewards a
#: smooth or "structured" output (ssim, tv, laplacian) is lowered most cheaply by a darker,
#: less amplified output: each of them added to L1 at λ = 1 cost the searched s-8 network
#: 1.0–4.6 dB on LOL-15, the six-term uniform loss 3 dB (docs/benchmarks.md, "The loss terms
#: of an edge network"); l2 and color cost ≤ 0.4 dB, within one seed's noise.
EDGE_DEFAULT_TERMS = ("l1", "l2", "color")


#: What the macro sweep's winner also trains with (``loss_check``): on edge networks L1 alone
#: beat stage L's λ* on validation for low light and underwater (docs/benchmarks.md).
EDGE_LOSS_CHECK = ("l1",)


def default_terms(macro: str | None) -> tuple[str, ...]:
    """The terms stage L searches over when ``--terms`` is not given."""
    return EDGE_DEFAULT_TERMS if macro == "edge" else DEFAULT_TERMS


def default_crops(macro: str | None) -> tuple[int, int]:
    """(search crop, stage-T crop) when ``--crop`` / ``--train-crop`` are not given.

    The paper network: 64 and 128 (the reference code's patch sizes). ``--macro edge``: 128 and
    256, because the edge network's maps see crop/s pixels: at s = 8 a 64-pixel crop is an 8×8
    map, too small to learn the exposure and the illumination's layout from, and its HNUs cost
    1/s² of the paper network's at the same crop (LOL-15 with the quick search's genotype: 13.66 dB
    on crops of 64, 16.52 on 256; docs/benchmarks.md).
    """
    return (128, 256) if macro == "edge" else (64, 128)


@dataclass
class SearchConfig:
    """Everything a search depends on. Defaults follow the reference code unless noted."""

    task: str = "lowlight"
    data: str = "embedded"
    test_data: str | None = None  # where stage T's model is tested; None = data's own test split, if any
    out: str = "runs/search"
    stages: str = "L,A,T"
    # search space and supernet shape
    space: str = "paper"
    channels: tuple[int, int] = (16, 32)
    units: int = 7
    hnu_norm: str = "edge"  # one BatchNorm per HNU edge (the reference's) | candidate (DARTS); docs/search.md
    # latency (DESIGN §6)
    device: str = "cpu"
    backend: str = "onnxruntime"  # how the target runs the model; measured tables use it
    latency_table: str | None = None
    latency_budget: float | None = None  # ms at `resolution`; None = no latency term
    resolution: tuple[int, int] = (1280, 720)
    latency_form: str = "multiplicative"
    latency_mu: float = 0.1  # additive: L + μ·LAT/T
    latency_beta: float = 0.2  # multiplicative: L·(LAT/T)^β; hinge: L·max(1, LAT/T)^β
    # the deployed runner's settings, profiled and measured with (None: onnxruntime's defaults, as OrtRunner)
    latency_threads: int | None = None
    latency_spinning: bool | None = None
    # macro search of the edge network (DESIGN §10; hbl_edge.search.macro): None = the space's
    # paper-shaped network; "edge" = sweep scale × widths × units × refinement, then search ops
    macro: str | None = None
    macro_scales: tuple[int, ...] = (2, 4, 8)
    macro_widths: tuple[tuple[int, int], ...] = ((8, 16), (16, 32))
    macro_units: tuple[int, ...] = (1, 3)
    macro_refine: tuple[tuple[str, ...], ...] | None = None  # None = macro.DEFAULT_REFINE, resolved by validate()
    macro_steps: int = 0  # short stage A per candidate; 0 = steps_a // 4 (at least 4)
    # then each candidate's derived network trains this many stage-T steps and the best validation
    # PSNR wins (hbl_edge.search.driver._proxy_train); 0 = rank by the short search's λ* loss
    macro_train_steps: int = 300
    # ... once per seed (seed, seed + 1, …; each its own batches and validation carve-out), and the
    # mean PSNR ranks: one seed's ranking agrees with another's only at Spearman ρ 0.44–0.64, and
    # a longer proxy does not help (600 steps: 0.15–0.62); bench/results/proxy_seeds_underwater.json
    macro_proxy_seeds: int = 3
    # bilevel optimisation (DESIGN §5)
    order: str = "second"
    lower_step: str = "simultaneous"  # reuses the virtual step's gradient (docs/search.md) | alternating (DARTS)
    objective: str = "critic"  # stage L upper objective: critic | fidelity (docs/benchmarks.md)
    critic: str | None = None  # a user critic (safetensors); None = train one at the start of stage L
    critic_steps: int = 200
    terms: tuple[str, ...] | None = None  # None = default_terms(macro), resolved by validate()
    # losses (specs such as "l1") the macro sweep's winner also trains with before stage A; the
    # best mean validation PSNR of its proxies, λ* included, is the loss stages A and T use
    # (driver._loss_check). None = ("l1",) under --macro edge, () otherwise, resolved by validate()
    loss_check: tuple[str, ...] | None = None
    steps_l: int = 200
    steps_a: int = 400
    # fraction of stage A's steps (and of each macro candidate's short search) that train the
    # weights alone, α frozen, before the bilevel steps begin (PC-DARTS-style warm-up; docs/search.md)
    arch_warmup: float = 0.0
    crop: int | None = None  # None = default_crops(macro)[0], resolved by validate()
    batch_size: int = 2
    w_lr: float = 5e-4  # SGD for weights, as the reference
    w_momentum: float = 0.9
    w_clip: float = 5.0
    upper_lr: float = 5e-4  # Adam for α and λ, as the reference
    lambda_lr: float | None = None  # Adam lr of λ in stage L; None = upper_lr (docs/search.md)
    # how the trained supernet becomes ops: argmax of α (DARTS) | perturbation (DARTS-PT; hbl_edge.search.selection)
    selection: str = "argmax"
    arch_lr: float | None = None  # Adam lr of α in stage A and the macro sweep; None = upper_lr (docs/search.md)
    upper_betas: tuple[float, float] = (0.5, 0.999)
    upper_weight_decay: float = 1e-4
    max_parameter_free_per_unit: int | None = 4  # DARTS skip-collapse guard at derivation
    # stage T (final training from scratch)
    steps_t: int = 2000
    train_batch_size: int = 4
    train_crop: int | None = None  # None = default_crops(macro)[1]
    train_lr: float = 1e-3
    # run
    seed: int = 0
    deterministic: bool = False
    ckpt_every: int = 20
    quick: bool = False
    threads: int | None = None
    vgg_weights: str | None = None
    lpips_weights: str | None = None
    lpips_net: str | None = None  # alex | vgg; None = read off the weight file
    notes: dict = field(default_factory=dict)

    def warmup_steps(self, steps: int) -> int:
        """How many of ``steps`` stage-A steps train the weights alone (``arch_warmup`` of them)."""
        return int(round(self.arch_warmup * steps))

    @property
    def stage_list(self) -> list[str]:
        return [s.strip().upper() for s in self.stages.split(",") if s.strip()]

    def validate(self) -> None:
        get_task(self.task)
        get_space(self.space)
        bad = [s for s in self.stage_list if s not in STAGES]
        if bad or not self.stage_list:
            raise ConfigError(f"--stages takes a comma list of L, A, T (e.g. L,A or T), got {self.stages!r}")
        if self.lower_step not in LOWER_STEPS:
            raise ConfigError(f"--lower-step must be one of {', '.join(LOWER_STEPS)}, got {self.lower_step!r}")
        if self.hnu_norm not in HNU_NORMS:
            raise ConfigError(f"--hnu-norm must be one of {', '.join(HNU_NORMS)}, got {self.hnu_norm!r}")
        if self.lpips_net is not None and self.lpips_net not in ("alex", "vgg"):
            raise ConfigError(f"--lpips-net must be alex or vgg, got {self.lpips_net!r}")
        if self.order not in ORDERS:
            raise ConfigError(f"--order must be one of {', '.join(ORDERS)}, got {self.order!r}")
        if self.latency_form not in LATENCY_FORMS:
            raise ConfigError(f"--latency-form must be one of {', '.join(LATENCY_FORMS)}")
        if self.latency_budget is not None and not (self.latency_budget > 0 and math.isfinite(self.latency_budget)):
            raise ConfigError(f"--latency-budget must be a positive number of milliseconds, got {self.latency_budget}")
        crops = default_crops(self.macro)
        self.crop = crops[0] if self.crop is None else self.crop
        self.train_crop = crops[1] if self.train_crop is None else self.train_crop
        if self.batch_size < 2 or self.train_batch_size < 2:
            raise ConfigError("batch sizes must be ≥ 2 (BatchNorm needs batch statistics)")
        if self.crop % 4 or self.crop < 16:
            raise ConfigError(f"--crop must be a multiple of 4 and ≥ 16, got {self.crop}")
        if self.train_crop % 4 or self.train_crop < 16:
            raise ConfigError(f"--train-crop must be a multiple of 4 and ≥ 16, got {self.train_crop}")
        for name in ("steps_l", "steps_a", "steps_t", "ckpt_every", "critic_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be ≥ 1")
        if self.selection not in SELECTIONS:
            raise ConfigError(f"--selection takes {' | '.join(SELECTIONS)}, got {self.selection!r}")
        if not 0.0 <= self.arch_warmup < 1.0:
            raise ConfigError(f"--arch-warmup is a fraction of stage A's steps in [0, 1), got {self.arch_warmup:g}")
        if self.latency_threads is not None and self.latency_threads < 1:
            raise ConfigError(f"--latency-threads must be ≥ 1 (leave it out for the runtime's default), got {self.latency_threads}")
        if self.macro is not None:
            if self.macro != "edge":
                raise ConfigError(f"--macro takes edge (or is left out), got {self.macro!r}")
            if self.latency_budget is None and "A" in self.stage_list:
                raise ConfigError("--macro edge trades quality for latency: give --latency-budget MS")
            if self.macro_steps < 0:
                raise ConfigError(f"--macro-steps must be ≥ 0, got {self.macro_steps}")
            if self.macro_train_steps < 0:
                raise ConfigError(f"--macro-train-steps must be ≥ 0 (0: rank candidates by the short search's loss), "
                                  f"got {self.macro_train_steps}")
            if self.macro_proxy_seeds < 1:
                raise ConfigError(f"--macro-proxy-seeds must be ≥ 1, got {self.macro_proxy_seeds}")
        if self.macro_refine is None:
            from .macro import DEFAULT_REFINE

            self.macro_refine = DEFAULT_REFINE
        if self.terms is None:
            self.terms = default_terms(self.macro)
        self.terms = tuple(self.terms)
        if self.loss_check is None:
            self.loss_check = EDGE_LOSS_CHECK if self.macro == "edge" else ()
        self.loss_check = tuple(self.loss_check)
        if self.loss_check and self.macro != "edge":
            raise ConfigError("--loss-check compares losses on the macro sweep's winner: it needs --macro edge")
        from ..errors import LossSpecError
        from ..losses import parse_loss_spec

        for spec in self.loss_check:
            try:
                parse_loss_spec(spec)
            except LossSpecError as e:
                raise ConfigError(f"--loss-check {spec!r}: {e}") from None
        if not self.terms:
            raise ConfigError("--terms needs at least one loss term, e.g. l1,l2,color")
        from ..losses import LOSS_TERMS

        for t in self.terms:
            LOSS_TERMS.get(t)  # an unknown name: the registry's one-line error
        if len(set(self.terms)) != len(self.terms):
            raise ConfigError(f"--terms names a term twice: {','.join(self.terms)}")
        for name in ("lambda_lr", "arch_lr"):
            value = getattr(self, name)
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive number, got {value}")
        if len(self.resolution) != 2 or min(self.resolution) < 4:
            raise ConfigError(f"--resolution must be WxH with sides ≥ 4, got {self.resolution}")

    @classmethod
    def from_dict(cls, data: dict) -> "SearchConfig":
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in data.items() if k in known}
        for k in ("channels", "resolution", "upper_betas", "terms", "macro_scales", "macro_units", "loss_check"):
            if k in kw and kw[k] is not None:
                kw[k] = tuple(kw[k])
        for k in ("macro_widths", "macro_refine"):
            if k in kw and kw[k] is not None:
                kw[k] = tuple(tuple(v) for v in kw[k])
        return cls(**kw)


#: Settings added after search runs were first saved, with the value that reproduces a run whose
#: config.json predates them: ``--resume`` of such a run continues as the version that wrote it.
LEGACY_VALUES: dict[str, Any] = {
    "macro_train_steps": 0,  # before it, the short search's loss ranked
    "macro_proxy_seeds": 1,  # before it, one seed's proxy ranked
    "arch_warmup": 0.0,  # before it, α moved from stage A's first step
    "arch_lr": None,  # before it, α took the upper learning rate
    "selection": "argmax",  # before it, the argmax of α derived
    "loss_check": (),  # before it, λ* trained stages A and T unchecked
}
#: Settings whose default is resolved by :meth:`SearchConfig.validate` and has changed between
#: versions (the crops under ``--macro edge``; the refinement grid, conv_3x3 before 2026-12-02's
#: fifth session, boxmix_3x3 until 2026-12-03, boxmix_3x3 and boxmix_5x5 since): not given on the
#: command line, a resumed run takes the saved value.
VERSIONED_DEFAULTS = ("terms", "crop", "train_crop", "macro_refine", "loss_check")


def saved_settings_to_adopt(saved: dict, defaulted: set[str]) -> dict[str, Any]:
    """What a resumed run takes from its saved ``config.json`` rather than from this version.

    ``defaulted``: the :data:`VERSIONED_DEFAULTS` the command did not give. A setting the saved
    file lacks takes its :data:`LEGACY_VALUES` entry; a defaulted one takes the saved value.
    Every other setting must still match (``runio.check_same_config``).
    """
    adopt = {k: v for k, v in LEGACY_VALUES.items() if k not in saved}
    adopt.update({k: saved[k] for k in defaulted if k in saved})
    typed = SearchConfig.from_dict(adopt)  # lists back to tuples, as the dataclass holds them
    return {k: getattr(typed, k) for k in adopt}


def quick_overrides(macro: str | None = None) -> dict:
    """``--quick``: a full L → A → T search in a few minutes on 2 CPU cores.

    A narrower, shorter supernet (3 units, channels 8/16), fewer steps and larger learning
    rates so the few steps move; everything else is the real algorithm.

    Under ``--macro edge`` stage T trains on crops of 256 for 600 steps: an edge network is
    cheap at that size (its HNUs run at 1/s), and on the 64-pixel crops of the paper network's
    quick setting its maps see 8–16 pixels and the network never learns the global exposure
    (LOL-15, the same quick search's genotype and λ*: 13.66 dB after 300 steps on crops of 64,
    16.52 dB after 600 on crops of 256; auto-gamma 16.46; docs/benchmarks.md).
    """
    out = dict(
        channels=(8, 16), units=3, steps_l=12, steps_a=30, steps_t=300, crop=48, critic_steps=60,
        w_lr=0.02, upper_lr=3e-2, train_crop=64, train_lr=2e-3, ckpt_every=10,
    )
    if macro == "edge":
        out.update(steps_t=600, train_crop=256, train_lr=1e-3, macro_train_steps=100, macro_proxy_seeds=1)
    return out
