"""The hash seed of hashed methods follows the run seed (each seed draws its own collision pattern)
unless ``method.hash_seed`` is set, through composition, budget solving and a user_method."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir

from recbench.assembly import method_factory
from tests.conftest import CONF


def mappings(overrides: list[str], node: str = "method") -> torch.Tensor:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    layer = method_factory(cfg[node])(501, 8)
    return layer.hash_seed, layer.mapping


@pytest.mark.parametrize("method", ["hashing", "bloom"])
def test_seeds_0_and_1_hash_differently(method: str) -> None:
    seed0, map0 = mappings([f"method={method}", "seed=0"])
    seed1, map1 = mappings([f"method={method}", "seed=1"])
    assert (seed0, seed1) == (0, 1)
    assert (map0 != map1).float().mean() > 0.5  # unrelated bucket mappings
    if method == "bloom":  # no hash function is shared between consecutive seeds either
        for j in range(map0.shape[1]):
            for i in range(map1.shape[1]):
                assert (map0[:, j] != map1[:, i]).float().mean() > 0.5


@pytest.mark.parametrize("method", ["hashing", "bloom"])
def test_explicit_hash_seed_wins(method: str) -> None:
    seed, mapping = mappings([f"method={method}", "seed=1", "method.hash_seed=0"])
    _, reference = mappings([f"method={method}", "seed=0"])
    assert seed == 0 and torch.equal(mapping, reference)


@pytest.mark.parametrize("method", ["hashing", "bloom"])
def test_budget_and_user_method_keep_the_run_seed(method: str) -> None:
    seed, _ = mappings([f"method={method}", "seed=2", "method.budget=0.1"])
    assert seed == 2
    seed, _ = mappings(
        ["method=full", f"+method@user_method={method}", "seed=4"], node="user_method"
    )
    assert seed == 4
