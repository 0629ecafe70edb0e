"""hbl_edge.shared_data.find_real_data: the one place that finds shared/data/real."""

from __future__ import annotations

from pathlib import Path

from hbl_edge.shared_data import ENV, MISSING_REASON, find_real_data

REPO_ROOT = Path(__file__).resolve().parents[1]


def _real(root: Path) -> Path:
    p = root / "shared" / "data" / "real"
    (p / "lowlight" / "paired").mkdir(parents=True)
    return p


def test_beside_the_checkout(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    repo = tmp_path / "main"
    repo.mkdir()
    real = _real(tmp_path)
    assert find_real_data(repo=repo) == real
    assert find_real_data("lowlight/paired", repo=repo) == real / "lowlight" / "paired"
    assert find_real_data("dehaze", repo=repo) is None


def test_from_a_git_worktree_of_the_main_checkout(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    real = _real(tmp_path)
    main_git = tmp_path / "main" / ".git" / "worktrees" / "cleanup"
    main_git.mkdir(parents=True)
    (main_git / "commondir").write_text("../..\n")
    wt = tmp_path / "wt" / "cleanup"  # <wt>/../shared does not exist: found through the main checkout
    wt.mkdir(parents=True)
    (wt / ".git").write_text(f"gitdir: {main_git}\n")
    assert find_real_data("lowlight", repo=wt) == real / "lowlight"


def test_environment_variable_and_absence(tmp_path, monkeypatch):
    repo = tmp_path / "lonely" / "repo"
    repo.mkdir(parents=True)
    monkeypatch.delenv(ENV, raising=False)
    assert find_real_data(repo=repo) is None
    elsewhere = _real(tmp_path / "elsewhere")
    monkeypatch.setenv(ENV, str(elsewhere))
    assert find_real_data("lowlight", repo=repo) == elsewhere / "lowlight"
    monkeypatch.setenv(ENV, str(tmp_path / "elsewhere" / "shared"))  # the folder holding data/real
    assert find_real_data(repo=repo) == elsewhere
    assert ENV in MISSING_REASON and "\n" not in MISSING_REASON


def test_no_absolute_work_paths_in_tests_bench_docs():
    for folder in ("tests", "bench", "docs"):
        for p in (REPO_ROOT / folder).rglob("*"):
            if p.is_file() and p.suffix in (".py", ".md", ".json", ".sh", ".toml") and p.name != "test_shared_data.py":
                assert "/work/" not in p.read_text(errors="replace"), p
    for name in ("README.md", "Makefile"):
        assert "/work/" not in (REPO_ROOT / name).read_text(), name
