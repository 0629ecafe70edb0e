"""Run-directory plumbing: atomic writes, JSON lines, versions, seeding.

Everything a run writes goes through an atomic replace (write a temporary file beside the
target, then ``os.replace``), so a run killed mid-write never leaves a half-written checkpoint,
config or bundle behind.
"""

from __future__ import annotations

import json
import os
import platform
import random
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it replaces ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; artifacts get the usual permissions
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | Path, data: Any) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")
    return Path(path)


def read_json(path: str | Path, error: type[Exception], what: str) -> Any:
    """Parse a user-supplied JSON file; any problem is ``error`` with a one-line message."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise error(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"{path}: cannot read the {what} ({e})") from None


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(record, default=_json_default) + "\n")


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                # A run killed mid-line leaves a partial last record; the rest is still good.
                continue
    return out


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


#: What can change a training/search result, recorded in every bundle and run config.
RESULT_LIBRARIES = {"torch": "torch", "numpy": "numpy", "kornia": "kornia", "onnx": "onnx",
                    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"), "skimage": "scikit-image"}


def versions() -> dict[str, str]:
    """Versions of everything that can change a result, recorded beside every artifact (absent ones as "absent")."""
    from .versions import base_versions, library_versions

    return {**base_versions(), "platform": platform.platform(), **library_versions(RESULT_LIBRARIES)}


def check_same_config(path: str | Path, config: dict[str, Any],
                      absent_means: dict[str, Any] | None = None) -> None:
    """Refuse to resume a run whose saved ``config.json`` differs from ``config`` (one line, names the keys).

    ``absent_means``: the value a setting had before it existed, for a ``config.json`` written
    by a version without it (a run saved before ``synthetic_mix`` trained with 0).
    """
    from .errors import ConfigError

    saved = {**(absent_means or {}), **json.loads(Path(path).read_text())}
    saved.pop("versions", None)
    current = json.loads(json.dumps(config, default=_json_default))  # tuples → lists, as saved
    diff = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    if diff:
        raise ConfigError(f"--resume with different settings than the saved run ({', '.join(diff)}); use the same options")


def parse_resolution(spec: Any, minimum: int = 1) -> tuple[int, int]:
    """``"1280x720"`` (or ``(1280, 720)``) → (width, height), or a one-line ConfigError."""
    from .errors import ConfigError

    try:
        if isinstance(spec, str):
            w, sep, h = spec.lower().replace("×", "x").partition("x")
            if not sep:
                raise ValueError
            w, h = int(w), int(h)
        else:
            w, h = (int(v) for v in spec)
    except (TypeError, ValueError):
        raise ConfigError(f"resolution {spec!r} is not WxH (WIDTHxHEIGHT, e.g. 1280x720)") from None
    if w < minimum or h < minimum:
        raise ConfigError(f"resolution {w}x{h} is too small: give WIDTHxHEIGHT with both sides ≥ {minimum}")
    return w, h


def seed_everything(seed: int, deterministic: bool = False) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
