"""Batch enhancement of image files (``hbl-edge enhance``). Torch-free: the deploy side runs it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .errors import DataError, ImageLoadError
from .imageio import load_image, save_image

log = logging.getLogger(__name__)

EnhanceFn = Callable[[np.ndarray], np.ndarray]


def enhance_paths(
    files: Sequence[Path],
    method: EnhanceFn | Any,
    out: str | Path,
    *,
    overwrite: bool = False,
    progress: Callable[[int, str], None] | None = None,
) -> dict:
    """Enhance ``files`` into ``out`` as PNG (same stem).

    ``method`` is a function H×W×3 float32 in [0, 1] → the same (e.g.
    ``lambda img: model.enhance(img)`` for a :class:`hbl_edge.runtime.model.LoadedModel`), or
    anything with such a ``.fn`` (:class:`hbl_edge.evaluate.Method`). Unreadable files are
    skipped and listed in the result; existing outputs are kept unless ``overwrite``.

    Raises:
        DataError: no input could be read (nothing would be written), one line naming them.
    """
    fn: EnhanceFn = getattr(method, "fn", method)
    out = Path(out)
    written, failed, existing = 0, [], 0
    reasons: list[str] = []
    for i, f in enumerate(files):
        target = out / f"{Path(f).stem}.png"
        if target.exists() and not overwrite:
            existing += 1
        else:
            try:
                img = load_image(f)
            except ImageLoadError as e:
                # Reported once at the end (a summary, or the error below), not line by line.
                log.debug("skipped: %s", e)
                failed.append(Path(f).name)
                reasons.append(" ".join(str(e).split()))
            else:
                save_image(target, fn(img))
                written += 1
        if progress:
            progress(i + 1, Path(f).name)
    if failed and written == 0 and existing == 0:
        shown = "; ".join(reasons[:3]) + (f"; and {len(reasons) - 3} more" if len(reasons) > 3 else "")
        raise DataError(f"none of the {len(failed)} input image(s) could be read, nothing was written ({shown}); "
                        "pass PNG, JPEG, BMP, TIFF or WebP files")
    return {"written": written, "failed": failed, "existing": existing, "out": str(out)}
