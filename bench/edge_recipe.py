"""Where do the dB go? Diagnostics of a trained low-light bundle against LOL-15 (issue 8 §5).

For each bundle given, scored by the PEERS.md procedure (8-bit output, per-image PSNR, skimage
SSIM, native size; ``hbl_edge.metrics.score_pair``):

* ``test``          LOL-15 (the ``lol_`` images of ``--test``) as the model runs (running BN stats);
* ``test_oracle``   the same outputs after the best global gain per image, g* = ⟨x, y⟩/⟨x, x⟩:
                    how much of the error is the global exposure alone (a crop cannot see it);
* ``test_recal``    the model after :func:`recalibrate_batchnorm` on the whole
                    training images (BN statistics of full frames instead of crops);
* ``test_batchstats`` BatchNorm in train mode at test: each image normalised by its own statistics
                    (what the reference code does, since it never calls eval(); not deployable on
                    video, shown as a diagnostic);
* ``test_train_gain`` the outputs times one gain c* fitted by least squares on whole *training*
                    frames (``training_gain``): the exposure offset a calibration on training data
                    would remove;
* ``val_crop``      the seeded 10 % validation carve-out of ``--train`` as training reads it (centre
                    crops of 256, torch PSNR): the number the run reports;
* ``val_full``      the same images at full size, PEERS procedure: separates "crops vs whole
                    images" from "validation images vs test images".

Auto-gamma and the input are scored the same way for reference. Training runs are made with
``hbl-edge train`` (commands in docs/benchmarks.md); this script only evaluates them.

    python bench/edge_recipe.py --bundle runs/abl/base3000 --bundle runs/abl/crop256 \\
        --out bench/results/edge_recipe.json
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from hbl_edge.baselines import get_baseline  # noqa: E402
from hbl_edge.bundle import load_bundle, read_meta  # noqa: E402
from hbl_edge.data import open_dataset, val_batches  # noqa: E402
from hbl_edge.metrics import psnr as torch_psnr, score_pair, ssim as torch_ssim  # noqa: E402
from hbl_edge.runio import versions, write_json  # noqa: E402


@torch.no_grad()
def recalibrate_batchnorm(model: torch.nn.Module, source, limit: int | None = None) -> int:
    """Re-estimate every BatchNorm's running statistics on whole images of ``source``.

    Training on crops leaves running statistics of crops; a network that then sees whole frames
    (a night shot's global exposure, the full field of view) normalises them with statistics of
    a different distribution. This pass resets the statistics and averages them over the
    inputs of ``source`` (full size, one image per forward pass, cumulative average:
    ``momentum=None``); weights are untouched. Returns the number of images used.
    """
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    was_training = model.training
    saved = [(bn.momentum, bn.training) for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    n = len(source) if limit is None else min(limit, len(source))
    try:
        for i in range(n):
            _name, inp, _tgt = source.load(i)
            model(torch.from_numpy(inp.transpose(2, 0, 1).copy())[None])
    finally:
        for bn, (momentum, training) in zip(bns, saved):
            bn.momentum = momentum
            bn.train(training)
        model.train(was_training)
    return n


def shared_data() -> Path | None:
    """The shared real data (the package's one finder), or None."""
    from hbl_edge.shared_data import find_real_data

    return find_real_data(repo=ROOT)


def _run(model: torch.nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    @torch.no_grad()
    def fn(img: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None]
        return model(x).clamp(0, 1)[0].numpy().transpose(1, 2, 0)

    return fn


def oracle_gain(out: np.ndarray, tgt: np.ndarray) -> np.ndarray:
    """The output scaled by the least-squares global gain towards the target, clipped to [0, 1]."""
    g = float((out * tgt).sum() / max(float((out * out).sum()), 1e-12))
    return np.clip(out * g, 0.0, 1.0)


def training_gain(fn: Callable[[np.ndarray], np.ndarray], source, every: int = 4) -> dict[str, float]:
    """One least-squares gain c* = ⟨o, y⟩ / ⟨o, o⟩ pooled over whole *training* frames (every
    ``every``-th): how far the network's global exposure sits from the training references'
    (no test image involved, so c* may be applied to the test outputs as a calibration)."""
    num = den = 0.0
    means = []
    for i in range(0, len(source), every):
        _name, inp, tgt = source.load(i)
        out = fn(inp)
        num += float((out * tgt).sum())
        den += float((out * out).sum())
        means.append(float(out.mean()))
    return {"c_star": num / max(den, 1e-12), "train_out_mean": statistics.fmean(means), "frames": len(means)}


def score(fn: Callable[[np.ndarray], np.ndarray], source, prefix: str | None = "lol_",
          gain: float | None = None) -> dict[str, Any]:
    rows = []
    for i in range(len(source)):
        name, inp, tgt = source.load(i)
        if prefix and not name.startswith(prefix):
            continue
        out = fn(inp)
        if gain is not None:
            out = np.clip(out * gain, 0.0, 1.0)
        s, o = score_pair(out, tgt), score_pair(oracle_gain(out, tgt), tgt)
        rows.append({"name": name, "psnr": s["psnr"], "ssim": s["ssim"], "oracle_psnr": o["psnr"],
                     "oracle_ssim": o["ssim"], "mean_out": float(out.mean()), "mean_tgt": float(tgt.mean())})
    mean = {k: float(statistics.fmean(r[k] for r in rows)) for k in rows[0] if k != "name"}
    return {"n": len(rows), **mean, "per_image": rows}


@torch.no_grad()
def val_crop_reading(model: torch.nn.Module, source, crop: int = 256) -> dict[str, float]:
    """What TrainSession.validate reports: torch PSNR/SSIM on centre crops."""
    ps, ss = [], []
    for _n, inp, tgt in val_batches(source, crop=crop):
        out = model(inp).clamp(0, 1)
        ps.append(torch_psnr(out, tgt).clamp(max=100.0).mean().item())
        ss.append(torch_ssim(out, tgt).mean().item())
    return {"n": len(ps), "psnr": statistics.fmean(ps), "ssim": statistics.fmean(ss)}


def diagnose(bundle: str, train: str, test: str, task: str = "lowlight", seed: int = 0) -> dict[str, Any]:
    t0 = time.time()
    b = load_bundle(bundle)
    meta = read_meta(bundle)
    cfg = meta.get("provenance", {}).get("config", {})
    test_src = open_dataset(test, task, "test")
    train_src = open_dataset(train, task, "train", seed=cfg.get("seed", seed))
    val_src = open_dataset(train, task, "val", seed=cfg.get("seed", seed))
    model = b.model.eval()
    out: dict[str, Any] = {"bundle": bundle, "genotype": b.genotype.summary(), "config": cfg,
                           "train_metrics": meta.get("metrics")}
    out["test"] = score(_run(model), test_src)
    out["val_crop"] = val_crop_reading(model, val_src)
    out["val_full"] = score(_run(model), val_src, prefix=None)
    recal = copy.deepcopy(model)
    out["recal_images"] = recalibrate_batchnorm(recal, train_src)
    out["test_recal"] = score(_run(recal.eval()), test_src)
    batchstats = copy.deepcopy(model).eval()
    for m in batchstats.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.train()
            m.track_running_stats = False  # normalise by the image's own statistics, change nothing
            m.running_mean = m.running_var = None
    out["test_batchstats"] = score(_run(batchstats), test_src)
    out["training_gain"] = training_gain(_run(model), train_src)  # exposure vs the training references
    out["test_train_gain"] = score(_run(model), test_src, gain=out["training_gain"]["c_star"])
    out["seconds"] = round(time.time() - t0, 1)
    return out


def references(train: str, test: str, task: str = "lowlight") -> dict[str, Any]:
    test_src = open_dataset(test, task, "test")
    val_src = open_dataset(train, task, "val", seed=0)
    gamma = get_baseline("gamma").fn
    return {
        "gamma": {"test": score(gamma, test_src), "val_full": score(gamma, val_src, prefix=None)},
        "input": {"test": score(lambda x: x, test_src), "val_full": score(lambda x: x, val_src, prefix=None)},
    }


def _row(name: str, r: dict[str, Any]) -> str:
    def f(key):
        v = r.get(key)
        return f"{v['psnr']:.2f} / {v['ssim']:.3f}" if v else "–"

    oracle = f"{r['test']['oracle_psnr']:.2f}" if "test" in r else "–"
    return (f"| {name} | {f('test')} | {oracle} | {f('test_train_gain')} | {f('test_recal')} | {f('test_batchstats')} | "
            f"{f('val_crop')} | {f('val_full')} |")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    data = shared_data()
    ap.add_argument("--bundle", action="append", default=[])
    ap.add_argument("--label", action="append", default=[], help="a name per --bundle, in order")
    ap.add_argument("--train", default=str(data / "lowlight" / "train") if data else None)
    ap.add_argument("--test", default=str(data / "lowlight" / "paired") if data else None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if not args.train or not args.test:
        from hbl_edge.shared_data import MISSING_REASON

        raise SystemExit(MISSING_REASON)
    torch.set_num_threads(args.threads)
    labels = args.label + args.bundle[len(args.label):]
    result: dict[str, Any] = {"format": "hbl-bench-edge-recipe/1", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                              "train": args.train, "test": args.test, "versions": versions()}
    if args.out and args.out.exists():  # add to an earlier run's rows
        import json

        result = json.loads(args.out.read_text())
    result.setdefault("runs", {})
    result["references"] = references(args.train, args.test)
    for label, bundle in zip(labels, args.bundle):
        result["runs"][label] = diagnose(bundle, args.train, args.test)
        if args.out:
            write_json(args.out, result)
    print("| run | LOL-15 | + oracle gain | × training gain c* | BN recalibrated | BN per-image | val (crops, as logged) | val (full, PEERS) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in result["references"].items():
        print(_row(name, r))
    for name, r in result["runs"].items():
        print(_row(name, r))


if __name__ == "__main__":
    main()
