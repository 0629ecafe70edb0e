"""The manifest of an ``export/`` folder (``export.json``): what a device needs to run the model.

An export folder is self-sufficient for inference: the ONNX model(s) plus this manifest, copied
to a device that has no torch and no bundle. ``hbl-export/2`` (written by
:func:`hbl_edge.export.export_onnx` since this version) holds::

    format            "hbl-export/2"
    task              "lowlight" | "dehaze" | "underwater" (None for a bare Network export)
    genotype          the full hbl-genotype/1 document (rebuilds the network without search code)
    genotype_summary  one line, as Genotype.summary() prints it
    parameters        trainable parameters of the network
    input             name, N×3×H×W float32 RGB in [0, 1], dynamic batch/height/width,
                      min_side 1, pad_multiple (the graph pads to it internally)
    output            name, N×3×H×W float32 in [0, 1]
    artifacts         {file: {sha256, bytes, precision}} for model.onnx, model.fp16.onnx, model.int8.onnx
    weights_sha256    sha256 of the bundle's model.safetensors it was exported from
    parity, fp16_parity, int8   the checks run at export time (max/mean |Δ| per image)
    opset, exporter, graph, versions, created, seconds
    source            {kind, path, task, genotype, weights_sha256} (what hbl-export/1 had)
    engines           engines built from it ({path, key, kind, library_version, precision, …})

``hbl-export/1`` folders (written before this version) are still read: their task, genotype and
weights hash live under ``source``, the genotype summary in the ONNX metadata. A folder with an
ONNX and no manifest at all (copied by hand) is read from the ONNX metadata alone.

Torch-free: this module is part of the deploy side (a Jetson reads manifests with numpy + onnx).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BundleError
from ..runio import write_json
from .cache import file_sha256

log = logging.getLogger(__name__)

MANIFEST_NAME = "export.json"
FORMAT = "hbl-export/2"
#: Every manifest format this version reads.
READABLE_FORMATS = ("hbl-export/1", FORMAT)
ONNX_NAME = "model.onnx"
FP16_NAME = "model.fp16.onnx"
INT8_NAME = "model.int8.onnx"
INPUT_NAME = "image"
OUTPUT_NAME = "enhanced"
#: The input side the graph pads to internally (hbl_edge.network.PAD_MULTIPLE; the only value
#: any export has used). Written into every manifest by the exporter from the network's constant.
DEFAULT_PAD_MULTIPLE = 4
#: Smallest accepted input side (padding is decided inside the graph, so 1 works).
MIN_INPUT_SIDE = 1
#: precision → file name in an export folder.
PRECISION_FILES = {"fp32": ONNX_NAME, "fp16": FP16_NAME, "int8": INT8_NAME}


def input_spec(pad_multiple: int) -> dict[str, Any]:
    """The ``input`` entry of a manifest: what the ONNX takes."""
    return {
        "name": INPUT_NAME, "shape": ["batch", 3, "height", "width"], "dtype": "float32", "layout": "NCHW",
        "channels": "RGB", "range": [0.0, 1.0], "dynamic": ["batch", "height", "width"],
        "min_side": MIN_INPUT_SIDE, "pad_multiple": int(pad_multiple),
        "padding": f"any H, W ≥ {MIN_INPUT_SIDE}: padded to a multiple of {pad_multiple} inside the graph, cropped back",
    }


def output_spec() -> dict[str, Any]:
    return {"name": OUTPUT_NAME, "shape": ["batch", 3, "height", "width"], "dtype": "float32", "range": [0.0, 1.0]}


@dataclass
class Manifest:
    """A parsed manifest of an export folder (any readable format, upgraded in memory)."""

    folder: Path
    data: dict[str, Any] = field(default_factory=dict)
    #: The format on disk: one of :data:`READABLE_FORMATS`, or ``"onnx-metadata"`` (no export.json).
    format: str = FORMAT

    @property
    def path(self) -> Path:
        return self.folder / MANIFEST_NAME

    @property
    def task(self) -> str | None:
        return self.data.get("task")

    @property
    def genotype(self) -> dict[str, Any] | None:
        return self.data.get("genotype")

    @property
    def genotype_summary(self) -> str | None:
        return self.data.get("genotype_summary")

    @property
    def parameters(self) -> int | None:
        return self.data.get("parameters")

    @property
    def input(self) -> dict[str, Any]:
        return self.data.get("input") or input_spec(DEFAULT_PAD_MULTIPLE)

    @property
    def pad_multiple(self) -> int:
        return int(self.input.get("pad_multiple", DEFAULT_PAD_MULTIPLE))

    @property
    def weights_sha256(self) -> str | None:
        return self.data.get("weights_sha256")

    @property
    def artifacts(self) -> dict[str, dict[str, Any]]:
        return self.data.get("artifacts") or {}

    @property
    def engines(self) -> list[dict[str, Any]]:
        return self.data.get("engines") or []

    def onnx(self, precision: str = "fp32") -> Path:
        """The ONNX file of ``precision`` (``fp32``, ``fp16``, ``int8``) in this folder (may not exist)."""
        return self.folder / PRECISION_FILES[precision]

    def verify(self, onnx_path: Path) -> None:
        """Refuse an ONNX whose bytes differ from the sha256 the manifest recorded (a broken copy)."""
        recorded = (self.artifacts.get(onnx_path.name) or {}).get("sha256")
        if recorded is None:
            return
        actual = file_sha256(onnx_path)
        if actual != recorded:
            raise BundleError(
                f"{onnx_path}: sha256 {actual[:12]}… differs from {recorded[:12]}… recorded in {MANIFEST_NAME} (an "
                "incomplete copy or a replaced file); copy the export/ folder again"
            )

    def summary(self) -> dict[str, Any]:
        """What a runner's ``info`` carries about the model."""
        return {"task": self.task, "genotype": self.genotype_summary, "parameters": self.parameters,
                "manifest": self.format, "pad_multiple": self.pad_multiple}


def read_manifest(folder: str | os.PathLike[str]) -> Manifest:
    """The manifest of an export folder; ``export.json`` missing → what the ONNX metadata says.

    Raises:
        BundleError: export.json is malformed or of a format this version does not read.
    """
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    if not path.is_file():
        return _from_onnx_metadata(folder)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise BundleError(f"{path}: malformed JSON at line {e.lineno} ({e.msg}); copy the export/ folder again") from None
    except (OSError, UnicodeDecodeError) as e:
        raise BundleError(f"{path}: cannot read the export manifest ({e})") from None
    fmt = data.get("format") if isinstance(data, dict) else None
    if fmt not in READABLE_FORMATS:
        raise BundleError(
            f"{path}: unknown export manifest format {fmt!r}; this version of hbl-edge reads "
            f"{', '.join(READABLE_FORMATS)} (upgrade hbl-edge, or export again)"
        )
    if fmt == "hbl-export/1":
        data = _upgrade_v1(folder, data)
    return Manifest(folder, data, fmt)


def _onnx_props(onnx_path: Path) -> dict[str, str]:
    import onnx

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception:  # a corrupt ONNX is reported by the runner that loads it, with its own message
        return {}
    return {p.key: p.value for p in model.metadata_props}


def _upgrade_v1(folder: Path, data: dict[str, Any]) -> dict[str, Any]:
    """hbl-export/1 → the v2 field names (in memory; the file is left as it is)."""
    out = dict(data)
    source = data.get("source") or {}
    out.setdefault("task", source.get("task"))
    out.setdefault("genotype", source.get("genotype"))
    out.setdefault("weights_sha256", source.get("weights_sha256"))
    if "genotype_summary" not in out:
        out["genotype_summary"] = _onnx_props(folder / ONNX_NAME).get("hbl_edge.genotype")
    spec = input_spec(DEFAULT_PAD_MULTIPLE)
    spec.update(data.get("input") or {})
    out["input"] = spec
    return out


def _from_onnx_metadata(folder: Path) -> Manifest:
    props = _onnx_props(folder / ONNX_NAME)
    log.debug("%s has no %s; reading the model's own metadata", folder, MANIFEST_NAME)
    return Manifest(folder, {
        "task": props.get("hbl_edge.task"), "genotype": None, "genotype_summary": props.get("hbl_edge.genotype"),
        "input": input_spec(DEFAULT_PAD_MULTIPLE), "output": output_spec(),
    }, "onnx-metadata")


def record_engine(folder: str | os.PathLike[str], r: Any) -> bool:
    """Add (or replace) an engine's entry in ``export.json``; False when there is no manifest to update.

    ``r`` is an :class:`hbl_edge.export.engines.EngineResult`. The entry names the engine file
    relative to the export folder when it lies inside it, else by its absolute path (an engine
    kept in the user cache because the folder is read-only).
    """
    path = Path(folder) / MANIFEST_NAME
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    try:
        name = str(Path(r.path).resolve().relative_to(Path(folder).resolve()))
    except ValueError:
        name = str(r.path)
    engines = [e for e in record.get("engines", []) if e.get("path") != name]
    engines.append({
        "path": name, "key": r.key, "kind": r.kind, "library_version": r.library_version,
        "precision": r.precision, "device": r.device, "profiles": r.profiles, "onnx": Path(r.onnx_path).name,
        "built": r.built, "build_seconds": round(r.build_seconds, 3),
    })
    record["engines"] = engines
    try:
        write_json(path, record)
    except OSError as e:  # a read-only folder: the engine works, the record is only bookkeeping
        log.info("could not record the engine in %s (%s)", path, e)
        return False
    return True


__all__ = [
    "DEFAULT_PAD_MULTIPLE", "FORMAT", "FP16_NAME", "INPUT_NAME", "INT8_NAME", "MANIFEST_NAME", "MIN_INPUT_SIDE",
    "Manifest", "ONNX_NAME", "OUTPUT_NAME", "PRECISION_FILES", "READABLE_FORMATS", "input_spec", "output_spec",
    "read_manifest", "record_engine",
]
