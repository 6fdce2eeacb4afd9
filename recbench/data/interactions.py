"""The interactions container every loader returns, and the frequency-ordered id encoding.

Loaders return raw ids exactly as they appear in the source file. ``encode_by_frequency`` then maps
users and items to ``1..n`` by descending *training* frequency (ties: first appearance in the file),
keeping 0 free for padding, so that popularity tiers are contiguous id ranges.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from recbench.errors import ConfigError

#: How events with equal timestamps are ordered (``dataset.tie_break``); ``file`` is the default.
TIE_BREAKS = ("file", "item", "random")
_TIE_BREAK_STREAM = 0x71E  # keeps the tie-break draw independent of other uses of the run seed


def parse_int64(text: str) -> int | None:
    """An integer field of a data file (``7`` or, as pandas' vectorised parser also accepts,
    ``7.0``) within int64, else None. Shared by the line-by-line fallbacks of every loader, which
    must accept exactly what their fast paths accept."""
    try:
        value = int(text)
    except ValueError:
        try:
            number = float(text)
        except ValueError:
            return None
        if not number.is_integer():
            return None
        value = int(number)
    return value if -(2**63) <= value < 2**63 else None


def check_tie_break(tie_break: str) -> None:
    """Raise ``ConfigError`` for an unknown ``dataset.tie_break``."""
    if tie_break not in TIE_BREAKS:
        raise ConfigError(
            f"dataset.tie_break={tie_break} is unknown; choose one of {', '.join(TIE_BREAKS)} "
            "(file: file order, item: raw item id, random: seeded by the run seed)"
        )


@dataclass(frozen=True)
class Interactions:
    """Parallel arrays of (user, item[, rating][, timestamp]) events in file order.

    ``timestamp`` is None for sources that only give an order (sequence files); file order then is
    the time order. ``name`` is the dataset's name, for messages.
    """

    user: np.ndarray
    item: np.ndarray
    rating: np.ndarray | None = None
    timestamp: np.ndarray | None = None
    name: str = "interactions"
    meta: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        n = len(self.user)
        for label, arr in (
            ("item", self.item),
            ("rating", self.rating),
            ("timestamp", self.timestamp),
        ):
            if arr is not None and len(arr) != n:
                raise ValueError(f"{label} has {len(arr)} entries but user has {n}")

    def __len__(self) -> int:
        return len(self.user)

    @property
    def num_users(self) -> int:
        """Distinct users present (not the id range)."""
        return int(np.unique(self.user).size)

    @property
    def num_items(self) -> int:
        """Distinct items present (not the id range)."""
        return int(np.unique(self.item).size)

    def subset(self, mask_or_index: np.ndarray) -> Interactions:
        """The events selected by a boolean mask or an index array, in the given order."""
        pick = lambda a: None if a is None else a[mask_or_index]  # noqa: E731
        return replace(
            self,
            user=self.user[mask_or_index],
            item=self.item[mask_or_index],
            rating=pick(self.rating),
            timestamp=pick(self.timestamp),
        )

    def time_order(self, tie_break: str = "file", seed: int = 0) -> np.ndarray:
        """Indices that sort events by (user, timestamp), equal timestamps ordered by ``tie_break``.

        ``file``: file order (a stable sort); ``item``: ascending raw item id, then file order;
        ``random``: a random order drawn from ``seed``. The rule matters because the last two events
        become the validation and test items (ml-100k: 415 of 943 users have a tie at their last
        timestamp). Without timestamps the file order is the time order and ``tie_break`` is unused.
        """
        check_tie_break(tie_break)
        file_order = np.arange(len(self))
        if self.timestamp is None:
            return np.lexsort((file_order, self.user))
        if tie_break == "item":
            return np.lexsort((file_order, self.item, self.timestamp, self.user))
        if tie_break == "random":
            rng = np.random.default_rng(np.random.SeedSequence([int(seed), _TIE_BREAK_STREAM]))
            return np.lexsort((rng.permutation(len(self)), self.timestamp, self.user))
        return np.lexsort((file_order, self.timestamp, self.user))


@dataclass(frozen=True)
class IdMap:
    """Raw id <-> dense id (1..n by descending training frequency; 0 is padding)."""

    raw: np.ndarray  # raw[i] is the raw id of dense id i + 1
    counts: np.ndarray  # counts[i] is the training count of dense id i (counts[0] = 0, padding)

    @property
    def size(self) -> int:
        """Number of real ids n; tables hold n + 1 rows."""
        return len(self.raw)

    def encode(self, raw_ids: np.ndarray) -> np.ndarray:
        """Dense ids for raw ids; every raw id must be known."""
        order = np.argsort(self.raw, kind="stable")
        pos = np.searchsorted(self.raw[order], raw_ids)
        pos = np.clip(pos, 0, len(order) - 1)
        found = self.raw[order][pos] == raw_ids
        if not np.all(found):
            missing = np.asarray(raw_ids)[~found][:5]
            raise KeyError(f"unknown raw ids {missing.tolist()}")
        return order[pos].astype(np.int64) + 1


def frequency_id_map(train_ids: np.ndarray, all_ids: np.ndarray) -> IdMap:
    """Order ids by descending count in ``train_ids``; ties (and ids absent from training) by first
    appearance in ``all_ids``, which is in file order."""
    uniq, first = np.unique(all_ids, return_index=True)
    train_uniq, train_counts = np.unique(train_ids, return_counts=True)
    counts = np.zeros(len(uniq), dtype=np.int64)
    counts[np.searchsorted(uniq, train_uniq)] = train_counts
    order = np.lexsort((first, -counts))
    return IdMap(raw=uniq[order], counts=np.concatenate([[0], counts[order]]).astype(np.int64))
