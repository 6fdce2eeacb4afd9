"""The sequential task on toy data: the split, the training sequences, the sampler's batches, the
evaluation contexts, history exclusion, and the task wiring from the composed configuration."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

import recbench.config  # noqa: F401 - registers the structured schema that conf/config.yaml names
from recbench.data.interactions import Interactions
from recbench.data.prepared import PreparedData, prepare
from recbench.engine.evaluators.full import RankingEvaluator
from recbench.engine.evaluators.sequences import SequenceContext, evaluation_sequences
from recbench.engine.samplers.sequences import SequenceSampler, training_sequences
from recbench.errors import ConfigError, DataError
from recbench.tasks import build_task
from tests.conftest import CONF

CPU = torch.device("cpu")


def toy() -> PreparedData:
    """Raw events (user, item, time) in shuffled file order.

    alice: b@1 c@2 a@3 e@4 d@5 -> train b c a, valid e, test d
    bob:   x@1 y@2 z@3         -> train x, valid y, test z (no training transition)
    carol: a@1 b@2 x@3 c@4     -> train a b, valid x, test c
    dave:  a@1 b@2             -> dropped (fewer than 3 events)
    """
    events = [
        ("alice", "a", 3),
        ("bob", "y", 2),
        ("alice", "b", 1),
        ("carol", "a", 1),
        ("alice", "d", 5),
        ("bob", "x", 1),
        ("alice", "c", 2),
        ("carol", "c", 4),
        ("dave", "a", 1),
        ("alice", "e", 4),
        ("bob", "z", 3),
        ("carol", "x", 3),
        ("carol", "b", 2),
        ("dave", "b", 2),
    ]
    users, items, times = (np.array(col) for col in zip(*events))
    return prepare(
        Interactions(user=users, item=items, timestamp=times, name="toy"), "sequential", seed=0
    )


def ids(data: PreparedData, *raw: str) -> list[int]:
    return [0 if r == "-" else int(data.items.encode(np.array([r]))[0]) for r in raw]


def uid(data: PreparedData, raw: str) -> int:
    return int(data.users.encode(np.array([raw]))[0])


def test_split_is_leave_last_two_out_by_time() -> None:
    data = toy()
    assert data.num_users == 3  # dave dropped
    valid = dict(zip(data.valid.user.tolist(), data.valid.item.tolist()))
    test = dict(zip(data.test.user.tolist(), data.test.item.tolist()))
    assert valid[uid(data, "alice")] == ids(data, "e")[0]
    assert test[uid(data, "alice")] == ids(data, "d")[0]
    assert test[uid(data, "bob")] == ids(data, "z")[0]
    indptr, items = data.train_csr()
    alice = uid(data, "alice")
    assert items[indptr[alice] : indptr[alice + 1]].tolist() == ids(data, "b", "c", "a")


def test_training_sequences_shift_by_one_and_left_pad() -> None:
    data = toy()
    users, inputs, positives = training_sequences(data, max_len=4)
    rows = {int(u): r for r, u in enumerate(users)}
    assert uid(data, "bob") not in rows  # one training item: nothing to predict
    alice, carol = rows[uid(data, "alice")], rows[uid(data, "carol")]
    assert inputs[alice].tolist() == ids(data, "-", "-", "b", "c")
    assert positives[alice].tolist() == ids(data, "-", "-", "c", "a")
    assert inputs[carol].tolist() == ids(data, "-", "-", "-", "a")
    assert positives[carol].tolist() == ids(data, "-", "-", "-", "b")
    # truncation keeps the most recent items
    _, inputs, positives = training_sequences(data, max_len=1)
    assert inputs[alice].tolist() == ids(data, "c")
    assert positives[alice].tolist() == ids(data, "a")


def test_evaluation_contexts_valid_uses_train_test_adds_the_validation_item() -> None:
    data = toy()
    seqs = evaluation_sequences(data, max_len=4)
    alice, bob = uid(data, "alice"), uid(data, "bob")
    assert seqs["valid"][alice].tolist() == ids(data, "-", "b", "c", "a")
    assert seqs["test"][alice].tolist() == ids(data, "b", "c", "a", "e")
    assert seqs["valid"][bob].tolist() == ids(data, "-", "-", "-", "x")
    assert seqs["test"][bob].tolist() == ids(data, "-", "-", "x", "y")
    short = evaluation_sequences(data, max_len=2)
    assert short["valid"][alice].tolist() == ids(data, "c", "a")
    assert short["test"][alice].tolist() == ids(data, "a", "e")
    context = SequenceContext(data, 4)
    got = context(torch.tensor([alice, bob]), "test")
    assert got.tolist() == [seqs["test"][alice].tolist(), seqs["test"][bob].tolist()]


def test_sampler_batches() -> None:
    data = toy()
    sampler = SequenceSampler(data, max_len=4, num_negatives=3, batch_size=8, device=CPU)
    assert sampler.num_examples == 2 and len(sampler) == 1
    indptr, train_items = data.train_csr()
    for seed in range(20):
        (batch,) = list(sampler.epoch(torch.Generator().manual_seed(seed)))
        assert batch.items.shape == (*batch.context.shape, 4)
        assert batch.context.shape[1] == 2  # trimmed to the longest input in the batch (alice: 2)
        assert torch.equal(batch.mask, batch.items[..., 0] != 0)
        assert batch.num_samples == int(batch.mask.sum()) * 4
        for row in range(2):
            user_items = set(batch.context[row].tolist()) | set(batch.items[row, :, 0].tolist())
            user = next(
                u
                for u in range(1, data.num_users + 1)
                if set(train_items[indptr[u] : indptr[u + 1]].tolist()) == user_items - {0}
            )
            seen = set(train_items[indptr[user] : indptr[user + 1]].tolist())
            negs = batch.items[row, :, 1:][batch.mask[row]]
            assert negs.numel() and not (set(negs.flatten().tolist()) & seen)
            assert torch.all(batch.items[row, :, 1:][~batch.mask[row]] == 0)


def test_sampler_visits_each_user_once_per_epoch() -> None:
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(50), 6)
    inter = Interactions(
        user=users, item=rng.integers(0, 40, len(users)), timestamp=np.arange(len(users))
    )
    data = prepare(inter, "sequential", seed=0)
    sampler = SequenceSampler(
        data, max_len=3, num_negatives=1, batch_size=16, device=CPU, trim=False
    )
    _, inputs, _ = training_sequences(data, 3)
    batches = list(sampler.epoch(torch.Generator().manual_seed(0)))
    assert len(batches) == len(sampler) == 4
    seen = torch.cat([b.context for b in batches])
    assert sorted(map(tuple, seen.tolist())) == sorted(map(tuple, inputs.tolist()))


def test_no_training_transition_is_a_data_error() -> None:
    inter = Interactions(
        user=np.array([1, 1, 1, 2, 2, 2]), item=np.array([1, 2, 3, 1, 3, 2]), timestamp=np.arange(6)
    )
    with pytest.raises(DataError, match="no user has two training items"):
        SequenceSampler(
            prepare(inter, "sequential", seed=0),
            max_len=5,
            num_negatives=1,
            batch_size=4,
            device=CPU,
        )


class HistoryScorer(torch.nn.Module):
    """score_all: 10 for every item of the user's whole history (train, valid and test) except the
    target of the part being evaluated (5), 0 for the rest; records the contexts it receives."""

    def __init__(self, data: PreparedData, part: str) -> None:
        super().__init__()
        self.table = torch.zeros(data.num_users + 1, data.num_items + 1)
        for p in (data.train, data.valid, data.test):
            self.table[p.user, p.item] = 10.0
        target = data.valid if part == "valid" else data.test
        self.table[target.user, target.item] = 5.0
        self.contexts: list[torch.Tensor] = []
        self.by_context = SequenceContext(data, 4)
        self.param = torch.nn.Parameter(torch.zeros(()))

    def score_all(self, context: torch.Tensor) -> torch.Tensor:
        self.contexts.append(context)
        # map each context row back to its user (contexts are unique per user in this toy)
        rows = []
        for row in context.tolist():
            for part_table in self.by_context.tables.values():
                match = (part_table == torch.tensor(row)).all(1).nonzero()
                if len(match):
                    rows.append(int(match[0]))
                    break
        return self.table[rows]


def test_history_exclusion_with_sequence_contexts() -> None:
    data = toy()
    context = SequenceContext(data, 4)
    evaluator = RankingEvaluator(data, context_of=context)
    alice, bob, carol = (uid(data, n) for n in ("alice", "bob", "carol"))
    # validation: training items excluded, the (future) test item is still a candidate above it
    model = HistoryScorer(data, "valid")
    ranks = evaluator.ranks(model.score_all, "valid")
    assert (
        model.contexts[0].tolist()
        == context.tables["valid"][evaluator.parts["valid"].users].tolist()
    )
    assert ranks.tolist() == [1.0, 1.0, 1.0]
    # test: training items and the validation item excluded, so nothing of the history is above
    model = HistoryScorer(data, "test")
    ranks = evaluator.ranks(model.score_all, "test")
    assert (
        model.contexts[0].tolist() == context.tables["test"][evaluator.parts["test"].users].tolist()
    )
    assert ranks.tolist() == [0.0, 0.0, 0.0]
    assert sorted(evaluator.parts["test"].users.tolist()) == sorted([alice, bob, carol])


def compose_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=["~dataset", *overrides])


def test_task_builder_reads_max_len_and_loss() -> None:
    data = toy()
    parts = build_task(data, compose_cfg("model=sasrec", "model.max_len=3"), CPU)
    assert isinstance(parts.sampler, SequenceSampler)
    assert parts.sampler.inputs.shape[1] == 3 and parts.sampler.k == 1
    assert parts.evaluator.context_of(torch.tensor([1]), "valid").shape == (1, 3)
    assert parts.monitor == "ndcg_at_10" and parts.tags == {"eval_protocol": "full"}
    ce = build_task(data, compose_cfg("model=sasrec", "train.loss=ce"), CPU)
    assert ce.sampler.k == 0  # full softmax: no sampled negatives
    (batch,) = list(ce.sampler.epoch(torch.Generator().manual_seed(0)))
    assert batch.items.shape[-1] == 1
    with pytest.raises(ConfigError, match="num_negatives=0"):
        build_task(data, compose_cfg("model=sasrec", "train.num_negatives=0"), CPU)
    with pytest.raises(ConfigError, match="eval.protocol='nope'"):
        build_task(data, compose_cfg("model=sasrec", "eval.protocol=nope"), CPU)
