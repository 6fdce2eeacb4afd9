"""Configuration checks that run before any data is loaded, with one-line messages.

* ``preflight(argv)``: composes the command line's configuration (every value of a sweep) and turns
  Hydra/OmegaConf composition errors (unknown option, mistyped key, wrong type) into one line that
  names the problem and the fix.
* ``check_run_config(cfg)``: checks the free-form groups against their ``_target_``'s signature and
  asks each method to validate its knobs (``check_knobs``), the model to accept the task, and the
  loss to fit the task.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from recbench.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
GROUPS = ("dataset", "model", "method", "train", "eval", "tracking", "experiment")
_SPECIAL_KEYS = ("_target_", "_partial_", "_recursive_", "_convert_", "_args_", "budget")
_FLAGS_WITH_VALUE = {
    "--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
    "--config-dir", "-cd", "--experimental-rerun",
}


def options(group: str) -> list[str]:
    """The options of a config group (file names in conf/<group>/)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


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


def explain(exc: BaseException) -> str:
    """A one-line explanation of a Hydra/OmegaConf composition error."""
    text = " ".join(str(exc).split())
    missing = re.search(r"Could not find '([\w/+@.-]+)/([^']+)'", text)
    if missing:
        group, option = missing.group(1).split("@")[0].lstrip("/"), missing.group(2)
        group = group.split("/")[-1]
        valid = ", ".join(options(group)) or "(none)"
        return f"unknown {group} option '{option}'; choose one of: {valid} (e.g. {group}={valid.split(', ')[0]})"
    key = re.search(r"Key '([^']+)' not in '(\w+)'.*?full_key: ([\w.]+)", text)
    if key:
        full = key.group(3)
        parent = full.rsplit(".", 1)[0] if "." in full else ""
        return (
            f"unknown key '{full}'; check the spelling (see `python -m recbench.run --cfg job` for "
            f"the keys{' of ' + parent if parent else ''}), or add it with +{full}=... if it is new"
        )
    where_text = text + " " + " ".join(str(exc.__cause__ or "").split())
    could_not_override = re.search(
        r"(?:Could not override '([^']+)'|Error merging override ([\w.]+)=|full_key: ([\w.]+))",
        where_text,
    )
    value = re.search(
        r"Value '([^']*)' (?:of type '\w+' )?could not be converted to (\w+)", where_text
    )
    if value:
        where = next((g for g in could_not_override.groups() if g), "a key") if could_not_override else "a key"
        return f"{where}={value.group(1)} is not a valid {value.group(2).lower()}; give a {value.group(2).lower()} value"
    appended = re.search(r"Could not override '([^']+)'\. To append", text)
    if appended or "Could not append to config" in text or "is not in struct" in text:
        k = re.search(r"Key '([^']+)'", text)
        name = appended.group(1) if appended else (k.group(1) if k else "?")
        return (
            f"unknown key '{name}'; check the spelling (see `python -m recbench.run --cfg job`), "
            f"or use +{name}=... to add a new key"
        )
    cause = exc.__cause__ or exc.__context__
    if cause is not None and cause is not exc and str(cause):
        return explain(cause)
    return text.split(" Set the environment variable HYDRA_FULL_ERROR")[0]


def preflight(argv: list[str]) -> str | None:
    """Compose the configuration(s) of a command line; return a one-line error or None."""
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
            for variant in variants:
                try:
                    cfg = compose("config", overrides=variant)
                    check_run_config(cfg)
                except ConfigError as exc:
                    return str(exc)
                except Exception as exc:  # noqa: BLE001
                    return explain(exc)
    finally:
        GlobalHydra.instance().clear()
    return None


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
    unknown = [k for k in node.keys() if k not in _SPECIAL_KEYS and k not in params]
    if unknown:
        valid = [k for k, p in params.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL]
        raise ConfigError(
            f"unknown key '{where}.{unknown[0]}' for {target.rsplit('.', 1)[-1]}; valid keys: "
            f"{', '.join(valid)}"
        )


def method_knobs(node: DictConfig) -> dict[str, Any]:
    """A method node's knobs (the YAML keys minus Hydra's and the budget)."""
    raw = OmegaConf.to_container(node, resolve=True)
    return {k: v for k, v in raw.items() if k not in _SPECIAL_KEYS}


def check_method(node: DictConfig, where: str, embedding_dim: int) -> None:
    check_target_keys(node, where)
    cls = get_object(node._target_)
    cls.check_knobs(embedding_dim, **method_knobs(node))


def check_run_config(cfg: DictConfig) -> None:
    """Everything that can be checked without data; raises ConfigError."""
    from recbench.training import check_loss

    check_target_keys(cfg.model, "model")
    model_cls = get_object(cfg.model._target_)
    model_cls.check_task(cfg.task)
    check_loss(cfg.task, cfg.train.loss)
    if cfg.train.loss == "sampled_softmax":
        from recbench.sampled_softmax import check_options

        check_options(cfg.train.num_sampled, cfg.train.sampled_distribution)
    dim = int(cfg.model.get("embedding_dim", 64))
    check_method(cfg.method, "method", dim)
    if cfg.get("user_method") is not None:
        check_method(cfg.user_method, "user_method", dim)
    check_target_keys(cfg.dataset.loader, "dataset.loader")
    for key in ("epochs", "batch_size"):
        if cfg.train[key] < 1:
            raise ConfigError(f"train.{key}={cfg.train[key]} must be >= 1")
    if cfg.train.lr <= 0:
        raise ConfigError(f"train.lr={cfg.train.lr} must be > 0, e.g. 0.001")
    if cfg.eval.k < 1:
        raise ConfigError(f"eval.k={cfg.eval.k} must be >= 1")
