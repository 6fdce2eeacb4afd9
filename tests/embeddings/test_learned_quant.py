"""Learned low precision (LSQ/ALPT): LSQ's step-size gradient, gradient scale and initialisation
computed by hand, the served codes, and the bit-width solver."""

from __future__ import annotations

import math

import pytest
import torch

from recbench.embeddings.learned_quant import LearnedQuantEmbedding, init_steps, levels
from recbench.errors import BudgetError, ConfigError


def test_levels() -> None:
    assert levels(2) == (2, 1) and levels(4) == (8, 7) and levels(8) == (128, 127)


def test_step_init_is_lsq_2_mean_abs_over_sqrt_qp() -> None:
    """LSQ: s_0 = 2 <|v|> / sqrt(Q_P). Row [0.1, -0.3, 0.2, -0.2] at 4 bits (Q_P = 7):
    2 * 0.2 / sqrt(7) = 0.151186...; column steps average over the ids instead."""
    emb = LearnedQuantEmbedding(3, 4, bits=4, granularity="row")
    with torch.no_grad():
        emb.weight[1:] = torch.tensor([[0.1, -0.3, 0.2, -0.2], [1.0, 1.0, -1.0, 1.0]])
    steps = init_steps(emb.weight.detach()[1:], 4, "row")
    torch.testing.assert_close(steps, torch.tensor([0.4 / math.sqrt(7), 2.0 / math.sqrt(7)]))
    columns = init_steps(emb.weight.detach()[1:], 4, "column")
    torch.testing.assert_close(columns, 2 * torch.tensor([0.55, 0.65, 0.6, 0.6]) / math.sqrt(7))
    # A new layer starts from exactly that rule over its own N(0, std^2) weights.
    layer = LearnedQuantEmbedding(101, 16, bits=8)
    expected = 2 * layer.weight.detach()[1:].abs().mean(1) / math.sqrt(127)
    torch.testing.assert_close(layer.step.detach()[1:], expected)


def test_step_gradient_and_scale_by_hand() -> None:
    """LSQ's gradient of v_hat wrt the step: -v/s + round(v/s) inside the range, -Q_N / Q_P when
    clipped, times g = 1/sqrt(N * Q_P). 2 bits (Q_N = 2, Q_P = 1), s = 1, row
    v = [0.3, -0.9, 2.5, -3.0]: -0.3 + 0 = -0.3, 0.9 - 1 = -0.1, clipped high 1, clipped low -2;
    sum -1.4, N = d = 4: g = 1/2, gradient -0.7. The weights pass the gradient only inside."""
    emb = LearnedQuantEmbedding(2, 4, bits=2, granularity="row")
    assert emb.grad_scale == 1 / math.sqrt(4 * 1)
    with torch.no_grad():
        emb.weight[1] = torch.tensor([0.3, -0.9, 2.5, -3.0])
        emb.step.fill_(1.0)
    emb.train()
    out = emb(torch.tensor([1]))
    torch.testing.assert_close(out, torch.tensor([[0.0, -1.0, 1.0, -2.0]]))
    out.sum().backward()
    assert float(emb.step.grad[1]) == pytest.approx(-0.7)
    torch.testing.assert_close(emb.weight.grad[1], torch.tensor([1.0, 1.0, 0.0, 0.0]))
    assert float(emb.step.grad[0]) == 0.0 and emb.weight.grad[0].abs().sum() == 0  # padding
    # Column steps: N = n, the number of ids sharing a step (LSQ's N_W per step).
    assert LearnedQuantEmbedding(1001, 8, bits=4, granularity="column").grad_scale == 1 / math.sqrt(
        1000 * 7
    )


@pytest.mark.parametrize("granularity", ["row", "column"])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_training_forward_is_what_is_served(bits: int, granularity: str) -> None:
    emb = LearnedQuantEmbedding(301, 16, bits=bits, granularity=granularity)
    ids = torch.arange(301)
    emb.train()
    with torch.no_grad():
        trained_view = emb(ids)
    emb.eval()
    torch.testing.assert_close(emb.full_table(), trained_view, rtol=0, atol=0)
    stored = emb.serving_tensors()
    codes = emb._served()[0]
    assert int(codes.min()) >= 0 and int(codes.max()) <= (1 << bits) - 1
    assert stored["steps"].numel() == (300 if granularity == "row" else 16)
    rebuilt = LearnedQuantEmbedding.table_from_serving(stored, emb.serving_meta())
    torch.testing.assert_close(rebuilt, emb.full_table(), rtol=0, atol=0)
    assert torch.equal(LearnedQuantEmbedding.codes_from_serving(stored, emb.serving_meta()), codes)
    assert emb.serving_bits() == bits * 300 * 16 + 32 * (300 if granularity == "row" else 16)
    # At most 2^b distinct values per row (row steps) or per column (column steps).
    table = emb.full_table()[1:]
    group = table[0] if granularity == "row" else table[:, 0]
    assert group.unique().numel() <= 1 << bits


@pytest.mark.parametrize(
    ("budget", "granularity", "bits"),
    [(0.5, "row", 8), (0.25, "row", 7), (0.25, "column", 7), (0.1, "row", 2), (0.1, "column", 3)],
)
def test_budget_picks_the_widest_fitting_bits(budget: float, granularity: str, bits: int) -> None:
    """n = 2000, d = 64: b*n*d + 32*n <= budget * 32*n*d  <=>  b <= 32*budget - 0.5 (row steps);
    column steps cost 32*d, i.e. b <= 32*budget - 1/2000 (0.25 -> 7, 0.1 -> 3)."""
    n, d = 2000, 64
    knobs = LearnedQuantEmbedding.solve_budget(budget, n, d, granularity=granularity)
    assert knobs["bits"] == bits
    emb = LearnedQuantEmbedding(n + 1, d, **knobs)
    assert emb.serving_bits() <= budget * 32 * n * d
    if bits < 8:
        wider = LearnedQuantEmbedding(n + 1, d, **{**knobs, "bits": bits + 1})
        assert wider.serving_bits() > budget * 32 * n * d


def test_impossible_budget_and_knob_errors() -> None:
    with pytest.raises(BudgetError, match=r"method.budget=0.05 is impossible for .* \(bits=2"):
        LearnedQuantEmbedding.solve_budget(0.05, 2000, 64, granularity="row")
    with pytest.raises(ConfigError, match="method.bits=1 is not an integer in 2..8"):
        LearnedQuantEmbedding.check_knobs(64, bits=1)
    with pytest.raises(ConfigError, match="method.granularity=tensor is unknown"):
        LearnedQuantEmbedding.check_knobs(64, granularity="tensor")
