"""Model bundles: ``model.safetensors`` + ``model.json`` (DESIGN §8).

A bundle is everything needed to run a trained model and to know where it came from: the
genotype (so the network is rebuilt with no search or training code), the weights as
safetensors (never pickle), the task, the loss it was trained with, the input convention,
versions, provenance and final metrics. Weights are stored unfolded (BatchNorm running
statistics included) so training can be continued; export folds them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import BundleError, GenotypeError
from .genotype import Genotype
from .network import PAD_MULTIPLE, Network, count_parameters
from .runio import atomic_path, read_json, versions, write_json

FORMAT = "hbl-bundle/1"
WEIGHTS = "model.safetensors"
META = "model.json"

INPUT_SPEC = {
    "layout": "NCHW",
    "channels": "RGB",
    "dtype": "float32",
    "range": [0.0, 1.0],
    "pad_multiple": PAD_MULTIPLE,
    "output": "unbounded; clamp to [0, 1] for images",
}


@dataclass
class Bundle:
    """A loaded bundle: the network (eval mode) and its metadata."""

    model: Network
    meta: dict[str, Any]
    path: Path
    genotype: Genotype = field(init=False)

    def __post_init__(self) -> None:
        self.genotype = self.model.genotype

    @property
    def task(self) -> str:
        return self.meta["task"]


def save_bundle(
    out_dir: str | Path,
    model: Network,
    *,
    task: str,
    loss: dict[str, Any],
    provenance: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> Path:
    """Write ``model.safetensors`` and ``model.json`` into ``out_dir`` (atomically)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(out_dir / WEIGHTS) as tmp:
        save_file(state, str(tmp), metadata={"format": FORMAT})
    meta = {
        "format": FORMAT,
        "task": task,
        "genotype": model.genotype.to_dict(),  # hbl-genotype/1, or /2 for an edge network
        "channels": list(model.genotype.channels),
        "parameters": count_parameters(model),
        "loss": loss,
        # an edge network takes every size itself (input_multiple 1); the paper network pads to 4
        "input": {**INPUT_SPEC, "pad_multiple": getattr(model, "input_multiple", PAD_MULTIPLE)},
        "versions": versions(),
        "provenance": provenance or {},
        "metrics": metrics or {},
    }
    write_json(out_dir / META, meta)
    return out_dir


#: What :func:`save_weights` writes beside ``model.safetensors`` for a module no genotype rebuilds.
WEIGHTS_META = "weights.json"
WEIGHTS_FORMAT = "hbl-weights/1"


def save_weights(out_dir: str | Path, model: torch.nn.Module, *, task: str, loss: dict[str, Any],
                 provenance: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None) -> Path:
    """``model.safetensors`` + ``weights.json`` of a module that is not a :class:`Network`.

    Not a bundle (no genotype: the code that built the module must build it again, see
    ``provenance``), so :func:`load_bundle` refuses it; :func:`load_weights` reads it back into
    a module of the same architecture.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(out_dir / WEIGHTS) as tmp:
        save_file(state, str(tmp), metadata={"format": WEIGHTS_FORMAT})
    write_json(out_dir / WEIGHTS_META, {
        "format": WEIGHTS_FORMAT, "task": task, "module": type(model).__name__, "parameters": count_parameters(model),
        "loss": loss, "versions": versions(), "provenance": provenance or {}, "metrics": metrics or {},
    })
    return out_dir


def load_weights(path: str | Path, model: torch.nn.Module) -> dict[str, Any]:
    """Load :func:`save_weights`' ``path/model.safetensors`` into ``model`` (strict); returns ``weights.json``."""
    p = Path(path)
    meta = read_json(p / WEIGHTS_META, BundleError, "weights metadata")
    if not isinstance(meta, dict) or meta.get("format") != WEIGHTS_FORMAT:
        raise BundleError(f"{p / WEIGHTS_META}: not an {WEIGHTS_FORMAT} file; train the module again")
    try:
        model.load_state_dict(load_file(str(p / WEIGHTS)), strict=True)
    except (SafetensorError, OSError, RuntimeError) as e:
        raise BundleError(f"{p / WEIGHTS}: does not fit a {type(model).__name__} ({str(e).splitlines()[0]})") from None
    return meta


def resolve_bundle_dir(path: str | Path) -> Path:
    """A bundle directory from a directory, its model.json or its model.safetensors."""
    p = Path(path)
    if p.is_file() and p.name in (META, WEIGHTS):
        p = p.parent
    if not p.exists():
        raise BundleError(f"model bundle {str(path)!r} does not exist; pass a run directory holding {META} and {WEIGHTS}")
    if not (p / META).exists():
        raise BundleError(f"{p}: no {META} here; pass the run directory that `hbl-edge train` wrote")
    if not (p / WEIGHTS).exists():
        raise BundleError(f"{p}: {META} found but {WEIGHTS} is missing; the bundle is incomplete")
    return p


def read_meta(path: str | Path) -> dict[str, Any]:
    p = resolve_bundle_dir(path)
    meta = read_json(p / META, BundleError, "bundle metadata")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise BundleError(f"{p / META}: unknown bundle format {found!r}; this version reads {FORMAT!r}")
    for key in ("task", "genotype"):
        if key not in meta:
            raise BundleError(f"{p / META}: missing {key!r}; the bundle is incomplete")
    return meta


def load_bundle(path: str | Path, device: str | torch.device = "cpu") -> Bundle:
    """Load a bundle into an eval-mode :class:`Network` (an ``EdgeNetwork`` for an edge genotype).
    Never unpickles anything."""
    p = resolve_bundle_dir(path)
    meta = read_meta(p)
    try:
        genotype = Genotype.from_dict(meta["genotype"], source=str(p / META))
    except GenotypeError as e:
        raise BundleError(str(e)) from None
    model = Network.from_genotype(genotype)  # an EdgeNetwork for an hbl-genotype/2 genotype
    try:
        state = load_file(str(p / WEIGHTS), device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise BundleError(f"{p / WEIGHTS}: not a readable safetensors file ({e})") from None
    for key, value in getattr(model, "optional_state", {}).items():  # written by an older version
        if key in model.state_dict() and key not in state:
            state[key] = torch.full_like(model.state_dict()[key], value)
    missing, unexpected = _diff_keys(model.state_dict(), state)
    if missing or unexpected:
        raise BundleError(
            f"{p / WEIGHTS}: weights do not match the genotype in {META} "
            f"(missing {len(missing)}, unexpected {len(unexpected)}, e.g. {(missing or unexpected)[0]})"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if "\n" in str(e) else str(e)
        raise BundleError(f"{p / WEIGHTS}: weights do not fit the genotype ({first})") from None
    model.to(device).eval()
    return Bundle(model=model, meta=meta, path=p)


def _diff_keys(expected: dict[str, Any], got: dict[str, Any]) -> tuple[list[str], list[str]]:
    return sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
