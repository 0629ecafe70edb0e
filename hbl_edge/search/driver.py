"""``hbl-edge search``: run stages L → A → T into one run directory, resumably.

Run directory (DESIGN §8)::

    RUN/config.json            resolved SearchConfig + versions
    RUN/search/state.pt        checkpoint of the stage in progress (atomic; tensors only)
    RUN/search/log.jsonl       one record per search step (stage, losses, λ, latency, genotype)
    RUN/search/critic.safetensors   the stage-L critic (objective "critic")
    RUN/latency.json           the latency table used by stage A (measured here, or an estimate)
    RUN/loss.json              stage L's output: λ* (hbl-loss/1)
    RUN/genotype.json          stage A's output (hbl-genotype/1)
    RUN/search/report.json     derivation report, predicted vs measured latency
    RUN/model/                 stage T's training run: the model bundle, its config, log, plots
    RUN/eval.json              the bundle on the test split
    RUN/plots/*.png            λ over time, α heat maps, latency vs validation loss

Each stage reads its inputs from those files, so a user can replace any of them by hand and
run ``--stages A,T`` or ``--stages T`` on the same directory.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..data import TrainSampler, has_test_split, open_dataset
from ..distributed import DistContext, init_from_env, record_processes, resumable_record
from ..errors import ConfigError, HblError
from ..genotype import load_genotype
from ..losses import LossSpec, build_loss, parse_loss_spec
from ..runio import append_jsonl, atomic_path, check_same_config, read_jsonl, seed_everything, versions, write_json
from ..train import TrainConfig, TrainSession, _StopFlag
from .config import VERSIONED_DEFAULTS, SearchConfig, saved_settings_to_adopt
from .stages import BilevelState, bilevel_step, make_optimizers, normalise_weights_, place, place_batch
from .supernet import Supernet, derive

log = logging.getLogger(__name__)

STATE = "search/state.pt"
LOG = "search/log.jsonl"
OUTPUTS = {"L": "loss.json", "A": "genotype.json", "T": "model/model.json"}
Progress = Callable[[str, int, int, dict[str, Any]], None]


@dataclass
class SearchResult:
    out: Path
    completed: list[str] = field(default_factory=list)
    interrupted: bool = False
    report: dict[str, Any] = field(default_factory=dict)


class Interrupted(Exception):
    """Raised inside a stage after a signal: the checkpoint is written, the run stops cleanly."""


def _check_output(name: str, path: Path) -> None:
    if name == "L":
        parse_loss_spec(path)
    elif name == "A":
        load_genotype(path)
    else:
        from ..bundle import read_meta

        read_meta(path.parent)


def stage_done(out: Path, name: str) -> bool:
    """Whether stage ``name``'s output (its done-marker, :data:`OUTPUTS`) is in ``out``.

    Outputs are written atomically, so a truncated or corrupt one means the file was damaged
    afterwards (or by an older version): that is a one-line :class:`ConfigError` saying to
    delete it, rather than a silent re-run (stage L or A can cost hours) or a later crash.
    """
    path = out / OUTPUTS[name]
    if not path.exists():
        return False
    try:
        _check_output(name, path)
    except HblError as e:
        raise ConfigError(
            f"stage {name}'s output is unreadable ({e}); delete {path} to re-run stage {name} "
            "(with --resume it continues from its checkpoint when one is there)"
        ) from None
    return True


def _check_run_dir(cfg: SearchConfig, out: Path, resume: bool, defaulted: set[str]) -> dict[str, Any]:
    """Refuse a run directory that does not fit; on ``--resume``, return the settings the run
    takes from its saved ``config.json`` (:func:`~hbl_edge.search.config.saved_settings_to_adopt`)."""
    saved = out / "config.json"
    if resume:
        if not saved.exists():
            raise ConfigError(f"--resume: {out} holds no search run (no config.json); start without --resume")
        try:
            saved_cfg = json.loads(saved.read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"--resume: {saved} is unreadable ({e}); start the run again in another --out") from None
        adopt = saved_settings_to_adopt(saved_cfg, defaulted)
        for k, v in adopt.items():
            if getattr(cfg, k) != v:
                log.warning("--resume: %s = %s as the saved run (%s)", k, v,
                            "not in its config.json" if k not in saved_cfg else "not given here; this version's default differs")
        current = {**asdict(cfg), **adopt, **resumable_record(saved)}  # the process count may change
        check_same_config(saved, {k: v for k, v in current.items() if k in saved_cfg or k not in adopt})
        return adopt
    done = [s for s in cfg.stage_list if (out / OUTPUTS[s]).exists()]
    if done:
        raise ConfigError(
            f"{out} already has the output of stage {', '.join(done)} ({', '.join(OUTPUTS[s] for s in done)}); "
            "pass --resume to continue, --stages with the remaining stages, or another --out"
        )
    if (out / STATE).exists():
        raise ConfigError(f"{out} holds an unfinished search; pass --resume to continue it or choose another --out")


def run_search(cfg: SearchConfig, *, resume: bool = False, progress: Progress | None = None,
               dist: DistContext | None = None) -> SearchResult:
    """Run the stages of ``cfg`` (L → A → T by default) into ``cfg.out``.

    ``dist``: the data-parallel context (:mod:`hbl_edge.distributed`); None reads torchrun's
    environment (a plain call without it is one process, as always). Rank 0 alone reads and
    writes ``cfg.out`` and calls ``progress``.
    """
    defaulted = {k for k in VERSIONED_DEFAULTS if getattr(cfg, k) is None}
    cfg.validate()
    owns_group = dist is None
    dist = dist or init_from_env()
    out = Path(cfg.out)
    for k, v in (dist.on_main(lambda: _check_run_dir(cfg, out, resume, defaulted)) or {}).items():
        setattr(cfg, k, v)  # on every rank
    if "L" in cfg.stage_list and cfg.order == "first":
        raise ConfigError(
            "stage L cannot learn with --order first: its upper objective does not depend on λ directly, "
            "so the first-order hypergradient is exactly zero; use --order second (or exact)"
        )
    if "A" in cfg.stage_list and cfg.latency_budget is not None:
        from .devices import resolve_device

        resolve_device(cfg.device, latency_table=cfg.latency_table)  # e.g. `jetson` off a Jetson needs a table
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed, cfg.deterministic)
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        record_processes(out / "config.json", {**asdict(cfg), "versions": versions()}, dist, resume)
    if "A" in cfg.stage_list and cfg.latency_budget is not None and not (out / OUTPUTS["A"]).exists():
        # a budget the space cannot meet is an error now, not after the training (DESIGN §3)
        # rank 0 alone checks, and building candidate ops draws from the global RNG: keep every
        # rank's stream where it was so ranks stay in step (and one process equals N)
        with torch.random.fork_rng(devices=[]):
            if cfg.macro:
                dist.on_main(lambda: _check_reachable_macro(cfg, _edge_models(cfg, out)))
            else:
                dist.on_main(lambda: _check_reachable(cfg, _latency_model(cfg, out)))
    result = SearchResult(out=out)
    stages = {"L": _stage_l, "A": _stage_a, "T": _stage_t}
    try:
        with _StopFlag() as flag:
            for name in cfg.stage_list:
                if dist.on_main(lambda: stage_done(out, name)):
                    log.info("stage %s already done (%s); skipping", name, OUTPUTS[name])
                    continue
                result.report[name] = stages[name](cfg, out, progress if dist.is_main else None, flag, dist)
                result.completed.append(name)
                if dist.is_main:
                    (out / STATE).unlink(missing_ok=True)  # the stage's output file now stands for it
    except Interrupted:
        result.interrupted = True
        log.warning("search stopped; continue with the same command plus --resume")
    if owns_group:  # every rank is done: leave the process group together
        dist.barrier()
        dist.shutdown()
    return result


# ------------------------------------------------------------------------------------------
# shared pieces
# ------------------------------------------------------------------------------------------
def _samplers(cfg: SearchConfig, seed_offset: int, dist: DistContext) -> tuple[TrainSampler, TrainSampler]:
    """Lower level on the train split, upper level on the val split (DESIGN §5); each rank
    its slice of the global batch."""
    train_src = open_dataset(cfg.data, cfg.task, "train", seed=cfg.seed)
    val_src = open_dataset(cfg.data, cfg.task, "val", seed=cfg.seed)
    seed = cfg.seed + seed_offset
    share = dict(rank=dist.rank, world_size=dist.world_size)
    lower = TrainSampler(train_src, cfg.task, crop=cfg.crop, batch_size=cfg.batch_size, seed=seed, **share)
    upper = TrainSampler(val_src, cfg.task, crop=cfg.crop, batch_size=cfg.batch_size, seed=seed + 7919, **share)
    return lower, upper



def _run_bilevel(
    stage: str, cfg: SearchConfig, out: Path, state: BilevelState, steps: int, step_fn: Callable[[int], dict[str, Any]],
    progress: Progress | None, flag, extra_state: Callable[[], dict[str, Any]] | None = None,
    dist: DistContext | None = None,
) -> None:
    """The loop both stages share: step, log, checkpoint (every N steps and on a signal).

    Data parallel: rank 0 reads the checkpoint and every rank starts from it; rank 0 alone
    logs and checkpoints; a signal on any rank stops every rank after the same step.
    """
    dist = dist or init_from_env()
    ckpt = out / STATE

    def load() -> dict[str, Any] | None:
        if not ckpt.exists():
            return None
        saved = torch.load(ckpt, weights_only=True)
        if saved.get("stage") != stage:
            return None
        kept = [r for r in read_jsonl(out / LOG) if r.get("stage") != stage or r["step"] <= saved["bilevel"]["step"]]
        with atomic_path(out / LOG) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        return saved

    saved = dist.on_main(load)
    if saved is not None:
        state.load_state_dict(saved["bilevel"])
        torch.set_rng_state(saved["torch_rng"].cpu())
        log.info("stage %s: resuming at step %d", stage, state.step)
    dist.broadcast_module_(state.supernet)  # every rank starts from rank 0's weights
    while state.step < steps:
        t0 = time.perf_counter()
        rec = step_fn(state.step)
        rec = {"stage": stage, **rec, "seconds": time.perf_counter() - t0}
        if dist.is_main:
            append_jsonl(out / LOG, rec)
            if progress:
                progress(stage, state.step, steps, rec)
        stop = dist.any(flag.stop)  # a signal on any rank stops every rank after this step
        if dist.is_main and (state.step % cfg.ckpt_every == 0 or state.step == steps or stop):
            payload = {"stage": stage, "bilevel": state.state_dict(), "torch_rng": torch.get_rng_state()}
            if extra_state:
                payload.update(extra_state())
            with atomic_path(ckpt) as tmp:
                torch.save(payload, tmp)
        if stop:
            raise Interrupted


def _stage_records(out: Path, stage: str) -> list[dict[str, Any]]:
    return [r for r in read_jsonl(out / LOG) if r.get("stage") == stage]


# ------------------------------------------------------------------------------------------
# stage L: loss search
# ------------------------------------------------------------------------------------------
def _upper_objective_l(cfg: SearchConfig, out: Path, dist: DistContext):
    from .objectives import OBJECTIVES

    make = OBJECTIVES.get(cfg.objective)  # an unknown name: the registry's one-line ConfigError
    if cfg.objective != "critic":
        return make(), {}
    critic, info = dist.on_main(lambda: _critic(cfg, out))  # trained (or read) once, on rank 0
    return make(critic), info


def _critic(cfg: SearchConfig, out: Path):
    from .critic import load_critic, read_critic_meta, save_critic, train_critic

    path = out / "search" / "critic.safetensors"
    if cfg.critic:
        critic, info = load_critic(cfg.critic, cfg.task), {"critic": str(cfg.critic), "trained": False}
    elif path.exists():  # trained by this run before it was interrupted
        critic = load_critic(path, cfg.task)
        info = {"critic": str(path), "trained": True, "report": read_critic_meta(path).get("report")}
    else:
        log.info("stage L: training the quality critic (%d steps)", cfg.critic_steps)
        critic, report = train_critic(cfg.task, cfg.data, steps=cfg.critic_steps, seed=cfg.seed)
        save_critic(critic, path, {"task": cfg.task, "report": report})
        info = {"critic": str(path), "trained": True, "report": report}
    return critic, info


def _stage_l_network(cfg: SearchConfig):
    """The supernet λ is searched on, α frozen, and its name for loss.json's provenance.

    λ* must suit the family of networks stage T will train: the paper-shaped supernet, or under
    ``--macro edge`` an edge supernet (maps at 1/s, inverse at full resolution), whose output
    responds to a loss term quite differently (docs/benchmarks.md). Which candidate of the grid:
    the cheapest (largest s, narrowest, fewest units, no refinement), since what the loss has to
    get right, dividing by an upsampled smooth map, is the same for all of them and stage L
    trains its supernet for the most steps of the search.
    """
    if cfg.macro != "edge":
        net = Supernet(cfg.space, cfg.channels, cfg.units, seed=cfg.seed, freeze_alpha=True, hnu_norm=cfg.hnu_norm)
        return net, f"paper {cfg.space} {cfg.channels[0]}/{cfg.channels[1]}x{cfg.units}"
    from .macro import EdgeSupernet

    cand = min(_candidates(cfg), key=lambda c: (-c.scale, c.channels, c.units, len(c.refine)))
    net = EdgeSupernet(cand.macro(cfg.task), cfg.space, cand.channels, cand.units, seed=cfg.seed, freeze_alpha=True,
                       hnu_norm=cfg.hnu_norm)
    return net, f"edge {cand.name}"


def _stage_l(cfg: SearchConfig, out: Path, progress: Progress | None, flag, dist: DistContext) -> dict[str, Any]:
    terms = list(cfg.terms) + [t for t, w in (("vgg", cfg.vgg_weights), ("lpips", cfg.lpips_weights)) if w and t not in cfg.terms]
    criterion = build_loss(
        LossSpec({t: 1.0 for t in terms}), vgg_weights=cfg.vgg_weights, lpips_weights=cfg.lpips_weights,
        search_vgg_taps=cfg.vgg_weights is not None,
    )
    criterion.weights.requires_grad_(True)
    upper_vars: list[torch.Tensor] = [criterion.weights]
    if criterion.vgg_tap_logits is not None:
        upper_vars.append(criterion.vgg_tap_logits)
    objective, critic_info = _upper_objective_l(cfg, out, dist)
    # α frozen at its near-uniform initialisation (DESIGN §5: λ* = argmin over w*(α₀, λ))
    net, family = _stage_l_network(cfg)
    net = place(net, dist).train()
    criterion.to(dist.device)
    objective.to(dist.device)
    w_opt, u_opt = make_optimizers(cfg, net, upper_vars, upper_lr=cfg.lambda_lr)
    state = BilevelState(net, upper_vars, w_opt, u_opt)
    lower, upper = _samplers(cfg, seed_offset=0, dist=dist)
    if hasattr(net, "init_from_data"):
        net.init_from_data(*place_batch(lower.batch(0), dist))

    def step_fn(step: int) -> dict[str, Any]:
        rec = bilevel_step(
            state, order=cfg.order, lower_batch=place_batch(lower.batch(step), dist),
            upper_batch=place_batch(upper.batch(step), dist),
            lower_loss=criterion, upper_objective=objective, clip=cfg.w_clip,
            after_upper=lambda: normalise_weights_(criterion.weights), dist=dist, lower_step=cfg.lower_step,
        )
        rec["lambda"] = dict(zip(criterion.names, criterion.weights.detach().tolist()))
        return rec

    _run_bilevel("L", cfg, out, state, cfg.steps_l, step_fn, progress, flag, dist=dist)
    spec = criterion.to_spec(
        objective=cfg.objective,
        provenance={"stage": "L", "steps": cfg.steps_l, "order": cfg.order, "seed": cfg.seed, "network": family,
                    **critic_info},
    )
    if dist.is_main:
        spec.save(out / "loss.json")
        from .plots import plot_lambda

        plot_lambda(_stage_records(out, "L"), out / "plots" / "lambda.png")
    return {"loss": spec.to_dict()}


# ------------------------------------------------------------------------------------------
# stage A: architecture search
# ------------------------------------------------------------------------------------------
def _latency_model(cfg: SearchConfig, out: Path):
    """A measured table (given, or profiled here for a local device), else a roofline estimate."""
    if cfg.latency_budget is None:
        return None
    from .latency import LatencyModel, load_latency_model

    cached = out / "latency.json"
    if cfg.latency_table:
        model = load_latency_model(cfg.device, cfg.resolution, cfg.space, cfg.channels, latency_table=cfg.latency_table)
    elif cached.exists():
        model = LatencyModel(cached)
    elif cfg.device in ("cpu", "cuda"):
        from .profiler import profile

        log.info("stage A: profiling op latencies on this machine (%s, %s, %dx%d)", cfg.device, cfg.backend, *cfg.resolution)
        # Ops in context, consecutive runs, with the deployed runner's threads and spinning; then
        # the whole-network model fitted on calibration networks spanning the space (never the
        # derived one). docs/latency.md has the accuracy this reaches against an independent timing.
        table = profile(cfg.device, cfg.backend, cfg.resolution, cfg.space, cfg.channels, out=cached,
                        units=cfg.units, repeats=10 if cfg.quick else 15, threads=cfg.latency_threads,
                        allow_spinning=cfg.latency_spinning, calibrate=8 if cfg.quick else 15)
        model = LatencyModel(table)
    else:
        model = load_latency_model(cfg.device, cfg.resolution, cfg.space, cfg.channels)
        model.table.save(cached)
    log.info("stage A latency model: %s", model.label)
    return model


def _local_target(cfg: SearchConfig) -> bool:
    """Whether the target device is this machine (so a network can be measured on it here)."""
    if cfg.device == "cpu":
        return True
    return cfg.device == "cuda" and torch.cuda.is_available()


def _measurer(cfg: SearchConfig, model) -> Callable[[Any], float] | None:
    """The independent measurement of a genotype on the target (None when it is not this machine)."""
    if not _local_target(cfg):
        return None
    from .deployed import measure_network

    settings = model.table.settings or {}
    threads, spinning = settings.get("threads"), settings.get("allow_spinning")
    # As deployed, and not with the profiler's harness: a fresh runner per round, consecutive
    # runs after a warm-up, with the threads and spinning the table was made for.
    return lambda g: measure_network(g, cfg.backend, cfg.resolution, device=cfg.device, repeats=15, warmup=3,
                                     rounds=2, threads=threads, allow_spinning=spinning)


def _check_reachable(cfg: SearchConfig, model) -> dict[str, Any]:
    """Raise :class:`BudgetError` when the fastest network of the space is over the budget.

    The floor is the genotype with the model's fastest op on every edge; on a local target it
    is also measured, since the promise is about the measurement.
    """
    from .latency import random_genotype
    from .repair import BudgetError, cheapest

    floor_g = cheapest(random_genotype(cfg.space, cfg.channels, cfg.units, seed=0), model.predict, model.fcm, model.hnu)
    predicted = model.predict(floor_g)
    where = f"at {cfg.resolution[0]}x{cfg.resolution[1]} on {cfg.device} ({model.label})"
    if predicted > cfg.latency_budget:
        raise BudgetError(f"--latency-budget {cfg.latency_budget:g} ms is below the fastest network this space allows, "
                          f"predicted {predicted:.2f} ms {where}: raise the budget, lower --resolution, or use --space edge")
    measure = _measurer(cfg, model)
    measured = measure(floor_g) if measure is not None else None
    if measured is not None and measured > cfg.latency_budget:
        raise BudgetError(f"--latency-budget {cfg.latency_budget:g} ms is below the fastest network this space allows, "
                          f"measured {measured:.2f} ms {where}: raise the budget, lower --resolution, or use --space edge")
    return {"floor_genotype": floor_g.summary(), "floor_predicted_ms": predicted, "floor_measured_ms": measured}


def _candidates(cfg: SearchConfig):
    from .macro import grid

    return grid(cfg.macro_scales, cfg.macro_widths, cfg.macro_units, cfg.macro_refine)


def _edge_models(cfg: SearchConfig, out: Path) -> dict:
    """Latency models of every macro candidate (profiled here once, cached in ``RUN/latency/``)."""
    from .macro import edge_models

    return edge_models(_candidates(cfg), cfg.task, cfg.space, cfg.resolution, out / "latency", device=cfg.device,
                       backend=cfg.backend, threads=cfg.latency_threads, spinning=cfg.latency_spinning, quick=cfg.quick)


def _check_reachable_macro(cfg: SearchConfig, models: dict) -> dict[str, Any]:
    """:func:`_check_reachable` over the macro grid: the floor is the fastest candidate's fastest network."""
    from .macro import floor_genotype
    from .repair import BudgetError

    floors = {c: floor_genotype(c, cfg.task, cfg.space, m) for c, m in models.items()}
    best = min(floors, key=lambda c: models[c].predict(floors[c]))
    predicted = models[best].predict(floors[best])
    where = f"at {cfg.resolution[0]}x{cfg.resolution[1]} on {cfg.device}"
    if predicted > cfg.latency_budget:
        raise BudgetError(f"--latency-budget {cfg.latency_budget:g} ms is below the fastest edge network of the macro "
                          f"grid ({best.name}), predicted {predicted:.2f} ms {where}: raise the budget, lower "
                          "--resolution, or add a larger --macro-scales")
    measured = _measurer(cfg, models[best])(floors[best])
    if measured > cfg.latency_budget:
        raise BudgetError(f"--latency-budget {cfg.latency_budget:g} ms is below the fastest edge network of the macro "
                          f"grid ({best.name}), measured {measured:.2f} ms {where}: raise the budget, lower "
                          "--resolution, or add a larger --macro-scales")
    return {"floor": best.name, "floor_predicted_ms": predicted, "floor_measured_ms": measured}


def _macro_sweep(cfg: SearchConfig, out: Path, criterion, models: dict, flag, dist: DistContext):
    """The outer sweep of :mod:`hbl_edge.search.macro`: a short stage A per feasible candidate.

    Returns the winning candidate. Every candidate's row (latency floor, score, derived
    genotype and its predicted ms) is in ``RUN/search/macro.json``, written after each one.
    """
    from ..runio import read_json
    from .latency import OBJECTIVES as LATENCY_OBJECTIVES
    from .macro import Candidate, EdgeSupernet, derive_edge, floor_genotype
    path = out / "search" / "macro.json"
    done = read_json(path, ConfigError, "macro sweep")["candidates"] if path.exists() else []
    rows = {Candidate.from_dict(r["candidate"]): r for r in done}
    steps = cfg.macro_steps or max(cfg.steps_a // 4, 4)
    budget = cfg.latency_budget
    for cand, model in models.items():
        if cand in rows:
            continue
        if dist.any(flag.stop):  # every rank stops at the same point (a collective)
            raise Interrupted
        floor = model.predict(floor_genotype(cand, cfg.task, cfg.space, model))
        row: dict[str, Any] = {"candidate": cand.to_dict(), "name": cand.name, "floor_predicted_ms": floor}
        if floor > budget:
            row.update(feasible=False, why="its fastest network is predicted over the budget")
        else:
            torch.manual_seed(cfg.seed + 1)
            net = EdgeSupernet(cand.macro(cfg.task), cfg.space, cand.channels, cand.units, seed=cfg.seed + 1,
                               hnu_norm=cfg.hnu_norm)
            net = place(net, dist).train()
            w_opt, u_opt = make_optimizers(cfg, net, list(net.arch_parameters()), upper_lr=cfg.arch_lr)
            state = BilevelState(net, list(net.arch_parameters()), w_opt, u_opt)
            lower, upper = _samplers(cfg, seed_offset=1, dist=dist)
            first = place_batch(lower.batch(0), dist)
            net.init_from_data(*first)

            def objective(pred, target, net=net, model=model):
                loss = criterion(pred, target)[0]
                return LATENCY_OBJECTIVES[cfg.latency_form](loss, model.expected(net).to(loss.dtype), budget,
                                                            cfg.latency_mu if cfg.latency_form == "additive" else cfg.latency_beta)

            t0 = time.perf_counter()
            warm = cfg.warmup_steps(steps)
            for step in range(steps):
                if dist.any(flag.stop):  # a candidate's short search takes minutes at s = 2: stop between steps
                    raise Interrupted
                bilevel_step(state, order=cfg.order, lower_batch=place_batch(lower.batch(step), dist),
                             upper_batch=place_batch(upper.batch(step), dist), lower_loss=criterion,
                             upper_objective=objective, clip=cfg.w_clip, dist=dist, lower_step=cfg.lower_step,
                             upper_frozen=step < warm)
            with torch.no_grad():  # quality alone, on validation batches the search did not step on
                score = float(sum(criterion(net(b[0]), b[1])[0] for b in
                                  (place_batch(upper.batch(100_000 + k), dist) for k in range(4))) / 4)
            score = dist.mean_floats({"score": score})["score"]  # each rank scored its slice: one choice for all
            g, _, priced, _ = _select_ops(cfg, net, derive_edge, criterion, upper, dist)
            net.cpu()  # the proxies below train their own networks: free the supernet's device memory
            predicted = model.predict(g)
            row.update(feasible=True, score=score, steps=steps, seconds=time.perf_counter() - t0,
                       derived=g.summary(), derived_predicted_ms=predicted)
            if predicted > budget:  # what the repair would leave (by the model): the price of fitting
                from .repair import repair as _repair

                fixed = _repair(g, priced, model.predict, budget, model.fcm, model.hnu, measure=None)
                row.update(repaired=fixed.genotype.summary(), repaired_predicted_ms=fixed.predicted_ms,
                           repair_changes=len(fixed.changes))
                g = fixed.genotype
            if dist.any(flag.stop):
                raise Interrupted
            if cfg.macro_train_steps:
                row.update(_proxy_train(cfg, out, cand, g, dist))
            log.info("macro sweep: %s score %.4f%s, derived %.1f ms (budget %.1f)", cand.name, score,
                     f", trained {row['proxy_val_psnr']:.2f} dB" if "proxy_val_psnr" in row else "", predicted, budget)
        rows[cand] = row
        if dist.is_main:
            write_json(path, {"budget_ms": budget, "steps": steps, "candidates": list(rows.values())})
    feasible = [c for c, r in rows.items() if r.get("feasible")]
    if not feasible:
        raise ConfigError(f"no macro candidate can meet the {budget:g} ms budget (see {path})")
    if cfg.macro_train_steps:
        win = max(feasible, key=lambda c: rows[c]["proxy_val_psnr"])
        over = (f", mean over {cfg.macro_proxy_seeds} seeds (each its own initialisation, batches and validation "
                f"carve-out)" if cfg.macro_proxy_seeds > 1 else "")
        rule = (f"highest validation PSNR (whole frames) of the candidate's derived network, repaired to the budget by "
                f"the model and trained {cfg.macro_train_steps} steps as stage T trains{over}, among candidates whose "
                f"fastest network is predicted within the budget")
    else:
        win = min(feasible, key=lambda c: rows[c]["score"])
        rule = ("lowest λ* loss on 4 validation batches after the short search, among candidates "
                "whose fastest network is predicted within the budget")
    if dist.is_main:
        write_json(path, {"budget_ms": budget, "steps": steps, "train_steps": cfg.macro_train_steps,
                          "proxy_seeds": cfg.macro_proxy_seeds, "candidates": list(rows.values()),
                          "chosen": win.to_dict(), "chosen_name": win.name, "rule": rule})
    return win


def macro_candidate_dir(out: Path, name: str) -> Path:
    """Where the sweep keeps a candidate's genotype and proxy runs (its name made path-safe)."""
    return out / "search" / "macro" / re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _proxy_seeds(cfg: SearchConfig) -> list[int]:
    """The seeds every proxy training of one network uses: ``seed, seed + 1, …`` (``macro_proxy_seeds``)."""
    return [cfg.seed + k for k in range(cfg.macro_proxy_seeds)]


def _train_proxies(cfg: SearchConfig, out: Path, genotype: Path, run_for_seed: Callable[[int], Path],
                   provenance: dict[str, Any], dist: DistContext, loss: str | None = None,
                   flag=None) -> list[tuple[Path, dict[str, Any]]]:
    """``genotype`` trained ``macro_train_steps`` stage-T steps once per proxy seed (``seed, seed + 1, …``).

    Each run is a bundle at ``run_for_seed(seed)``, trained with ``loss`` (default the search's
    ``loss.json``); returns ``(run, metrics)`` per seed. A signal in a training (or, with
    ``flag``, before one) raises :class:`Interrupted`.
    """
    trained = []
    for seed in _proxy_seeds(cfg):
        if flag is not None and dist.any(flag.stop):
            raise Interrupted
        run = run_for_seed(seed)
        tcfg = _train_config(dataclasses.replace(cfg, seed=seed), out, genotype, run, cfg.macro_train_steps,
                             val_crop=None, loss=loss)
        res = TrainSession(tcfg, provenance={"search_run": str(out), **provenance}, dist=dist).run()
        if res.interrupted:
            raise Interrupted
        trained.append((run, dist.on_main(lambda res=res: res.metrics)))
    return trained


def _proxy_train(cfg: SearchConfig, out: Path, cand, genotype, dist: DistContext) -> dict[str, Any]:
    """Train one macro candidate's derived network briefly, as stage T would, and score it.

    Why: after the short supernet search every candidate's λ* loss sits within 0.1–0.3 % of the
    others' (a choice by noise, docs/search.md), while a fixed derived network trains hundreds
    of steps a minute here. The score is the validation PSNR on whole frames after the exposure
    calibration stage T applies, i.e. what the candidate would be worth deployed, averaged over
    ``macro_proxy_seeds`` trainings with seeds ``seed, seed + 1, …``: each seed draws its own
    initialisation, batches and validation carve-out, so the mean is a small cross-validation
    (one seed's ranking is mostly its carve-out's: docs/search.md, bench/proxy_seeds.py). The runs
    are kept in ``RUN/search/macro/<candidate>/model`` (the first seed) and ``model_seed<N>`` (a
    bundle each: inspect or evaluate them); a half-done candidate from an interrupted sweep is
    started again (it is short).
    """
    import shutil

    d = macro_candidate_dir(out, cand.name)

    def prepare() -> None:
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        genotype.save(d / "genotype.json")

    dist.on_main(prepare)  # every rank waits for rank 0's files
    seeds = _proxy_seeds(cfg)
    t0 = time.perf_counter()
    trained = _train_proxies(cfg, out, d / "genotype.json", lambda seed: d / ("model" if seed == cfg.seed else f"model_seed{seed}"),
                             {"macro_candidate": cand.name}, dist)
    runs = [str(run) for run, _ in trained]
    scores = [(m["val_psnr"], m["val_ssim"]) for _, m in trained]
    row = {"proxy_val_psnr": statistics.fmean(p for p, _ in scores),
           "proxy_val_ssim": statistics.fmean(q for _, q in scores), "proxy_steps": cfg.macro_train_steps,
           "proxy_seconds": time.perf_counter() - t0, "proxy_genotype": genotype.summary(), "proxy_run": runs[0]}
    if len(seeds) > 1:
        row.update(proxy_seeds=seeds, proxy_val_psnr_seeds=[p for p, _ in scores], proxy_runs=runs)
    return row


def _loss_check(cfg: SearchConfig, out: Path, cand, flag, dist: DistContext):
    """Stage L's λ* against the ``cfg.loss_check`` losses, on the macro sweep's winner; returns the loss to use.

    Why: on edge networks stage L's λ* did not beat uniform λ, and L1 alone beat both, on the
    validation carve-outs of low light and underwater (docs/benchmarks.md), so λ* is checked
    before stages A and T use it. The winner's derived network (the one its proxies trained)
    trains again with each alternative exactly as its proxies did (steps, seeds, recipe); the
    loss with the highest mean validation PSNR wins, λ* on a tie. When an alternative wins,
    ``loss.json`` becomes it (stage L's λ* stays in ``search/loss_stage_l.json``); the decision
    and every score are in ``search/loss_check.json``, which a resumed run reads back.
    """
    import shutil

    from ..runio import read_json

    record_path = out / "search" / "loss_check.json"
    if record_path.exists():
        return _read_loss_spec(out)
    sweep = read_json(out / "search" / "macro.json", ConfigError, "macro sweep")["candidates"]
    row = next(r for r in sweep if r["name"] == cand.name)
    home = macro_candidate_dir(out, cand.name)
    seeds = _proxy_seeds(cfg)
    stage_l = _read_loss_spec(out)
    rows = [{"loss": "stage L's λ*", "terms": dict(stage_l.terms), "val_psnr_seeds": row.get("proxy_val_psnr_seeds",
                                                                                       [row["proxy_val_psnr"]]),
             "val_psnr": row["proxy_val_psnr"]}]
    for k, spec in enumerate(cfg.loss_check):
        trained = _train_proxies(cfg, out, home / "genotype.json", lambda seed, k=k: home / f"loss_check{k}_seed{seed}",
                                 {"loss_check": spec}, dist, loss=spec, flag=flag)
        scores = [m["val_psnr"] for _, m in trained]
        rows.append({"loss": spec, "terms": dict(parse_loss_spec(spec).terms), "val_psnr_seeds": scores,
                     "val_psnr": statistics.fmean(scores)})
    best = max(range(len(rows)), key=lambda i: (rows[i]["val_psnr"], -i))  # ties: λ*, then the first listed
    log.info("loss check on %s: %s", cand.name, ", ".join(f"{r['loss']} {r['val_psnr']:.2f} dB" for r in rows))

    def write() -> None:
        if best:
            shutil.copyfile(out / "loss.json", out / "search" / "loss_stage_l.json")
            parse_loss_spec(rows[best]["loss"]).save(out / "loss.json")
        write_json(record_path, {"candidate": cand.name, "steps": cfg.macro_train_steps, "seeds": seeds,
                                 "rule": "highest mean validation PSNR (whole frames) of the winner's derived network "
                                         "over the proxy seeds; stage L's λ* on a tie",
                                 "losses": rows, "chosen": rows[best]["loss"]})

    dist.on_main(write)
    return _read_loss_spec(out)


def _read_loss_spec(out: Path):
    if not (out / "loss.json").exists():
        raise ConfigError(f"stage A needs {out / 'loss.json'}: run stage L first, or write one (e.g. {{\"format\": \"hbl-loss/1\", \"terms\": {{\"l1\": 1}}}})")
    return parse_loss_spec(out / "loss.json")


def _stage_a(cfg: SearchConfig, out: Path, progress: Progress | None, flag, dist: DistContext) -> dict[str, Any]:
    from .latency import OBJECTIVES as LATENCY_OBJECTIVES
    from .latency import additive

    spec = dist.on_main(lambda: _read_loss_spec(out))
    criterion = build_loss(spec, vgg_weights=cfg.vgg_weights, lpips_weights=cfg.lpips_weights,
                           lpips_net=cfg.lpips_net).to(dist.device)
    derive_fn: Callable[..., Any] = derive
    if cfg.macro:  # the outer sweep picks scale, widths, units and refinement; the search below its ops
        from .macro import EdgeSupernet, derive_edge

        models = dist.on_main(lambda: _edge_models(cfg, out))  # profiled once, on rank 0
        cand = _macro_sweep(cfg, out, criterion, models, flag, dist)
        if cfg.loss_check and cfg.macro_train_steps:
            spec = _loss_check(cfg, out, cand, flag, dist)
            criterion = build_loss(spec, vgg_weights=cfg.vgg_weights, lpips_weights=cfg.lpips_weights,
                                   lpips_net=cfg.lpips_net).to(dist.device)
        lat_model = models[cand]
        torch.manual_seed(cfg.seed + 1)
        net = EdgeSupernet(cand.macro(cfg.task), cfg.space, cand.channels, cand.units, seed=cfg.seed + 1,
                           hnu_norm=cfg.hnu_norm)
        derive_fn = derive_edge
    else:
        lat_model = dist.on_main(lambda: _latency_model(cfg, out))  # profiled once, on rank 0
        net = Supernet(cfg.space, cfg.channels, cfg.units, seed=cfg.seed + 1, hnu_norm=cfg.hnu_norm)
    net = place(net, dist).train()
    upper_vars = list(net.arch_parameters())
    w_opt, u_opt = make_optimizers(cfg, net, upper_vars, upper_lr=cfg.arch_lr)
    state = BilevelState(net, upper_vars, w_opt, u_opt)
    lower, upper = _samplers(cfg, seed_offset=1, dist=dist)
    if cfg.macro:
        net.init_from_data(*place_batch(lower.batch(0), dist))  # a resumed run's checkpoint overrides it
    budget = cfg.latency_budget
    warm = cfg.warmup_steps(cfg.steps_a)

    def objective(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = criterion(pred, target)[0]
        if lat_model is None:
            return loss
        lat = lat_model.expected(net).to(loss.dtype)
        if cfg.latency_form == "additive":
            return additive(loss, lat, budget, cfg.latency_mu)
        return LATENCY_OBJECTIVES[cfg.latency_form](loss, lat, budget, cfg.latency_beta)

    def step_fn(step: int) -> dict[str, Any]:
        rec = bilevel_step(
            state, order=cfg.order, lower_batch=place_batch(lower.batch(step), dist),
            upper_batch=place_batch(upper.batch(step), dist),
            lower_loss=criterion, upper_objective=objective, clip=cfg.w_clip, dist=dist, lower_step=cfg.lower_step,
            upper_frozen=step < warm,
        )
        genotype, report = derive_fn(net, cfg.max_parameter_free_per_unit)
        rec["genotype"] = genotype.summary()
        rec["parameter_free"] = report.parameter_free_argmax
        if lat_model is not None:
            with torch.no_grad():
                rec["expected_latency_ms"] = float(lat_model.expected(net))
                rec["derived_latency_ms"] = float(lat_model.predict(genotype))
        return rec

    _run_bilevel("A", cfg, out, state, cfg.steps_a, step_fn, progress, flag, dist=dist)
    genotype, report, priced, selected = _select_ops(cfg, net, derive_fn, criterion, upper, dist)
    if not dist.is_main:  # rank 0 measures, reports and writes; the others get its result
        return dist.on_main(lambda: None)
    net = net.cpu()  # plots and the saved α read it on the CPU
    priced = {k: v.cpu() for k, v in priced.items()}
    if report.capped:
        log.warning("stage A: skip-connection collapse guard replaced %d edge(s): %s", len(report.replaced), report.summary())
    result: dict[str, Any] = {"derivation": {**report.to_dict(), **selected}}
    if "argmax_genotype" in selected:
        log.info("stage A: %s selection %s (the argmax of α: %s)", selected["selection"], genotype.summary(),
                 selected["argmax_genotype"])
    if lat_model is not None:
        argmax = genotype
        with torch.random.fork_rng(devices=[]):  # rank 0 only: leave the RNG stream as the other ranks have it
            genotype, result["latency"] = _keep_promise(cfg, lat_model, genotype, priced)
        if genotype != argmax:
            argmax.save(out / "search" / "genotype_argmax.json")
    result["genotype"] = genotype.summary()
    genotype.save(out / "genotype.json")
    write_json(out / "search" / "report.json", result)
    from .plots import plot_alpha, plot_latency_vs_loss

    plot_alpha(net, out / "plots" / "alpha.png")
    plot_latency_vs_loss(_stage_records(out, "A"), out / "plots" / "latency_vs_loss.png", budget)
    saved: dict[str, Any] = {"alpha": [a.detach() for a in net.arch_parameters()]}
    if cfg.selection != "argmax":  # the selection's logits, which derived and repaired
        saved["selection_logits"] = list(priced.values())
    with atomic_path(out / "search" / "alpha.pt") as tmp:
        torch.save(saved, tmp)
    return dist.on_main(lambda: result)


def _select_ops(cfg: SearchConfig, net, derive_fn, criterion, upper, dist: DistContext):
    """The derived genotype of a trained supernet by ``cfg.selection`` (:mod:`hbl_edge.search.selection`).

    The perturbation test scores on the 4 fixed validation batches the sweep scores on (the
    search never stepped on them); under data parallelism every rank runs the same
    forwards on its slice and the loss is the ranks' mean, so every rank derives the same ops.
    """
    from .selection import select

    if cfg.selection == "argmax":
        return select(net, derive_fn, cfg.max_parameter_free_per_unit, "argmax")
    batches = [place_batch(upper.batch(100_000 + k), dist) for k in range(4)]

    def val_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        value = float(criterion(pred, target)[0])
        return torch.tensor(dist.mean_floats({"loss": value})["loss"] if dist.enabled else value)

    return select(net, derive_fn, cfg.max_parameter_free_per_unit, cfg.selection, val_loss, batches)


def _keep_promise(cfg: SearchConfig, lat_model, genotype, alpha) -> tuple[Any, dict[str, Any]]:
    """Measure the derived genotype on the target and repair it until it fits the budget.

    Returns the (possibly changed) genotype and the latency report: predicted and measured ms
    of the final network, the argmax network's, and every change (:mod:`hbl_edge.search.repair`).
    """
    from ..runtime.machine import machine_load
    from .repair import repair

    measure = _measurer(cfg, lat_model)
    load_before = machine_load()
    fixed = repair(genotype, alpha, lat_model.predict, cfg.latency_budget, lat_model.fcm, lat_model.hnu, measure=measure)
    load = {"before": load_before, "after": machine_load()}
    final = fixed.genotype
    predicted = fixed.predicted_ms
    rep: dict[str, Any] = {"predicted_ms": predicted, "budget_ms": cfg.latency_budget, "model": lat_model.label,
                           "estimate": bool(lat_model.estimate), "resolution": list(cfg.resolution),
                           "argmax": fixed.rounds[0], "repair": fixed.to_dict(), "machine_load": load}
    if measure is not None:
        settings = lat_model.table.settings or {}
        measured = fixed.measured_ms
        rep.update(measured_ms=measured, error_pct=100.0 * (predicted - measured) / measured,
                   measured_by="hbl_edge.search.deployed (deployed runner, 3 warm-up + 15 consecutive runs, 2 rounds)",
                   threads=settings.get("threads"), allow_spinning=settings.get("allow_spinning"))
        log.info("derived network: predicted %.1f ms, measured %.1f ms (%s), budget %.1f ms, %d change(s)",
                 predicted, measured, cfg.backend, cfg.latency_budget, len(fixed.changes))
    else:
        rep["measured_ms"] = None
        rep["why_not_measured"] = (f"the target {cfg.device!r} is not this machine: the repair held the prediction to "
                                   "the budget; measure it there with `hbl-edge bench`")
    for c in fixed.changes:
        log.info("repair: %s %s → %s (α-weight %.3f for %.2f ms)", c.where, c.old, c.new, c.alpha_lost, c.ms_saved)
    return final, rep


# ------------------------------------------------------------------------------------------
# stage T: train the derived network from scratch, then test
# ------------------------------------------------------------------------------------------
def _stage_t_inputs(out: Path) -> bool:
    for f in ("genotype.json", "loss.json"):
        if not (out / f).exists():
            raise ConfigError(f"stage T needs {out / f}: run stages L and A first, or put the file there")
    load_genotype(out / "genotype.json")  # validate before spending time
    return (out / "model" / "train" / "state.pt").exists()


def stage_t_config(cfg: SearchConfig, out: Path) -> TrainConfig:
    """Stage T's training run of the search in ``out`` (``out/model``): steps, sampler, crop, schedule.

    Public so that a comparison network can be trained exactly alike (``make demo`` trains the
    SCI-sized net with this, its genotype, loss and folder replaced).
    """
    return _train_config(cfg, out, out / "genotype.json", out / "model", cfg.steps_t,
                         val_every=max(cfg.steps_t // 10, 1))


def _train_config(cfg: SearchConfig, out: Path, genotype: Path, run: Path, steps: int, *,
                  val_every: int | None = None, loss: str | None = None, **extra: Any) -> TrainConfig:
    """A stage-T training of ``genotype`` with the search's λ* (``out/loss.json``, or ``loss``) and recipe."""
    cfg.validate()  # resolves the defaults that depend on --macro (the crops)
    every = val_every or steps
    return TrainConfig(
        task=cfg.task, genotype=str(genotype), loss=loss or str(out / "loss.json"), data=cfg.data, out=str(run), steps=steps,
        batch_size=cfg.train_batch_size, crop=cfg.train_crop, lr=cfg.train_lr, seed=cfg.seed, val_every=every,
        ckpt_every=every, deterministic=cfg.deterministic, vgg_weights=cfg.vgg_weights,
        lpips_weights=cfg.lpips_weights, lpips_net=cfg.lpips_net, **extra,
    )


def _stage_t(cfg: SearchConfig, out: Path, progress: Progress | None, flag, dist: DistContext) -> dict[str, Any]:
    from ..evaluate import evaluate, model_method

    resume_t = dist.on_main(lambda: _stage_t_inputs(out))
    run = out / "model"
    tcfg = stage_t_config(cfg, out)
    session = TrainSession(tcfg, resume=resume_t, provenance={"search_run": str(out)}, dist=dist)
    res = session.run(lambda step, rec: progress("T", step, cfg.steps_t, rec) if progress else None)
    if res.interrupted:
        raise Interrupted
    if not dist.is_main:
        return dist.on_main(lambda: None)
    test_data = cfg.test_data or (cfg.data if has_test_split(cfg.data) else None)
    if test_data is None:
        log.warning("stage T: %s has no held-out test split (test/ or paired/); no eval.json written. "
                    "Pass --test-data PATH to test the model", cfg.data)
        return dist.on_main(lambda: {"val": res.metrics, "test": None})
    report = evaluate(model_method(run), test_data, cfg.task)
    write_json(out / "eval.json", report)
    return dist.on_main(lambda: {"val": res.metrics, "test": report["mean"], "test_data": test_data})


def search_summary(out: Path) -> dict[str, Any]:
    """What a finished (or partial) run directory holds, for printing."""
    out = Path(out)
    info: dict[str, Any] = {"out": str(out)}
    if (out / "loss.json").exists():
        info["loss"] = json.loads((out / "loss.json").read_text()).get("terms")
    if (out / "genotype.json").exists():
        info["genotype"] = load_genotype(out / "genotype.json").summary()
    if (out / "search" / "report.json").exists():
        info["latency"] = json.loads((out / "search" / "report.json").read_text()).get("latency")
    if (out / "eval.json").exists():
        info["test"] = json.loads((out / "eval.json").read_text())["mean"]
    return info


