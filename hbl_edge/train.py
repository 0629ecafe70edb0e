"""Stage T (DESIGN §5): train a network of a fixed genotype with a fixed loss.

``train(cfg)`` is what ``hbl-edge train`` runs and what the search's stage T reuses. It is
resumable step-exactly: every batch is a pure function of (seed, step) (see
:class:`hbl_edge.data.TrainSampler`), and the checkpoint holds weights, optimiser, schedule,
RNG states and the step, written atomically. A run directory ends with the model bundle
(``model.safetensors`` + ``model.json``), ``config.json``, ``log.jsonl`` and
``plots/train_curves.png``.

Under ``torchrun`` (:mod:`hbl_edge.distributed`) the same run is data parallel: each rank
trains on its slice of the global batch (world size × ``batch_size``), gradients are averaged
before clipping, BatchNorm uses the global batch's statistics, and rank 0 alone validates and
writes the run directory.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .bundle import META, WEIGHTS_META, save_bundle, save_weights
from .data import TrainSampler, open_dataset, val_batches
from .distributed import DistContext, init_from_env, record_processes, resumable_record, sync_batchnorm_
from .errors import ConfigError
from .genotype import load_genotype
from .imageio import to_tensor
from .losses import build_loss, parse_loss_spec
from .metrics import psnr, ssim
from .network import Network, count_parameters
from .runio import append_jsonl, atomic_path, check_same_config, read_jsonl, seed_everything, versions
from .tasks import get_task

log = logging.getLogger(__name__)

STATE = "train/state.pt"
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "step", "constant")
#: settings added after runs were saved without them, and the value those runs trained with
ABSENT_MEANS = {"synthetic_mix": 0.0}


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved as ``config.json`` beside the results."""

    task: str = "lowlight"
    genotype: str | None = "hbl-lol-2022"  # built-in name or path to genotype.json; None: TrainSession(model=…)
    loss: str | None = None  # "l1=1,ssim=1" or a loss.json path; None = the task's default
    data: str = "embedded"  # "embedded" or a folder (see hbl_edge.data.open_dataset)
    out: str = "runs/train"
    steps: int = 2000
    batch_size: int = 4  # > 1: BatchNorm statistics need more than one image
    crop: int = 128
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9  # SGD only
    schedule: str = "cosine"  # cosine to lr·min_lr_ratio, step (×0.5 every step_every), constant
    min_lr_ratio: float = 0.01
    step_every: int = 1000
    clip: float = 5.0  # gradient-norm clip, as the reference code
    val_every: int = 200
    val_crop: int | None = 256  # centre crop for validation (None = full images)
    ckpt_every: int = 200
    seed: int = 0
    deterministic: bool = False
    strict_data: bool = False
    vgg_weights: str | None = None
    lpips_weights: str | None = None
    lpips_net: str | None = None  # alex | vgg; None = read off the weight file
    threads: int | None = None
    #: a retinex edge network's global gain fitted on whole training frames after the last step
    #: (EdgeNetwork.calibrate_exposure; docs/benchmarks.md)
    calibrate_exposure: bool = True
    exposure_frames: int = 64
    #: probability that a training sample's input is the task's formation model applied to the
    #: real target instead of the real input (TrainSampler; docs/benchmarks.md measures it)
    synthetic_mix: float = 0.0

    def validate(self) -> None:
        task = get_task(self.task)
        genotype = load_genotype(self.genotype) if self.genotype is not None else None
        if genotype is not None and genotype.macro is not None and genotype.macro.model != task.inverse:
            raise ConfigError(
                f"genotype {self.genotype!r} applies the {genotype.macro.model} model, but task {task.name!r} "
                f"inverts with {task.inverse}; pick an edge genotype made for {task.name}"
            )
        if self.steps < 1:
            raise ConfigError(f"--steps must be ≥ 1, got {self.steps}")
        if self.batch_size < 2:
            raise ConfigError(f"--batch-size must be ≥ 2 (BatchNorm needs batch statistics), got {self.batch_size}")
        if self.crop < 8 or self.crop % 4:
            raise ConfigError(f"--crop must be a multiple of 4 and ≥ 8, got {self.crop}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"--lr must be a positive number, got {self.lr}")
        for name in ("val_every", "ckpt_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be ≥ 1")
        if not 0.0 <= self.synthetic_mix <= 1.0:
            raise ConfigError(f"--synthetic-mix is a probability in [0, 1], got {self.synthetic_mix}")


@dataclass
class TrainResult:
    out: Path
    steps: int
    metrics: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)
    interrupted: bool = False


def make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_schedule(cfg: TrainConfig, opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.steps, eta_min=cfg.lr * cfg.min_lr_ratio)
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_every, gamma=0.5)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


@torch.no_grad()
def validate(model: Network, source, crop: int | None) -> dict[str, float]:
    """Mean PSNR/SSIM of the clamped output (and of the input, for reference) on a split."""
    was_training = model.training
    model.eval()
    ps, ss, ps_in, ss_in = [], [], [], []
    for _name, inp, tgt in val_batches(source, crop=crop):
        out = model(inp).clamp(0, 1)
        ps.append(psnr(out, tgt).clamp(max=100.0).mean().item())  # identical images give inf
        ss.append(ssim(out, tgt).mean().item())
        ps_in.append(psnr(inp, tgt).mean().item())
        ss_in.append(ssim(inp, tgt).mean().item())
    model.train(was_training)
    n = max(len(ps), 1)
    return {
        "psnr": sum(ps) / n,
        "ssim": sum(ss) / n,
        "input_psnr": sum(ps_in) / n,
        "input_ssim": sum(ss_in) / n,
        "images": len(ps),
    }


class _StopFlag:
    """SIGINT/SIGTERM set a flag; the loop checkpoints and exits at the next step boundary."""

    def __init__(self) -> None:
        self.stop = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "_StopFlag":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread (e.g. some test runners): no handler
                pass
        return self

    def _handle(self, signum, frame) -> None:
        if self.stop:  # second signal: give up immediately
            raise KeyboardInterrupt
        self.stop = True
        log.warning("signal %s received: saving a checkpoint, then stopping (again to abort)", signum)

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _save_state(path: Path, model, opt, sched, step: int, best: dict[str, Any]) -> None:
    state = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "schedule": sched.state_dict(),
        "step": step,
        "best": best,
        "torch_rng": torch.get_rng_state(),
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _load_state(out: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The checkpoint, and the log records up to it (later records are dropped from the file:
    those steps are about to be redone)."""
    state = torch.load(out / STATE, weights_only=True)
    history = [r for r in read_jsonl(out / "log.jsonl") if r.get("step", 0) <= state["step"]]
    with atomic_path(out / "log.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in history))
    return state, history


def _check_out_dir(out: Path, resume: bool) -> None:
    has_state = (out / STATE).exists()
    if resume and not has_state:
        raise ConfigError(f"--resume: {out} has no checkpoint ({STATE}); start without --resume")
    if not resume and (has_state or (out / META).exists() or (out / WEIGHTS_META).exists()):
        raise ConfigError(f"{out} already holds a training run; pass --resume to continue it or choose another --out")


class TrainSession:
    """A prepared training run: everything checked, data opened, state restored on resume.

    Preparing is separate from running so every user mistake (bad option, data path, run
    directory) surfaces before anything is drawn or written.

    ``model``: train this module instead of ``cfg.genotype``'s network (which must then be
    None), e.g. a peer's architecture (:mod:`hbl_edge.peers`) on the same data, sampler and
    loss as a searched network. With no genotype to rebuild it, it ends as weights
    (:func:`hbl_edge.bundle.save_weights`), not as a bundle.
    """

    def __init__(self, cfg: TrainConfig, *, resume: bool = False, provenance: dict[str, Any] | None = None,
                 dist: DistContext | None = None, model: torch.nn.Module | None = None) -> None:
        if (model is None) == (cfg.genotype is None):
            raise ConfigError("train either a genotype (TrainConfig.genotype) or a module (model=…), not both or neither")
        cfg.validate()
        self.dist = dist = dist or init_from_env()
        out = Path(cfg.out)

        def check() -> None:
            _check_out_dir(out, resume)
            if resume and (out / "config.json").exists():
                check_same_config(out / "config.json", {**asdict(cfg), **resumable_record(out / "config.json")},
                                  absent_means=ABSENT_MEANS)

        dist.on_main(check)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        seed_everything(cfg.seed, cfg.deterministic)

        task = get_task(cfg.task)
        self.cfg, self.out, self.provenance = cfg, out, provenance or {}
        genotype = load_genotype(cfg.genotype) if cfg.genotype is not None else None  # read once
        default = task.default_loss_for(genotype)
        self.spec = parse_loss_spec(cfg.loss or ",".join(f"{k}={v}" for k, v in default.items()))
        self.criterion = build_loss(self.spec, vgg_weights=cfg.vgg_weights, lpips_weights=cfg.lpips_weights,
                                    lpips_net=cfg.lpips_net).to(dist.device)
        train_src = open_dataset(cfg.data, cfg.task, "train", strict=cfg.strict_data, seed=cfg.seed)
        self.val_src = open_dataset(cfg.data, cfg.task, "val", strict=cfg.strict_data, seed=cfg.seed)
        self.sampler = TrainSampler(train_src, cfg.task, crop=cfg.crop, batch_size=cfg.batch_size, seed=cfg.seed,
                                    synthetic_mix=cfg.synthetic_mix, rank=dist.rank, world_size=dist.world_size)

        # the paper network or an edge network (DESIGN §10)
        self.model = sync_batchnorm_(model if model is not None else Network.from_genotype(genotype), dist)
        self.model = self.model.to(dist.device)
        self.opt = make_optimizer(cfg, self.model.parameters())
        self.sched = make_schedule(cfg, self.opt)
        self.step, self.best = 0, {}
        self.history: list[dict[str, Any]] = []
        if resume:
            state, self.history = dist.on_main(lambda: _load_state(out))
            self.model.load_state_dict(state["model"])
            self.opt.load_state_dict(state["optimizer"])
            self.sched.load_state_dict(state["schedule"])
            torch.set_rng_state(state["torch_rng"].cpu())
            self.step, self.best = state["step"], state["best"]
            log.info("resuming %s at step %d", out, self.step)
        dist.broadcast_module_(self.model)  # every rank starts from rank 0's weights
        if dist.is_main:
            out.mkdir(parents=True, exist_ok=True)
            record_processes(out / "config.json", {**asdict(cfg), "versions": versions()}, dist, resume)

    def run(self, progress: Callable[[int, dict[str, Any]], None] | None = None) -> TrainResult:
        """Train to ``cfg.steps``; ``progress(step, record)`` is called after every step (rank 0)."""
        cfg, out, model, opt, sched, dist = self.cfg, self.out, self.model, self.opt, self.sched, self.dist
        model.train()
        interrupted = False
        t0 = time.perf_counter()
        with _StopFlag() as flag:
            while self.step < cfg.steps:
                rec = self._train_step()
                if dist.is_main:  # rank 0 validates and logs; the others train on
                    if self.step % cfg.val_every == 0 or self.step == cfg.steps:
                        val = validate(model, self.val_src, cfg.val_crop)
                        rec.update({f"val_{k}": v for k, v in val.items()})
                        if val["psnr"] > self.best.get("val_psnr", -math.inf):
                            self.best = {"val_psnr": val["psnr"], "val_ssim": val["ssim"], "step": self.step}
                    append_jsonl(out / "log.jsonl", rec)
                    if progress:
                        progress(self.step, rec)
                stop = dist.any(flag.stop)  # every rank stops after the same step
                if dist.is_main and (self.step % cfg.ckpt_every == 0 or self.step == cfg.steps or stop):
                    _save_state(out / STATE, model, opt, sched, self.step, self.best)
                self.history.append(rec)
                if stop:
                    interrupted = True
                    break

        if interrupted:
            log.warning("stopped at step %d/%d; continue with the same command plus --resume", self.step, cfg.steps)
            return TrainResult(out, self.step, {}, self.history, interrupted=True)
        if not dist.is_main:
            metrics = dist.on_main(lambda: {})
            return TrainResult(out, self.step, metrics, self.history)
        return dist.on_main(lambda: self._finish(t0))

    def _finish(self, t0: float) -> TrainResult:
        """Final validation, the bundle and the plot (rank 0)."""
        cfg, out, model = self.cfg, self.out, self.model

        exposure = self._calibrate_exposure()
        final = validate(model, self.val_src, cfg.val_crop)
        metrics = {
            "val_psnr": final["psnr"],
            "val_ssim": final["ssim"],
            "val_input_psnr": final["input_psnr"],
            "val_input_ssim": final["input_ssim"],
            "best": self.best,
            "train_seconds_this_session": time.perf_counter() - t0,
        }
        if exposure is not None:
            metrics["exposure_gain"] = exposure
        prov = {
            "stage": "T",
            "config": asdict(cfg),
            "data": cfg.data,
            "steps": cfg.steps,
            "parameters": count_parameters(model),
            **self.provenance,
        }
        if self.dist.enabled:
            prov["distributed"] = self.dist.describe()
        save = save_bundle if cfg.genotype is not None else save_weights
        save(out, model.eval(), task=cfg.task, loss=self.spec.to_dict(), provenance=prov, metrics=metrics)
        plot_training(self.history, out / "plots" / "train_curves.png")
        return TrainResult(out, self.step, metrics, self.history)

    def _calibrate_exposure(self) -> float | None:
        """c* of EdgeNetwork.calibrate_exposure on up to ``exposure_frames`` whole training frames."""
        cfg, model = self.cfg, self.model
        calibrate = getattr(model, "calibrate_exposure", None)
        if not cfg.calibrate_exposure or calibrate is None:
            return None
        src = self.sampler.source
        picks = range(0, len(src), max(1, math.ceil(len(src) / cfg.exposure_frames)))

        def frames():
            for i in picks:
                _name, inp, tgt = src.load(i)
                yield (to_tensor(inp)[None].to(self.dist.device), to_tensor(tgt)[None].to(self.dist.device))

        model.eval()
        gain = calibrate(frames())  # None: the network has no exposure gain (scattering)
        if gain is not None:
            log.info("exposure calibration on %d whole training frames: gain %.3f", len(picks), gain)
        return gain

    def _train_step(self) -> dict[str, Any]:
        inp, tgt = (t.to(self.dist.device) for t in self.sampler.batch(self.step))
        init = getattr(self.model, "init_from_data", None)
        if self.step == 0 and init is not None:  # an edge network's data-dependent start (before any step)
            log.info("data-dependent init: %s", init(inp, tgt))
            # each rank saw its own shard: start every rank from rank 0's initialisation
            self.dist.broadcast_module_(self.model)
        loss, terms = self.criterion(self.model(inp), tgt)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {self.step}; lower --lr or check the data")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.dist.mean_grads_(list(self.model.parameters()))  # the global batch's gradient, before the clip
        gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip)
        self.opt.step()
        self.sched.step()
        self.step += 1
        logged = self.dist.mean_floats({"loss": loss.item(), **{f"loss_{k}": v.item() for k, v in terms.items()}})
        return {
            "step": self.step,
            "loss": logged.pop("loss"),
            "lr": self.opt.param_groups[0]["lr"],
            "grad_norm": float(gnorm),
            **logged,
        }


def train(
    cfg: TrainConfig,
    *,
    resume: bool = False,
    progress: Callable[[int, dict[str, Any]], None] | None = None,
    provenance: dict[str, Any] | None = None,
) -> TrainResult:
    """Train ``cfg.genotype`` on ``cfg.data`` and write a bundle into ``cfg.out``.

    ``progress(step, record)`` is called after every step (the CLI draws a progress bar with
    it). ``provenance`` is merged into the bundle's provenance (the search passes its run).
    """
    dist = init_from_env()
    result = TrainSession(cfg, resume=resume, provenance=provenance, dist=dist).run(progress)
    dist.barrier()  # every rank is done (rank 0 wrote the bundle): leave the process group together
    dist.shutdown()
    return result


def plot_training(history: list[dict[str, Any]], path: Path) -> Path | None:
    """Loss (log scale) and validation PSNR over steps, as a PNG."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in history]
    losses = [r["loss"] for r in history]
    vals = [(r["step"], r["val_psnr"], r.get("val_input_psnr")) for r in history if "val_psnr" in r]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    a1.plot(steps, losses, lw=0.6, alpha=0.5, label="loss")
    k = max(1, len(losses) // 50)
    if len(losses) > k:
        smooth = [sum(losses[max(0, i - k):i + 1]) / len(losses[max(0, i - k):i + 1]) for i in range(len(losses))]
        a1.plot(steps, smooth, lw=1.5, label=f"moving mean ({k})")
    a1.set_yscale("log")
    a1.set_xlabel("step")
    a1.set_title("training loss")
    a1.legend()
    if vals:
        a2.plot([v[0] for v in vals], [v[1] for v in vals], marker="o", label="model")
        if vals[0][2] is not None:
            a2.axhline(vals[0][2], color="gray", ls="--", label="degraded input")
        a2.legend()
    a2.set_xlabel("step")
    a2.set_title("validation PSNR (dB)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path
