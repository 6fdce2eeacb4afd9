"""PEP: the soft-threshold re-parameterisation (hand computed), the CSR size for a stated sparsity
(hand computed), mask freezing and lottery-ticket rewind, the CSR artifact, and the budget solver."""

from __future__ import annotations

import math

import pytest
import torch

from recbench.embeddings.pep import PEPEmbedding, csr_bits, soft_threshold
from recbench.errors import ConfigError


def test_reparameterisation_by_hand() -> None:
    """Eq. 4 of the paper: sign(v) * ReLU(|v| - sigmoid(s)); with sigmoid(s) = 0.1:
    0.5 -> 0.4, -0.3 -> -0.2, 0.05 -> 0, -0.1 -> 0 (exactly at the threshold)."""
    s = torch.tensor(math.log(0.1 / 0.9))
    v = torch.tensor([0.5, -0.3, 0.05, -0.1])
    torch.testing.assert_close(soft_threshold(v, s), torch.tensor([0.4, -0.2, 0.0, 0.0]))


def test_csr_size_for_a_stated_sparsity_by_hand() -> None:
    """n = 1000 ids, d = 64, 90 % sparsity: nnz = 6,400 values of 32 bits, 6,400 column indices of
    ceil(log2 64) = 6 bits and 1,001 row pointers of ceil(log2 6,401) = 13 bits:
    204,800 + 38,400 + 13,013 = 256,213 bits = 12.51 % of the dense 2,048,000."""
    assert csr_bits(6_400, 1_000, 64) == 204_800 + 38_400 + 13_013 == 256_213
    emb = PEPEmbedding(1_001, 64, target_sparsity=0.9)
    assert emb.max_nonzeros == 6_400
    emb.eval()
    assert emb.nonzeros() == 6_400 and emb.serving_bits() == 256_213
    assert emb.sparsity() == pytest.approx(0.9)


def test_gradients_of_the_search_phase() -> None:
    """Pruned weights get no gradient; the thresholds get one through every surviving weight."""
    emb = PEPEmbedding(
        11, 4, granularity="feature", threshold_init=math.log(0.01 / 0.99), target_sparsity=None
    )
    with torch.no_grad():
        emb.weight[1:] = torch.tensor([0.02, -0.005, 0.5, 0.001]).repeat(10, 1)
    emb.train()
    emb(torch.tensor([3])).sum().backward()
    assert torch.equal(emb.weight.grad[3] != 0, torch.tensor([True, False, True, False]))
    assert emb.weight.grad[[0, 1, 2, 4]].abs().sum() == 0
    # d/ds of sign(v)(|v| - sigmoid(s)) summed over kept weights: -sigmoid'(s) * (sign(0.02) + sign(0.5))
    expected = -2 * 0.01 * 0.99
    assert float(emb.threshold.grad[3, 0]) == pytest.approx(expected, rel=1e-5)
    assert emb.threshold.grad.shape == (11, 1)


@pytest.mark.parametrize("rewind", [True, False])
def test_freeze_rewinds_the_kept_weights_and_fixes_the_mask(rewind: bool) -> None:
    emb = PEPEmbedding(201, 8, search_epochs=3, target_sparsity=0.5, rewind=rewind)
    initial = emb.weight.detach().clone()
    with torch.no_grad():
        emb.weight.mul_(3.0)  # "searched" weights
    searched = emb.weight.detach().clone()
    assert emb.on_epoch_end(1) == [] and emb.on_epoch_end(2) == []
    emb.eval()
    served = emb.full_table().detach().clone()  # the magnitude cut: the 800 largest |v_hat|
    assert emb.nonzeros() == 800
    replaced = emb.on_epoch_end(3)
    assert replaced == [emb.weight] and bool(emb.retraining)
    assert torch.equal(emb.mask, served != 0)
    assert torch.equal(emb.weight.detach(), initial if rewind else searched)
    torch.testing.assert_close(emb.full_table(), (initial if rewind else searched) * emb.mask)
    assert emb.on_epoch_end(4) == []  # frozen for good
    # Retraining: masked weights receive no gradient, the mask never changes.
    emb.train()
    emb(torch.arange(201)).sum().backward()
    assert torch.equal(emb.weight.grad != 0, emb.mask)
    assert emb.threshold.grad is None


def test_search_stops_early_when_the_target_sparsity_is_learned() -> None:
    emb = PEPEmbedding(101, 8, search_epochs=50, target_sparsity=0.5, threshold_init=-8.0)
    assert emb.on_epoch_end(1) == []  # sigmoid(-8) = 3e-4 prunes almost nothing
    with torch.no_grad():
        emb.threshold.fill_(math.log(0.01 / 0.99))  # threshold 0.01 = one std: ~68 % pruned
    assert emb.on_epoch_end(2) == [emb.weight]
    assert emb.nonzeros() <= 400


@pytest.mark.parametrize("sparsity", [0.2, 0.97, 1.0])
def test_csr_artifact_round_trips(sparsity: float) -> None:
    """0.2 of 128,000 weights zero leaves 102,400 values: row pointers need 17 bits (two packed
    slices); 1.0 stores nothing but zero-bit pointers."""
    emb = PEPEmbedding(2001, 64, target_sparsity=sparsity)
    emb.on_epoch_end(10)
    emb.eval()
    stored = emb.serving_tensors()
    nnz = round((1 - sparsity) * 128_000)
    assert emb.nonzeros() == nnz
    if sparsity == 0.2:
        assert sorted(stored) == ["columns_0", "row_pointers_0", "row_pointers_1", "values"]
    rebuilt = PEPEmbedding.table_from_serving(stored, emb.serving_meta())
    torch.testing.assert_close(rebuilt, emb.full_table().detach(), rtol=0, atol=0)
    stored_bits = sum(t.numel() * t.element_size() * 8 for t in stored.values())
    assert emb.serving_bits() <= stored_bits < emb.serving_bits() + 8 * len(stored)


@pytest.mark.parametrize("budget", [1.0, 0.5, 0.25, 0.1, 0.05, 0.001])
def test_budget_sets_the_largest_nnz_that_fits(budget: float) -> None:
    n, d = 2000, 64
    knobs = PEPEmbedding.solve_budget(budget, n, d, granularity="global")
    emb = PEPEmbedding(n + 1, d, **knobs)
    nnz = emb.max_nonzeros
    assert csr_bits(nnz, n, d) <= budget * 32 * n * d < csr_bits(nnz + 1, n, d)
    emb.on_epoch_end(10)
    assert emb.serving_bits() == csr_bits(nnz, n, d)  # N(0, std) weights: none is exactly zero


def test_knob_errors() -> None:
    with pytest.raises(ConfigError, match="method.granularity=row is unknown"):
        PEPEmbedding.check_knobs(64, granularity="row")
    with pytest.raises(ConfigError, match=r"method.target_sparsity=1.5 must be in \[0, 1\]"):
        PEPEmbedding.check_knobs(64, target_sparsity=1.5)
    with pytest.raises(ConfigError, match="method.search_epochs=0 must be an integer >= 1"):
        PEPEmbedding.check_knobs(64, search_epochs=0)
