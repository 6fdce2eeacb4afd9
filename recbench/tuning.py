"""Tuning as a first-class step, on validation data only.

``python -m recbench.run -m +tune=default dataset=ml-100k model=gmf method=full`` runs Hydra's Optuna
sweeper (TPE, seeded) over the training knobs of ONE (dataset, model, method[, budget]) combination.
Each trial is an ordinary run with ``eval.test=false`` (the test split is never evaluated, nothing
that reads it is computed) and ``stage=tune`` (reports leave such runs out); it returns its
best-epoch validation metric (``objective``) for the sweeper to maximise (NDCG, HR, MRR) or minimise
(RMSE, MAE): ``direction`` chooses, through the ``recbench_direction`` resolver of
``conf/tune/default.yaml``. When the sweep ends, ``TunedWriter`` turns the best trial into
``conf/tuned/<dataset>_<model>_<method>.yaml`` (used as ``+tuned=<name>``) and writes the trials table
(CSV) next to it; ``python -m recbench.tuning SWEEP_DIR`` does the same for a finished sweep.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from recbench import record
from recbench.errors import ConfigError, RecbenchError

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
#: Where tuned settings go by default: the ``tuned`` config group (``+tuned=<name>``).
TUNED_DIR = CONF_DIR / "tuned"
#: Keys that name the combination being tuned; sweeping them inside one study would mix
#: combinations (the best trial's settings would not belong to one of them).
IDENTITY_KEYS = ("dataset", "model", "method", "user_method", "seed", "task")


def monitored_metric(task: str, monitor: str | None, k: int = 10) -> str:
    """The validation metric early stopping watches (the rule of ``recbench.tasks``)."""
    if monitor:
        return str(monitor)
    return record.default_monitor(task, k)


def direction(task: str, monitor: str | None = None) -> str:
    """``minimize`` for error metrics (RMSE, MAE), ``maximize`` for ranking metrics."""
    return "maximize" if record.higher_is_better(monitored_metric(task, monitor)) else "minimize"


OmegaConf.register_new_resolver("recbench_direction", direction, replace=True)


def is_optuna_sweep(hydra_cfg: Any) -> bool:
    """Whether this job runs under Hydra's Optuna sweeper (which needs a float back)."""
    sweeper = hydra_cfg.get("sweeper") if hydra_cfg is not None else None
    return sweeper is not None and "optuna" in str(sweeper.get("_target_", "")).lower()


def objective(cfg: DictConfig, metrics: Mapping[str, Any]) -> float:
    """The run's validation value of the monitored metric (after the best epoch's weights were
    restored): what the sweeper optimises. Never a test metric."""
    name = monitored_metric(str(cfg.task), cfg.train.get("monitor"), int(cfg.eval.k))
    best, val = record.key(record.BEST, name), record.key(record.VAL, name)
    key = best if best in metrics else val  # val/: runs recorded before best/*
    if key not in metrics:
        raise ConfigError(
            f"the run recorded no {key}, so it cannot be tuned; tuning needs a validation split "
            "(ranking tasks always have one; rating tasks need dataset.rating_split with a "
            "validation share, e.g. [0.8, 0.1, 0.1])"
        )
    return float(metrics[key])


# ------------------------------------------------------------------------------ sweep checks
def sweep_direction(config: DictConfig) -> list[str]:
    """The sweeper's direction(s) as strings."""
    raw = OmegaConf.select(config, "hydra.sweeper.direction")
    values = raw if isinstance(raw, Sequence) and not isinstance(raw, str) else [raw]
    return [str(getattr(v, "name", v)) for v in values]


def check_tuning_config(config: DictConfig) -> None:
    """A tuning sweep must not read test data, must optimise in the metric's direction and must
    keep one (dataset, model, method) combination; raises ConfigError naming the fix."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if config.eval.get("test", True):
        raise ConfigError(
            "a tuning sweep must not evaluate the test split; set eval.test=false "
            "(conf/tune/default.yaml does: use +tune=default)"
        )
    metric = monitored_metric(str(config.task), config.train.get("monitor"), int(config.eval.k))
    want = direction(str(config.task), config.train.get("monitor"))
    got = sweep_direction(config)
    if got != [want]:
        raise ConfigError(
            f"hydra.sweeper.direction={','.join(got)} but the tuned metric val/{metric} must be "
            f"{want}d; drop the override (conf/tune/default.yaml picks it from task and train.monitor)"
        )
    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    swept = [f"{k}={v}" for k, v in params.items()]
    swept += list(OmegaConf.select(config, "hydra.overrides.task") or [])
    for override in OverridesParser.create().parse_overrides(swept):
        key = override.get_key_element().lstrip("+~")
        if override.is_sweep_override() and key.split("@")[0] in IDENTITY_KEYS:
            raise ConfigError(
                f"{key} is swept in a tuning study; tune one (dataset, model, method) at a time, "
                f"e.g. {key}={next(iter(override.sweep_string_iterator()), '...')}"
            )


def _own_task(model: str) -> str | None:
    """The task a model's YAML sets (conf/model/<model>.yaml)."""
    model_yaml = CONF_DIR / "model" / f"{model}.yaml"
    task = OmegaConf.load(model_yaml).get("task") if model_yaml.is_file() else None
    return None if task is None else str(task)


def _model_choice(config: DictConfig) -> str:
    choices = OmegaConf.select(config, "hydra.runtime.choices") or {}
    return str(choices.get("model") or config.model._target_.rsplit(".", 1)[-1].lower())


def tuned_name(config: DictConfig) -> str:
    """``<dataset>_<model>_<method>`` (+ ``_u<user method>``, ``_b<budget>``, and the task when
    it is not the model's own, e.g. ``ml-100k_dot_bias_full_ranking``)."""
    choices = OmegaConf.select(config, "hydra.runtime.choices") or {}
    model = _model_choice(config)
    method = str(choices.get("method") or config.method._target_.rsplit(".", 1)[-1].lower())
    parts = [str(config.dataset.name), model, method]
    user_method = choices.get("method@user_method") or choices.get("user_method")
    if user_method:
        parts.append(f"u{user_method}")
    if config.method.get("budget") is not None:
        parts.append(f"b{config.method.budget}")
    own_task = _own_task(model)
    if own_task is not None and own_task != str(config.task):
        parts.append(str(config.task))
    return "_".join(parts)


# ------------------------------------------------------------------------------ sweep results
#: How a Hydra sweep override marks a searched dimension (``'train.batch_size=choice(256,512)'``).
SWEEP_EXPRESSIONS = ("choice(", "interval(", "range(", "tag(", "glob(")
#: Written into the sweep folder when a study starts: the space it searched, command line included
#: (a trial's own ``hydra.yaml`` only keeps the values it was given).
SPACE_FILE = "search_space.yaml"


def search_space(config: DictConfig) -> dict[str, str]:
    """Searched knob -> its range: the sweeper's ``params`` with the command line's sweep expressions
    (``'train.batch_size=choice(256,512,1024,2048)'``) taking precedence, as the sweeper uses them."""
    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    space = {str(k): str(v) for k, v in params.items()}
    for override in OmegaConf.select(config, "hydra.overrides.task") or []:
        key, _, value = str(override).partition("=")
        if value.startswith(SWEEP_EXPRESSIONS):
            space[key.lstrip("+~")] = value
    return space


def _load_yaml(path: Path) -> Any:
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False) if path.is_file() else None


def trial_rows(sweep_dir: Path, searched: Sequence[str], metric: str) -> list[dict[str, Any]]:
    """One row per trial folder of a sweep: number, status, the searched values, the objective
    (``val/<metric>``), the other validation metrics, best epoch, epochs run and train time."""
    rows = []
    for folder in sorted(p for p in Path(sweep_dir).iterdir() if (p / record.HYDRA_DIR).is_dir()):
        hydra_yaml = _load_yaml(folder / record.HYDRA_DIR / "hydra.yaml") or {}
        number = (hydra_yaml.get("hydra") or {}).get("job", {}).get("num")
        if number is None:
            number = (
                int(folder.name.split("_", 1)[0]) if folder.name.split("_", 1)[0].isdigit() else -1
            )
        overrides = dict(
            o.split("=", 1)
            for o in (_load_yaml(folder / record.HYDRA_DIR / "overrides.yaml") or [])
            if "=" in o
        )
        try:
            saved = json.loads((folder / record.METRICS_FILE).read_text())
        except (OSError, ValueError):
            saved = {"status": "NO_RECORD"}
        metrics = saved.get("metrics") or {}
        row: dict[str, Any] = {"trial": int(number), "status": saved.get("status", "?")}
        row.update({name: overrides.get(name, "") for name in searched})
        # the restored best epoch's validation values: best/* (val/* in runs recorded before it)
        prefix = record.BEST if record.key(record.BEST, metric) in metrics else record.VAL
        objective = record.key(prefix, metric)
        row["objective"] = metrics.get(objective, "")
        row.update({record.key(record.VAL, record.parse_metric(k).name): v
                    for k, v in sorted(metrics.items())
                    if record.parse_metric(k).prefix == prefix and k != objective})  # fmt: skip
        for key in ("fit/best_epoch", "fit/epochs_run", "time/train_seconds"):
            row[key] = metrics.get(key, "")
        row["run_dir"] = str(folder)
        if any(record.parse_metric(k).prefix == record.TEST for k in metrics):
            raise RecbenchError(
                f"tuning trial {folder} recorded test metrics; tuning must not read test data"
            )
        rows.append(row)
    return sorted(rows, key=lambda r: r["trial"])


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def sweep_config(sweep_dir: Path) -> DictConfig:
    """A sweep's configuration with its ``hydra`` node, read from its first trial's folder."""
    for folder in sorted(p for p in sweep_dir.iterdir() if (p / record.HYDRA_CONFIG).is_file()):
        config = OmegaConf.load(folder / record.HYDRA_CONFIG)
        hydra_yaml = folder / record.HYDRA_DIR / "hydra.yaml"
        if hydra_yaml.is_file():
            config.hydra = OmegaConf.load(hydra_yaml).hydra
        return config
    raise ConfigError(f"{sweep_dir} holds no trial folders; pass the sweep folder of a tuning run")


def write_tuned(
    sweep_dir: str | Path,
    out_dir: str | Path | None = None,
    name: str | None = None,
    config: DictConfig | None = None,
) -> tuple[Path, Path]:
    """Turn a finished Optuna sweep into ``<out_dir>/<name>.yaml`` (the best trial's searched
    values plus its epoch cap and patience, under ``# @package _global_``) and
    ``<out_dir>/<name>.trials.csv``; returns both paths."""
    sweep_dir = Path(sweep_dir)
    results_path = sweep_dir / "optimization_results.yaml"
    if not sweep_dir.is_dir() or not any(
        (p / record.HYDRA_DIR).is_dir() for p in sweep_dir.iterdir()
    ):
        raise ConfigError(
            f"{sweep_dir} holds no tuning trials (no optimization_results.yaml, no trial folders); "
            "pass the sweep folder of `python -m recbench.run -m +tune=default ...`"
        )
    config = config if config is not None else sweep_config(sweep_dir)
    # A study stopped early (Ctrl-C) has no optimization_results.yaml: its trials still count (a
    # seeded TPE study's first N trials do not depend on n_trials) and the best is taken from them.
    results = _load_yaml(results_path) or {}
    best_params: dict[str, Any] = dict(results.get("best_params") or {})
    searched = list(best_params) or [
        str(k) for k in (OmegaConf.select(config, "hydra.sweeper.params") or {})
    ]
    task, monitor = str(config.task), config.train.get("monitor")
    metric = monitored_metric(task, monitor, int(config.eval.k))
    name = name or tuned_name(config)
    rows = trial_rows(sweep_dir, searched, metric)

    def matches(row: dict[str, Any]) -> bool:
        return all(str(row.get(k)) == str(v) for k, v in best_params.items())

    finished = [r for r in rows if r["status"] in ("FINISHED", "SKIPPED") and r["objective"] != ""]
    if not finished:
        raise ConfigError(
            f"no trial of {sweep_dir} finished; see the trials' folders for the errors"
        )
    sign = -1.0 if record.higher_is_better(metric) else 1.0
    best = next((r for r in finished if best_params and matches(r)), None) or min(
        finished, key=lambda r: sign * float(r["objective"])
    )
    resolved = _load_yaml(Path(best["run_dir"]) / record.CONFIG_FILE) or _load_yaml(
        Path(best["run_dir"]) / record.HYDRA_CONFIG
    )
    if not best_params:  # stopped study: the best finished trial's values, typed as resolved
        best_params = {k: OmegaConf.select(OmegaConf.create(resolved), k) for k in searched}
    values = dict(best_params)
    # what else the trials ran with that a +tuned run must repeat: the loss, the epoch cap and
    # patience, and the task when it is not the model's own (dot_bias task=ranking)
    for key in ("train.loss", "train.epochs", "train.patience", "train.min_epochs"):
        values[key] = OmegaConf.select(OmegaConf.create(resolved), key)
    if _own_task(_model_choice(config)) not in (None, task):
        values["task"] = task
    space = _load_yaml(sweep_dir / SPACE_FILE) or search_space(config)
    configured = OmegaConf.select(config, "hydra.sweeper.params") or {}
    overrides = [
        o
        for o in (OmegaConf.select(config, "hydra.overrides.task") or [])
        if not o.startswith("hydra.") and o.split("=", 1)[0].lstrip("+~") not in space
    ] + [f"'{k}={v}'" for k, v in space.items() if str(configured.get(k)) != v]
    sampler = OmegaConf.select(config, "hydra.sweeper.sampler") or {}
    out_dir = Path(out_dir) if out_dir is not None else TUNED_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    yaml_path, csv_path = out_dir / f"{name}.yaml", out_dir / f"{name}.trials.csv"
    write_csv(rows, sweep_dir / "trials.csv")
    write_csv(rows, csv_path)
    header = [
        "# @package _global_",
        f"# Tuned training settings for {name} (written by recbench.tuning from {sweep_dir}).",
        f"#   tuned by: python -m recbench.run -m {' '.join(overrides)}",
        f"#   study: {len(finished)} finished of {len(rows)} trials"
        + ("" if results else " (stopped before its n_trials)")
        + f", {str(sampler.get('_target_', '?')).rsplit('.', 1)[-1]} "
        f"seed {sampler.get('seed')}, val/{metric} {direction(task, monitor)}d; test data not read",
        "#   search space: " + "; ".join(f"{k}={v}" for k, v in space.items()),
        f"#   best trial {best['trial']}: val/{metric} = {float(best['objective']):.4f} "
        f"(best epoch {best['fit/best_epoch']} of {best['fit/epochs_run']} run)",
        f"#   trials: {csv_path.name}",
        f"# Use: python -m recbench.run dataset={config.dataset.name} ... +tuned={name}",
    ]
    body = OmegaConf.to_yaml(OmegaConf.create(_nest(values)))
    yaml_path.write_text("\n".join(header) + "\n" + body)
    return yaml_path, csv_path


class TunedWriter(Callback):
    """Checks a tuning sweep before it starts (``check_tuning_config``) and writes the tuned
    settings and trials table when it ends (``write_tuned``)."""

    def __init__(self, out_dir: str | None = None, name: str | None = None) -> None:
        self.out_dir = out_dir
        self.name = name

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            check_tuning_config(config)
        except ConfigError as exc:
            print(f"recbench: error: {exc}", file=sys.stderr, flush=True)
            sys.exit(exc.exit_code)
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / SPACE_FILE).write_text(
            OmegaConf.to_yaml(OmegaConf.create(search_space(config)))
        )

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        name = self.name or tuned_name(config)
        yaml_path, csv_path = write_tuned(config.hydra.sweep.dir, self.out_dir, name, config)
        print(
            f"recbench tune: best settings in {yaml_path} (use +tuned={name}); trials in {csv_path}",
            flush=True,
        )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m recbench.tuning SWEEP_DIR``: (re)write the tuned YAML and trials CSV of a sweep."""
    parser = argparse.ArgumentParser(
        prog="python -m recbench.tuning",
        description="Write conf/tuned/<name>.yaml and <name>.trials.csv from a finished Optuna "
        "tuning sweep (outputs/tune/...).",
    )
    parser.add_argument("sweep_dir", help="the sweep folder (holds optimization_results.yaml)")
    parser.add_argument("--out", default=None, help=f"output folder (default {TUNED_DIR})")
    parser.add_argument(
        "--name", default=None, help="file name (default <dataset>_<model>_<method>)"
    )
    args = parser.parse_args(argv)
    try:
        yaml_path, csv_path = write_tuned(args.sweep_dir, args.out, args.name)
    except RecbenchError as exc:
        print(f"recbench: error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    print(f"wrote {yaml_path} and {csv_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
