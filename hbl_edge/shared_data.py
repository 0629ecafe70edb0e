"""Where the project's shared real data lives (``shared/data/real`` beside the repository).

The real train/test sets are never copied into the repository or the package. Tests, benchmarks
and docs that need them find the folder through :func:`find_real_data` alone, and skip with
:data:`MISSING_REASON` when it is not there (a fresh clone, CI, a user's machine).

Looked for, in order:

1. ``<repo>/../shared/data/real``, ``<repo>`` being the checkout this package is imported from;
2. the same beside the main checkout when ``<repo>`` is a ``git worktree`` of it (its ``.git``
   file points at the main repository's ``.git``), so worktrees find it without absolute paths;
3. ``$HBL_SHARED_DATA`` (the ``real`` folder itself, or a folder holding ``data/real``).
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "HBL_SHARED_DATA"
MISSING_REASON = (f"the shared real data is not here (looked for <repo>/../shared/data/real, beside the main "
                  f"checkout of a git worktree, and ${ENV}); set {ENV} to the data/real folder to run this")

_REPO = Path(__file__).resolve().parents[1]


def _main_checkout(repo: Path) -> Path | None:
    """The main checkout of ``repo`` when ``repo`` is a git worktree (``.git`` is a ``gitdir:`` file)."""
    marker = repo / ".git"
    if not marker.is_file():
        return None
    try:
        text = marker.read_text().strip()
    except OSError:
        return None
    if not text.startswith("gitdir:"):
        return None
    gitdir = (repo / text.split(":", 1)[1].strip()).resolve()  # …/main/.git/worktrees/<name>
    try:
        common = (gitdir / (gitdir / "commondir").read_text().strip()).resolve()  # …/main/.git
    except OSError:
        return None
    return common.parent


def _candidates(repo: Path, env: str | None) -> list[Path]:
    out = [repo.parent / "shared" / "data" / "real"]
    main = _main_checkout(repo)
    if main is not None:
        out.append(main.parent / "shared" / "data" / "real")
    if env:
        base = Path(env)
        out += [base / "data" / "real", base]  # a folder holding data/real, or data/real itself
    return out


def find_real_data(subpath: str | os.PathLike[str] = "", *, repo: str | os.PathLike[str] | None = None) -> Path | None:
    """``shared/data/real/<subpath>`` when it exists (see the module docstring for where), else None."""
    for base in _candidates(Path(repo) if repo is not None else _REPO, os.environ.get(ENV)):
        if base.is_dir() and (base / subpath).exists():
            return base / subpath if str(subpath) else base
    return None


__all__ = ["ENV", "MISSING_REASON", "find_real_data"]
