"""Scalar quantization: half-step error bound, eval-mode quantized table, exact serving form and size."""

from __future__ import annotations

import pytest
import torch

from recbench.embeddings import ScalarQuantEmbedding
from recbench.errors import ConfigError

GMF_USERS, GMF_ITEMS, GMF_OTHER_BITS = 6040, 3416, 32 * 65  # GMF's Linear(64, 1): 64 weights + bias


def make(
    bits: int = 8, granularity: str = "column", n: int = 300, d: int = 16
) -> ScalarQuantEmbedding:
    layer = ScalarQuantEmbedding(n + 1, d, bits=bits, granularity=granularity)
    with torch.no_grad():  # a spread-out table with distinct ranges per column and row
        layer.weight_table.weight[1:] = torch.randn(n, d) * torch.linspace(0.1, 3.0, d)
    return layer


@pytest.mark.parametrize("granularity", ["column", "row"])
@pytest.mark.parametrize("bits", [1, 3, 8])
def test_error_at_most_half_a_step(bits: int, granularity: str) -> None:
    layer = make(bits, granularity).eval()
    w = layer.weight_table.weight[1:].detach()
    q = layer.full_table()[1:]
    dim = 0 if granularity == "column" else 1
    step = (w.amax(dim, keepdim=True) - w.amin(dim, keepdim=True)) / (2**bits - 1)
    ulps = 4 * torch.finfo(torch.float32).eps * w.abs().max()  # float32 rounding of the formula
    assert torch.all((q - w).abs() <= step / 2 + ulps)
    # extremes are levels, so they are kept (up to float rounding of offset + k * step)
    torch.testing.assert_close(q.amin(dim), w.amin(dim))
    torch.testing.assert_close(q.amax(dim), w.amax(dim))
    levels = layer.quantize().codes
    assert int(levels.min()) >= 0 and int(levels.max()) <= 2**bits - 1


def test_sixteen_bits_is_nearly_lossless() -> None:
    layer = make(16).eval()
    w = layer.weight_table.weight.detach()
    err = (layer.full_table() - w).abs().max()
    widest = (w[1:].amax(0) - w[1:].amin(0)).max()
    ulps = 4 * torch.finfo(torch.float32).eps * w.abs().max()  # float32 rounding of the formula
    assert err <= widest / 65535 / 2 + ulps  # half of one of 65536 levels
    assert err / widest < 1e-5


def test_training_uses_float_table_eval_uses_quantized() -> None:
    layer = make(2)
    ids = torch.tensor([[0, 1], [2, 3]])
    layer.train()
    torch.testing.assert_close(layer(ids), layer.weight_table(ids))
    assert layer.full_table() is layer.weight_table.weight
    layer.eval()
    out = layer(ids)
    assert not torch.equal(out, layer.weight_table(ids))  # 2 bits: visibly quantized
    torch.testing.assert_close(out, layer.full_table()[ids], rtol=0, atol=0)
    assert torch.all(out[0, 0] == 0) and torch.all(layer.full_table()[0] == 0)


def test_quantize_is_idempotent_and_follows_weight_updates() -> None:
    layer = make(4).eval()
    first = layer.quantize()
    assert layer.quantize() is first  # cached: nothing recomputed
    again = ScalarQuantEmbedding.quantize(layer)
    assert torch.equal(again.table, first.table)
    optimizer = torch.optim.SGD(layer.parameters(), lr=1.0)
    layer.train()
    layer(torch.arange(1, 301)).pow(2).sum().backward()
    optimizer.step()
    layer.eval()
    after = layer.full_table()
    assert not torch.equal(after, first.table)  # the step invalidated the cache
    fresh = ScalarQuantEmbedding(301, 16, bits=4)
    fresh.load_state_dict(layer.state_dict())
    assert torch.equal(fresh.eval().full_table(), after)


def test_constant_column_is_exact() -> None:
    layer = make(3)
    with torch.no_grad():
        layer.weight_table.weight[1:, 5] = 0.25
    table = layer.eval().full_table()
    assert torch.all(table[1:, 5] == 0.25)


@pytest.mark.parametrize("granularity", ["column", "row"])
@pytest.mark.parametrize("bits", [1, 5, 8, 16])
def test_serving_form_rebuilds_table_exactly(bits: int, granularity: str) -> None:
    layer = make(bits, granularity, n=123, d=8).eval()
    tensors = layer.serving_tensors()
    assert tensors["codes"].dtype == torch.uint8
    assert tensors["codes"].numel() == (123 * 8 * bits + 7) // 8
    assert tensors["offset"].dtype == tensors["scale"].dtype == torch.float32
    rebuilt = ScalarQuantEmbedding.table_from_serving(tensors, layer.serving_meta())
    assert torch.equal(rebuilt, layer.full_table())
    codes = ScalarQuantEmbedding.codes_from_serving(tensors, layer.serving_meta())
    assert codes.shape == (123, 8) and int(codes.max()) < 2**bits
    assert torch.equal(codes, layer.quantize().codes.to(torch.int64).reshape(123, 8))


def test_serving_bits_hand_computed() -> None:
    n, d = 1000, 32
    assert ScalarQuantEmbedding(n + 1, d, bits=8).serving_bits() == n * d * 8 + 64 * d
    assert (
        ScalarQuantEmbedding(n + 1, d, bits=3, granularity="row").serving_bits()
        == n * d * 3 + 64 * n
    )


def test_table3_gmf_sq_fraction() -> None:
    """MGQE paper Table 3: SQ (b=8) GMF on MovieLens-1M is 25.0 % of the full model."""
    embedding = sum(
        ScalarQuantEmbedding(n + 1, 64, bits=8).serving_bits() for n in (GMF_USERS, GMF_ITEMS)
    )
    full = 32 * (GMF_USERS + GMF_ITEMS) * 64 + GMF_OTHER_BITS
    fraction = 100 * (embedding + GMF_OTHER_BITS) / full
    assert abs(fraction - 25.04) < 0.1, fraction


def test_solve_budget_picks_largest_fitting_bits() -> None:
    n, d = 1000, 64
    full = 32 * n * d
    knobs = ScalarQuantEmbedding.solve_budget(0.25, n, d, granularity="column", init_std=0.01)
    assert knobs == {"granularity": "column", "init_std": 0.01, "bits": 7}  # 8 bits + min/max > 1/4
    for budget in (0.05, 0.1, 0.3, 0.26):
        bits = ScalarQuantEmbedding.solve_budget(budget, n, d)["bits"]
        size = ScalarQuantEmbedding(n + 1, d, bits=bits).serving_bits()
        assert size <= budget * full
        if bits < 16:
            assert ScalarQuantEmbedding(n + 1, d, bits=bits + 1).serving_bits() > budget * full
    assert ScalarQuantEmbedding.solve_budget(0.9, n, d)["bits"] == 16
    assert ScalarQuantEmbedding.solve_budget(0.1, n, d, granularity="row")["bits"] == 2  # 3.2 - 1
    with pytest.raises(ConfigError, match=r"^method\.budget=0\.01 .*method\.budget >= 0\.03325$"):
        ScalarQuantEmbedding.solve_budget(0.01, n, d)


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"bits": 0}, r"^method\.bits=0 "),
        ({"bits": 17}, r"^method\.bits=17 "),
        ({"bits": 4.5}, r"^method\.bits=4\.5 "),
        ({"granularity": "block"}, r"^method\.granularity=block .*; use column"),
        ({"init_std": 0}, r"^method\.init_std=0 "),
    ],
)
def test_check_knobs(knobs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ScalarQuantEmbedding.check_knobs(64, **knobs)
    with pytest.raises(ConfigError, match=message):
        ScalarQuantEmbedding(10, 64, **knobs)
