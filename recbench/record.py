"""The record contract: what a run writes, and what every reader of it may rely on.

One module for the names that ``run`` writes and ``tracking``, ``tuning`` and ``report`` read
(docs/design.md, "The record"), so that a key is spelled, and its meaning decided, in one place:

* **run identity**: the tags a run carries, the config keys outside the resume key
  (``config_hash``), the keys a report cell may differ in (``cell_hash``), Hydra's plumbing;
* **run-folder files**: ``metrics.json``, ``config.yaml``, Hydra's ``.hydra/config.yaml``, ...;
* **metric keys**: ``metric_name`` builds ``ndcg_at_10``-style names, ``key`` prefixes them
  (``test/``, ``best/``, ``val/``, ``popularity/``), ``parse_metric`` reads them back and
  ``higher_is_better`` says which way is better. MLflow metric names cannot contain ``@``: HR@10
  is recorded as ``hr_at_10`` and labelled ``HR@10`` (``metric_label``).

The method-config keys that are not knobs (``NON_KNOB_KEYS``: Hydra's plumbing and the size budget)
are defined here too, and the embedding contract reads them from here: this module imports nothing
from recbench, so every layer (and the report, which must start without torch) may read it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Keys of a method config node that are not knobs of the layer: Hydra's and the size budget.
NON_KNOB_KEYS: tuple[str, ...] = (
    "_target_",
    "_partial_",
    "_recursive_",
    "_convert_",
    "_args_",
    "budget",
)

# ----------------------------------------------------------------------------- run-folder files
#: The run's record: status, identity tags, metrics, history (``recbench.run``).
METRICS_FILE = "metrics.json"
#: The resolved config of a run that ended (FINISHED, FAILED or KILLED).
CONFIG_FILE = "config.yaml"
#: Hydra's own folder in a run folder; it marks a folder as a run of a sweep.
HYDRA_DIR = ".hydra"
#: Hydra's unresolved config, present from the start (runs that died early have only this one).
HYDRA_CONFIG = f"{HYDRA_DIR}/{CONFIG_FILE}"
#: The trained weights (the best epoch's).
MODEL_FILE = "model.pt"
#: The traceback of a run of a sweep that failed with an unexpected exception.
TRACEBACK_FILE = "traceback.txt"

# ----------------------------------------------------------------------------------- run identity
#: Tags every run carries besides the code's identity (``recbench.provenance``), in the order
#: ``recbench.run.run_identity`` writes them.
RUN_TAGS = (
    "dataset", "model", "method", "user_method", "task", "seed", "loss", "preset", "stage",
    "budget", "tie_break", "config_hash", "cell_hash",
)  # fmt: skip
#: Key in metrics.json and MLflow tag of a run FAILED because its method cannot reach
#: ``method.budget`` on some table: the smallest budget that every table reaches (a fraction of the
#: full size, ``recbench.errors.BudgetError.floor``). A report shows a cell whose runs all failed
#: this way as "not reachable (min X %)", not among the failures.
BUDGET_FLOOR = "budget_floor"
#: Tags a report reads (``experiment``: the preset's name in runs recorded before ``preset``).
REPORT_TAGS = (
    "dataset", "model", "method", "user_method", "task", "seed", "loss", "config_hash", "run_dir",
    "experiment", "budget", "eval_protocol", "cell_hash", "code_version", "git_commit", "git_dirty",
    "code_identity", "stage", BUDGET_FLOOR,
)  # fmt: skip
#: Config keys that do not change what a run computes: left out of ``config_hash``, the resume key
#: (a run is resumed, i.e. skipped, when a twin has the same ``config_hash`` and ``code_identity``).
RESUME_EXCLUDED = (
    "tracking", "dataset.categories", "train.progress", "train.compile", "train.fused_vq",
    "eval.batch_size",
    "eval.serving_artifact", "force", "resume",
)  # fmt: skip
#: Also left out of a report cell's key (``cell_hash``), so runs differing only here pool as seeds
#: of one result: the seed, the preset's name (a label; the settings a preset makes are in the
#: config itself) and machine-local folders (the same files under another path are the same data).
CELL_EXCLUDED = (*RESUME_EXCLUDED, "seed", "preset", "dataset.root", "eval.negatives_dir")
#: Hydra's plumbing (how an object is built, not what it is): never a param, never a cell key.
HYDRA_PLUMBING = tuple(key for key in NON_KNOB_KEYS if key != "budget")
#: Config subtrees left out of the MLflow params (bookkeeping, or categories' own plumbing).
PARAMS_EXCLUDED = ("tracking", "dataset.categories", "force", "resume", "train.progress")
#: Params that name the chosen options (``method=hashing``); labels, not cell keys (the report
#: groups by them anyway, and runs recorded before they existed must fall into the same cells).
LABEL_PARAMS = ("dataset", "model", "method", "user_method")


def is_knob(key: str) -> bool:
    """Whether a key of a method node (``bits``, ``_target_``, ``budget.x``) is one of its knobs."""
    return key.split(".", 1)[0] not in NON_KNOB_KEYS


# ------------------------------------------------------------------------------------ metric keys
#: Prefixes of metric keys: per-epoch validation, the restored best epoch's validation, test, and
#: the most-popular baseline on test.
VAL, BEST, TEST, POPULARITY = "val", "best", "test", "popularity"
#: The per-epoch mean training loss.
TRAIN_LOSS = "train/loss"
#: Metrics where lower is better (errors and losses); every other metric is maximised.
LOWER_IS_BETTER = ("rmse", "mae", "loss")

_AT_K = re.compile(r"(?P<base>.+)_at_(?P<k>\d+)")


def metric_name(base: str, k: int | None = None) -> str:
    """``metric_name("ndcg", 10)`` -> ``ndcg_at_10``; without ``k`` the base itself (``mrr``)."""
    return base if k is None else f"{base}_at_{int(k)}"


def key(prefix: str, name: str) -> str:
    """``key(TEST, "hr_at_10")`` -> ``test/hr_at_10``."""
    return f"{prefix}/{name}"


@dataclass(frozen=True)
class MetricKey:
    """A metric key read back: ``test/ndcg_at_10`` -> prefix ``test``, base ``ndcg``, k 10."""

    prefix: str
    base: str
    k: int | None

    @property
    def name(self) -> str:
        """The key without its prefix (``ndcg_at_10``)."""
        return metric_name(self.base, self.k)


def parse_metric(text: str) -> MetricKey:
    """The inverse of ``key(prefix, metric_name(base, k))``; either part may be absent."""
    prefix, _, name = str(text).rpartition("/")
    match = _AT_K.fullmatch(name)
    if match is None:
        return MetricKey(prefix, name, None)
    return MetricKey(prefix, match["base"], int(match["k"]))


def higher_is_better(metric: str) -> bool:
    """Ranking metrics (HR, NDCG, MRR) are maximised; errors and losses minimised."""
    return parse_metric(metric).base not in LOWER_IS_BETTER


def default_monitor(task: str, k: int) -> str:
    """The validation metric early stopping watches when ``train.monitor`` is not set."""
    return "rmse" if str(task) == "rating" else metric_name("ndcg", k)


def metric_label(text: str) -> str:
    """``test/hr_at_10`` -> ``HR@10`` (the papers' names)."""
    parsed = parse_metric(text)
    return parsed.base.upper() + ("" if parsed.k is None else f"@{parsed.k}")
