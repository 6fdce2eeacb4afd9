"""The knob contract, for every file in conf/method/: one typed dataclass per method holds the
defaults and the checks (``knob_type``); the layer is asked about sparse gradients and codes."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hydra.utils import get_object
from omegaconf import OmegaConf

from recbench.checks import method_knobs
from recbench.embeddings.base import CompressedEmbedding, Knobs, check_budget
from recbench.errors import ConfigError
from recbench.record import NON_KNOB_KEYS
from tests.conftest import method_names, method_node
from tests.embeddings.test_contract import build

#: Every method declares its knobs as a dataclass (DPQ and MGQE were the last to move).
CONVERTED = method_names()


def layer_class(name: str) -> type[CompressedEmbedding]:
    return get_object(method_node(name)._target_)


@pytest.mark.parametrize("name", CONVERTED)
def test_yaml_lists_exactly_the_knob_fields(name: str) -> None:
    """The YAML documents every knob and no stale one; the knob defaults of the dataclass are the
    defaults, so a YAML value differs from its field default only on purpose (a comment says why)."""
    cls = layer_class(name)
    assert cls.knob_type is not Knobs, f"{cls.__name__} names no knob dataclass"
    fields = [f.name for f in dataclasses.fields(cls.knob_type)]
    yaml_keys = [k for k in method_node(name).keys() if k not in NON_KNOB_KEYS]
    assert sorted(yaml_keys) == sorted(fields)


@pytest.mark.parametrize("name", CONVERTED)
def test_check_knobs_returns_typed_knobs_with_defaults(name: str) -> None:
    cls = layer_class(name)
    knobs = cls.check_knobs(64, **method_knobs(method_node(name)))
    assert isinstance(knobs, cls.knob_type)
    defaults = cls.check_knobs(64)  # nothing given: every field at its default
    assert defaults == cls.knob_type()


@pytest.mark.parametrize("name", CONVERTED)
def test_unknown_knob_is_refused_with_the_nearest_key(name: str) -> None:
    cls = layer_class(name)
    first = dataclasses.fields(cls.knob_type)[0].name
    typo = first[:-1] + ("x" if first[-1] != "x" else "y")
    with pytest.raises(
        ConfigError, match=rf"unknown key 'method\.{typo}'.*did you mean method\.{first}\?"
    ):
        cls.check_knobs(64, **{typo: 1})
    with pytest.raises(ConfigError, match="unknown key"):  # the constructor refuses it too
        cls(11, 8, **{typo: 1})


@pytest.mark.parametrize("name", CONVERTED)
def test_wrongly_typed_knob_is_one_config_error(name: str) -> None:
    """A string where a number belongs fails as a ConfigError naming the knob, never a TypeError."""
    cls = layer_class(name)
    for f in dataclasses.fields(cls.knob_type):
        if f.type in ("str", "bool"):
            continue
        with pytest.raises(ConfigError, match=rf"method\.{f.name}="):
            cls.check_knobs(64, **{f.name: "abc"})


def test_check_types_names_the_expected_type() -> None:
    from recbench.embeddings.low_rank import LowRankEmbedding

    with pytest.raises(
        ConfigError,
        match=r"method\.init_std='x' must be a number; the default is method\.init_std=0\.01",
    ):
        LowRankEmbedding.check_knobs(64, init_std="x")
    with pytest.raises(ConfigError, match=r"method\.rank=True"):
        LowRankEmbedding.check_knobs(64, rank=True)


@pytest.mark.parametrize("name", method_names())
def test_knobs_record_round_trips_through_the_constructor(name: str) -> None:
    """``knobs()`` (what a run records) rebuilds a layer of the same size from the knobs alone."""
    layer = build(name)
    cls = type(layer)
    again = cls(layer.num_embeddings, layer.embedding_dim, counts=layer.counts, **layer.knobs())
    assert again.serving_bits() == layer.serving_bits()
    assert again.knobs() == layer.knobs()


@pytest.mark.parametrize("name", method_names())
def test_enable_sparse_gradients_switches_what_it_returns(name: str) -> None:
    layer = build(name)
    tables = layer.enable_sparse_gradients(True)
    embeddings = [m for m in layer.modules() if isinstance(m, torch.nn.Embedding)]
    expected = {id(p) for p in layer.sparse_parameters()} | {id(m.weight) for m in embeddings}
    assert {id(t) for t in tables} == {
        id(p) for p in layer.parameters() if id(p) in expected and p.requires_grad
    }
    assert layer.sparse_grad == bool(layer.sparse_parameters())
    assert all(m.sparse for m in embeddings)
    if tables:  # a lookup then gives sparse gradients for those tables
        layer.train()
        layer(torch.tensor([1, 2, 2, 5])).sum().backward()
        assert any(t.grad is not None and t.grad.is_sparse for t in tables)
    assert layer.enable_sparse_gradients(False) == []
    assert not layer.sparse_grad and not any(m.sparse for m in embeddings)


def test_stores_codes_is_asked_of_the_layer() -> None:
    storing = {name for name in method_names() if layer_class(name).stores_codes()}
    assert storing == {"dpq", "learned_quant", "mgqe", "scalar_quant"}


def test_budget_is_checked_apart_from_the_knobs() -> None:
    assert check_budget(None) is None
    assert check_budget("0.25") == 0.25 and check_budget(1) == 1.0
    with pytest.raises(ConfigError, match=r"^user_method\.budget=abc is not a number"):
        check_budget("abc", "user_method")
    for bad in (0, -0.1, 1.5):
        with pytest.raises(ConfigError, match=r"outside \(0, 1\]"):
            check_budget(bad)
    node = OmegaConf.create({"_target_": "x", "_partial_": True, "budget": 0.5, "rank": 4})
    assert method_knobs(node) == {"rank": 4}


def test_knobs_become_plain_python_attributes() -> None:
    """The base sets each knob as an attribute in its field's plain type: YAML lists (ListConfig)
    become lists, numpy ints ints, an int init_std a float, so the record is plain JSON."""
    import numpy as np

    from recbench.embeddings.low_rank import LowRankEmbedding
    from recbench.embeddings.mixed_dim import MixedDimEmbedding

    low = LowRankEmbedding(11, 8, rank=np.int64(4), init_std=1)
    assert type(low.rank) is int and type(low.init_std) is float
    assert low.given_knobs == LowRankEmbedding.knob_type(rank=4, init_std=1.0)
    mixed = MixedDimEmbedding(
        11, 8, block_sizes=OmegaConf.create([4, None]), block_dims=OmegaConf.create([8, 2])
    )
    assert (
        mixed.given_knobs.block_sizes == [4, None] and type(mixed.given_knobs.block_sizes) is list
    )
    assert mixed.knobs()["block_sizes"] == [4, 6] and mixed.knobs()["block_dims"] == [8, 2]
