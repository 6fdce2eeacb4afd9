"""Train/validation/test splits.

* Ranking and sequential tasks: leave-last-two-out by timestamp (the MGQE paper's protocol). Each
  user's events are ordered by timestamp, equal timestamps by ``tie_break`` (file order by default,
  see ``Interactions.time_order``); the last event is the test item,
  the one before it the validation item, the rest are training events.
* Rating tasks: a seeded random split of the rating events.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recbench.data.interactions import Interactions
from recbench.errors import ConfigError, DataError


@dataclass(frozen=True)
class SplitIndex:
    """Row indices into the source ``Interactions`` for each part, plus what was dropped."""

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    dropped_users: int = 0
    dropped_events: int = 0


def leave_last_two_out(
    inter: Interactions, min_events: int = 3, *, tie_break: str = "file", seed: int = 0
) -> SplitIndex:
    """Per user: last event -> test, second to last -> validation, the rest -> train.

    Events with equal timestamps are ordered by ``tie_break`` (``file``, ``item`` or ``random``
    seeded by ``seed``; ``Interactions.time_order``).

    Users with fewer than ``min_events`` events cannot give one training event, one validation and
    one test event; they are dropped and counted. Training rows keep per-user time order.
    """
    if len(inter) == 0:
        raise DataError(f"dataset {inter.name!r} has no interactions; check the data file")
    order = inter.time_order(tie_break, seed)
    users = inter.user[order]
    boundaries = np.flatnonzero(users[1:] != users[:-1]) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(users)]])
    lengths = ends - starts
    keep_user = lengths >= min_events
    if not keep_user.any():
        raise DataError(
            f"dataset {inter.name!r}: no user has the {min_events} interactions needed for "
            "leave-last-two-out (train, validation, test); use a larger dataset or lower the "
            "k-core filter"
        )
    row_user_keep = np.repeat(keep_user, lengths)
    pos_from_end = np.repeat(ends, lengths) - np.arange(len(users)) - 1  # 0 = last event
    test = order[row_user_keep & (pos_from_end == 0)]
    valid = order[row_user_keep & (pos_from_end == 1)]
    train = order[row_user_keep & (pos_from_end >= 2)]
    return SplitIndex(
        train=train,
        valid=valid,
        test=test,
        dropped_users=int((~keep_user).sum()),
        dropped_events=int(lengths[~keep_user].sum()),
    )


def random_split(
    inter: Interactions, fractions: tuple[float, float, float], seed: int
) -> SplitIndex:
    """Seeded random split of events into train/validation/test by ``fractions`` (summing to 1)."""
    fr = np.asarray(fractions, dtype=float)
    if fr.shape != (3,) or np.any(fr < 0) or fr[0] <= 0 or fr[2] <= 0 or abs(fr.sum() - 1) > 1e-6:
        raise ConfigError(
            f"dataset.rating_split={list(fractions)} must be three non-negative fractions "
            "[train, valid, test] with train > 0, test > 0 and sum 1, e.g. [0.8, 0.1, 0.1]"
        )
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(inter))
    n_train = int(round(fr[0] * len(inter)))
    n_valid = int(round(fr[1] * len(inter)))
    train = np.sort(perm[:n_train])
    valid = np.sort(perm[n_train : n_train + n_valid])
    test = np.sort(perm[n_train + n_valid :])
    if len(test) == 0 or len(train) == 0:
        raise DataError(
            f"dataset {inter.name!r} has {len(inter)} ratings, too few for the split {list(fractions)}"
        )
    return SplitIndex(train=train, valid=valid, test=test)
