"""Configuration checks that run before any data is loaded, with one-line messages.

* ``preflight(argv)``: composes the command line's configuration (every value of a sweep) and turns
  Hydra/OmegaConf composition errors (unknown option, mistyped key, wrong type) into one line that
  names the problem and the fix.
* ``check_run_config(cfg)``: checks the free-form groups against their ``_target_``'s signature and
  asks each method to validate its knobs (``check_knobs``), the model to accept the task, and the
  loss to fit the task.
"""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Callable, Iterable
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from recbench.embeddings.base import check_budget
from recbench.errors import ConfigError, RecbenchError
from recbench.record import NON_KNOB_KEYS

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
GROUPS = ("dataset", "model", "method", "user_method", "train", "eval", "tracking", "experiment")
#: Groups whose options are another group's files (``user_method`` reuses ``conf/method/``).
_OPTION_DIRS = {"user_method": "method"}
_FLAGS_WITH_VALUE = {
    "--cfg",
    "-c",
    "--package",
    "-p",
    "--config-path",
    "-cp",
    "--config-name",
    "-cn",
    "--config-dir",
    "-cd",
    "--experimental-rerun",
}


def options(group: str) -> list[str]:
    """The options of a config group (file names in conf/<group>/)."""
    return sorted(p.stem for p in (CONF_DIR / _OPTION_DIRS.get(group, group)).glob("*.yaml"))


def nearest(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate closest to a mistyped ``name`` (difflib), or None when none is close."""
    found = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return found[0] if found else None


def unknown_key_message(full: str, valid: Iterable[str] | None) -> str:
    """``unknown key 'train.epoch'; did you mean train.epochs? ...``: the nearest valid key of the
    same node when one is close, else the node's keys. Never a ``+`` hint: adding a mistyped key
    would run and silently ignore it."""
    parent, _, leaf = full.rpartition(".")
    prefix = parent + "." if parent else ""
    valid = [str(k) for k in (valid or [])]
    guess = nearest(leaf, valid)
    if guess is not None:
        return f"unknown key '{full}'; did you mean {prefix}{guess}? (see `python -m recbench.run --cfg job`)"
    if valid:
        return f"unknown key '{full}'; the keys of {parent or 'the config'} are: {', '.join(valid)}"
    return f"unknown key '{full}'; check the spelling (see `python -m recbench.run --cfg job`)"


def rename_method_keys(message: str, where: str) -> str:
    """A method's own messages name its knobs ``method.<knob>``; for the user table's method the
    key the user typed is ``user_method.<knob>``."""
    if where == "method":
        return message
    return re.sub(r"(?<![\w.])method\.", f"{where}.", message)


# ----------------------------------------------------------------------------- preflight
def split_overrides(argv: list[str]) -> list[str]:
    """The override tokens of a command line (flags and their values removed)."""
    out, skip = [], False
    for token in argv:
        if skip:
            skip = False
            continue
        if token in _FLAGS_WITH_VALUE:
            skip = True
            continue
        if token.startswith("-"):
            continue
        out.append(token)
    return out


def _expand(overrides: list[str]) -> list[list[str]]:
    """One override list per value of each sweep (not the cross product: each value is checked)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    base = []
    sweeps: list[tuple[str, list[str]]] = []
    for ov in parsed:
        key = ov.get_key_element()
        if ov.is_sweep_override():
            values = list(ov.sweep_string_iterator())
            sweeps.append((key, values))
            base.append(f"{key}={values[0]}" if values else ov.input_line)
        else:
            base.append(ov.input_line)
    variants = [base]
    for key, values in sweeps:
        for value in values[1:]:
            variants.append([f"{key}={value}" if o.split("=", 1)[0] == key else o for o in base])
    return variants


def explain(exc: BaseException, keys_of: Callable[[str], list[str] | None] | None = None) -> str:
    """A one-line explanation of a Hydra/OmegaConf composition error. ``keys_of(parent)`` lists
    the valid keys of a config node, for the nearest-key hint of a mistyped key."""
    keys_of = keys_of or (lambda parent: None)
    text = " ".join(str(exc).split())
    missing = re.search(r"Could not find '([\w/+@.-]+)/([^']+)'", text)
    if missing:
        group, option = missing.group(1).split("@")[0].lstrip("/"), missing.group(2)
        group = group.split("/")[-1]
        valid = ", ".join(options(group)) or "(none)"
        guess = nearest(option, options(group))
        plus = "+" if group == "experiment" else ""  # presets are not in the defaults list
        hint = f"did you mean {plus}{group}={guess}? " if guess else ""
        return (
            f"unknown {group} option '{option}'; {hint}choose one of: {valid} "
            f"(e.g. {plus}{group}={valid.split(', ')[0]})"
        )
    preset = re.search(r"Could not override '(\w+)'\. No match in the defaults list", text)
    if preset:
        group = preset.group(1)
        value = re.search(r"use \+(\S+)", text)
        return (
            f"{group} is not in the defaults list, so it is added with a +: use "
            f"+{value.group(1) if value else group + '=...'} (options: {', '.join(options(group))})"
        )
    key = re.search(r"Key '([^']+)' (?:not in '\w+'|is not in struct).*?full_key: ([\w.]+)", text)
    if key:
        full = key.group(2)
        return unknown_key_message(full, keys_of(full.rpartition(".")[0]))
    where_text = text + " " + " ".join(str(exc.__cause__ or "").split())
    could_not_override = re.search(
        r"(?:Could not override '([^']+)'|Error merging override ([\w.]+)=|full_key: ([\w.]+))",
        where_text,
    )
    value = re.search(
        r"Value '([^']*)' (?:of type '\w+' )?could not be converted to (\w+)", where_text
    )
    if value:
        where = (
            next((g for g in could_not_override.groups() if g), "a key")
            if could_not_override
            else "a key"
        )
        kind = value.group(2).lower()
        article = "an" if kind[:1] in "aeiou" else "a"
        return f"{where}={value.group(1)} is not a valid {kind}; give {article} {kind} value"
    appended = re.search(r"Could not override '([^']+)'\. To append", text)
    if appended or "Could not append to config" in text or "is not in struct" in text:
        k = re.search(r"Key '([^']+)'", text)
        name = appended.group(1) if appended else (k.group(1) if k else "?")
        return unknown_key_message(name, keys_of(name.rpartition(".")[0]))
    cause = exc.__cause__ or exc.__context__
    if cause is not None and cause is not exc and str(cause):
        return explain(cause, keys_of)
    return text.split(" Set the environment variable HYDRA_FULL_ERROR")[0]


def preflight(argv: list[str], destinations: bool = False) -> str | None:
    """Compose the configuration(s) of a command line; return a one-line error or None. With
    ``destinations``, also check where the run will write (``check_destinations``)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import recbench.config  # noqa: F401 - registers the schema

    overrides = split_overrides(argv)
    try:
        variants = _expand(overrides)
    except Exception as exc:  # noqa: BLE001 - any parse error becomes one line
        return f"cannot parse the overrides: {' '.join(str(exc).split())[:300]}"
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            for number, variant in enumerate(variants):
                try:
                    cfg = compose("config", overrides=variant)
                    check_run_config(cfg)
                    if destinations and number == 0:
                        check_destinations(cfg, argv)
                except RecbenchError as exc:
                    return str(exc)
                except Exception as exc:  # noqa: BLE001
                    return explain(exc, lambda parent, v=variant: _node_keys(compose, v, parent))
    finally:
        GlobalHydra.instance().clear()
    return None


def _node_keys(
    compose: Callable[..., DictConfig], variant: list[str], parent: str
) -> list[str] | None:
    """The keys of the node ``parent`` in the configuration composed without the overrides that
    touch it (those hold the typo); None when that cannot be composed."""

    def key(override: str) -> str:
        return override.lstrip("+~").split("=", 1)[0]

    if parent:
        kept = [o for o in variant if not key(o).startswith(parent + ".")]
    else:  # a top-level typo: keep only group choices and nested keys
        kept = [o for o in variant if "." in key(o) or key(o).split("@")[0] in GROUPS]
    try:
        cfg = compose("config", overrides=kept)
    except Exception:  # noqa: BLE001 - the hint is optional
        return None
    node = OmegaConf.select(cfg, parent) if parent else cfg
    return [str(k) for k in node.keys()] if isinstance(node, DictConfig) else None


# ------------------------------------------------------------------------ run config
def check_target_keys(node: DictConfig, where: str) -> None:
    """Every key of a ``_target_`` node must be a parameter of the target."""
    target = node.get("_target_")
    if target is None:
        raise ConfigError(f"{where} has no _target_; pick one of the files in conf/{where}/")
    try:
        obj = get_object(target)
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"{where}._target_={target} cannot be imported ({exc})") from exc
    params = inspect.signature(obj).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = [k for k in node.keys() if k not in NON_KNOB_KEYS and k not in params]
    if unknown:
        valid = [k for k, p in params.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL]
        guess = nearest(str(unknown[0]), valid)
        hint = f"did you mean {where}.{guess}? " if guess else ""
        raise ConfigError(
            f"unknown key '{where}.{unknown[0]}' for {target.rsplit('.', 1)[-1]}; {hint}valid keys: "
            f"{', '.join(valid)}"
        )


def check_schema_keys(cfg: DictConfig) -> None:
    """Typed nodes hold only their schema's keys: ``+train.epoch=3`` composes (``+`` adds a key
    even to a dataclass node) but would be ignored, so it fails here with the nearest key."""
    from recbench.config import RecbenchConfig

    for f in fields(RecbenchConfig):
        default = f.default_factory() if callable(f.default_factory) else None  # type: ignore[misc]
        node = cfg.get(f.name)
        if not is_dataclass(default) or not isinstance(node, DictConfig):
            continue
        valid = [g.name for g in fields(default)]
        unknown = [str(k) for k in node.keys() if k not in valid]
        if unknown:
            raise ConfigError(unknown_key_message(f"{f.name}.{unknown[0]}", valid))


def method_knobs(node: DictConfig) -> dict[str, Any]:
    """A method node's knobs (the YAML keys minus Hydra's and the budget)."""
    raw = OmegaConf.to_container(node, resolve=True)
    return {k: v for k, v in raw.items() if k not in NON_KNOB_KEYS}


def check_method(node: DictConfig, where: str, embedding_dim: int) -> None:
    """The node's keys fit its class and its knobs pass the class's ``check_knobs``; messages name
    the key as typed (``user_method.num_buckets`` for the user table's method)."""
    check_target_keys(node, where)
    cls = get_object(node._target_)
    try:
        cls.check_knobs(embedding_dim, **method_knobs(node))
    except ConfigError as exc:
        raise ConfigError(rename_method_keys(str(exc), where)) from None


def check_run_config(cfg: DictConfig) -> None:
    """Everything that can be checked without data; raises ConfigError."""
    from recbench.data.interactions import check_tie_break
    from recbench.engine.losses import check_loss

    check_schema_keys(cfg)
    check_target_keys(cfg.model, "model")
    model_cls = get_object(cfg.model._target_)
    model_cls.check_task(cfg.task)
    check_loss(cfg.task, cfg.train.loss)
    if cfg.train.loss == "sampled_softmax":
        from recbench.engine.samplers.shared import check_options

        check_options(cfg.train.num_sampled, cfg.train.sampled_distribution)
    dim = int(cfg.model.get("embedding_dim", 64))
    check_method(cfg.method, "method", dim)
    if cfg.get("user_method") is not None:
        check_method(cfg.user_method, "user_method", dim)
    check_target_keys(cfg.dataset.loader, "dataset.loader")
    check_tie_break(cfg.dataset.get("tie_break", "file"))
    for key in ("epochs", "batch_size"):
        if cfg.train[key] < 1:
            raise ConfigError(f"train.{key}={cfg.train[key]} must be >= 1")
    if cfg.train.lr <= 0:
        raise ConfigError(f"train.lr={cfg.train.lr} must be > 0, e.g. 0.001")
    fused = cfg.train.get("fused_vq", "auto")
    if fused not in (True, False, "auto"):
        raise ConfigError(f"train.fused_vq={fused} is unknown; choose true, false or auto")
    if cfg.eval.k < 1:
        raise ConfigError(f"eval.k={cfg.eval.k} must be >= 1")
    if cfg.eval.get("reference_dim", 64) < 1:
        raise ConfigError(f"eval.reference_dim={cfg.eval.reference_dim} must be >= 1 (default 64)")
    check_record_keys(cfg)


_EXPERIMENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+ -]{0,199}$")
RESUME_MODES = ("same_code", "any_code")
DUPLICATE_POLICIES = ("keep", "first", "last", "error")
SEED_MAX = 2**32 - 1


def check_record_keys(cfg: DictConfig) -> None:
    """Seed, budget, resume mode, duplicate policy and experiment name (nothing here needs data)."""
    seed = cfg.seed
    if not 0 <= seed <= SEED_MAX:
        raise ConfigError(f"seed={seed} is out of range; give an integer in 0..{SEED_MAX}")
    for where in ("method", "user_method"):
        node = cfg.get(where)
        if node is not None:
            check_budget(node.get("budget"), where)
    resume = cfg.get("resume", "same_code")
    if resume not in RESUME_MODES:
        raise ConfigError(f"resume={resume} is unknown; choose one of {', '.join(RESUME_MODES)}")
    duplicates = cfg.dataset.get("duplicates", "keep")
    if duplicates not in DUPLICATE_POLICIES:
        raise ConfigError(
            f"dataset.duplicates={duplicates} is unknown; choose one of {', '.join(DUPLICATE_POLICIES)}"
        )
    name = cfg.tracking.get("experiment")
    if name is not None and (not _EXPERIMENT_NAME.match(str(name)) or ".." in str(name)):
        raise ConfigError(
            f"tracking.experiment={name!r} is not a plain name (it names a folder under "
            "tracking.artifact_root); use letters, digits and - _ . + or spaces, no '/' or '..'"
        )
    if cfg.eval.get("protocol") == "sampled" and cfg.eval.k > cfg.eval.num_sampled:
        raise ConfigError(
            f"eval.k={cfg.eval.k} is at least the {cfg.eval.num_sampled + 1} candidates of the sampled "
            f"protocol, so every hit rate would be 1; use eval.k <= {cfg.eval.num_sampled}"
        )


def check_data_fit(cfg: DictConfig, data: Any) -> None:
    """Checks that need the loaded data's size (right after loading, before any model is built)."""
    if (
        data.task != "rating"
        and cfg.eval.get("protocol", "full") == "full"
        and cfg.eval.k >= data.num_items
    ):
        raise ConfigError(
            f"eval.k={cfg.eval.k} is not below the {data.num_items} items of {data.name}, so every "
            f"user's hit rate would be 1; use a smaller eval.k (e.g. 10)"
        )


def _static_prefix(path: str) -> str:
    """The part of a (possibly interpolated) path before its first ``${...}``."""
    head = path.split("${", 1)[0]
    return head.rsplit("/", 1)[0] if "${" in path and "/" in head else (head or ".")


def check_destinations(cfg: DictConfig, argv: list[str]) -> None:
    """Where a run writes, checked before Hydra creates anything: the run/sweep folder (not a
    file, writable), the tracking store (reachable server, sqlite file that is a database and
    writable) and the artifact folder. Raises a RecbenchError (one line)."""
    from recbench.tracking import (
        StoreError,
        check_sqlite_file,
        probe_server,
        sqlite_path,
        writable_dir_problem,
    )

    given = dict(o.split("=", 1) for o in split_overrides(argv) if "=" in o)
    multirun = any(a in ("-m", "--multirun") for a in argv)
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    folder = _static_prefix(given.get(key, "outputs/multirun/x" if multirun else "outputs/runs/x"))
    problem = writable_dir_problem(Path(folder), "the output folder")
    if problem:
        raise ConfigError(f"{problem}; run from a writable folder or set {key}=...")
    if not cfg.tracking.enabled:
        return
    uri = str(cfg.tracking.uri)
    path = sqlite_path(uri)
    if uri.startswith(("http://", "https://")):
        probe_server(uri, "tracking.uri")
    elif path is not None:
        check_sqlite_file(path, "tracking.uri")
        problem = writable_dir_problem(Path(cfg.tracking.artifact_root), "tracking.artifact_root")
        if problem:
            raise StoreError(
                f"{problem}; point tracking.artifact_root at a writable folder or pass tracking=none"
            )
