"""Library versions, read from package metadata: the one place every record gets them from.

Bundles, ``config.json``, ``export.json``, engine build records and benchmark JSON all say which
versions produced them. Reading distribution metadata imports nothing, so this is torch-free
and cheap enough for the deploy side (a Jetson with TensorRT and numpy only).
"""

from __future__ import annotations

import platform
from typing import Mapping, Sequence, Union

#: a record's key → the distribution(s) that provide it (first installed one wins)
Libraries = Mapping[str, Union[str, Sequence[str]]]


def distribution_version(dist: str) -> str | None:
    """The installed version of distribution ``dist``, or None when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def library_versions(libraries: Libraries, absent: str | None = "absent") -> dict[str, str]:
    """``{key: version}`` for ``libraries``; a missing one is recorded as ``absent`` (None: left out).

    Example: ``library_versions({"onnxruntime": ("onnxruntime", "onnxruntime-gpu")})``.
    """
    out: dict[str, str] = {}
    for key, dists in libraries.items():
        candidates = (dists,) if isinstance(dists, str) else tuple(dists)
        found = next((v for v in map(distribution_version, candidates) if v is not None), None)
        if found is not None:
            out[key] = found
        elif absent is not None:
            out[key] = absent
    return out


def base_versions() -> dict[str, str]:
    """hbl-edge's own version and the Python running it."""
    from . import __version__

    return {"hbl_edge": __version__, "python": platform.python_version()}


__all__ = ["Libraries", "base_versions", "distribution_version", "library_versions"]
