"""Code identity (issue 13 item 7): what a run records about the code, and when resume may reuse
a finished run."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from recbench import provenance
from tests.reliability.conftest import TINY, recbench_cmd, run

GIT = shutil.which("git")


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), "-c", "user.email=t@t", "-c", "user.name=t", *args],
                          check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "checkout"
    (root / "recbench").mkdir(parents=True)
    (root / "conf").mkdir()
    (root / "recbench" / "a.py").write_text("x = 1\n")
    (root / "conf" / "c.yaml").write_text("k: 1\n")
    (root / "README.md").write_text("docs\n")
    return root


@pytest.mark.skipif(GIT is None, reason="git is not installed")
def test_clean_dirty_and_untracked(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(provenance.ENV_OVERRIDE, raising=False)
    git(tree, "init", "-q")
    git(tree, "add", "-A")
    git(tree, "commit", "-qm", "init")
    commit = git(tree, "rev-parse", "HEAD")
    clean = provenance.describe(tree)
    assert clean["git_commit"] == commit and clean["git_dirty"] == "false"
    assert clean["code_identity"] == f"git-{commit}" and provenance.reusable(clean)
    (tree / "README.md").write_text("more docs\n")  # not code: still clean
    assert provenance.describe(tree)["git_dirty"] == "false"
    (tree / "recbench" / "a.py").write_text("x = 2\n")
    dirty = provenance.describe(tree)
    assert dirty["git_dirty"] == "true" and not provenance.reusable(dirty)
    assert dirty["code_identity"].startswith(f"git-{commit}-dirty-")
    git(tree, "checkout", "--", "recbench/a.py")
    (tree / "conf" / "tuned").mkdir()  # written by tuning sweeps while runs go on: not code
    (tree / "conf" / "tuned" / "d_m_full.yaml").write_text("train:\n  lr: 0.01\n")
    after_tuning = provenance.describe(tree)
    assert after_tuning["git_dirty"] == "false" and after_tuning["code_hash"] == clean["code_hash"]
    (tree / "recbench" / "new.py").write_text("y = 1\n")  # untracked code counts
    assert provenance.describe(tree)["git_dirty"] == "true"


def test_not_a_git_checkout(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(provenance.ENV_OVERRIDE, raising=False)
    info = provenance.describe(tree)
    assert info["git_commit"] == "" and info["git_dirty"] == "unknown"
    assert info["code_identity"] == f"src-{info['code_hash']}" and provenance.reusable(info)
    (tree / "recbench" / "a.py").write_text("x = 3\n")
    assert provenance.describe(tree)["code_identity"] != info["code_identity"]
    monkeypatch.setenv(provenance.ENV_OVERRIDE, "image-1.2")
    assert provenance.describe(tree)["code_identity"] == "image-1.2"


def test_resume_needs_the_same_code_unless_any_code(tmp_path: Path, store: str) -> None:
    first = run(recbench_cmd([*TINY, f"hydra.run.dir={tmp_path / 'a'}"], store, tmp_path), tmp_path,
                RECBENCH_CODE_ID="code-1")  # fmt: skip
    assert first.returncode == 0, first.stderr[-2000:]
    record = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert record["code_identity"] == "code-1" and record["code_version"] and "git_commit" in record
    # other code with the default resume=same_code trains again: test_concurrency's claim tests
    again = run(recbench_cmd([*TINY, "resume=any_code", f"hydra.run.dir={tmp_path / 'c'}"], store, tmp_path),
                tmp_path, RECBENCH_CODE_ID="code-3")  # fmt: skip
    assert again.returncode == 0 and "skipped, identical run" in again.stdout


def test_report_warns_when_a_cell_mixes_code_versions() -> None:
    """The report's cell warnings read the ``code_identity`` tag each run records."""
    import pandas as pd

    from recbench.report.tables import code_identity

    assert code_identity(pd.Series({"code_identity": "git-a", "git_commit": "b"})) == "git-a"
    assert (
        code_identity(
            pd.Series({"code_version": "0.1.0", "git_commit": "abc", "git_dirty": "true"})
        )
        == "0.1.0@abc+dirty"
    )
    assert code_identity(pd.Series({})) == ""
