"""Data-parallel search and training (hbl_edge.distributed) with 2 gloo processes on this CPU.

The processes are started the way users start them, with torchrun (``python -m
torch.distributed.run --standalone``: a rendezvous on a free localhost port); they stop by
themselves (a timeout guards every launch).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dist_cases
from hbl_edge.data import TrainSampler
from hbl_edge.distributed import (
    SINGLE,
    DistContext,
    GlobalBatchNorm2d,
    choose_backend,
    env_rank,
    launched_by_torchrun,
    record_processes,
    resumable_record,
    sync_batchnorm_,
)
from hbl_edge.errors import ConfigError
from hbl_edge.search.config import SearchConfig
from hbl_edge.search.driver import run_search

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def torchrun(args: list[str], nproc: int = 2, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)]), "OMP_NUM_THREADS": "1"}
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=TESTS)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


# ------------------------------------------------------------------------------------------
# 2 processes == 1 process on the concatenated batch
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_rank_cases(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist") / "cases.pt"
    torchrun(["dist_cases.py", str(out)])
    return torch.load(out, weights_only=False)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm()) if b.norm() > 0 else float(a.norm())


@pytest.mark.parametrize("case", dist_cases.CASES)
def test_two_ranks_compute_the_single_process_step_on_the_whole_batch(two_rank_cases, case):
    """α (stage A) and λ (stage L) hypergradients, first/second/exact order, over two bilevel
    steps (the second with a momentum buffer): 2 gloo ranks with 2 images each equal 1 process
    with the 4, to float64 rounding. Without the synchronised BatchNorm they differ by 8–370 %
    (measured), so the tolerance below separates the two cleanly."""
    assert two_rank_cases["world_size"] == 2
    two = two_rank_cases["results"][case]
    one = dist_cases.run_case(case)
    for step in range(dist_cases.STEPS):
        for g2, g1 in zip(two["hypergrads"][step], one["hypergrads"][step]):
            if case == "L-first":  # the first order cannot move λ: exactly zero on both sides
                assert torch.equal(g1, torch.zeros_like(g1)) and torch.equal(g2, g1)
            else:
                assert g1.norm() > 1e-3
                assert _rel(g2, g1) < 1e-9, (case, step)
        for key, value in one["records"][step].items():
            assert two["records"][step][key] == pytest.approx(value, rel=1e-10, abs=1e-12), key
    for k, v in one["weights"].items():  # weights, α or λ and BatchNorm statistics after the steps
        torch.testing.assert_close(two["weights"][k], v, rtol=1e-10, atol=1e-12, msg=k)
    for u2, u1 in zip(two["upper"], one["upper"]):
        torch.testing.assert_close(u2, u1, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------------
# the search under torchrun: finishes, rank 0 alone writes, same result as one process
# ------------------------------------------------------------------------------------------
def _tiny(out: Path, batch: int, **kw) -> SearchConfig:
    base = dict(out=str(out), channels=(4, 8), units=1, crop=32, batch_size=batch, steps_l=3, steps_a=3, steps_t=3,
                train_crop=32, train_batch_size=batch, critic_steps=5, ckpt_every=2, w_lr=0.02, upper_lr=0.05,
                device="jetson-orin-nano", latency_budget=5.0, resolution=(64, 48), deterministic=True, threads=1)
    base.update(kw)
    return SearchConfig(**base)


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_quick_search_under_torchrun(tmp_path):
    """`torchrun --nproc-per-node 2` runs the whole search (L → A → T): the same artifacts as
    one process, written once by rank 0 (one log record per step), config.json records the
    processes, and λ*, the genotype and the logged losses are those of one process with the
    doubled batch (float32: equal to 1e-4 after 3 second-order steps per stage)."""
    script = tmp_path / "search.py"
    script.write_text(
        "import sys, torch\n"
        "from test_distributed import _tiny\n"
        "from hbl_edge.search.driver import run_search\n"
        "res = run_search(_tiny(sys.argv[1], batch=2))\n"
        "assert res.completed == ['L', 'A', 'T'], res\n"
    )
    two = tmp_path / "two"
    torchrun([str(script), str(two)])
    one = tmp_path / "one"
    assert run_search(_tiny(one, batch=4)).completed == ["L", "A", "T"]

    assert _files(two) == _files(one)
    cfg = json.loads((two / "config.json").read_text())
    assert cfg["distributed"]["world_size"] == 2 and cfg["distributed"]["backend"] == "gloo"
    rec2 = [json.loads(line) for line in (two / "search" / "log.jsonl").read_text().splitlines()]
    rec1 = [json.loads(line) for line in (one / "search" / "log.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["step"]) for r in rec2] == [(r["stage"], r["step"]) for r in rec1]
    for a, b in zip(rec2, rec1):
        assert a["lower_loss"] == pytest.approx(b["lower_loss"], rel=1e-4)
        assert a["upper_loss"] == pytest.approx(b["upper_loss"], rel=1e-4)
    lam2 = json.loads((two / "loss.json").read_text())["terms"]
    lam1 = json.loads((one / "loss.json").read_text())["terms"]
    assert lam2 == pytest.approx(lam1, rel=1e-4)
    assert json.loads((two / "genotype.json").read_text()) == json.loads((one / "genotype.json").read_text())
    steps_t = [json.loads(line)["step"] for line in (two / "model" / "log.jsonl").read_text().splitlines()]
    assert steps_t == [1, 2, 3]


def test_resume_with_another_world_size(tmp_path):
    """A run started by one process and stopped in stage L continues under 2 processes (the
    checkpoint has no per-rank state: rank 0 reads it and every rank starts from it); the log
    has each step once and config.json records the change of world size."""
    out = tmp_path / "run"
    kw = dict(stages="L", objective="fidelity", steps_l=4)

    def stop_at_2(stage, step, total, rec):
        if step == 2:
            os.kill(os.getpid(), __import__("signal").SIGINT)

    res = run_search(_tiny(out, batch=2, **kw), progress=stop_at_2)
    assert res.interrupted and res.completed == []
    script = tmp_path / "resume.py"
    script.write_text(
        "import sys\n"
        "from test_distributed import _tiny\n"
        "from hbl_edge.search.driver import run_search\n"
        f"res = run_search(_tiny(sys.argv[1], batch=2, **{kw!r}), resume=True)\n"
        "assert res.completed == ['L'], res\n"
    )
    torchrun([str(script), str(out)])
    records = [json.loads(line) for line in (out / "search" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert (out / "loss.json").exists()
    history = json.loads((out / "config.json").read_text())["distributed"]["history"]
    assert [h["world_size"] for h in history] == [1, 2]


# ------------------------------------------------------------------------------------------
# pieces that need no second process
# ------------------------------------------------------------------------------------------
def test_single_process_context_is_the_identity():
    ctx = SINGLE
    assert not ctx.enabled and ctx.is_main and ctx.world_size == 1
    t = torch.arange(3.0)
    assert torch.equal(ctx.mean([t, None])[0], t) and ctx.mean([t, None])[1] is None
    assert ctx.mean_floats({"a": 1.5}) == {"a": 1.5}
    assert ctx.any(True) and not ctx.any(False)
    assert ctx.broadcast({"x": 1}) == {"x": 1}
    assert ctx.on_main(lambda: 7) == 7
    with pytest.raises(ConfigError, match="boom"):
        ctx.on_main(lambda: (_ for _ in ()).throw(ConfigError("boom")))
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), torch.nn.BatchNorm2d(3))
    assert type(sync_batchnorm_(net, ctx)[1]) is torch.nn.BatchNorm2d  # one process: unchanged


def test_torchrun_environment_detection():
    assert not launched_by_torchrun({}) and env_rank({}) == 0
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}
    assert launched_by_torchrun(env) and env_rank(env) == 3
    assert choose_backend({}) == ("nccl" if torch.cuda.is_available() else "gloo")
    assert choose_backend({"HBL_EDGE_DIST_BACKEND": "gloo"}) == "gloo"
    with pytest.raises(ConfigError, match="HBL_EDGE_DIST_BACKEND='mpi' is not a backend; use one of nccl, gloo"):
        choose_backend({"HBL_EDGE_DIST_BACKEND": "mpi"})
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="needs CUDA GPUs"):
            choose_backend({"HBL_EDGE_DIST_BACKEND": "nccl"})


def test_sampler_slices_concatenate_to_the_single_process_batch():
    whole = TrainSampler("embedded", "lowlight", crop=24, batch_size=6, seed=5)
    parts = [TrainSampler("embedded", "lowlight", crop=24, batch_size=2, seed=5, rank=r, world_size=3) for r in range(3)]
    for step in (0, 7):
        x, y = whole.batch(step)
        xs, ys = zip(*(p.batch(step) for p in parts))
        assert torch.equal(torch.cat(xs), x) and torch.equal(torch.cat(ys), y)
    # world size 1 is the sampler as it always was
    assert torch.equal(TrainSampler("embedded", "lowlight", crop=24, batch_size=2, seed=5, rank=0, world_size=1).batch(3)[0],
                       TrainSampler("embedded", "lowlight", crop=24, batch_size=2, seed=5).batch(3)[0])
    with pytest.raises(ValueError, match="rank 2 is not in a world of 2"):
        TrainSampler("embedded", "lowlight", crop=24, batch_size=2, rank=2, world_size=2)


def test_global_batchnorm_without_a_group_is_batchnorm():
    bn = torch.nn.BatchNorm2d(4).double()
    g = GlobalBatchNorm2d(4).double()
    g.load_state_dict(bn.state_dict())
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(g(x), bn(x))
    torch.testing.assert_close(g.running_var, bn.running_var)


def test_process_record_and_resume_check(tmp_path, caplog):
    path = tmp_path / "config.json"
    two = DistContext(rank=0, world_size=2, backend="gloo")
    record_processes(path, {"seed": 1}, two, resume=False)
    saved = json.loads(path.read_text())
    assert saved["distributed"] == {"world_size": 2, "backend": "gloo", "device": "cpu"}
    assert resumable_record(path) == {"distributed": saved["distributed"]}
    record_processes(path, {"seed": 1}, two, resume=True)  # same processes: nothing changes
    assert json.loads(path.read_text()) == saved
    with caplog.at_level("WARNING"):
        record_processes(path, {"seed": 1}, SINGLE, resume=True)
    assert "resuming a run of 2 process(es) with 1" in caplog.text
    history = json.loads(path.read_text())["distributed"]["history"]
    assert [h["world_size"] for h in history] == [2, 1]
    assert resumable_record(tmp_path / "missing.json") == {}
