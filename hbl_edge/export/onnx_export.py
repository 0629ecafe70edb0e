"""ONNX export: a bundle → ``model.onnx`` (+ ``model.fp16.onnx``) + ``export.json``.

The exported graph is the whole inference path, so every backend (onnxruntime, TensorRT,
TensorRT-RTX, Polygraphy) runs exactly the same thing::

    image  N×3×H×W float32 in [0, 1], any N, any H, W ≥ 1 (odd sizes included)
      → pad bottom/right to a multiple of 4 (reflect; replicate when a side is too small)
      → network with every BatchNorm folded into its conv (running statistics)
      → crop back to H×W → clamp to [0, 1]
    enhanced  N×3×H×W float32

Why the padding is rebuilt here: :func:`hbl_edge.network.pad_to_multiple` picks reflect or
replicate with Python ``if``\\ s on the input size, which a tracer freezes to the example's size.
:class:`ExportGraph` makes the same choice with tensor ops (``Where`` on the symbolic H, W) and
pads with ``Gather`` index maps, so one graph is right for every size, including 1×1. The
network's own padding then sees a multiple of 4 and is a no-op.

Exporter: the TorchScript tracer (``torch.onnx.export(..., dynamo=False)``). The dynamo exporter
(torch.export) specialises on the padding branch in ``Network.forward`` and fails to produce a
dynamic-shape graph; the tracer records the shape arithmetic as ``Shape``/``Mod``/``Range`` ops.

FP16 (``model.fp16.onnx``): float16 weights and compute, float32 input and output (Casts at
the edges), converted with onnxconverter-common. TensorRT 11 and TensorRT-RTX are strongly
typed (no FP16 builder flag): they build FP16 engines from this file.
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence, Union

import numpy as np
import onnx
import torch
from torch import nn

from ..network import PAD_MULTIPLE, Network, count_parameters, fold_batchnorm
from ..runio import atomic_path, versions, write_json
from . import ExportError
from .cache import file_sha256
from .manifest import FORMAT as EXPORT_FORMAT
from .manifest import FP16_NAME, INPUT_NAME, MIN_INPUT_SIDE, ONNX_NAME, OUTPUT_NAME, input_spec, output_spec
from .manifest import MANIFEST_NAME as META_NAME

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17  # TensorRT 10.3 (JetPack 6) parses opsets up to 20; 17 is the safe middle
MIN_OPSET, MAX_OPSET = 13, 20
EXPORTER = "torch.onnx.export (TorchScript tracer, dynamo=False)"
#: Max |ONNX Runtime − PyTorch| accepted for the FP32 graph (outputs in [0, 1]).
FP32_TOLERANCE = 1e-4
#: Max |FP16 graph − FP32 graph| accepted (outputs in [0, 1]; ≈ 5 FP16 ulps near 1).
FP16_TOLERANCE = 2e-2

#: (name, N×3×H×W float32 in [0, 1]) — the images a parity check runs.
ParityImages = list[tuple[str, np.ndarray]]
ModelLike = Union[str, os.PathLike, Network]


# ---------------------------------------------------------------------------------------------
# The exported graph
# ---------------------------------------------------------------------------------------------
def _pad_index(n: torch.Tensor, pad: torch.Tensor, reflect: torch.Tensor) -> torch.Tensor:
    """Source indices along one axis of length ``n`` padded by ``pad`` at the end.

    Reflect maps i ≥ n to 2(n−1)−i (no edge repeat, as ``F.pad(mode="reflect")``); replicate
    clamps to n−1. All three arguments are 0-d int64 tensors, so a tracer records ops, not ints.
    """
    i = torch.arange(n + pad)
    mirrored = torch.where(i < n, i, 2 * (n - 1) - i)
    clamped = torch.minimum(i, n - 1)
    return torch.where(reflect, mirrored, clamped)


class ExportGraph(nn.Module):
    """The exported inference path: graph-side padding, folded network, crop, clamp to [0, 1].

    Equal (to float rounding) to ``network(x).clamp(0, 1)`` for every N×3×H×W input, H, W ≥ 1;
    the padding rule is :func:`hbl_edge.network.pad_to_multiple`'s, decided with tensor ops.
    """

    def __init__(self, network: Network) -> None:
        super().__init__()
        self.network = network

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if getattr(self.network, "input_multiple", PAD_MULTIPLE) == 1:
            # The network takes every size itself (hbl_edge.edge_network): no pad, no crop.
            return self.network(image).clamp(0.0, 1.0)
        h = torch.as_tensor(image.shape[2])  # a traced Shape op under the exporter
        w = torch.as_tensor(image.shape[3])
        ph = (-h) % PAD_MULTIPLE
        pw = (-w) % PAD_MULTIPLE
        reflect = (ph < h) & (pw < w)  # reflection needs pad < size on both axes
        x = image.index_select(2, _pad_index(h, ph, reflect)).index_select(3, _pad_index(w, pw, reflect))
        y = self.network(x)  # already a multiple of 4: Network's own padding does nothing
        return y[:, :, :h, :w].clamp(0.0, 1.0)


def export_module(model: Network) -> ExportGraph:
    """The module that is traced: BatchNorm folded, float32, CPU, eval mode."""
    return ExportGraph(fold_batchnorm(model).float().cpu().eval()).eval()


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------
@dataclass
class ParityCase:
    name: str
    shape: list[int]
    max_abs: float
    mean_abs: float


@dataclass
class ParityReport:
    """Element-wise |candidate − reference| over a set of images, against a tolerance on the max."""

    candidate: str
    reference: str
    tolerance: float
    cases: list[ParityCase] = field(default_factory=list)

    @property
    def max_abs(self) -> float:
        return max((c.max_abs for c in self.cases), default=0.0)

    @property
    def mean_abs(self) -> float:
        sizes = [float(np.prod(c.shape)) for c in self.cases]
        total = sum(sizes)
        return sum(c.mean_abs * s for c, s in zip(self.cases, sizes)) / total if total else 0.0

    @property
    def passed(self) -> bool:
        return self.max_abs <= self.tolerance

    def summary(self) -> str:
        return (
            f"{self.candidate} vs {self.reference}: max |Δ| {self.max_abs:.3g}, mean {self.mean_abs:.3g} "
            f"over {len(self.cases)} images (tolerance {self.tolerance:g})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "candidate": self.candidate,
            "reference": self.reference,
            "tolerance": self.tolerance,
            "max_abs": self.max_abs,
            "mean_abs": self.mean_abs,
            "passed": self.passed,
            "cases": [asdict(c) for c in self.cases],
        }


@dataclass
class ExportResult:
    """What :func:`export_onnx` wrote."""

    out_dir: Path
    onnx_path: Path
    sha256: str
    opset: int
    exporter: str
    meta_path: Path
    parity: ParityReport | None = None
    fp16_path: Path | None = None
    fp16_sha256: str | None = None
    fp16_parity: ParityReport | None = None
    seconds: float = 0.0


# ---------------------------------------------------------------------------------------------
# Parity
# ---------------------------------------------------------------------------------------------
def parity_images(
    seed: int = 0, sizes: Sequence[tuple[int, int, int]] | None = None, task: str = "lowlight"
) -> ParityImages:
    """Random-noise batches of several sizes (N, H, W), odd ones included, plus real photos.

    The default set covers a 1×1 image, sides below the padding multiple, odd sides and a batch
    of two; the real photos are two images of the task's embedded test split (real scenes with
    the task's degradation: what the model sees in use).
    """
    from ..data import embedded

    rng = np.random.default_rng(seed)
    sizes = list(sizes) if sizes is not None else [(1, 1, 1), (1, 3, 5), (2, 37, 53), (1, 64, 64)]
    out: ParityImages = []
    for n, h, w in sizes:
        out.append((f"random-{n}x{h}x{w}", rng.random((n, 3, h, w), dtype=np.float32)))
    photos = embedded(task, "test")
    for i in (0, len(photos) - 1):
        name, inp, _ = photos.load(i)
        out.append((f"photo-{name}", np.ascontiguousarray(inp.transpose(2, 0, 1))[None]))
    return out


def _ort_session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, min(4, os.cpu_count() or 1))
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def onnx_runner(path: str | os.PathLike[str]) -> Callable[[np.ndarray], np.ndarray]:
    """``run(batch) -> batch`` with onnxruntime on the CPU (for parity checks)."""
    session = _ort_session(Path(path))
    name = session.get_inputs()[0].name
    return lambda batch: session.run(None, {name: np.ascontiguousarray(batch, dtype=np.float32)})[0]


def check_parity(
    candidate: Callable[[np.ndarray], np.ndarray],
    reference: Callable[[np.ndarray], np.ndarray],
    images: ParityImages,
    tolerance: float,
    names: tuple[str, str] = ("candidate", "reference"),
) -> ParityReport:
    """Run both on every image and report the max and mean absolute differences."""
    report = ParityReport(candidate=names[0], reference=names[1], tolerance=tolerance)
    for name, batch in images:
        a = np.asarray(candidate(batch), dtype=np.float64)
        b = np.asarray(reference(batch), dtype=np.float64)
        if a.shape != b.shape:
            raise ExportError(f"{names[0]} returned shape {a.shape} for {name} but {names[1]} returned {b.shape}")
        if not np.isfinite(a).all():
            report.cases.append(ParityCase(name, list(a.shape), float("inf"), float("inf")))
            continue
        d = np.abs(a - b)
        report.cases.append(ParityCase(name, list(a.shape), float(d.max()), float(d.mean())))
    return report


def torch_reference(model: Network) -> Callable[[np.ndarray], np.ndarray]:
    """The PyTorch model as it runs for training/eval (unfolded, eval mode), clamped to [0, 1].

    Works on a copy: ``.float().cpu().eval()`` would otherwise move and re-mode the caller's model.
    """
    model = copy.deepcopy(model).float().cpu().eval()

    @torch.inference_mode()
    def run(batch: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(np.ascontiguousarray(batch))).clamp(0.0, 1.0).numpy()

    return run


# ---------------------------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------------------------
def convert_fp16(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """An FP16-compute copy of an FP32 ONNX with float32 input/output (Casts at the edges)."""
    try:
        from onnxconverter_common import float16
    except ImportError:
        raise ExportError(
            "the FP16 export needs onnxconverter-common; install it with `pip install onnxconverter-common`"
        ) from None
    model = onnx.load(str(src))
    with warnings.catch_warnings():
        # The converter warns about constants it clamps into the FP16 range; the parity check
        # against the FP32 graph is what decides whether that matters.
        warnings.simplefilter("ignore")
        half = float16.convert_float_to_float16(model, keep_io_types=True)
    _set_props(half, {"hbl_edge.precision": "fp16"})
    _save_checked(half, Path(dst))
    return Path(dst)


def _set_props(model: onnx.ModelProto, props: dict[str, str]) -> None:
    existing = {p.key: p.value for p in model.metadata_props}
    existing.update(props)
    del model.metadata_props[:]
    for k, v in existing.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v


def _save_checked(model: onnx.ModelProto, path: Path) -> None:
    """Check (full, with shape inference) then write one self-contained file, atomically."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as e:
        first = str(e).strip().splitlines()[0]
        raise ExportError(f"{path.name}: the exported graph fails the ONNX checker ({first}); this is a bug") from None
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        raise ExportError(f"{path.name}: weights ended up in external data; expected one self-contained file")
    with atomic_path(path) as tmp:
        onnx.save_model(model, str(tmp), save_as_external_data=False)


def _trace(graph: ExportGraph, path: Path, opset: int) -> None:
    example = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    dims = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings():
        # Tracer warnings come from Network.forward's size checks, which are no-ops on the
        # pre-padded input; the deprecation warning is the legacy exporter announcing itself.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        torch.onnx.export(
            graph,
            (example,),
            str(path),
            dynamo=False,
            export_params=True,
            do_constant_folding=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: dims, OUTPUT_NAME: dims},
        )


def _resolve_model(model: ModelLike) -> tuple[Network, dict[str, Any]]:
    if isinstance(model, Network):
        return model, {"kind": "network", "genotype": model.genotype.to_dict()}
    from ..bundle import load_bundle  # the export side reads bundles; bundles know nothing of export

    bundle = load_bundle(model)
    source = {
        "kind": "bundle",
        "path": str(bundle.path),
        "task": bundle.task,
        "genotype": bundle.genotype.to_dict(),
        "weights_sha256": file_sha256(bundle.path / "model.safetensors"),
    }
    return bundle.model, source


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------
def export_onnx(
    model: ModelLike,
    out_dir: str | os.PathLike[str],
    *,
    opset: int = DEFAULT_OPSET,
    fp16: bool = False,
    check: bool = True,
    tolerance: float = FP32_TOLERANCE,
    fp16_tolerance: float = FP16_TOLERANCE,
    images: ParityImages | None = None,
    seed: int = 0,
) -> ExportResult:
    """Export a bundle (path) or a :class:`Network` to ``out_dir/model.onnx`` (+ ``model.fp16.onnx``).

    Args:
        model: a bundle directory (or its model.json / model.safetensors), or a Network.
        out_dir: where model.onnx, model.fp16.onnx and export.json are written.
        opset: ONNX opset, 13–20 (17 by default: parsed by TensorRT 10.3 and newer).
        fp16: also write model.fp16.onnx (FP16 compute, float32 input/output).
        check: run the parity checks (ONNX Runtime vs PyTorch; FP16 vs FP32 graph).
        tolerance: max |ONNX − PyTorch| accepted for the FP32 graph.
        fp16_tolerance: max |FP16 − FP32| accepted for the FP16 graph.
        images: parity images (``[(name, N×3×H×W float32)]``); :func:`parity_images` by default.

    Raises:
        ExportError: the opset is out of range, the graph fails the checker, or a parity check
            exceeds its tolerance (the files are kept for inspection; export.json records why).
    """
    if not (MIN_OPSET <= opset <= MAX_OPSET):
        raise ExportError(f"opset {opset} is not supported; use {MIN_OPSET}–{MAX_OPSET} (default {DEFAULT_OPSET})")
    t0 = time.perf_counter()
    network, source = _resolve_model(model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / ONNX_NAME

    graph = export_module(network)
    with tempfile.TemporaryDirectory(dir=out, prefix=".trace.") as tmp:
        traced = Path(tmp) / ONNX_NAME
        _trace(graph, traced, opset)
        proto = onnx.load(str(traced))
    props = {
        "hbl_edge.format": EXPORT_FORMAT,
        "hbl_edge.precision": "fp32",
        "hbl_edge.input": f"{INPUT_NAME}: N×3×H×W float32 RGB in [0,1], H,W ≥ {MIN_INPUT_SIDE}",
        "hbl_edge.output": f"{OUTPUT_NAME}: N×3×H×W float32 in [0,1]",
        "hbl_edge.genotype": network.genotype.summary(),
    }
    if source.get("task"):
        props["hbl_edge.task"] = source["task"]
    _set_props(proto, props)
    proto.doc_string = "hbl-edge restoration network (BatchNorm folded; padding and clamp in the graph)"
    _save_checked(proto, onnx_path)
    result = ExportResult(
        out_dir=out, onnx_path=onnx_path, sha256=file_sha256(onnx_path), opset=opset,
        exporter=EXPORTER, meta_path=out / META_NAME,
    )
    log.info("wrote %s (opset %d, sha256 %s…)", onnx_path, opset, result.sha256[:12])

    if fp16:
        result.fp16_path = convert_fp16(onnx_path, out / FP16_NAME)
        result.fp16_sha256 = file_sha256(result.fp16_path)
        log.info("wrote %s (FP16 compute, float32 I/O)", result.fp16_path)

    failures = []
    if check:
        imgs = images if images is not None else parity_images(seed, task=source.get("task") or "lowlight")
        fp32_run = onnx_runner(onnx_path)
        result.parity = check_parity(
            fp32_run, torch_reference(network), imgs, tolerance, ("onnxruntime fp32", "pytorch (unfolded, eval)")
        )
        log.info("parity %s", result.parity.summary())
        if not result.parity.passed:
            failures.append(result.parity)
        if result.fp16_path is not None:
            result.fp16_parity = check_parity(
                onnx_runner(result.fp16_path), fp32_run, imgs, fp16_tolerance, ("onnxruntime fp16", "onnxruntime fp32")
            )
            log.info("parity %s", result.fp16_parity.summary())
            if not result.fp16_parity.passed:
                failures.append(result.fp16_parity)

    result.seconds = time.perf_counter() - t0
    write_json(result.meta_path, _export_meta(result, source, network))
    if failures:
        raise ExportError(
            "parity check failed: " + "; ".join(f.summary() for f in failures)
            + f". The files are in {out} for inspection; do not deploy them"
        )
    return result


def _export_meta(result: ExportResult, source: dict[str, Any], network: Network) -> dict[str, Any]:
    """The ``hbl-export/2`` manifest (see :mod:`hbl_edge.export.manifest`)."""
    artifacts: dict[str, Any] = {
        ONNX_NAME: {"sha256": result.sha256, "bytes": result.onnx_path.stat().st_size, "precision": "fp32"},
    }
    if result.fp16_path is not None:
        artifacts[FP16_NAME] = {
            "sha256": result.fp16_sha256, "bytes": result.fp16_path.stat().st_size,
            "precision": "fp16 compute, float32 input/output",
        }
    return {
        "format": EXPORT_FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "task": source.get("task"),
        "genotype": network.genotype.to_dict(),
        "genotype_summary": network.genotype.summary(),
        "parameters": count_parameters(network),
        "weights_sha256": source.get("weights_sha256"),
        "input": input_spec(PAD_MULTIPLE),
        "output": output_spec(),
        "artifacts": artifacts,
        "opset": result.opset,
        "exporter": result.exporter,
        "graph": {
            "batchnorm": "folded (running statistics)",
            "padding": f"to a multiple of {PAD_MULTIPLE}, in the graph (reflect; replicate below the reflect limit)",
            "clamp": "[0, 1] in the graph",
        },
        "parity": result.parity.to_dict() if result.parity else None,
        "fp16_parity": result.fp16_parity.to_dict() if result.fp16_parity else None,
        "source": source,
        "engines": [],
        "seconds": round(result.seconds, 3),
        "versions": {**versions(), **_extra_versions()},
    }


def _extra_versions() -> dict[str, str]:
    from ..versions import library_versions

    return library_versions({"onnxconverter_common": "onnxconverter-common"})


def ensure_onnx(bundle: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None) -> Path:
    """``BUNDLE/export/model.onnx``, exported first when it is missing or was made from other weights.

    "Other weights" is decided by the weights sha256 recorded in ``export.json``; an ONNX with no
    record is trusted (it may have been copied in by hand).
    """
    import json

    from ..bundle import resolve_bundle_dir

    bundle_dir = resolve_bundle_dir(bundle)
    out = Path(out_dir) if out_dir is not None else bundle_dir / "export"
    onnx_path = out / ONNX_NAME
    if onnx_path.is_file():
        try:
            recorded = json.loads((out / META_NAME).read_text()).get("source", {}).get("weights_sha256")
        except (OSError, json.JSONDecodeError, AttributeError):
            recorded = None
        if recorded is None or recorded == file_sha256(bundle_dir / "model.safetensors"):
            return onnx_path
        log.info("%s was exported from other weights; exporting it again", onnx_path)
    else:
        log.info("no %s yet; exporting it (a few seconds)", onnx_path)
    return export_onnx(bundle_dir, out).onnx_path
