"""Engine cache: engines keyed by everything that makes one engine unusable for another.

An engine is only valid for the exact ONNX it was built from, the exact engine library and
version, the GPU (name + compute capability) and the precision and shape profiles it was built
for (DESIGN §8–9). The key is a hash of those ingredients; the ingredients themselves are
written beside the engine (``<engine>.json``) so a mismatch can be explained in one log line.
A lookup never returns an engine whose recorded ingredients differ from the requested ones.

Torch-free on purpose: a Jetson builds and looks up engines with TensorRT + numpy alone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from ..runio import atomic_path, write_json

log = logging.getLogger(__name__)

CACHE_FORMAT = "hbl-engine/1"

#: The ingredients of a cache key, in the order they are reported.
KEY_FIELDS = ("onnx_sha256", "library", "library_version", "device", "precision", "profiles")


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def engine_cache_key(ingredients: dict[str, Any]) -> str:
    """A 16-hex-digit key of the ingredients (canonical JSON, so field order does not matter)."""
    missing = [k for k in KEY_FIELDS if k not in ingredients]
    if missing:
        raise ValueError(f"engine cache key needs {', '.join(missing)}")
    canonical = json.dumps({k: ingredients[k] for k in KEY_FIELDS}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def describe_mismatch(found: dict[str, Any], wanted: dict[str, Any]) -> str:
    """``field: found → wanted`` for every ingredient that differs (for the rebuild log line)."""
    parts = []
    for k in KEY_FIELDS:
        a, b = found.get(k), wanted.get(k)
        if a != b:
            if k == "onnx_sha256":
                a, b = str(a)[:12], str(b)[:12]
            parts.append(f"{k}: {a} → {b}")
    return "; ".join(parts) or "no difference in the key fields"


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file, so a killed build leaves no half engine."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(bytes(data))
    return path


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> Path:
    return write_json(path, data)


class EngineCache:
    """A folder of ``<stem>.<key>.engine`` files, each with its ``.json`` sidecar of ingredients."""

    def __init__(self, folder: str | os.PathLike[str], stem: str) -> None:
        self.folder = Path(folder)
        self.stem = stem

    def path_for(self, key: str) -> Path:
        return self.folder / f"{self.stem}.{key}.engine"

    @staticmethod
    def sidecar(engine_path: Path) -> Path:
        return engine_path.with_suffix(".json")

    def entries(self) -> list[tuple[Path, dict[str, Any]]]:
        """Every engine of this stem with a readable sidecar (engines without one are ignored)."""
        out = []
        for p in sorted(self.folder.glob(f"{self.stem}.*.engine")):
            meta = read_sidecar(p)
            if meta is not None:
                out.append((p, meta))
        return out

    def lookup(self, ingredients: dict[str, Any]) -> Path | None:
        """The cached engine for exactly these ingredients, or None (with a log line saying why)."""
        key = engine_cache_key(ingredients)
        path = self.path_for(key)
        meta = read_sidecar(path) if path.exists() else None
        if meta is not None and all(meta.get("key_ingredients", {}).get(k) == ingredients[k] for k in KEY_FIELDS):
            return path
        if path.exists():
            log.warning("engine %s has no matching sidecar; rebuilding it from the ONNX", path.name)
            return None
        others = self.entries()
        if others:
            # Explain against the closest entry (fewest differing fields), so the line is useful.
            def distance(item: tuple[Path, dict[str, Any]]) -> int:
                found = item[1].get("key_ingredients", {})
                return sum(found.get(k) != ingredients[k] for k in KEY_FIELDS)

            other_path, other_meta = min(others, key=distance)
            log.info(
                "no cached engine matches (closest: %s, %s); building from the ONNX",
                other_path.name, describe_mismatch(other_meta.get("key_ingredients", {}), ingredients),
            )
        return None

    def store(self, ingredients: dict[str, Any], engine: bytes, meta: dict[str, Any]) -> Path:
        key = engine_cache_key(ingredients)
        path = self.path_for(key)
        write_bytes_atomic(path, engine)
        record = {"format": CACHE_FORMAT, "key": key, "key_ingredients": dict(ingredients), **meta}
        write_json_atomic(self.sidecar(path), record)
        return path


def read_sidecar(engine_path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ingredients recorded beside an engine, or None when absent, unreadable or not a cache record.

    Read by the runners' reader (:func:`hbl_edge.runtime.trt_runner.read_engine_sidecar`, the one
    place the file is parsed); the cache also insists on its own record format.
    """
    from ..runtime.trt_runner import read_engine_sidecar

    meta = read_engine_sidecar(Path(engine_path))
    if meta is None or meta.get("format") != CACHE_FORMAT:
        return None
    return meta
