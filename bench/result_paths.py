"""Paths as bench scripts record them in bench/results: relative to the repository, never a
machine's absolute paths (tests/test_shared_data.py checks the results for them)."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rel(path: str | os.PathLike[str]) -> str:
    """``path`` relative to the repository (symlinks resolved); a relative path that does not exist
    (a name, not a file) stays as given."""
    p = Path(path)
    return os.path.relpath(p.resolve(), ROOT) if p.is_absolute() or p.exists() else str(path)
