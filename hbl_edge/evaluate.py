"""Evaluation of a model bundle or a classical baseline on paired or unpaired images.

Paired data is scored the way ``shared/PEERS.md`` scores public peers, so our numbers compare
with theirs: the output is clamped and rounded to 8 bit, PSNR per image then averaged, SSIM
from scikit-image with a Gaussian window (σ 1.5), at native size. The degraded input gets the
same scores for reference. Unpaired data gets the no-reference metrics (UIQM, UCIQE) for the
input and the output.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .baselines import get_baseline
from .data import UnpairedFolder, open_dataset
from .errors import DataError
from .imageio import load_image, save_image
from .metrics import METRICS, score_pair
from .runio import versions, write_json
from .tasks import get_task

log = logging.getLogger(__name__)

EnhanceFn = Callable[[np.ndarray], np.ndarray]
#: No-reference metrics for unpaired data of a task that names none of its own (low light, haze
#: have no dedicated one implemented yet): UIQM/UCIQE measure colourfulness, sharpness, contrast.
NOREF = ("uiqm", "uciqe")


@dataclass
class Method:
    """Something that enhances an H×W×3 float image: a model or a classical baseline."""

    name: str
    fn: EnhanceFn
    kind: str  # "model" | "baseline"
    info: dict[str, Any]


def baseline_method(name: str) -> Method:
    b = get_baseline(name)
    return Method(name=name, fn=b.fn, kind="baseline", info={"task": b.task, "doc": b.doc})


#: ``--backend auto`` takes the first of these that can run here (fastest first on a GPU machine:
#: TensorRT engines, then TensorRT-RTX engines, then ONNX Runtime, then PyTorch eager).
AUTO_BACKEND_ORDER = ("trt", "trt-rtx", "ort", "torch")
BACKEND_CHOICES = ("auto", *AUTO_BACKEND_ORDER)


def resolve_backend(backend: str) -> str:
    """``auto`` → the first available of :data:`AUTO_BACKEND_ORDER`; a named one is checked."""
    from .errors import ConfigError
    from .runtime.runners import available_backends, unavailable_reason

    if backend not in BACKEND_CHOICES:
        raise ConfigError(f"unknown backend {backend!r}; choose from {', '.join(BACKEND_CHOICES)}")
    if backend == "auto":
        here = available_backends()
        return next(b for b in AUTO_BACKEND_ORDER if b in here or b == "torch")
    reason = unavailable_reason(backend)
    if reason is not None:
        from .runtime.runners import BackendError

        raise BackendError(f"backend {backend!r} cannot run here ({reason}); use --backend auto")
    return backend


def model_method(
    bundle_path: str | Path, tile: int | None = None, threads: int | None = None, backend: str = "torch",
) -> Method:
    """A bundle as a :class:`Method`, run by ``backend`` (``torch``, ``ort``, ``trt``, ``trt-rtx``
    or ``auto``; see :data:`AUTO_BACKEND_ORDER`). ``ort`` runs ``BUNDLE/export/model.onnx``
    (exported first when missing); the engine backends build or reuse a cached engine beside it.
    Images beyond an engine's profile are tiled."""
    from .bundle import load_bundle, read_meta, resolve_bundle_dir
    from .runtime.tiling import DEFAULT_TILE, run_image

    name = resolve_backend(backend)
    bundle_dir = resolve_bundle_dir(bundle_path)
    meta = read_meta(bundle_dir)
    max_side: tuple[int, int] | None = None  # (H, W) an engine accepts
    if name == "torch":
        import torch

        from .runtime.torch_runner import TorchRunner

        if threads:
            torch.set_num_threads(threads)
        runner = TorchRunner(load_bundle(bundle_dir).model)
    else:
        from .export.onnx_export import ensure_onnx
        from .runtime.runners import create_runner

        onnx_path = ensure_onnx(bundle_dir)
        if name == "ort":
            runner = create_runner("ort", onnx_path, threads=threads)
        else:
            from .export.engines import DEFAULT_PROFILE, build_engine, parse_profile

            kind = {"trt": "tensorrt", "trt-rtx": "tensorrt-rtx"}[name]
            engine = build_engine(onnx_path, onnx_path.parent, kind=kind, shapes=[DEFAULT_PROFILE])
            runner = create_runner(name, engine.path)
            profile = parse_profile(DEFAULT_PROFILE)
            max_side = (profile.max[2], profile.max[3])

    def fn(img: np.ndarray) -> np.ndarray:
        t = tile
        if t is None and max_side is not None and (img.shape[0] > max_side[0] or img.shape[1] > max_side[1]):
            t = min(DEFAULT_TILE, *max_side)  # beyond the engine's profile: tile inside it
        return run_image(runner.run, img, tile=t)

    return Method(
        name=str(bundle_dir),
        fn=fn,
        kind="model",
        info={"task": meta["task"], "genotype": _genotype_summary(meta),
              "parameters": meta.get("parameters"), "backend": name},
    )


def _genotype_summary(meta: dict[str, Any]) -> str:
    from .genotype import Genotype

    return Genotype.from_dict(meta["genotype"]).summary()


def _samples(data: str, task: str) -> tuple[str, list[tuple[str, Callable[[], tuple[np.ndarray, np.ndarray | None]]]]]:
    """('paired'|'unpaired', [(name, loader)]) for a data spec."""
    try:
        src = open_dataset(data, task, "test")
    except DataError as paired_error:
        if data == "embedded":
            raise
        try:
            folder = UnpairedFolder(data)
        except DataError:
            raise paired_error from None
        return "unpaired", [(p.stem, (lambda p=p: (load_image(p), None))) for p in folder.images]

    def loader(i: int):
        _name, inp, tgt = src.load(i)
        return inp, tgt

    return "paired", [(src.names[i], (lambda i=i: loader(i))) for i in range(len(src))]


def evaluate(
    method: Method,
    data: str,
    task: str,
    *,
    out: str | Path | None = None,
    save_images: bool = False,
    limit: int | None = None,
) -> dict[str, Any]:
    """Score ``method`` on ``data`` ("embedded" or a folder). Writes ``eval.json`` into ``out``."""
    task_spec = get_task(task)
    kind, samples = _samples(data, task)
    if limit:
        samples = samples[:limit]
    if not samples:
        raise DataError(f"{data}: no images to evaluate")
    rows: list[dict[str, Any]] = []
    times: list[float] = []
    out_dir = Path(out) if out else None
    for idx, (name, load) in enumerate(samples):
        inp, tgt = load()
        t0 = time.perf_counter()
        res = method.fn(inp)
        times.append((time.perf_counter() - t0) * 1e3)
        row: dict[str, Any] = {"name": name, "size": [int(inp.shape[1]), int(inp.shape[0])], "ms": times[-1]}
        if tgt is not None:
            row.update(score_pair(res, tgt))
            row.update({f"input_{k}": v for k, v in score_pair(inp, tgt).items()})
        else:
            for m in task_spec.noref_metrics or NOREF:
                fn = METRICS[m][0]
                row[m] = float(fn(res))
                row[f"input_{m}"] = float(fn(inp))
        rows.append(row)
        if out_dir is not None and save_images:
            save_image(out_dir / "images" / f"{name}.png", res)
    keys = [k for k in rows[0] if isinstance(rows[0][k], float) and k != "ms"]
    mean = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    report = {
        "method": method.name,
        "method_kind": method.kind,
        "method_info": method.info,
        "task": task,
        "data": data,
        "kind": kind,
        "images": len(rows),
        "mean": mean,
        "ms_median": statistics.median(times),
        "per_image": rows,
        "versions": versions(),
        "procedure": "8-bit rounded output, per-image PSNR, skimage SSIM (gaussian σ1.5), native size (shared/PEERS.md)",
    }
    if out_dir is not None:
        write_json(out_dir / "eval.json", report)
    return report
