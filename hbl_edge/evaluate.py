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

from .errors import DataError
from .imageio import load_image, save_image
from .runio import versions, write_json
from .runtime.model import AUTO_ORDER, BACKEND_CHOICES  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)

EnhanceFn = Callable[[np.ndarray], np.ndarray]
#: No-reference metrics for unpaired data of a task that names none of its own (low light, haze
#: have no dedicated one implemented yet): UIQM/UCIQE measure colourfulness, sharpness, contrast.
NOREF = ("uiqm", "uciqe")


@dataclass
class Method:
    """Something that enhances an H×W×3 float image: a model or a classical baseline.

    ``close`` releases what the method holds (a model's runner: GPU memory, the TensorRT-RTX
    runtime cache is saved); None for baselines.
    """

    name: str
    fn: EnhanceFn
    kind: str  # "model" | "baseline"
    info: dict[str, Any]
    close: Callable[[], None] | None = None


def baseline_method(name: str) -> Method:
    from .baselines import get_baseline  # scipy / scikit-image: the research side

    b = get_baseline(name)
    return Method(name=name, fn=b.fn, kind="baseline", info={"task": b.task, "doc": b.doc})


#: ``--backend auto``'s order; the choice itself is made by :func:`hbl_edge.runtime.model.choose_backend`.
AUTO_BACKEND_ORDER = AUTO_ORDER


def model_method(
    bundle_path: str | Path, tile: int | None = None, threads: int | None = None, backend: str = "torch",
) -> Method:
    """A model as a :class:`Method`, run by ``backend`` (``torch``, ``ort``, ``trt``, ``trt-rtx`` or
    ``auto``) through :func:`hbl_edge.runtime.model.load_model` (the one place runners are set
    up). ``bundle_path`` is a bundle, its export/ folder or a copy of it; for a bundle, the
    non-torch backends first bring ``BUNDLE/export`` up to date (exported when missing or made
    from other weights). Images beyond an engine's profiles are tiled. Call ``method.close()``
    when done."""
    from .export.pipeline import ensure_export
    from .runtime.model import load_model

    if backend != "torch":
        ensure_export(bundle_path)
    model = load_model(bundle_path, backend, threads=threads)
    info = dict(model.info)
    source = model.source
    if source is not None and source.bundle_dir is not None:
        from .bundle import read_meta

        meta = read_meta(source.bundle_dir)
        info.update(task=meta["task"], genotype=_genotype_summary(meta), parameters=meta.get("parameters"))
    return Method(
        name=str(source.path if source is not None else bundle_path),
        fn=lambda img: model.enhance(img, tile=tile),
        kind="model",
        info=info,
        close=model.close,
    )


def _genotype_summary(meta: dict[str, Any]) -> str:
    from .genotype import Genotype

    return Genotype.from_dict(meta["genotype"]).summary()


def _samples(data: str, task: str) -> tuple[str, list[tuple[str, Callable[[], tuple[np.ndarray, np.ndarray | None]]]]]:
    """('paired'|'unpaired', [(name, loader)]) for a data spec."""
    from .data import UnpairedFolder, open_dataset  # torch: the research side
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
    from .metrics import METRICS, score_pair  # torch + kornia: the research side
    from .tasks import get_task

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
