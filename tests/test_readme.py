"""Every command in README.md's ```bash blocks and in ``--help``'s examples runs.

Why: the README is the first thing a researcher copies from; a command there that fails (as
``user_method=qr`` once did) costs trust. Each ``python -m recbench.{run,report,serving}`` line is
run as written, shortened by appended overrides (1 epoch, small data, a temporary MLflow store and
output folders, a sweep's seed/budget lists cut to their first value) so that the whole file runs in
about a minute. Commands on real datasets read small files written here in the official formats
under a temporary ``RECBENCH_DATA``. Lines that are not recbench commands, or need a GPU or SLURM,
are skipped by the explicit ``EXEMPT`` list below; a new kind of line fails until it is either
runnable or listed there.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from recbench.data.synthetic import generate
from tests.conftest import ROOT

README = ROOT / "README.md"
CONFIG = ROOT / "conf" / "config.yaml"

#: Lines that are not run, each with the reason. Matched as regular expressions on the whole line.
EXEMPT = {
    r"make( .*)?": "make targets install a venv / start servers; their Python commands are tested here",
    r"\. \.venv/bin/activate": "shell setup",
    r"export RECBENCH_DATA=.*": "the test sets RECBENCH_DATA to its own small files",
    r".*hydra/launcher=slurm_example.*": "needs a SLURM cluster",
    r".*train\.device=cuda.*": "needs a GPU",
    r"": "a comment-only line",
    r"mlflow server .*": "a long-running server; tests/reliability/test_server.py starts one on 127.0.0.1",
    r".*http://trackhost:.*": "names a tracking server on another host; test_server.py runs sweeps against a local one",
}

#: Small synthetic data for sweeps on the default dataset: large enough that every method of the
#: equal-memory example reaches budget 0.5.
SYNTHETIC = ["dataset.loader.num_users=1500", "dataset.loader.num_items=1200",
             "dataset.loader.events_per_user=6"]  # fmt: skip
#: Tiny synthetic data for single runs (a few seconds each, most of it Python start-up).
TINY = ["dataset.loader.num_users=150", "dataset.loader.num_items=80"]
#: Keys whose sweep lists are cut to their first value (the README lists several to show a sweep).
CUT_SWEEPS = ("seed", "method.budget")
REAL = ("ml-100k", "ml-1m", "ml-latest-small", "amazon-games")


def bash_blocks(text: str) -> list[str]:
    """The command lines of the ```bash blocks, continuation lines joined."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        lines += block.replace("\\\n", " ").splitlines()
    return [line.strip() for line in lines if line.strip()]


def help_examples(text: str) -> list[str]:
    """The ``python -m ...`` example lines of the --help footer in conf/config.yaml."""
    return [m.strip() for m in re.findall(r"^\s+(python -m recbench\.\S+.*)$", text, flags=re.M)]


def strip_comment(line: str) -> str:
    """The command without its trailing ``# comment`` and with single spaces."""
    return " ".join(re.sub(r"(^|\s)#.*$", "", line).split())


def commands() -> list[str]:
    found = bash_blocks(README.read_text()) + help_examples(CONFIG.read_text())
    return list(dict.fromkeys(strip_comment(line) for line in found))  # unique, in order


def exempt(line: str) -> str | None:
    return next((why for pattern, why in EXEMPT.items() if re.fullmatch(pattern, line)), None)


def tokens(line: str) -> list[str]:
    """The module or script and its arguments after ``python [-m]`` (quoting and comments handled)."""
    words = shlex.split(line, comments=True)
    assert words[0] == "python", line
    return words[2:] if words[1] == "-m" else words[1:]


def test_every_readme_line_is_runnable_or_exempt() -> None:
    found = commands()
    assert any("user_method=" in c for c in found) and any("+experiment=" in c for c in found)
    for line in found:
        if exempt(line) is None:
            assert re.match(
                r"python (-m recbench\.(run|report|serving|tuning)\b|scripts/budget_floor\.py)",
                line,
            ), (
                f"README/--help line neither runnable nor exempt: {line!r}; make it a recbench "
                "command or add it to EXEMPT with the reason"
            )


def write_real_data(root: Path) -> None:
    """MovieLens and Amazon files in their official formats, from a small synthetic log."""
    inter = generate(num_users=150, num_items=120, events_per_user=12, seed=5)
    user, item, rating, ts = inter.user, inter.item, inter.rating.astype(int), inter.timestamp
    rows = list(zip(user.tolist(), item.tolist(), rating.tolist(), ts.tolist()))
    (root / "ml-100k").mkdir(parents=True)
    (root / "ml-100k" / "u.data").write_text(
        "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows)
    )
    genres = np.random.default_rng(0).integers(0, 2, size=(item.max() + 1, 19))
    (root / "ml-100k" / "u.item").write_text("".join(
        f"{i}|Movie {i} (1995)|01-Jan-1995||http://x|" + "|".join(map(str, genres[i])) + "\n"
        for i in range(1, item.max() + 1)
    ), encoding="latin-1")  # fmt: skip
    (root / "ml-latest-small").mkdir()
    (root / "ml-latest-small" / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n" + "".join(f"{u},{i},{r}.0,{t}\n" for u, i, r, t in rows)
    )
    names = ["Action", "Comedy", "Drama", "Sci-Fi"]
    (root / "ml-latest-small" / "movies.csv").write_text(
        "movieId,title,genres\n"
        + "".join(f"{i},Movie {i} (1995),{names[i % 4]}|{names[(i // 4) % 4]}\n"
                  for i in range(1, item.max() + 1))
    )  # fmt: skip
    (root / "amazon-games").mkdir()
    order = np.lexsort((ts, user))
    (root / "amazon-games" / "Video.txt").write_text(
        "".join(f"{u} {i}\n" for u, i in zip(user[order].tolist(), item[order].tolist()))
    )


def shorten_run(args: list[str], tmp: Path, n: int) -> list[str]:
    """The command's own arguments, sweeps of CUT_SWEEPS cut to their first value, then overrides
    that keep it small: 1 epoch, no bars, small data, temporary store and folders."""
    out = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and key in CUT_SWEEPS and "," in value:
            arg = f"{key}={value.split(',')[0]}"
        out.append(arg)
    if any(a in ("--help", "-h") for a in out):
        return out
    names = {a.partition("=")[2] for a in out if a.startswith("dataset=")}
    real = bool(names & set(REAL)) or any(a.startswith("+experiment=") for a in out)
    extra = [
        "train.epochs=1", "train.progress=false", "eval.batch_size=4096",
        f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}", f"tracking.artifact_root={tmp / 'art'}",
        f"hydra.run.dir={tmp / 'runs' / str(n)}", f"hydra.sweep.dir={tmp / 'multirun' / str(n)}",
    ]  # fmt: skip
    if any(a.startswith("+experiment=") for a in out):
        extra.append("seed=0")  # a preset sweeps 3-10 seeds
        if not any(a.startswith("dataset=") for a in out):
            extra.append("dataset=ml-100k")  # presets default to ML-1M, absent here
    if not real:
        extra += SYNTHETIC if "-m" in out else TINY
    if any(a.startswith("+tune=") for a in out):
        # 2 trials, and the tuned YAML goes to the temporary folder, never into the checkout's conf/
        extra += [
            "hydra.sweeper.n_trials=2",
            f"hydra.callbacks.tuned_writer.out_dir={tmp / 'tuned'}",
        ]
    if any("model=sasrec" in a for a in out):
        extra += ["model.max_len=20"]
    return out + extra


def run_line(line: str, tmp: Path, n: int, env: dict[str, str]) -> subprocess.CompletedProcess:
    words = tokens(line)
    module, args = words[0], words[1:]
    if module == "recbench.run":
        args = shorten_run(args, tmp, n)
    elif module == "recbench.report":
        if not any(a.startswith("--runs-dir") for a in args):
            args += ["--uri", f"sqlite:///{tmp / 'mlflow.db'}"]
        args += ["--out", str(tmp / "reports")]
    elif module == "recbench.serving":
        args = [str(latest_run(tmp)) if a.startswith("outputs/runs/") else a for a in args]
    elif module == "recbench.tuning":  # the README's placeholder -> the newest tuning sweep here
        sweeps = sorted((p.parent for p in (tmp / "multirun").glob("*/optimization_results.yaml")),
                        key=lambda p: p.stat().st_mtime)  # fmt: skip
        assert sweeps, "no tuning sweep yet"
        args = [str(sweeps[-1]) if a.startswith("outputs/tune/") else a for a in args]
        args += ["--out", str(tmp / "tuned")]
    elif module.endswith(".py"):  # scripts/budget_floor.py: small data, two methods
        return subprocess.run([sys.executable, module, *args, *SYNTHETIC, "--methods", "hashing,dpq"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip


def latest_run(tmp: Path) -> Path:
    """The newest single-run folder with a serving artifact (for ``recbench.serving``)."""
    found = sorted(
        (p.parent for p in (tmp / "runs").glob("*/serving")), key=lambda p: p.stat().st_mtime
    )
    assert found, "no run folder with serving/ yet"
    return found[-1]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    tmp = tmp_path_factory.mktemp("readme")
    write_real_data(tmp / "data")
    env = {**os.environ, "RECBENCH_DATA": str(tmp / "data"), "PYTHONUNBUFFERED": "1",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}  # fmt: skip
    # `make reproduce-small` (exempt) records the runs the README's report example reads.
    setup = run_line("python -m recbench.run -m +experiment=mgqe_table3_small model=gmf seed=0",
                     tmp, 0, env)  # fmt: skip
    assert setup.returncode == 0, setup.stderr[-3000:]
    return tmp, env


RUNNABLE = [line for line in commands() if exempt(line) is None]


def _param(i: int, line: str) -> object:
    """Sweeps (``-m``: several runs each) are marked slow; single commands run in the fast suite."""
    slow = " -m " in f" {line} ".replace("python -m ", "") or "budget_floor" in line
    slow = slow or "recbench.tuning" in line  # reads the tuning sweep, which is slow
    return pytest.param(line, id=f"{i:02d}", marks=[pytest.mark.slow] if slow else [])


@pytest.mark.parametrize("line", [_param(i, line) for i, line in enumerate(RUNNABLE)])
def test_readme_command_runs(line: str, workspace: tuple[Path, dict[str, str]]) -> None:
    tmp, env = workspace
    n = RUNNABLE.index(line) + 1
    proc = run_line(line, tmp, n, env)
    assert proc.returncode == 0, f"{line}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "recbench: error" not in proc.stderr, proc.stderr[-3000:]
    if " -m recbench.run -m " in f" {line} ":
        assert "FAILED" not in proc.stdout, f"{line}\n{proc.stdout[-3000:]}"
