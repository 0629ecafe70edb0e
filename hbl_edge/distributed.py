r"""Data-parallel search and training under ``torchrun`` (DESIGN §11), on torch.distributed.

``torchrun --nproc-per-node N -m hbl_edge search ...`` (or ``train``) starts N processes with
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT`` set;
:func:`init_from_env` reads them and joins the process group (NCCL on GPUs, gloo on CPU).
Without that environment (a plain ``hbl-edge search``) it returns the single-process context:
no process group, nothing reduced, everything exactly as before.

What N ranks compute is what one process computes with N times the batch:

- every rank draws the same global batch of N·B samples from (seed, step) and keeps its own
  slice (:class:`hbl_edge.data.TrainSampler` with ``rank``/``world_size``);
- every gradient is averaged across ranks before it is used (:meth:`DistContext.mean`): the
  lower step's weight gradient, the upper step's direct gradient, and inside the second-order
  hypergradient the virtual step's ∇_w L_tr, v = ∇_{w'} L_up and the finite-difference
  Hessian-vector product's ∇_u L_tr(w±); every loss is a batch mean, so the mean of the ranks'
  gradients is the gradient on the concatenated batch;
- BatchNorm in training mode normalises with the statistics of the whole global batch
  (:class:`GlobalBatchNorm2d`): the per-channel sums Σx and Σx² of every rank are added with a
  differentiable all-reduce (``torch.distributed.nn.functional.all_reduce``), so the backward
  pass carries the statistics' gradient to every rank, as one process would on the whole batch.
  ``torch.nn.SyncBatchNorm`` does the same on GPUs but refuses CPU tensors (gloo), so this
  one implementation serves both backends.

Rank 0 alone reads and writes the run directory; what other ranks need (a checkpoint, a
latency table, a trained critic, a stage's input file) is computed or read on rank 0 and
broadcast (:meth:`DistContext.on_main`), so the ranks need no shared filesystem. A user error
raised on rank 0 is re-raised on every rank, so all of them exit with the same message.

Example (single process: every method is the identity or a no-op)::

    >>> import torch
    >>> ctx = init_from_env()   # no torchrun environment here
    >>> ctx.enabled, ctx.world_size, ctx.is_main
    (False, 1, True)
    >>> ctx.mean([torch.ones(2)])[0].tolist()
    [1.0, 1.0]
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, TypeVar

import torch
from torch import nn

from .errors import ConfigError, HblError

log = logging.getLogger(__name__)

T = TypeVar("T")
BACKENDS = ("nccl", "gloo")
#: How long a rank waits for the others at a collective. Rank 0 alone profiles a latency table
#: or trains the critic while the others wait, which can take many minutes on a slow CPU.
TIMEOUT = datetime.timedelta(hours=2)
#: Environment override of the backend choice (``gloo`` keeps a GPU machine on the CPU path).
BACKEND_ENV = "HBL_EDGE_DIST_BACKEND"


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the run: rank, world size, backend, compute device.

    ``backend`` None is the single-process context (no process group): :meth:`mean` returns
    its input, :meth:`broadcast` its argument, :meth:`barrier` does nothing.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: Optional[str] = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> dict[str, Any]:
        """What ``config.json`` records about the run's processes."""
        return {"world_size": self.world_size, "backend": self.backend or "none (single process)",
                "device": str(self.device)}

    # -- collectives ------------------------------------------------------------------------
    def mean(self, tensors: Sequence[Optional[torch.Tensor]]) -> list[Optional[torch.Tensor]]:
        """The average over ranks of each tensor (``None`` stays ``None``), in ONE all-reduce.

        Tensors are flattened into one buffer (per dtype) so a list of gradients costs one
        collective, not one per parameter. Inputs are not modified; the results are new
        tensors (detached: these are gradient values, not part of a graph).
        """
        out: list[Optional[torch.Tensor]] = [None if t is None else t.detach() for t in tensors]
        if not self.enabled:
            return out
        import torch.distributed as dist

        by_dtype: dict[torch.dtype, list[int]] = {}
        for i, t in enumerate(out):
            if t is not None:
                by_dtype.setdefault(t.dtype, []).append(i)
        for dtype, idx in by_dtype.items():
            flat = torch.cat([out[i].reshape(-1) for i in idx]).to(self.device)  # type: ignore[union-attr]
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            flat.div_(self.world_size)
            offset = 0
            for i in idx:
                t = out[i]
                assert t is not None
                n = t.numel()
                out[i] = flat[offset:offset + n].view_as(t).to(t.device)
                offset += n
        return out

    def mean_grads_(self, params: Sequence[torch.Tensor]) -> None:
        """Replace each ``p.grad`` by its average over ranks (before clipping and the step)."""
        if not self.enabled:
            return
        params = [p for p in params if p.grad is not None]
        for p, g in zip(params, self.mean([p.grad for p in params])):
            p.grad.copy_(g)  # type: ignore[union-attr, arg-type]

    def mean_floats(self, values: dict[str, float]) -> dict[str, float]:
        """Average logged scalars over ranks (the record of the global batch)."""
        if not self.enabled or not values:
            return dict(values)
        keys = list(values)
        avg = self.mean([torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)])[0]
        assert avg is not None
        return dict(zip(keys, avg.tolist()))

    def any(self, flag: bool) -> bool:
        """True on every rank when it is True on any (e.g. a stop signal reached one rank)."""
        if not self.enabled:
            return bool(flag)
        import torch.distributed as dist

        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank (pickled; tensors arrive on this rank's device)."""
        if not self.enabled:
            return obj
        import torch.distributed as dist

        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0, device=self.device if self.backend == "nccl" else None)
        return box[0]  # type: ignore[return-value]

    def on_main(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 only and hand its result (or its user error) to every rank.

        An :class:`~hbl_edge.errors.HblError` raised on rank 0 is raised again on every rank
        (same type and message), so all ranks stop with the same one-line error instead of
        the others waiting forever at the next collective.
        """
        if not self.enabled:
            return fn()
        result: Any = None
        error: Optional[tuple[str, str]] = None
        if self.is_main:
            try:
                result = fn()
            except HblError as e:
                error = (type(e).__name__, str(e))
            except BaseException as e:  # a bug on rank 0: let the others stop too, then re-raise
                self.broadcast((None, ("RuntimeError", f"rank 0 failed: {type(e).__name__}: {e}")))
                raise
        result, error = self.broadcast((result, error))
        if error is not None:
            raise _error_class(error[0])(error[1])
        return result

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def broadcast_module_(self, module: nn.Module) -> None:
        """Copy rank 0's parameters and buffers into ``module`` on every rank (in place)."""
        if not self.enabled:
            return
        import torch.distributed as dist

        with torch.no_grad():
            for t in [*module.parameters(), *module.buffers()]:
                dist.broadcast(t.data, src=0)

    def shutdown(self) -> None:
        """Leave the process group (at the end of a command)."""
        if self.enabled:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def _error_class(name: str) -> type[Exception]:
    """The error class rank 0 raised, by name: an :mod:`hbl_edge.errors` class, else HblError
    (still a one-line user error in the CLI); RuntimeError for a bug on rank 0."""
    if name == "RuntimeError":
        return RuntimeError
    from . import errors

    cls = getattr(errors, name, None)
    return cls if isinstance(cls, type) and issubclass(cls, HblError) else HblError


SINGLE = DistContext()


def launched_by_torchrun(environ: Optional[dict[str, str]] = None) -> bool:
    """Whether the torchrun environment (``RANK`` and ``WORLD_SIZE``) is present."""
    env = os.environ if environ is None else environ
    return "RANK" in env and "WORLD_SIZE" in env


def env_rank(environ: Optional[dict[str, str]] = None) -> int:
    """This process's rank as torchrun set it (0 when not launched by torchrun); no group needed."""
    env = os.environ if environ is None else environ
    return int(env.get("RANK", "0")) if launched_by_torchrun(env) else 0


def choose_backend(environ: Optional[dict[str, str]] = None) -> str:
    """NCCL when CUDA is available, else gloo; ``HBL_EDGE_DIST_BACKEND`` overrides."""
    env = os.environ if environ is None else environ
    forced = env.get(BACKEND_ENV)
    if forced:
        if forced not in BACKENDS:
            raise ConfigError(f"{BACKEND_ENV}={forced!r} is not a backend; use one of {', '.join(BACKENDS)}")
        if forced == "nccl" and not torch.cuda.is_available():
            raise ConfigError(f"{BACKEND_ENV}=nccl needs CUDA GPUs, and none is visible; use gloo")
        return forced
    return "nccl" if torch.cuda.is_available() else "gloo"


def init_from_env() -> DistContext:
    """The context of this process: joins torchrun's process group, or the single process.

    Idempotent: a second call in the same process returns the context of the group already
    joined. With NCCL the compute device is ``cuda:LOCAL_RANK`` (one GPU per process); with
    gloo it is the CPU.
    """
    if not launched_by_torchrun():
        return SINGLE
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_initialized():
        backend = dist.get_backend()
    else:
        backend = choose_backend()
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend, timeout=TIMEOUT)
    device = torch.device("cuda", local) if backend == "nccl" else torch.device("cpu")
    ctx = DistContext(rank=rank, world_size=world, local_rank=local, backend=backend, device=device)
    if ctx.is_main:
        log.info("data-parallel run: %d processes, backend %s", world, backend)
    return ctx


# ------------------------------------------------------------------------------------------
# the run directory's record of the processes
# ------------------------------------------------------------------------------------------
RECORD_KEY = "distributed"


def resumable_record(config_path: str | os.PathLike[str]) -> dict[str, Any]:
    """The saved ``config.json``'s process record, for a resume check that lets it differ.

    ``runio.check_same_config(path, {**current, **resumable_record(path)})`` compares every
    setting except the number of processes, which a resumed run may change.
    """
    import json
    from pathlib import Path

    try:
        saved = json.loads(Path(config_path).read_text())
    except (OSError, ValueError):
        return {}
    return {RECORD_KEY: saved[RECORD_KEY]} if isinstance(saved, dict) and RECORD_KEY in saved else {}


def record_processes(config_path: str | os.PathLike[str], config: dict[str, Any], ctx: DistContext,
                     resume: bool) -> None:
    """Write ``config.json`` with the world size and backend (rank 0 only), or on a resume
    with a different world size, warn and append the new one to the record's ``history``.

    What a resume with another world size means: the checkpoint holds no per-rank state (the
    data position is the step; every rank has the same weights and optimiser states), so it
    continues at the same step with the new global batch (world size × ``batch_size``); an
    uninterrupted run at the old size would have seen other batches from there on.
    """
    import json
    from pathlib import Path

    from .runio import write_json

    path = Path(config_path)
    now = ctx.describe()
    if not resume or not path.exists():
        write_json(path, {**config, RECORD_KEY: now})
        return
    saved = json.loads(path.read_text())
    before = saved.get(RECORD_KEY, {"world_size": 1, "backend": "none (single process)"})
    last = (before.get("history") or [before])[-1]
    if last.get("world_size") == now["world_size"] and last.get("backend") == now["backend"]:
        return
    log.warning("resuming a run of %s process(es) with %d: from here on the global batch is %d × the per-process "
                "batch (was %s ×)", last.get("world_size"), now["world_size"], now["world_size"], last.get("world_size"))
    history = list(before.get("history") or [{k: before.get(k) for k in ("world_size", "backend", "device")}])
    saved[RECORD_KEY] = {**before, "history": [*history, now]}
    write_json(path, saved)


# ------------------------------------------------------------------------------------------
# BatchNorm over the global batch
# ------------------------------------------------------------------------------------------
class _AllReduceSum(torch.autograd.Function):
    """y = Σ_ranks x on every rank; backward: ∂/∂x_r = Σ_ranks ∂L_r/∂y (an all-reduce again)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        import torch.distributed as dist

        y = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(y, op=dist.ReduceOp.SUM)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return _AllReduceSum.apply(grad)


class GlobalBatchNorm2d(nn.BatchNorm2d):
    r"""BatchNorm2d whose training-mode statistics are those of the batch of all ranks.

    With :math:`s_r = \sum (x - c)` and :math:`q_r = \sum (x - c)^2` per channel on rank r
    (shifted by the running mean c, identical on every rank, against cancellation) and
    :math:`n_r` values per channel, the all-reduced :math:`S, Q, N` give the global mean
    :math:`c + S/N` and biased variance :math:`Q/N - (S/N)^2`, which normalise the input; the
    running statistics move with the unbiased variance, exactly as ``nn.BatchNorm2d`` on the
    concatenated batch. The all-reduce is differentiable, so gradients flow through the
    statistics to every rank's input. Evaluation mode (running statistics) is local and
    unchanged. State-dict keys are BatchNorm2d's.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        # a copy: the running mean is updated in place below, after the graph used it
        c = self.running_mean.detach().clone().to(x.dtype).view(1, -1, 1, 1) if self.running_mean is not None else 0.0
        d = x - c
        n_local = float(x.numel() // x.shape[1])
        packed = torch.cat([d.sum(dim=(0, 2, 3)), d.pow(2).sum(dim=(0, 2, 3)), d.new_tensor([n_local])])
        total = _AllReduceSum.apply(packed)
        ch = x.shape[1]
        s, q, n = total[:ch], total[ch:2 * ch], total[2 * ch]
        shift = s / n
        var = (q / n - shift.pow(2)).clamp_min(0.0)
        mean = shift + (c.view(-1) if isinstance(c, torch.Tensor) else c)
        y = (x - mean.view(1, -1, 1, 1)) * torch.rsqrt(var + self.eps).view(1, -1, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)  # type: ignore[union-attr]
                m = (1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum)
                count = float(n.detach())
                unbiased = var.detach() * (count / max(count - 1.0, 1.0))
                self.running_mean.mul_(1 - m).add_(mean.detach().to(self.running_mean.dtype), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)
        return y


def sync_batchnorm_(module: nn.Module, ctx: DistContext) -> nn.Module:
    """Replace every ``BatchNorm2d`` in ``module`` by :class:`GlobalBatchNorm2d` (same state).

    A no-op for the single-process context (plain BatchNorm, unchanged numerics).
    """
    if not ctx.enabled:
        return module
    for name, child in list(module.named_children()):
        if type(child) is nn.BatchNorm2d:
            like = next(iter([*child.parameters(), *child.buffers()]), None)
            kw = {} if like is None else {"device": like.device, "dtype": like.dtype}
            new = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                    child.track_running_stats, **kw)
            new.load_state_dict(child.state_dict())
            new.train(child.training)
            setattr(module, name, new)
        else:
            sync_batchnorm_(child, ctx)
    return module


__all__ = [
    "BACKENDS", "BACKEND_ENV", "DistContext", "GlobalBatchNorm2d", "SINGLE", "choose_backend", "env_rank",
    "init_from_env", "launched_by_torchrun", "record_processes", "resumable_record", "sync_batchnorm_",
]
