"""INT8 export: ``model.onnx`` → ``model.int8.onnx`` with explicit Q/DQ nodes, calibrated on the task's data.

The library does the work: onnxruntime's static quantisation (``quantize_static``) in the QDQ
format, i.e. ``QuantizeLinear``/``DequantizeLinear`` pairs around float ops, which is the
"explicit quantisation" form that TensorRT 10 and 11 (and TensorRT-RTX) parse; onnxruntime runs
the same file on the CPU, which is how parity is measured here.

Choices, and why:

- **Only convolutions are quantised** (``Conv``, ``ConvTranspose``: weights and their input
  activations). They are nearly all the compute. The HNU's division ``R ⊘ max(σ(I), 0.01)``, the
  sigmoid, the residual adds, the in-graph padding and the clamp stay float: quantising a
  divisor amplifies its rounding error, and TensorRT fuses the remaining element-wise ops into
  the convolutions' epilogues anyway.
- **Symmetric INT8 for activations and weights** (zero point 0): TensorRT supports only
  symmetric quantisation; an asymmetric zero point is rejected by its ONNX parser.
- **Per-channel weight scales** (per output channel; axis 1 for ``ConvTranspose``): a folded
  BatchNorm gives every output channel its own range.
- **Calibration data** from the task's dataset: random training crops from
  :class:`hbl_edge.data.TrainSampler` (for the embedded dataset, synthetic degradations of the
  embedded train regions), min/max ranges.

Quality is measured, not assumed: parity (max/mean |INT8 − FP32|) and PSNR of the INT8 output
against the FP32 output on the full validation images of the same dataset.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from . import ExportError
from .cache import file_sha256

log = logging.getLogger(__name__)

INT8_NAME = "model.int8.onnx"
#: Ops that get Q/DQ nodes (see the module docstring).
QUANTIZED_OPS = ("Conv", "ConvTranspose")
DEFAULT_CALIBRATION_SAMPLES = 32
DEFAULT_CALIBRATION_CROP = 128
#: Below this PSNR (INT8 output vs FP32 output) the export logs a warning: visible differences.
WARN_PSNR_DB = 35.0


@dataclass
class Int8Report:
    """What :func:`quantize_int8` wrote and how close it is to the FP32 model."""

    path: Path
    sha256: str
    calibration: dict[str, Any]
    parity: dict[str, Any]
    quality: dict[str, Any]
    settings: dict[str, Any]
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"int8 vs fp32: max |Δ| {self.parity['max_abs']:.3g}, mean {self.parity['mean_abs']:.3g}; "
            f"PSNR {self.quality['psnr_mean_db']:.2f} dB (min {self.quality['psnr_min_db']:.2f}) "
            f"on {self.quality['images']} {self.quality['split']} images"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "sha256": self.sha256,
            "bytes": self.path.stat().st_size,
            "precision": "int8 (explicit Q/DQ; convolutions only), float32 input/output",
            "calibration": self.calibration,
            "parity_vs_fp32": self.parity,
            "quality_vs_fp32": self.quality,
            "settings": self.settings,
            "seconds": round(self.seconds, 3),
            "warnings": self.warnings,
        }


# ---------------------------------------------------------------------------------------------
# Calibration data
# ---------------------------------------------------------------------------------------------
def calibration_batches(
    task: str,
    data: str | os.PathLike[str] = "embedded",
    *,
    samples: int = DEFAULT_CALIBRATION_SAMPLES,
    crop: int = DEFAULT_CALIBRATION_CROP,
    seed: int = 0,
) -> list[np.ndarray]:
    """``samples`` degraded training crops of ``task``'s dataset, each 1×3×crop×crop float32.

    Inputs only (what the deployed network sees); for the embedded dataset they are fresh
    synthetic degradations, so the ranges cover the task's degradation model.
    """
    from ..data import TrainSampler, open_dataset

    if samples < 1 or crop < 4:
        raise ExportError(f"calibration needs at least 1 sample and a crop ≥ 4, got {samples} and {crop}")
    source = open_dataset(data, task, "train")
    sampler = TrainSampler(source, task, crop=crop, batch_size=1, seed=seed, augment=True)
    rng = np.random.default_rng([seed, 0x18])
    out = []
    for _ in range(samples):
        inp, _tgt = sampler.sample(rng)
        out.append(np.ascontiguousarray(inp.transpose(2, 0, 1)[None], dtype=np.float32))
    return out


def validation_images(task: str, data: str | os.PathLike[str] = "embedded", limit: int | None = None) -> list[tuple[str, np.ndarray]]:
    """``[(name, 1×3×H×W)]``: the degraded inputs of the validation split, full size."""
    from ..data import open_dataset

    source = open_dataset(data, task, "val")
    n = len(source) if limit is None else min(limit, len(source))
    out = []
    for i in range(n):
        name, inp, _tgt = source.load(i)
        out.append((name, np.ascontiguousarray(inp.transpose(2, 0, 1)[None], dtype=np.float32)))
    return out


def _reader(batches: Sequence[np.ndarray], input_name: str):
    from onnxruntime.quantization import CalibrationDataReader

    class _Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self._it: Iterator[np.ndarray] = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._it, None)
            return None if batch is None else {input_name: batch}

        def rewind(self) -> None:
            self._it = iter(batches)

    return _Batches()


# ---------------------------------------------------------------------------------------------
# Quantisation
# ---------------------------------------------------------------------------------------------
def quantize_int8(
    onnx_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str] | None = None,
    *,
    task: str = "lowlight",
    data: str | os.PathLike[str] = "embedded",
    calibration: Iterable[np.ndarray] | None = None,
    samples: int = DEFAULT_CALIBRATION_SAMPLES,
    crop: int = DEFAULT_CALIBRATION_CROP,
    method: str = "minmax",
    val_images: Sequence[tuple[str, np.ndarray]] | None = None,
    val_limit: int | None = None,
    seed: int = 0,
) -> Int8Report:
    """Quantise an FP32 ``model.onnx`` to ``model.int8.onnx`` (Q/DQ) and measure it against FP32.

    Args:
        onnx_path: the FP32 ONNX written by :func:`hbl_edge.export.export_onnx`.
        out_path: default ``model.int8.onnx`` beside it.
        task, data: the dataset the calibration crops and validation images come from.
        calibration: explicit calibration batches (N×3×H×W float32) instead of the dataset's.
        samples, crop: number and side of the calibration crops.
        method: ``"minmax"``, ``"entropy"`` or ``"percentile"`` (onnxruntime calibrators).
        val_images: explicit ``[(name, 1×3×H×W)]`` for the quality check instead of the val split.

    Raises:
        ExportError: onnxruntime's quantisation tools are missing, or quantisation fails.
    """
    try:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    except ImportError:
        raise ExportError("INT8 export needs onnxruntime's quantisation tools; `pip install onnxruntime`") from None
    import onnx

    from .onnx_export import INPUT_NAME, _save_checked, _set_props, check_parity, onnx_runner

    src = Path(onnx_path)
    if not src.is_file():
        raise ExportError(f"ONNX model {str(src)!r} does not exist; run `hbl-edge export` first")
    dst = Path(out_path) if out_path is not None else src.with_name(INT8_NAME)
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    if method not in methods:
        raise ExportError(f"unknown calibration method {method!r}; use one of {', '.join(methods)}")
    t0 = time.perf_counter()
    if calibration is None:
        batches = calibration_batches(task, data, samples=samples, crop=crop, seed=seed)
        calib_info: dict[str, Any] = {"source": f"{data} [{task}, train split]", "samples": samples, "crop": crop,
                                      "seed": seed, "method": method}
    else:
        batches = [np.ascontiguousarray(b, dtype=np.float32) for b in calibration]
        if not batches:
            raise ExportError("no calibration batches given")
        calib_info = {"source": "given batches", "samples": len(batches),
                      "shapes": sorted({tuple(b.shape) for b in batches}), "method": method}
    settings = {
        "format": "QDQ", "op_types": list(QUANTIZED_OPS), "activations": "int8 symmetric (per tensor)",
        "weights": "int8 symmetric, per output channel", "bias": "float32 (not quantised; TensorRT's form)",
"library": "onnxruntime.quantization.quantize_static",
    }
    extra = {
        "ActivationSymmetric": True,   # TensorRT: zero point must be 0
        "WeightSymmetric": True,
        "QuantizeBias": False,         # TensorRT rejects int32 DequantizeLinear; biases stay float
        "QDQOpTypePerChannelSupportToAxis": {"ConvTranspose": 1},
    }
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".int8.") as tmp:
        staged = Path(tmp) / INT8_NAME
        root = logging.getLogger()  # onnxruntime's quantiser warns on the root logger (pre-processing hints)
        level = root.level
        root.setLevel(logging.ERROR)
        try:
            quantize_static(
                str(src), str(staged), _reader(batches, INPUT_NAME),
                quant_format=QuantFormat.QDQ, op_types_to_quantize=list(QUANTIZED_OPS), per_channel=True,
                activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                calibrate_method=methods[method], extra_options=extra,
            )
        except Exception as e:  # onnxruntime raises plain Exceptions with long messages
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ExportError(f"INT8 quantisation of {src.name} failed ({first})") from None
        finally:
            root.setLevel(level)
        model = onnx.load(str(staged))
    _set_props(model, {"hbl_edge.precision": "int8"})
    model.doc_string = "hbl-edge restoration network, INT8 Q/DQ (convolutions), float32 input/output"
    _save_checked(model, dst)

    fp32 = onnx_runner(src)
    int8 = onnx_runner(dst)
    vals = list(val_images) if val_images is not None else validation_images(task, data, val_limit)
    parity = check_parity(int8, fp32, vals, tolerance=math.inf, names=("onnxruntime int8", "onnxruntime fp32"))
    psnrs = []
    for _name, batch in vals:
        a, b = int8(batch).astype(np.float64), fp32(batch).astype(np.float64)
        mse = float(np.mean((a - b) ** 2))
        psnrs.append(99.0 if mse == 0 else 10 * math.log10(1.0 / mse))  # 99 dB: identical
    quality = {
        "metric": "PSNR of the INT8 output against the FP32 output (data range 1)",
        "split": "val" if val_images is None else "given",
        "source": str(data) if val_images is None else "given images",
        "images": len(vals),
        "psnr_mean_db": float(np.mean(psnrs)) if psnrs else float("nan"),
        "psnr_min_db": float(np.min(psnrs)) if psnrs else float("nan"),
    }
    parity_d = parity.to_dict()
    parity_d.pop("tolerance", None)
    parity_d.pop("passed", None)
    report = Int8Report(path=dst, sha256=file_sha256(dst), calibration=calib_info, parity=parity_d,
                        quality=quality, settings=settings, seconds=time.perf_counter() - t0)
    if not parity.max_abs < math.inf:
        raise ExportError(f"{dst.name} produces non-finite outputs; do not deploy it (calibrate on more data)")
    if quality["psnr_min_db"] < WARN_PSNR_DB:
        msg = (f"INT8 output differs visibly from FP32 on some images (min PSNR {quality['psnr_min_db']:.1f} dB "
               f"< {WARN_PSNR_DB:g}); check before deploying, or use FP16")
        report.warnings.append(msg)
        log.warning(msg)
    log.info("wrote %s: %s", dst, report.summary())
    return report


def record_int8(meta_path: str | os.PathLike[str], report: Int8Report) -> None:
    """Add the INT8 artifact and its figures to an existing ``export.json``."""
    import json

    from ..runio import write_json

    path = Path(meta_path)
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        meta = {}
    meta.setdefault("artifacts", {})[report.path.name] = {
        "sha256": report.sha256, "bytes": report.path.stat().st_size, "precision": "int8 (Q/DQ)",
    }
    meta["int8"] = report.to_dict()
    write_json(path, meta)
