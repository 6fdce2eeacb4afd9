"""Turn a loaded ``Interactions`` into what training and evaluation consume.

Steps, in this order: rating-range check -> repeated (user, item) events (``duplicates``) -> k-core filter -> split (leave-last-two-out for ranking and
sequential tasks, seeded random for rating tasks) -> dense ids 1..n by descending training frequency.
Ids are encoded *after* the split so that popularity (and therefore the frequency tiers of mixed
dimension and MGQE) is measured on training data only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from recbench.data.interactions import IdMap, Interactions, check_tie_break, frequency_id_map
from recbench.data.splits import SplitIndex, leave_last_two_out, random_split
from recbench.errors import ConfigError, DataError

log = logging.getLogger(__name__)

TASKS = ("rating", "ranking", "sequential")


@dataclass
class PreparedData:
    """Encoded train/valid/test parts of one dataset for one task and seed.

    For ranking and sequential tasks, ``valid`` and ``test`` hold exactly one event per kept user and
    ``train`` is sorted by (user, time). For the rating task the parts are random subsets of events.
    """

    name: str
    task: str
    users: IdMap
    items: IdMap
    train: Interactions
    valid: Interactions
    test: Interactions
    rating_range: tuple[float, float] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def num_users(self) -> int:
        return self.users.size

    @property
    def num_items(self) -> int:
        return self.items.size

    @property
    def user_counts(self) -> torch.Tensor:
        """Training events per dense user id (index 0 = padding = 0)."""
        return torch.from_numpy(self.users.counts)

    @property
    def item_counts(self) -> torch.Tensor:
        """Training events per dense item id (index 0 = padding = 0)."""
        return torch.from_numpy(self.items.counts)

    @property
    def global_mean(self) -> float:
        """Mean training rating (0 for implicit data)."""
        if self.train.rating is None or len(self.train) == 0:
            return 0.0
        return float(np.mean(self.train.rating))

    def train_csr(self) -> tuple[np.ndarray, np.ndarray]:
        """(indptr, items): the training items of dense user u are items[indptr[u]:indptr[u+1]],
        in time order for ranking/sequential data."""
        order = np.argsort(self.train.user, kind="stable")
        counts = np.bincount(self.train.user, minlength=self.num_users + 1)
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return indptr, self.train.item[order].astype(np.int64)

    def summary(self) -> dict[str, int | str]:
        return {
            "dataset": self.name,
            "task": self.task,
            "users": self.num_users,
            "items": self.num_items,
            "train_events": len(self.train),
            "valid_events": len(self.valid),
            "test_events": len(self.test),
        }


def check_rating_range(inter: Interactions, rating_range: tuple[float, float] | None) -> None:
    """Fail when a rating lies outside the dataset's declared range (loaders report line numbers;
    this is the last line of defence for data built in code)."""
    if rating_range is None or inter.rating is None or len(inter) == 0:
        return
    low, high = float(rating_range[0]), float(rating_range[1])
    bad = (inter.rating < low) | (inter.rating > high)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"dataset {inter.name!r}: rating {inter.rating[first]} at event {first} is outside "
            f"dataset.rating_range=[{low:g}, {high:g}]; fix the data or the declared range"
        )


def prepare(
    inter: Interactions,
    task: str,
    *,
    seed: int,
    rating_split: tuple[float, float, float] = (0.8, 0.1, 0.1),
    rating_range: tuple[float, float] | None = None,
    min_user_count: int = 0,
    min_item_count: int = 0,
    duplicates: str = "keep",
    tie_break: str = "file",
) -> PreparedData:
    """Filter, split and encode ``inter`` for ``task`` (one of TASKS); repeated (user, item)
    events are handled first, by the ``duplicates`` policy (``filters.DUPLICATE_POLICIES``).

    ``tie_break`` orders events with equal timestamps for leave-last-two-out (``file``, ``item`` or
    ``random`` seeded by ``seed``); rating tasks split at random and do not use it.
    """
    if task not in TASKS:
        raise ConfigError(f"task={task!r} is unknown; choose one of {', '.join(TASKS)}")
    check_tie_break(tie_break)
    notes: list[str] = []
    check_rating_range(inter, rating_range)
    from recbench.data.filters import deduplicate

    inter, note = deduplicate(inter, duplicates)
    if note:
        notes.append(note)
    if task == "rating" and inter.rating is None:
        raise ConfigError(
            f"dataset {inter.name!r} has no ratings, so task=rating is impossible; "
            "use a ranking model (e.g. model=gmf) or a dataset with ratings"
        )
    if min_user_count or min_item_count:
        from recbench.data.filters import kcore

        inter, report = kcore(inter, min_user_count, min_item_count)
        notes.append(str(report))
        if len(inter) == 0:
            raise DataError(
                f"the k-core filter (min_user_count={min_user_count}, "
                f"min_item_count={min_item_count}) removed every event of {inter.name!r}; lower them"
            )

    if task == "rating":
        split: SplitIndex = random_split(inter, tuple(rating_split), seed)
    else:
        split = leave_last_two_out(inter, tie_break=tie_break, seed=seed)
        if split.dropped_users:
            msg = (
                f"dropped {split.dropped_users} users with fewer than 3 interactions "
                f"({split.dropped_events} events): leave-last-two-out needs train, valid and test"
            )
            notes.append(msg)
            log.warning(msg)

    train_raw = inter.subset(split.train)
    kept = np.concatenate([split.train, split.valid, split.test])
    kept.sort()  # file order, so ties in frequency break by first appearance
    users = frequency_id_map(train_raw.user, inter.user[kept])
    items = frequency_id_map(train_raw.item, inter.item[kept])

    def encode(part: Interactions) -> Interactions:
        return Interactions(
            user=users.encode(part.user),
            item=items.encode(part.item),
            rating=part.rating,
            timestamp=part.timestamp,
            name=part.name,
        )

    return PreparedData(
        name=inter.name,
        task=task,
        users=users,
        items=items,
        train=encode(train_raw),
        valid=encode(inter.subset(split.valid)),
        test=encode(inter.subset(split.test)),
        rating_range=None
        if rating_range is None
        else (float(rating_range[0]), float(rating_range[1])),
        notes=notes,
    )
