"""ONNX Runtime runner for ``model.onnx`` / ``model.fp16.onnx`` (no torch)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .runners import BackendError, check_batch

#: Preference order when providers are not given: GPU first when this onnxruntime has it.
PREFERRED_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


class OrtRunner:
    """``run(batch) -> batch`` with onnxruntime.

    Args:
        onnx_path: an ONNX file exported by :func:`hbl_edge.export.export_onnx`.
        providers: execution providers in order; by default CUDA (when this onnxruntime build
            has it) then CPU.
        threads: intra-op threads (None: onnxruntime's default, one per core).
        inter_op_threads: inter-op threads (None: default).
        device_id: CUDA device for the CUDA provider.
        allow_spinning: whether idle intra-op threads busy-wait for the next piece of work
            (``session.intra_op.allow_spinning``); None keeps onnxruntime's default (on).
    """

    name = "ort"

    def __init__(
        self,
        onnx_path: str | os.PathLike[str],
        *,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        inter_op_threads: int | None = None,
        device_id: int = 0,
        allow_spinning: bool | None = None,
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendError("onnxruntime is not installed; `pip install onnxruntime` (or onnxruntime-gpu; on a "
                               "Jetson the onnxruntime-gpu wheel for your JetPack)") from None
        path = Path(onnx_path)
        if not path.is_file():
            raise BackendError(f"ONNX model {str(path)!r} does not exist; pass an export/ folder holding model.onnx "
                               "(written by `hbl-edge export BUNDLE` where the bundle is)")
        available = ort.get_available_providers()
        if providers is None:
            chosen = [p for p in PREFERRED_PROVIDERS if p in available]
        else:
            unknown = [p for p in providers if p not in available]
            if unknown:
                raise BackendError(
                    f"onnxruntime here has no {', '.join(unknown)}; available: {', '.join(available)}"
                )
            chosen = list(providers)
        with_options: list[Any] = [
            (p, {"device_id": device_id}) if p == "CUDAExecutionProvider" else p for p in chosen
        ]
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # errors only; provider fallbacks are reported by self.providers
        for value, attr in ((threads, "intra_op_num_threads"), (inter_op_threads, "inter_op_num_threads")):
            if value is not None:
                if value < 1:
                    raise BackendError(f"{attr.split('_num')[0].replace('_', '-')} threads must be ≥ 1, got {value}")
                setattr(opts, attr, int(value))
        if allow_spinning is not None:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=with_options)
        except Exception as e:  # onnxruntime raises its own exception types for bad files
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BackendError(f"{path}: onnxruntime cannot load this model ({first})") from None
        self.path = path
        self.providers: list[str] = self.session.get_providers()
        self._input = self.session.get_inputs()[0].name
        self._output = self.session.get_outputs()[0].name

    def run(self, batch: np.ndarray) -> np.ndarray:
        x = check_batch(batch)
        return self.session.run([self._output], {self._input: x})[0]

    __call__ = run

    def close(self) -> None:
        self.session = None  # type: ignore[assignment]

    def __enter__(self) -> "OrtRunner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": str(self.path), "providers": self.providers}
