"""Batch enhancement of image files with a model bundle (``hbl-edge enhance``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Sequence

from .errors import ImageLoadError
from .evaluate import Method
from .imageio import load_image, save_image

log = logging.getLogger(__name__)


def enhance_paths(
    files: Sequence[Path],
    method: Method,
    out: str | Path,
    *,
    overwrite: bool = False,
    progress: Callable[[int, str], None] | None = None,
) -> dict:
    """Enhance ``files`` into ``out`` as PNG (same stem). Unreadable files are reported and skipped;
    existing outputs are kept unless ``overwrite``. ``method``: see :func:`hbl_edge.evaluate.model_method`."""
    out = Path(out)
    written, failed, existing = 0, [], 0
    for i, f in enumerate(files):
        target = out / f"{Path(f).stem}.png"
        if target.exists() and not overwrite:
            existing += 1
        else:
            try:
                img = load_image(f)
            except ImageLoadError as e:
                log.warning("skipped: %s", e)
                failed.append(Path(f).name)
            else:
                save_image(target, method.fn(img))
                written += 1
        if progress:
            progress(i + 1, Path(f).name)
    return {"written": written, "failed": failed, "existing": existing, "out": str(out)}
