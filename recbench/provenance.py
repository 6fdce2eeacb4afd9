"""Which code produced a run: the recbench version, the git commit and whether the tree was dirty.

Why: a rerun sweep skips configurations that already FINISHED (``config_hash``). Without the code's
identity in that key, results computed before a bug fix would be silently reused after it. Every run
records the tags below (and ``metrics.json`` their values); resume matches ``code_identity``.

* ``git_commit`` / ``git_dirty``: from the git checkout that holds the ``recbench`` package (only when
  the package folder's parent is the checkout's top level, so a venv inside some other repository is
  not mistaken for it). "Dirty" means uncommitted changes (tracked or untracked, not ignored) in
  what a run executes: ``recbench/``, ``conf/`` and ``pyproject.toml``; edits to docs or tests do not
  count, nor do files under ``conf/tuned/``: a tuning sweep writes them (like outputs) while other
  runs go on, and a run that uses one records its values in its resolved configuration.
* ``code_hash``: sha256 over the bytes of every ``*.py`` under ``recbench/`` and ``*.yaml`` under
  ``conf/`` (sorted by path, ``conf/tuned/`` excluded), first 16 hex digits.
* ``code_identity``: ``git-<commit>`` for a clean checkout; ``git-<commit>-dirty-<code_hash>`` for a
  dirty one (never reused by resume, see ``reusable``); ``src-<code_hash>`` outside git (an installed
  package: byte-identical code is the same code). ``RECBENCH_CODE_ID`` overrides it (e.g. a container
  image tag, where the image has no ``.git``); the override is trusted as clean.
"""

from __future__ import annotations

import functools
import hashlib
import os
import subprocess
from pathlib import Path

import recbench

PACKAGE_DIR = Path(recbench.__file__).resolve().parent
CODE_PATHS = ("recbench", "conf", "pyproject.toml")
#: Written by tuning sweeps; their values reach a run only through its (recorded) resolved config.
GENERATED = "conf/tuned"
ENV_OVERRIDE = "RECBENCH_CODE_ID"


def _git(root: Path, *args: str) -> str | None:
    """stdout of ``git -C root ...`` or None when git is missing or fails (not a checkout)."""
    try:
        proc = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def code_hash(root: Path) -> str:
    """sha256 of the package's Python files and the conf/ YAML files under ``root``."""
    digest = hashlib.sha256()
    files = sorted((root / "recbench").rglob("*.py")) + sorted((root / "conf").rglob("*.yaml"))
    for path in files:
        if "__pycache__" in path.parts or path.relative_to(root).as_posix().startswith(
            GENERATED + "/"
        ):
            continue
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        try:
            digest.update(path.read_bytes())
        except OSError:
            digest.update(b"<unreadable>")
    return digest.hexdigest()[:16]


def describe(root: Path) -> dict[str, str]:
    """The code identity of the recbench tree at ``root`` (the folder holding ``recbench/``)."""
    root = root.resolve()
    content = code_hash(root)
    info = {
        "code_version": recbench.__version__,
        "git_commit": "",
        "git_dirty": "unknown",
        "code_hash": content,
    }
    top = _git(root, "rev-parse", "--show-toplevel")
    commit = _git(root, "rev-parse", "HEAD") if top and Path(top).resolve() == root else None
    if commit:
        status = _git(
            root,
            "status",
            "--porcelain",
            "--untracked-files=normal",
            "--",
            *CODE_PATHS,
            f":(exclude){GENERATED}",
        )
        dirty = status is None or bool(status)
        info["git_commit"] = commit
        info["git_dirty"] = "true" if dirty else "false"
        info["code_identity"] = f"git-{commit}" + (f"-dirty-{content}" if dirty else "")
    else:
        info["code_identity"] = f"src-{content}"
    override = os.environ.get(ENV_OVERRIDE, "").strip()
    if override:
        info["code_identity"] = override
        info["git_dirty"] = "false" if info["git_dirty"] == "unknown" else info["git_dirty"]
        info["code_identity_source"] = ENV_OVERRIDE
    return info


@functools.lru_cache(maxsize=1)
def current() -> dict[str, str]:
    """``describe`` of the running recbench (computed once per process)."""
    return describe(PACKAGE_DIR.parent)


def reusable(info: dict[str, str]) -> bool:
    """Whether results of this code may be reused by a later run with the same identity: never
    from a dirty tree (its state cannot be recovered), always under an explicit override."""
    if info.get("code_identity_source") == ENV_OVERRIDE:
        return True
    return info.get("git_dirty") != "true"
