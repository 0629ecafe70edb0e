"""``hbl_edge.Enhancer``: a model behind a frame-in, frame-out API (for ROS nodes, pilot apps, the pipeline).

::

    from hbl_edge import Enhancer

    enh = Enhancer("runs/demo/search/model")          # a bundle, its export/ folder, or a copy of it
    out = enh.enhance(frame)                          # H×W×3 uint8 RGB in, same out
    out = enh.enhance(bgr_frame, bgr=True)            # OpenCV / ROS "bgr8" frames
    enh.stream("rtp://@:5600", "rtp://127.0.0.1:5601", preview="8080", temporal=True)

Torch-free (the model is loaded with :func:`hbl_edge.runtime.model.load_model`), so it runs on
a Jetson with TensorRT or ONNX Runtime only.

Frame sizes: a model that can only run some sizes (a TensorRT engine's profiles) exposes
``supports(width, height)`` and ``max_size()`` (:class:`~hbl_edge.runtime.model.LoadedModel`); a
frame of another size is resized for the model, keeping its aspect ratio (to the largest size
within the engine's largest profile when the frame is beyond it, else the first of ½, ¼, ⅛, 2×,
4× that it supports), and the output scaled back, with one warning per size. ONNX models run
any size.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import ConfigError
from .runners import BackendError
from .temporal import TemporalFilter
from .video.base import fit_to

log = logging.getLogger(__name__)

#: Scale factors tried (in this order) when the model does not support a frame's size.
_SCALES = (1 / 2, 1 / 4, 1 / 8, 2, 4)


def to_chw(images: Sequence[np.ndarray]) -> np.ndarray:
    """N images H×W×3 uint8 → N×3×H×W float32 in [0, 1] (all of one size)."""
    batch = np.stack(images)  # N×H×W×3 uint8
    out = np.empty((batch.shape[0], 3, batch.shape[1], batch.shape[2]), dtype=np.float32)
    np.multiply(batch.transpose(0, 3, 1, 2), np.float32(1 / 255), out=out, casting="unsafe")
    return out


def to_hwc_uint8(batch: np.ndarray) -> list[np.ndarray]:
    """N×3×H×W float32 in [0, 1] → N images H×W×3 uint8 (rounded, clipped)."""
    scaled = np.clip(batch, 0.0, 1.0) * np.float32(255)
    scaled += np.float32(0.5)
    return [np.ascontiguousarray(img.transpose(1, 2, 0)).astype(np.uint8) for img in scaled]


def _check_frame(frame: Any) -> np.ndarray:
    a = np.asarray(frame)
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
        raise ConfigError(f"Enhancer.enhance takes an H×W×3 uint8 image, got shape {a.shape} {a.dtype}; "
                          "convert grayscale/RGBA/float frames first")
    if a.shape[0] < 1 or a.shape[1] < 1:
        raise ConfigError(f"Enhancer.enhance got an empty image of shape {a.shape}")
    return a


class Enhancer:
    """A loaded model that enhances frames.

    Args:
        model: a bundle directory, its ``export/`` folder, a copy of that folder, or an
            already loaded :class:`~hbl_edge.runtime.model.LoadedModel` (not closed by us).
        backend: ``auto | trt | trt-rtx | ort | torch`` (see ``hbl-edge enhance --help``).
        threads: CPU threads of the backend; ``fp16``: use the FP16 model/engine when there is one.
        allow_spinning: ONNX Runtime's idle threads busy-wait (None: its default; see
            :func:`~hbl_edge.runtime.model.load_model`).
    """

    def __init__(self, model: Any, backend: str = "auto", *, threads: int | None = None, fp16: bool = False,
                 allow_spinning: bool | None = None) -> None:
        if hasattr(model, "runner"):
            self.model, self._owns = model, False
        else:
            from .model import load_model

            # load_model checks the backend name (the one place: auto order, unknown names,
            # what can run here) and owns the runner's options.
            self.model, self._owns = load_model(model, backend, threads=threads, fp16=fp16,
                                                allow_spinning=allow_spinning), True
        self._supports: Callable[[int, int], bool] | None = getattr(self.model, "supports", None)
        self._max_size: Callable[[], tuple[int, int] | None] | None = getattr(self.model, "max_size", None)
        self._plan: dict[tuple[int, int], tuple[int, int]] = {}
        self._lock = threading.Lock()
        #: frames resized because the model does not run their size
        self.resized = 0

    # -- information --------------------------------------------------------------------
    @property
    def backend(self) -> str:
        return self.model.backend

    @property
    def info(self) -> dict[str, Any]:
        return dict(self.model.info)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.model.backend, **{k: v for k, v in self.model.info.items() if k != "backend"}}

    # -- sizes --------------------------------------------------------------------------
    def model_size(self, width: int, height: int) -> tuple[int, int]:
        """The size the model runs a width×height frame at (itself unless the model cannot run it)."""
        key = (width, height)
        plan = self._plan.get(key)
        if plan is not None:
            return plan
        plan = key
        if self._supports is not None and not self._supports(width, height):
            plan = self._fit(width, height)
            log.warning("frames of %dx%d are outside the model's supported sizes; resizing them to %dx%d for "
                        "the model (output scaled back)", width, height, plan[0], plan[1])
        self._plan[key] = plan
        return plan

    def _fit(self, width: int, height: int) -> tuple[int, int]:
        """The size to run a frame the model cannot run: the largest of the same aspect ratio within
        the model's largest profile (a frame beyond the engine's max), else ½, ¼, ⅛, 2×, 4×."""
        assert self._supports is not None
        candidates = []
        largest = self._max_size() if self._max_size is not None else None
        if largest is not None and (width > largest[0] or height > largest[1]):
            scale = min(largest[0] / width, largest[1] / height)
            candidates.append((max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2)))
        candidates += [(max(2, round(width * s / 2) * 2), max(2, round(height * s / 2) * 2)) for s in _SCALES]
        candidates += [p for k, p in self._plan.items() if p == k]  # sizes seen running as they are
        for w, h in candidates:
            if self._supports(w, h):
                return w, h
        raise BackendError(f"the model runs none of {width}x{height} or its scaled versions; rebuild the engine "
                           f"with a profile that covers it (`hbl-edge export DIR --engine ... --shapes min=...,max=...`)")

    # -- enhancing ----------------------------------------------------------------------
    def run_chw(self, batch: np.ndarray) -> np.ndarray:
        """N×3×H×W float32 in [0, 1] → same, at the input's size (resized through the model when needed)."""
        n, _, h, w = batch.shape
        mw, mh = self.model_size(w, h)
        if (mw, mh) == (w, h):
            with self._lock:  # runners are not guaranteed re-entrant (TensorRT contexts are not)
                return self.model.runner.run(batch)
        small = to_chw([fit_to(img, mw, mh) for img in to_hwc_uint8(batch)])
        with self._lock:
            out = self.model.runner.run(small)
        self.resized += n
        return to_chw([fit_to(img, w, h) for img in to_hwc_uint8(out)])

    def process(self, images: Sequence[np.ndarray], temporal: TemporalFilter | None = None) -> list[np.ndarray]:
        """Enhance frames of one size (H×W×3 uint8 RGB) as one batch; ``temporal`` filters them in order."""
        x = to_chw(images)
        y = self.run_chw(x)
        if temporal is not None:
            y = np.stack([temporal(xi, yi) for xi, yi in zip(x, y)])
        return to_hwc_uint8(y)

    def enhance(self, frame: np.ndarray, *, bgr: bool = False) -> np.ndarray:
        """One frame, H×W×3 uint8, RGB (or BGR with ``bgr=True``, returned in the same order)."""
        a = _check_frame(frame)
        if bgr:
            a = a[:, :, ::-1]
        out = self.process([a])[0]
        return np.ascontiguousarray(out[:, :, ::-1]) if bgr else out

    def stream(self, source: Any, *sinks: Any, **options: Any) -> dict[str, Any]:
        """Run a stream (see :func:`hbl_edge.runtime.pipeline.run_stream` for ``options``); returns the final stats."""
        from .pipeline import run_stream

        return run_stream(self, source, *sinks, **options)

    # -- lifetime -----------------------------------------------------------------------
    def close(self) -> None:
        if self._owns:
            self.model.close()

    def __enter__(self) -> "Enhancer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Enhancer({self.model.info.get('model')!r}, backend={self.backend!r})"


class PassThrough:
    """A processor that returns its input (a pipeline without a model: latency baselines, tests)."""

    backend = "none"
    resized = 0

    def describe(self) -> dict[str, Any]:
        return {"backend": "none", "model": None, "task": None}

    def process(self, images: Sequence[np.ndarray], temporal: TemporalFilter | None = None) -> list[np.ndarray]:
        return [np.asarray(i) for i in images]

    def close(self) -> None:
        pass


__all__ = ["Enhancer", "PassThrough", "to_chw", "to_hwc_uint8"]
