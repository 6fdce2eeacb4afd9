"""Sampled softmax (``train.loss=sampled_softmax``): the formula, its limit (full CE), accidental hits,
logQ, the samplers' shared candidates and the config checks."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from recbench.engine.contracts import Batch
from recbench.engine.losses.ranking import ce_loss
from recbench.engine.losses.sampled_softmax import sampled_softmax_from_logits, sampled_softmax_loss
from recbench.engine.samplers.shared import SharedNegatives, check_options
from recbench.errors import ConfigError
from recbench.tasks import build_task
from tests.models.helpers import build_with_method
from tests.test_sequential import CPU, compose_cfg, toy


def test_hand_computed_loss_with_logq_and_an_accidental_hit() -> None:
    # one position: positive id 2 (logit 1.0), candidates 3, 2, 4 with logits 0.5, 1.0, -1.0
    log_q = torch.log(torch.tensor([1.0, 0.1, 0.2, 0.3, 0.4]))
    log_q[0] = 0.0
    got = sampled_softmax_from_logits(
        torch.tensor([1.0]), torch.tensor([[0.5, 1.0, -1.0]]), torch.tensor([2]),
        torch.tensor([3, 2, 4]), log_q,
    )  # fmt: skip
    pos = 1.0 - math.log(0.2)
    others = [0.5 - math.log(0.3), -1.0 - math.log(0.4)]  # candidate 2 is the positive: masked
    expected = math.log(math.exp(pos) + sum(math.exp(o) for o in others)) - pos
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_accidental_hits_are_masked() -> None:
    log_q = torch.zeros(6)
    pos, positives = torch.tensor([0.3, -0.2]), torch.tensor([1, 4])
    with_hits = sampled_softmax_from_logits(
        pos,
        torch.tensor([[7.0, 0.1, 0.2], [0.4, 9.0, 0.6]]),
        positives,
        torch.tensor([1, 2, 4]),
        log_q,
    )
    # position 0 draws its positive 1 as candidate 0, position 1 draws 4 as candidate 2; masking
    # leaves exactly the other candidates (whatever their logits were)
    first = sampled_softmax_from_logits(
        pos[:1], torch.tensor([[0.1, 0.2]]), positives[:1], torch.tensor([2, 4]), log_q
    )
    second = sampled_softmax_from_logits(
        pos[1:], torch.tensor([[0.4, 9.0]]), positives[1:], torch.tensor([1, 2]), log_q
    )
    torch.testing.assert_close(with_hits, torch.cat([first, second]))


@pytest.mark.parametrize("model", ["sasrec", "gmf"])
def test_all_items_with_uniform_q_equals_full_softmax(model: str) -> None:
    """Every item a candidate, uniform q: logQ shifts all logits equally and the positive's own
    draw is masked, so the loss is the full-softmax cross-entropy exactly."""
    torch.manual_seed(0)
    net = build_with_method(
        model, "full", num_users=6, num_items=40, **({"dropout": 0.0} if model == "sasrec" else {})
    )
    shared = SharedNegatives(40, 40, "uniform", None, CPU)
    if model == "sasrec":
        context = torch.tensor([[0, 3, 5, 7], [2, 9, 1, 4]])
        items = torch.tensor([[0, 5, 7, 8], [9, 1, 4, 6]]).unsqueeze(-1)
        mask = items[..., 0] != 0
    else:
        context, items, mask = torch.tensor([1, 2, 5]), torch.tensor([[3], [40], [1]]), None
    batch = Batch(
        context=context, items=items, mask=mask, candidates=torch.arange(1, 41), log_q=shared.log_q
    )
    torch.testing.assert_close(sampled_softmax_loss(net, batch), ce_loss(net, batch))
    # the default (score-based) implementation gives the same logits as the matrix-product override
    positive, negative = net.sampled_logits(context, items[..., 0], batch.candidates)
    generic = type(net).__mro__[1].sampled_logits(net, context, items[..., 0], batch.candidates)
    torch.testing.assert_close(positive, generic[0])
    torch.testing.assert_close(negative, generic[1])


def test_popularity_distribution_and_its_logq() -> None:
    counts = torch.tensor([0, 60, 30, 10, 0])
    shared = SharedNegatives(4, 5000, "popularity", counts, CPU)
    torch.testing.assert_close(shared.log_q[1:4], torch.log(torch.tensor([0.6, 0.3, 0.1])))
    assert shared.log_q[0] == 0 and shared.log_q[4] == 0  # never drawn, finite
    draws = shared.draw(2, torch.Generator().manual_seed(0))
    assert draws.shape == (2, 5000)
    freq = torch.bincount(draws.view(-1), minlength=5).float() / draws.numel()
    assert freq[0] == 0 and freq[4] == 0
    torch.testing.assert_close(freq[1:4], torch.tensor([0.6, 0.3, 0.1]), atol=0.02, rtol=0)
    again = shared.draw(2, torch.Generator().manual_seed(0))
    assert torch.equal(draws, again)  # reproducible by the epoch's generator
    uniform = SharedNegatives(4, 1000, "uniform", None, CPU).draw(
        1, torch.Generator().manual_seed(1)
    )
    assert int(uniform.min()) == 1 and int(uniform.max()) == 4


def test_samplers_carry_shared_candidates() -> None:
    data = toy()
    parts = build_task(
        data, compose_cfg("model=sasrec", "train.loss=sampled_softmax", "train.num_sampled=7"), CPU
    )
    assert parts.sampler.k == 0
    assert parts.sampler.shared.distribution == "popularity"  # the default (docs/performance.md)
    (batch,) = list(parts.sampler.epoch(torch.Generator().manual_seed(0)))
    assert batch.items.shape[-1] == 1 and batch.candidates.shape == (7,)
    assert batch.num_samples == int(batch.mask.sum()) * 8
    gmf = build_task(
        dataclasses.replace(data, task="ranking"), compose_cfg("model=gmf", "task=ranking", "train.loss=sampled_softmax", "train.num_sampled=3",
                          "train.batch_size=2", "train.sampled_distribution=popularity"), CPU,
    )  # fmt: skip
    batches = list(gmf.sampler.epoch(torch.Generator().manual_seed(0)))
    assert all(b.items.shape[1] == 1 and b.candidates.shape == (3,) for b in batches)
    assert batches[0].num_samples == batches[0].items.shape[0] * 4


def test_bad_options_are_one_line_config_errors() -> None:
    with pytest.raises(ConfigError, match="train.num_sampled=0 must be an integer >= 1"):
        check_options(0, "uniform")
    with pytest.raises(ConfigError, match="train.sampled_distribution='zipf' is unknown"):
        check_options(10, "zipf")
    with pytest.raises(ConfigError, match="needs a sampler that draws shared candidates"):
        sampled_softmax_loss(None, Batch(context=torch.zeros(1), items=torch.zeros(1, 1)))
