"""Mixed dimensions: the alpha-power solver, the Keras block example, equivalence with full, budgets."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from recbench.embeddings import FullEmbedding, MixedDimEmbedding
from recbench.embeddings.mixed_dim_solver import (
    alpha_power_dims,
    mass_blocks,
    mixed_dim_bits,
    resolve_block_sizes,
)
from recbench.errors import ConfigError


def _zipf(n: int) -> torch.Tensor:
    """Counts with the padding entry first, descending like real ids."""
    return torch.cat([torch.zeros(1), 10_000 / torch.arange(1, n + 1).float()]).long()


def test_keras_blocks_serving_bits_by_hand() -> None:
    # ML-1M movies: 3706 ids in blocks 400 / 1300 / rest (2006) at 64 / 32 / 16, d = 64.
    layer = MixedDimEmbedding(3707, 64, block_sizes=[400, 1300, None], block_dims=[64, 32, 16])
    assert layer.block_sizes == [400, 1300, 2006]
    tables = 400 * 64 + 1300 * 32 + 2006 * 16  # 99,296
    projections = 32 * 64 + 16 * 64  # 3,072 (block 0 needs none)
    assert layer.serving_bits() == 32 * (tables + projections) == 3_275_776
    # Keras reports 102,608 parameters = ours + 2 Dense biases (128) + 3 OOV rows (64+32+16).
    assert tables + projections + 128 + 112 == 102_608
    assert sorted(layer.serving_tensors()) == [
        "projection1",
        "projection2",
        "table0",
        "table1",
        "table2",
    ]


def test_one_block_at_full_dimension_is_the_full_table() -> None:
    n, d = 30, 8
    mixed = MixedDimEmbedding(n + 1, d, block_sizes=[None], block_dims=[d])
    full = FullEmbedding(n + 1, d)
    assert mixed.serving_bits() == full.serving_bits() == 32 * n * d
    assert len(mixed.projections) == 0
    with torch.no_grad():
        full.weight_table.weight[1:] = mixed.tables[0]
    ids = torch.randint(0, n + 1, (4, 6))
    torch.testing.assert_close(mixed(ids), full(ids))
    torch.testing.assert_close(mixed.full_table(), full.full_table())


def test_forward_reads_the_right_block_and_projects() -> None:
    layer = MixedDimEmbedding(11, 4, block_sizes=[2, 3, None], block_dims=[4, 2, 1])
    out = layer(torch.tensor([0, 1, 2, 3, 5, 6, 10]))
    assert torch.all(out[0] == 0)
    torch.testing.assert_close(out[1], layer.tables[0][0])
    torch.testing.assert_close(out[2], layer.tables[0][1])
    torch.testing.assert_close(out[3], layer.tables[1][0] @ layer.projections["1"])
    torch.testing.assert_close(out[4], layer.tables[1][2] @ layer.projections["1"])
    torch.testing.assert_close(out[5], layer.tables[2][0] @ layer.projections["2"])
    torch.testing.assert_close(out[6], layer.tables[2][4] @ layer.projections["2"])


def test_mass_blocks_and_alpha_rule_by_hand() -> None:
    counts = [50, 30, 10, 5, 2, 1, 1, 1, 0, 0]  # total 100: thirds end at ids 1 and 2
    assert mass_blocks(counts, 3) == [1, 1, 8]
    # per-id popularity 50, 30, 2.5 -> ratios 1, 0.6, 0.05; alpha 0.5, d 16 -> 16, 12.4, 3.6.
    # Block 1 (one id) at 12 would cost 12 + 12*16 > 16 floats, so the guard keeps 16.
    assert alpha_power_dims(counts, 3, 0.5, 16) == ([1, 1, 8], [16, 16, 4])
    assert alpha_power_dims(counts, 3, 0.0, 16) == ([1, 1, 8], [16, 16, 16])
    assert alpha_power_dims(counts, 3, 5.0, 16, min_dim=2)[1] == [16, 16, 2]
    assert mass_blocks([0] * 7, 3) == [3, 2, 2]  # no counts: equal sizes
    assert mass_blocks([5, 1], 4) == [1, 1]  # never more blocks than ids


def test_explicit_sizes_with_alpha_rule() -> None:
    counts = torch.tensor([0] + [9] * 100 + [3] * 100 + [1] * 100)
    layer = MixedDimEmbedding(301, 18, counts=counts, block_sizes=[100, 100, None], alpha=1.0)
    assert layer.block_dims == [18, 6, 2]  # ratios 1, 1/3, 1/9
    assert layer.serving_bits() == 32 * (1800 + 600 + 200 + 6 * 18 + 2 * 18) == 87_808
    assert mixed_dim_bits([100, 100, 100], [18, 6, 2], 18) == 87_808


def test_knobs_rebuild_without_counts() -> None:
    layer = MixedDimEmbedding(2001, 64, counts=_zipf(2000))
    knobs = layer.knobs()
    clone = MixedDimEmbedding(2001, 64, **knobs)  # no counts needed any more
    assert clone.block_sizes == layer.block_sizes and clone.block_dims == layer.block_dims
    clone.load_state_dict(layer.state_dict())
    torch.testing.assert_close(clone.full_table(), layer.full_table())
    assert len(layer.block_sizes) == 3 and layer.block_dims[0] == 64
    assert layer.block_dims == sorted(layer.block_dims, reverse=True)


def test_yaml_lists_are_accepted() -> None:
    cfg = OmegaConf.create({"block_sizes": [2, None], "block_dims": [4, 2]})
    layer = MixedDimEmbedding(11, 4, block_sizes=cfg.block_sizes, block_dims=cfg.block_dims)
    assert layer.knobs()["block_sizes"] == [2, 8] and type(layer.knobs()["block_dims"]) is list


def test_gradients_reach_every_table_and_projection() -> None:
    layer = MixedDimEmbedding(3707, 16, block_sizes=[400, 1300, None], block_dims=[16, 8, 4])
    (layer(torch.arange(3707)) * torch.randn(3707, 16)).sum().backward()
    for name, param in layer.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_serving_round_trip() -> None:
    layer = MixedDimEmbedding(3707, 16, block_sizes=[400, 1300, None], block_dims=[16, 8, 4])
    rebuilt = MixedDimEmbedding.table_from_serving(layer.serving_tensors(), layer.serving_meta())
    torch.testing.assert_close(rebuilt, layer.full_table())


def test_solve_budget_best_alpha_from_below() -> None:
    n, d = 2000, 64
    counts = _zipf(n)
    full = 32 * n * d
    grid = np.concatenate([np.linspace(0, 3, 1501), [5.0, 10.0, 50.0]])
    sizes = mass_blocks(counts[1:].numpy(), 3)
    reachable = sorted(
        {mixed_dim_bits(sizes, alpha_power_dims(counts[1:].numpy(), 3, a, d)[1], d) for a in grid}
    )
    for budget in (0.15, 0.3, 0.6, 1.0):
        solved = MixedDimEmbedding.solve_budget(budget, n, d, counts, num_blocks=3, min_dim=1)
        bits = MixedDimEmbedding(n + 1, d, counts=counts, **solved).serving_bits()
        assert bits / full <= budget
        assert bits == max(b for b in reachable if b / full <= budget)
    smallest = reachable[0] / full
    with pytest.raises(ConfigError, match=re.escape(f"smallest achievable budget is {smallest!r}")):
        MixedDimEmbedding.solve_budget(smallest * 0.99, n, d, counts)


def test_solve_budget_refuses_fixed_dims() -> None:
    with pytest.raises(ConfigError, match="method.block_dims"):
        MixedDimEmbedding.solve_budget(0.5, 100, 8, _zipf(100), block_dims=[8, 4])


def test_errors() -> None:
    with pytest.raises(ConfigError, match="counts"):
        MixedDimEmbedding(11, 4)
    with pytest.raises(ConfigError, match="method.block_sizes"):
        resolve_block_sizes([3, 3], 10)
    with pytest.raises(ConfigError, match="method.block_sizes"):
        resolve_block_sizes([None, 3], 10)
    with pytest.raises(ConfigError, match="method.block_dims"):
        MixedDimEmbedding.check_knobs(8, block_sizes=[2, None], block_dims=[8, 9])
    with pytest.raises(ConfigError, match="differ in length"):
        MixedDimEmbedding.check_knobs(8, block_sizes=[2, None], block_dims=[8])
    with pytest.raises(ConfigError, match="method.alpha=-1"):
        MixedDimEmbedding.check_knobs(8, alpha=-1)
    with pytest.raises(ConfigError, match="method.min_dim=0"):
        MixedDimEmbedding.check_knobs(8, min_dim=0)
