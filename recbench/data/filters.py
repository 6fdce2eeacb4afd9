"""k-core filtering: keep only users and items with enough events, repeated until stable.

Dropping a sparse item can push a user below the threshold and vice versa, so one pass is not
enough; the loop ends at the (unique) largest subset in which every user has at least
``min_user_count`` events and every item at least ``min_item_count``. Events are counted with
multiplicity (a repeated user-item pair counts twice), matching how the papers' 5-core data was made.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recbench.data.interactions import Interactions
from recbench.errors import ConfigError


@dataclass(frozen=True)
class KCoreReport:
    """What the filter removed, for the run log and the prepared data's notes."""

    min_user_count: int
    min_item_count: int
    users_before: int
    items_before: int
    events_before: int
    users_removed: int
    items_removed: int
    events_removed: int
    rounds: int

    @property
    def changed(self) -> bool:
        return self.events_removed > 0

    def __str__(self) -> str:
        users_left = self.users_before - self.users_removed
        items_left = self.items_before - self.items_removed
        events_left = self.events_before - self.events_removed
        return (
            f"k-core filter (users >= {self.min_user_count}, items >= {self.min_item_count} events): "
            f"removed {self.users_removed} users, {self.items_removed} items and "
            f"{self.events_removed} events in {self.rounds} pass{'' if self.rounds == 1 else 'es'}; "
            f"{users_left} users, {items_left} items, {events_left} events left"
        )


def kcore(
    inter: Interactions, min_user_count: int, min_item_count: int
) -> tuple[Interactions, KCoreReport]:
    """The k-core of ``inter`` (file order kept) and a report; a count of 0 disables that side."""
    for key, value in (("min_user_count", min_user_count), ("min_item_count", min_item_count)):
        if int(value) != value or value < 0:
            raise ConfigError(f"dataset.{key}={value} must be a whole number >= 0 (0 = no filter)")
    min_user_count, min_item_count = int(min_user_count), int(min_item_count)
    user_codes, user_index = np.unique(inter.user, return_inverse=True)
    item_codes, item_index = np.unique(inter.item, return_inverse=True)
    keep = np.ones(len(inter), dtype=bool)
    rounds = 0
    if min_user_count > 0 or min_item_count > 0:
        while True:
            rounds += 1
            drop = _too_rare(user_index, keep, len(user_codes), min_user_count)
            drop |= _too_rare(item_index, keep, len(item_codes), min_item_count)
            drop &= keep
            if not drop.any():
                break
            keep &= ~drop
    kept = inter if keep.all() else inter.subset(keep)
    report = KCoreReport(
        min_user_count=min_user_count,
        min_item_count=min_item_count,
        users_before=len(user_codes),
        items_before=len(item_codes),
        events_before=len(inter),
        users_removed=len(user_codes) - int(np.unique(user_index[keep]).size),
        items_removed=len(item_codes) - int(np.unique(item_index[keep]).size),
        events_removed=int((~keep).sum()),
        rounds=rounds,
    )
    return kept, report


def _too_rare(index: np.ndarray, keep: np.ndarray, size: int, minimum: int) -> np.ndarray:
    """Per event: does its user (or item) have fewer than ``minimum`` kept events?"""
    if minimum <= 0:
        return np.zeros(len(index), dtype=bool)
    counts = np.bincount(index[keep], minlength=size)
    return counts[index] < minimum


#: What ``dataset.duplicates`` does with repeated (user, item) events.
DUPLICATE_POLICIES = {
    "keep": "keep every event (repeat consumption is data, e.g. a sequence revisiting an item)",
    "first": "keep each pair's earliest event",
    "last": "keep each pair's latest event (a re-rating replaces the earlier rating)",
    "error": "stop with an error naming the first repeated pair",
}


def deduplicate(inter: Interactions, policy: str) -> tuple[Interactions, str | None]:
    """Apply ``policy`` (one of DUPLICATE_POLICIES) to repeated (user, item) events; returns the
    events (file order kept) and a note saying what was done, or None when there was no repeat.
    "Earliest"/"latest" follow the timestamps (ties and timestamp-less data: file order)."""
    import pandas as pd

    from recbench.errors import DataError

    if policy not in DUPLICATE_POLICIES:
        raise ConfigError(
            f"dataset.duplicates={policy} is unknown; choose one of {', '.join(DUPLICATE_POLICIES)}"
        )
    if len(inter) == 0:
        return inter, None
    order = inter.time_order()  # by (user, time), ties in file order
    frame = pd.DataFrame({"user": inter.user[order], "item": inter.item[order]})
    repeated = frame.duplicated(["user", "item"], keep=False).to_numpy()
    if not repeated.any():
        return inter, None
    pairs = int((~frame[repeated].duplicated(["user", "item"])).sum())  # distinct repeated pairs
    count = int(repeated.sum()) - pairs  # events beyond each pair's first
    if policy == "keep":
        return inter, (
            f"kept {count} repeated events of {pairs} (user, item) pairs (dataset.duplicates=keep)"
        )
    if policy == "error":
        first = order[np.flatnonzero(repeated)[0]]
        raise DataError(
            f"dataset {inter.name!r} has {count} repeated (user, item) events (e.g. user "
            f"{inter.user[first]} and item {inter.item[first]}); set dataset.duplicates=last (keep "
            "the latest), first, or keep"
        )
    drop = frame.duplicated(
        ["user", "item"], keep="first" if policy == "first" else "last"
    ).to_numpy()
    keep = np.ones(len(inter), dtype=bool)
    keep[order[drop]] = False
    word = "earliest" if policy == "first" else "latest"
    return inter.subset(keep), (
        f"dropped {count} repeated events of {pairs} (user, item) pairs, kept each pair's {word} "
        f"(dataset.duplicates={policy})"
    )
