"""Splits and frequency-ordered ids."""

from __future__ import annotations

import numpy as np
import pytest

from recbench.data.interactions import Interactions, frequency_id_map
from recbench.data.prepared import prepare
from recbench.data.splits import leave_last_two_out, random_split
from recbench.errors import ConfigError, DataError


def test_leave_last_two_out_orders_by_timestamp_ties_keep_file_order() -> None:
    inter = Interactions(
        user=np.array([7, 7, 7, 7, 7, 8, 8, 8]),
        item=np.array([1, 2, 3, 4, 5, 1, 2, 3]),
        timestamp=np.array([50, 10, 30, 30, 20, 3, 1, 2]),
    )
    split = leave_last_two_out(inter)
    # user 7 by time: 2(10), 5(20), 3(30), 4(30, after 3 in file) , 1(50)
    assert inter.item[split.test[inter.user[split.test] == 7]].tolist() == [1]
    assert inter.item[split.valid[inter.user[split.valid] == 7]].tolist() == [4]
    assert inter.item[split.train[inter.user[split.train] == 7]].tolist() == [2, 5, 3]
    assert inter.item[split.test[inter.user[split.test] == 8]].tolist() == [1]
    assert inter.item[split.valid[inter.user[split.valid] == 8]].tolist() == [3]


def test_users_with_too_few_events_are_dropped_and_counted() -> None:
    inter = Interactions(
        user=np.array([1, 1, 1, 2, 2, 3]),
        item=np.array([1, 2, 3, 1, 2, 1]),
        timestamp=np.arange(6),
    )
    split = leave_last_two_out(inter)
    assert split.dropped_users == 2 and split.dropped_events == 3
    data = prepare(inter, "ranking", seed=0)
    assert data.num_users == 1
    assert any("dropped 2 users" in note for note in data.notes)


def test_nothing_left_fails_clearly() -> None:
    inter = Interactions(user=np.array([1, 1]), item=np.array([1, 2]), timestamp=np.arange(2))
    with pytest.raises(DataError, match="no user has the 3 interactions"):
        leave_last_two_out(inter)


def test_random_split_is_seeded_and_partitions() -> None:
    inter = Interactions(user=np.arange(100), item=np.arange(100), rating=np.ones(100))
    a, b = random_split(inter, (0.8, 0.1, 0.1), 3), random_split(inter, (0.8, 0.1, 0.1), 3)
    assert np.array_equal(a.train, b.train)
    assert len(a.train) == 80 and len(a.valid) == 10 and len(a.test) == 10
    assert sorted(np.concatenate([a.train, a.valid, a.test]).tolist()) == list(range(100))
    c = random_split(inter, (0.8, 0.1, 0.1), 4)
    assert not np.array_equal(a.train, c.train)
    with pytest.raises(ConfigError, match="rating_split"):
        random_split(inter, (0.8, 0.3, 0.1), 0)


def test_ids_by_descending_training_frequency_padding_free() -> None:
    ids = frequency_id_map(np.array([5, 9, 9, 9, 5, 7]), np.array([5, 9, 9, 9, 5, 7, 3]))
    assert ids.raw.tolist() == [9, 5, 7, 3]  # 3 never trained: last
    assert ids.counts.tolist() == [0, 3, 2, 1, 0]
    assert ids.encode(np.array([9, 3, 5])).tolist() == [1, 4, 2]


def test_frequency_ties_break_by_first_appearance() -> None:
    ids = frequency_id_map(np.array([4, 2, 2, 4]), np.array([4, 2, 2, 4]))
    assert ids.raw.tolist() == [4, 2]


def test_prepare_counts_training_only() -> None:
    inter = Interactions(
        user=np.array([1, 1, 1, 2, 2, 2]),
        item=np.array([10, 11, 12, 10, 12, 11]),
        timestamp=np.arange(6),
    )
    data = prepare(inter, "ranking", seed=0)
    # train: u1 -> 10; u2 -> 10: item 10 has 2 training events, 11 and 12 none
    assert data.items.raw[0] == 10 and data.item_counts.tolist() == [0, 2, 0, 0]
    assert data.test.item.tolist() and set(data.train.item.tolist()) == {1}


def test_ratings_outside_range_rejected() -> None:
    inter = Interactions(user=np.array([1, 2]), item=np.array([1, 2]), rating=np.array([3.0, 6.0]))
    with pytest.raises(DataError, match="outside dataset.rating_range"):
        prepare(inter, "rating", seed=0, rating_range=(1, 5))


def _tied() -> Interactions:
    # user 7's last two events tie at t=30 (file order: item 9, then item 4); user 8 has no tie
    return Interactions(
        user=np.array([7, 7, 7, 7, 8, 8, 8]),
        item=np.array([5, 9, 4, 2, 1, 2, 3]),
        timestamp=np.array([10, 30, 30, 20, 1, 2, 3]),
    )


def _held_out(split, inter: Interactions, part: str, user: int) -> int:
    index = getattr(split, part)
    return int(inter.item[index[inter.user[index] == user]][0])


def test_tie_break_file_keeps_file_order_and_is_the_default() -> None:
    inter = _tied()
    default, file = leave_last_two_out(inter), leave_last_two_out(inter, tie_break="file")
    assert np.array_equal(default.test, file.test) and np.array_equal(default.valid, file.valid)
    assert _held_out(file, inter, "test", 7) == 4 and _held_out(file, inter, "valid", 7) == 9


def test_tie_break_item_orders_ties_by_raw_item_id() -> None:
    inter = _tied()
    split = leave_last_two_out(inter, tie_break="item")
    assert _held_out(split, inter, "test", 7) == 9 and _held_out(split, inter, "valid", 7) == 4
    assert _held_out(split, inter, "test", 8) == 3  # no tie: unaffected


def test_tie_break_random_is_seeded_and_only_reorders_ties() -> None:
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(200), 4)
    inter = Interactions(
        user=users, item=rng.integers(1, 1000, len(users)), timestamp=np.tile([1, 2, 3, 3], 200)
    )
    a = leave_last_two_out(inter, tie_break="random", seed=1)
    b = leave_last_two_out(inter, tie_break="random", seed=1)
    c = leave_last_two_out(inter, tie_break="random", seed=2)
    assert np.array_equal(a.test, b.test) and np.array_equal(a.valid, b.valid)
    assert not np.array_equal(np.sort(a.test), np.sort(c.test))
    # the tied pair (positions 2, 3 of each user) is split between valid and test in both orders
    assert set(np.concatenate([a.test, a.valid]) % 4) == {2, 3}
    assert np.array_equal(np.sort(a.train), np.sort(c.train))
    # roughly half of the 200 ties go each way
    assert 60 < int((a.test % 4 == 3).sum()) < 140


def test_tie_break_flows_through_prepare_and_unknown_value_fails() -> None:
    inter = _tied()
    data = prepare(inter, "ranking", seed=0, tie_break="item")
    assert data.items.raw[data.test.item[data.users.raw[data.test.user - 1] == 7] - 1].tolist() == [
        9
    ]
    with pytest.raises(
        ConfigError, match=r"dataset.tie_break=time is unknown; choose one of file, item, random"
    ):
        prepare(inter, "ranking", seed=0, tie_break="time")
