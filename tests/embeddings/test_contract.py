"""The embedding contract, checked for every file in conf/method/ (new methods are covered by adding
their YAML)."""

from __future__ import annotations

import hydra.utils
import pytest
import torch
from omegaconf import OmegaConf

from recbench.embeddings.base import CompressedEmbedding
from tests.conftest import CONF, method_names

N_IDS = 2000  # real ids; tables hold N_IDS + 1 rows
DIM = 64


def build(name: str, num_embeddings: int = N_IDS + 1, dim: int = DIM) -> CompressedEmbedding:
    # Under a root with a run seed, as Hydra composes it (hash seeds may be `${seed}`).
    cfg = OmegaConf.create({"seed": 0, "method": OmegaConf.load(CONF / "method" / f"{name}.yaml")}).method
    if "budget" in cfg:
        del cfg["budget"]
    factory = hydra.utils.instantiate(cfg)
    # Zipf-like counts in descending order: id 1 is the most popular.
    counts = torch.cat([torch.zeros(1), 10_000 / torch.arange(1, num_embeddings).float()]).long()
    return factory(num_embeddings=num_embeddings, embedding_dim=dim, counts=counts)


@pytest.fixture(params=method_names())
def name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def layer(name: str) -> CompressedEmbedding:
    return build(name)


def test_forward_shape_any_id_shape(layer: CompressedEmbedding) -> None:
    ids = torch.randint(1, layer.num_embeddings, (3, 5, 2))
    out = layer(ids)
    assert out.shape == (3, 5, 2, DIM)
    assert out.dtype == torch.float32


def test_padding_is_zero(layer: CompressedEmbedding) -> None:
    for mode in (True, False):
        layer.train(mode)
        out = layer(torch.tensor([0, 0, 1]))
        assert torch.all(out[:2] == 0)
        assert out[2].abs().sum() > 0


def test_full_table_matches_forward_in_eval(layer: CompressedEmbedding) -> None:
    layer.eval()
    with torch.no_grad():
        table = layer.full_table()
        ids = torch.randint(0, layer.num_embeddings, (257,))
        assert table.shape == (layer.num_embeddings, DIM)
        torch.testing.assert_close(table[ids], layer(ids), rtol=1e-5, atol=1e-6)


def test_serving_bits_exact_integer_and_not_larger_than_full(layer: CompressedEmbedding) -> None:
    bits = layer.serving_bits()
    assert isinstance(bits, int)
    assert 0 < bits <= 32 * N_IDS * DIM


def test_gradients_reach_every_trainable_parameter(layer: CompressedEmbedding) -> None:
    layer.train()
    ids = torch.arange(layer.num_embeddings)
    out = layer(ids)
    loss = (out * torch.randn_like(out)).sum() + layer.aux_loss()
    loss.backward()
    for name, param in layer.named_parameters():
        if param.requires_grad:
            assert param.grad is not None, f"no gradient reached {name}"
            grad = param.grad.coalesce().values() if param.grad.is_sparse else param.grad
            assert grad.abs().sum() > 0, f"zero gradient for {name}"


def test_aux_loss_is_scalar_and_resets(layer: CompressedEmbedding) -> None:
    layer.train()
    layer(torch.arange(1, 50))
    first = layer.aux_loss()
    assert first.shape == ()
    assert layer.aux_loss().item() == 0.0


def test_state_dict_round_trip(name: str, layer: CompressedEmbedding) -> None:
    clone = build(name)
    clone.load_state_dict(layer.state_dict())
    layer.eval()
    clone.eval()
    ids = torch.randint(0, layer.num_embeddings, (100,))
    with torch.no_grad():
        torch.testing.assert_close(clone(ids), layer(ids))


def test_serving_form_rebuilds_the_table(layer: CompressedEmbedding) -> None:
    layer.eval()
    tensors = layer.serving_tensors()
    meta = layer.serving_meta()
    with torch.no_grad():
        rebuilt = type(layer).table_from_serving(tensors, meta)
        torch.testing.assert_close(rebuilt, layer.full_table(), rtol=1e-6, atol=1e-6)
    stored_bits = sum(t.numel() * t.element_size() * 8 for t in tensors.values())
    # Only byte padding of bit-packed tensors may exceed the formula.
    assert layer.serving_bits() <= stored_bits < layer.serving_bits() + 8 * len(tensors)


def test_exported_from_package(layer: CompressedEmbedding) -> None:
    import recbench.embeddings as pkg

    assert getattr(pkg, type(layer).__name__) is type(layer)
