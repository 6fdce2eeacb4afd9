"""Which runs are seeds of one result: the report's cells.

Why not the table's labels: runs that share dataset, backbone, method and loss can still differ in
``train.epochs``, ``train.lr``, ``model.embedding_dim``, a k-core filter, ... and averaging them as if
they were seeds makes a number nobody ran. A *cell* is the set of runs whose recorded resolved
configurations are identical except for the seed and the keys that cannot change a result
(``recbench.record.CELL_EXCLUDED``: tracking, progress bars, ``torch.compile``, the eval batch size,
the preset's name, ...). The key is computed here from what each run recorded (MLflow params or the
run folder's ``config.yaml``), so runs recorded before the ``cell_hash`` tag existed get one too.

A ``hash_seed`` may follow the seed (``method.hash_seed=${seed}``) or be fixed. Both are decided per
group of runs that agree on everything else: if every run's hash_seed equals its seed it follows the
seed; if all runs have the same hash_seed it is fixed; only a genuine mix splits the group (and a run
whose seed equals a fixed value, e.g. seed 0 with hash_seed 0, belongs to both cells).

Runs with the same labels in several cells become separate table rows; each such row names the
settings that differ (``variant``) and the report lists them in its notes instead of pooling them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import pandas as pd

from recbench.tracking import FOLLOWS_SEED, digest, is_hash_seed

#: A config value that Hydra did not resolve (a failed run folder's ``.hydra/config.yaml``).
UNRESOLVED = "${"
#: Keys that belong to the compression method; the full-model reference may differ only in these.
METHOD_KEYS = ("method", "user_method")
#: Settings shown in a row label before "+N more"; all of them go to the notes and aggregate.csv.
LABEL_SETTINGS = 3


def parse_config(text: object) -> dict[str, str] | None:
    """The ``config`` column (sorted JSON of the cell-relevant params) -> dict; None if unknown."""
    if not isinstance(text, str) or not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else None


def _resolved(cfg: dict[str, str] | None) -> bool:
    return cfg is not None and not any(UNRESOLVED in v and v != FOLLOWS_SEED for v in cfg.values())


def hash_seed_choices(
    cfgs: Sequence[dict[str, str]], seeds: Sequence[str]
) -> list[list[dict[str, str]]]:
    """For runs that agree on everything but seed and hash_seed: each run's cell config(s), with
    every ``*.hash_seed`` either ``FOLLOWS_SEED`` or its fixed value (see the module docstring)."""
    out = [[dict(c)] for c in cfgs]
    for key in sorted({k for c in cfgs for k in c if is_hash_seed(k)}):
        present = [(c.get(key), s) for c, s in zip(cfgs, seeds)]
        known = [(v, s) for v, s in present if v is not None]
        fixed = {v for v, s in known if v != s}
        followers = any(v == s and s not in fixed for v, s in known)
        choices: list[list[str | None]] = []
        for v, s in present:
            if v is None:
                choices.append([None])
            elif not fixed:  # every run's hash_seed is its seed
                choices.append([FOLLOWS_SEED])
            elif (
                len({x for x, _ in known}) == 1 or v != s
            ):  # one fixed value, or fixed for this run
                choices.append([v])
            elif s in fixed:  # e.g. seed 0, hash_seed 0: a member of the fixed cell, maybe both
                choices.append([v, FOLLOWS_SEED] if followers else [v])
            else:
                choices.append([FOLLOWS_SEED])
        out = [
            [{**d, key: ch} if ch is not None else d for d in options for ch in choice]
            for options, choice in zip(out, choices)
        ]
    return out


def reference_key(cfg: dict[str, str] | None, free: Sequence[str] = ()) -> str:
    """Hash of a cell's config without the method's keys: a compressed cell is compared with the
    full-model cell that has the same reference key (same data, backbone, training, evaluation).

    ``free``: further keys (or prefixes such as ``train``) left out, for comparisons where each
    method was tuned on its own (``--reference-free train``: each at its own tuned training)."""
    if cfg is None:
        return ""
    dropped = (*METHOD_KEYS, *free)
    return digest({
        k: v for k, v in cfg.items() if not any(k == m or k.startswith(m + ".") for m in dropped)
    })  # fmt: skip


def _show(value: str | None) -> str:
    if value is None:
        return "(unset)"
    text = value if value != "" else "null"
    return text if len(text) <= 40 else text[:37] + "..."


def _where(labels: dict[str, str]) -> str:
    """``ml-100k (sampled-100) / gmf / dpq (budget=0.25, loss=bpr)``: which labels a note is about."""
    extras = [f"users={labels['user_method']}"] if labels.get("user_method") else []
    extras += [labels[k] for k in ("setting",) if labels.get(k)]
    extras += [f"loss={labels['loss']}"] if labels.get("loss") else []
    protocol = labels.get("eval_protocol", "")
    return (
        labels.get("dataset", "")
        + (f" ({protocol})" if protocol and protocol != "full" else "")
        + f" / {labels.get('model', '')} / {labels.get('method', '')}"
        + (f" ({', '.join(extras)})" if extras else "")
    )


def _unique_labels(text: dict[str, tuple[str, str]]) -> dict[str, tuple[str, str]]:
    """cell -> (settings, row label): a row label must name one cell, or two cells would share a
    table row; a shortened label that repeats is replaced by the full one, then by the cell id."""
    out = dict(text)
    for pick in (lambda cell, full, short: full, lambda cell, full, short: f"{full}, cell {cell}"):
        shorts = [short for _, short in out.values()]
        out = {
            cell: (full, pick(cell, full, short) if shorts.count(short) > 1 else short)
            for cell, (full, short) in out.items()
        }
    return out


def assign_cells(runs: pd.DataFrame, label_keys: Sequence[str]) -> tuple[pd.DataFrame, list[str]]:
    """Add ``cell`` (16 hex; the ``cell_hash`` tag or "" where no config was recorded),
    ``ref_key``, ``settings`` (every key that tells this cell apart from the others with the same
    labels, ``k=v, ...``) and ``variant`` (the same, shortened for the row label).

    Runs may be repeated (one row per cell they belong to, see ``hash_seed_choices``). Unfinished
    runs whose config is unknown or unresolved join the only finished cell of their labels if
    there is exactly one. Returns the frame and one note per set of labels that was split."""
    if runs.empty:
        out = runs.copy()
        for column in ("cell", "ref_key", "settings", "variant"):
            out[column] = pd.Series(dtype=object)
        return out, []
    frame = runs.reset_index(drop=True)
    label_keys = list(label_keys)
    config_col = frame["config"] if "config" in frame else pd.Series("", index=frame.index)
    cfgs = [parse_config(t) for t in config_col]
    hint_col = frame["config_hint"] if "config_hint" in frame else pd.Series("", index=frame.index)
    hints = [parse_config(t) for t in hint_col]  # shown, never used as a key
    tags = (
        frame["cell_hash"].fillna("").astype(str)
        if "cell_hash" in frame
        else pd.Series("", index=frame.index)
    )
    seeds = frame["seed"].fillna("").astype(str)

    members: list[tuple[int, dict[str, str] | None, str]] = []  # (row, final config, cell)
    pending: list[int] = []
    resolved_rows = [i for i in frame.index if _resolved(cfgs[i])]
    base = {
        i: digest({k: v for k, v in cfgs[i].items() if not is_hash_seed(k)}) for i in resolved_rows
    }
    if resolved_rows:
        sub = (
            frame.loc[resolved_rows, label_keys]
            .astype(str)
            .assign(_base=[base[i] for i in resolved_rows])
        )
        for _, idx in sub.groupby([*label_keys, "_base"], sort=False).groups.items():
            idx = list(idx)
            finals = hash_seed_choices([cfgs[i] for i in idx], [seeds[i] for i in idx])
            for i, options in zip(idx, finals):
                members += [(i, d, digest(d)) for d in options]
    for i in frame.index:
        if i in base:
            continue
        if tags[i] or frame.at[i, "status"] == "FINISHED":  # the recorded tag, or labels only
            members.append((i, None, tags[i]))
        else:
            pending.append(i)

    # unfinished runs without a usable config: the only finished cell of their labels, if one
    finished_cells: dict[tuple, set[str]] = {}
    config_of: dict[str, dict[str, str] | None] = {}
    for i, d, cell in members:
        if d is not None:
            config_of.setdefault(cell, d)
        if frame.at[i, "status"] == "FINISHED":
            finished_cells.setdefault(tuple(frame.loc[i, label_keys].astype(str)), set()).add(cell)
    for i in pending:
        cells = finished_cells.get(tuple(frame.loc[i, label_keys].astype(str)), set())
        cell = next(iter(cells)) if len(cells) == 1 else tags[i]
        members.append((i, config_of.get(cell), cell))

    rows, cell_col, cfg_col = [], [], []
    for i, d, cell in members:
        rows.append(i)
        cell_col.append(cell)
        cfg_col.append(d if d is not None else config_of.get(cell))
    out = frame.loc[rows].reset_index(drop=True)
    out["cell"] = cell_col
    out["ref_key"] = [reference_key(d) for d in cfg_col]
    shown = [d if d is not None else hints[i] for i, d in zip(rows, cfg_col)]

    settings = [""] * len(out)
    variants = [""] * len(out)
    notes = []
    for labels, idx in out.groupby(label_keys, sort=True).groups.items():
        idx = list(idx)
        cells: dict[str, dict[str, str] | None] = {}
        for j in idx:
            if cells.get(out.at[j, "cell"]) is None:
                cells[out.at[j, "cell"]] = shown[j]
        if len(cells) < 2:
            continue
        known = [c for c in cells.values() if c is not None]
        keys = sorted(
            k for k in {k for c in known for k in c} if len({c.get(k) for c in known}) > 1
        )
        text = {}
        for cell, cfg in cells.items():
            if cfg is None:
                text[cell] = ("config not recorded", "config not recorded")
                continue
            parts = [f"{k}={_show(cfg.get(k))}" for k in keys]
            short = parts[:LABEL_SETTINGS] + (
                [f"+{len(parts) - LABEL_SETTINGS} more"] if len(parts) > LABEL_SETTINGS else []
            )
            text[cell] = (", ".join(parts) or f"cell {cell}", ", ".join(short) or f"cell {cell}")
        text = _unique_labels(text)
        for j in idx:
            settings[j], variants[j] = text[out.at[j, "cell"]]
        where = _where(dict(zip(label_keys, map(str, labels))))
        listed = "; ".join(sorted(f"[{full}]" for full, _ in text.values()))
        notes.append(
            f"{where}: {len(cells)} configurations not pooled"
            + (f" (settings differ in {', '.join(keys)})" if keys else "")
            + f": {listed}"
        )
    out["settings"] = settings
    out["variant"] = variants
    return out, notes
