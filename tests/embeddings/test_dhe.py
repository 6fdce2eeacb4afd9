"""DHE: hash encodings by hand, the paper architecture's parameter count, folded batch norm, padding,
chunked full table, budgets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from recbench.embeddings import DHEmbedding
from recbench.embeddings.dhe import PRIME, encode, hash_coefficients
from recbench.errors import ConfigError


def test_paper_architecture_parameter_count_by_hand() -> None:
    # The paper's network: k = 1024 hash encodings, hidden layers of width d_NN with batch norm and
    # Mish, then d outputs: weights k*d_NN + (h-1)*d_NN^2 + d_NN*d. Here h = 5 (the VLDB'24
    # reference DHE), d_NN = 512, d = 64.
    layer = DHEmbedding(10_001, 64, num_hashes=1024, hidden_dim=512, num_layers=5)
    weights = 1024 * 512 + 4 * 512 * 512 + 512 * 64
    assert weights == 524_288 + 1_048_576 + 32_768 == 1_605_632
    biases = 5 * 512 + 64
    norms = 5 * 2 * 512  # scale and shift per hidden layer: trained, folded away for serving
    assert sum(p.numel() for p in layer.parameters()) == weights + biases + norms == 1_613_376
    assert layer.serving_bits() == 32 * (weights + biases) == 32 * 1_608_256
    # recbench's default (width 64): 1025*64 + 4*65*64 + 65*64 = 86,400 floats.
    assert DHEmbedding(2001, 64).serving_bits() == 32 * 86_400


def test_uniform_encoding_by_hand() -> None:
    a, b = hash_coefficients(7, 4)
    ids = torch.tensor([1, 5, 123_456])
    got = encode(ids, a, b, 1_000_000, "uniform")
    for row, x in enumerate(ids.tolist()):
        for j in range(4):
            h = ((int(a[j]) * x + int(b[j])) % PRIME) % 1_000_000
            assert got[row, j].item() == pytest.approx(2 * h / 999_999 - 1, abs=1e-6)
    assert torch.equal(hash_coefficients(7, 4)[0], a)  # recomputed from the seed alone
    assert not torch.equal(hash_coefficients(8, 4)[0], a)


def test_encodings_distributions() -> None:
    a, b = hash_coefficients(0, 1024)
    ids = torch.arange(1, 2001)
    uniform = encode(ids, a, b, 1_000_000, "uniform")
    assert uniform.min() >= -1 and uniform.max() <= 1
    assert abs(uniform.mean().item()) < 0.01 and uniform.std().item() == pytest.approx(
        3**-0.5, rel=0.01
    )
    gaussian = encode(ids, a, b, 1_000_000, "gaussian")
    assert abs(gaussian.mean().item()) < 0.01 and gaussian.std().item() == pytest.approx(
        1.0, rel=0.01
    )
    assert torch.unique(uniform, dim=0).shape[0] == 2000  # every id its own encoding


def test_eval_mode_is_the_folded_network() -> None:
    layer = DHEmbedding(301, 16, num_hashes=32, hidden_dim=8, num_layers=2)
    layer.train()
    for _ in range(3):  # move the running statistics away from their init
        layer(torch.randint(1, 301, (64,)))
    layer.eval()
    ids = torch.arange(1, 301)
    x = encode(ids, layer.hash_a, layer.hash_b, layer.hash_range, layer.encoding)
    for linear, norm in zip(layer.linears, layer.norms):
        x = F.mish(norm(linear(x)))  # eval-mode batch norm, unfolded
    with torch.no_grad():
        torch.testing.assert_close(layer(ids), layer.linears[-1](x), rtol=1e-5, atol=1e-6)


def test_padding_is_zero_without_gradient_or_statistics() -> None:
    layer = DHEmbedding(51, 8, num_hashes=16, hidden_dim=8, num_layers=2)
    twin = DHEmbedding(51, 8, num_hashes=16, hidden_dim=8, num_layers=2)
    twin.load_state_dict(layer.state_dict())
    out = layer(torch.tensor([[0, 3, 0], [5, 0, 3]]))
    assert torch.all(out[0, 0] == 0) and torch.all(out[1, 1] == 0)
    twin(torch.tensor([3, 5]))
    for a, b in zip(layer.norms, twin.norms):  # padding did not enter the batch statistics
        torch.testing.assert_close(a.running_mean, b.running_mean)
    layer.zero_grad()
    layer(torch.tensor([0, 0, 3]))[:2].sum().backward()
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0 for p in layer.parameters())
    assert torch.all(layer(torch.tensor([0, 0])) == 0)  # an all-padding batch decodes nothing


def test_duplicates_share_one_decoding() -> None:
    layer = DHEmbedding(51, 8, num_hashes=16, hidden_dim=8, num_layers=2)
    out = layer(torch.tensor([4, 7, 4, 4]))
    assert torch.equal(out[0], out[2]) and torch.equal(out[0], out[3])


def test_full_table_is_chunked(monkeypatch: pytest.MonkeyPatch) -> None:
    layer = DHEmbedding(1001, 16, num_hashes=64, hidden_dim=16, num_layers=3, encoding="gaussian")
    layer.eval()
    with torch.no_grad():
        whole = layer.full_table()
        monkeypatch.setattr(DHEmbedding, "chunk_size", 7)
        chunked = layer.full_table()
        rebuilt = DHEmbedding.table_from_serving(layer.serving_tensors(), layer.serving_meta())
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(rebuilt, chunked)
    assert torch.all(whole[0] == 0)


def test_solve_budget_largest_width_from_below() -> None:
    n, d = 2000, 64
    full = 32 * n * d
    for budget in (0.1, 0.25, 0.5, 1.0):
        width = DHEmbedding.solve_budget(budget, n, d, num_layers=5)["hidden_dim"]
        size = DHEmbedding(n + 1, d, hidden_dim=width).serving_bits()
        bigger = DHEmbedding(n + 1, d, hidden_dim=width + 1).serving_bits()
        assert size / full <= budget < bigger / full
    # 0.25 * 128000 = 32000 >= 1025 w + 4 (w + 1) w + 65 w + 64 = 4 w^2 + 1094 w + 64:
    # w = 26 gives 2704 + 28444 + 64 = 31212; w = 27 gives 2916 + 29538 + 64 = 32518
    assert DHEmbedding.solve_budget(0.25, n, d)["hidden_dim"] == 26


def test_solve_budget_minimum() -> None:
    # width 1: 1025 + 4*2 + 2*64 = 1161 floats of 128000 = 0.00907...
    with pytest.raises(
        ConfigError, match=r"smallest achievable budget is 0\.00907\d* \(hidden_dim=1\)"
    ):
        DHEmbedding.solve_budget(0.005, 2000, 64)


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"num_hashes": 0}, "method.num_hashes=0"),
        (
            {"encoding": "gaussian", "num_hashes": 1023},
            "must be even with method.encoding=gaussian",
        ),
        ({"encoding": "binary"}, "method.encoding=binary is unknown"),
        ({"hash_range": 2**31}, "method.hash_range="),
        ({"hidden_dim": 0}, "method.hidden_dim=0"),
        ({"num_layers": 0}, "method.num_layers=0"),
        ({"hash_seed": -1}, "method.hash_seed=-1"),
    ],
)
def test_check_knobs(knobs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        DHEmbedding.check_knobs(64, **knobs)
    assert "\n" not in str(err.value)


def test_encoding_cache_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    layer = DHEmbedding(501, 16, num_hashes=64, hidden_dim=16, num_layers=2, encoding="gaussian")
    layer.eval()
    ids = torch.randint(0, 501, (40,))
    with torch.no_grad():
        cached = layer(ids)
        assert layer.encodings is not None and layer.encodings.shape == (501, 64)
        assert "encodings" not in layer.state_dict()
        monkeypatch.setattr(DHEmbedding, "encoding_cache_limit", 0)
        assert torch.equal(layer(ids), cached)
