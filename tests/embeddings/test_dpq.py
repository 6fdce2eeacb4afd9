"""DPQ (VQ variant): nearest-centroid codes, straight-through gradients, aux loss, exact serving form."""

from __future__ import annotations

import pytest
import torch

from recbench.embeddings import DPQEmbedding
from recbench.embeddings.vq import code_bits
from recbench.errors import ConfigError

GMF_USERS, GMF_ITEMS, GMF_OTHER_BITS = 6040, 3416, 32 * 65  # GMF's Linear(64, 1): 64 weights + bias


def make(
    n: int = 200, d: int = 16, num_subspaces: int = 4, num_centroids: int = 10, **kw
) -> DPQEmbedding:
    layer = DPQEmbedding(n + 1, d, num_subspaces=num_subspaces, num_centroids=num_centroids, **kw)
    with torch.no_grad():  # well-separated values so nearest centroids are unambiguous
        layer.query.weight[1:] = torch.randn(n, d)
        layer.centroids.copy_(torch.randn_like(layer.centroids))
    return layer


def naive_codes(layer: DPQEmbedding, ids: list[int]) -> torch.Tensor:
    """Per id, per subspace: argmin over centroids of the squared distance, with Python loops."""
    s = layer.subspace_dim
    centroids = layer.centroids.detach()
    rows = []
    for i in ids:
        q = layer.query.weight[i].detach()
        rows.append(
            [
                min(
                    range(layer.num_centroids),
                    key=lambda k, j=j: float(
                        ((q[j * s : (j + 1) * s] - centroids[j, k]) ** 2).sum()
                    ),
                )
                for j in range(layer.num_subspaces)
            ]
        )
    return torch.tensor(rows)


def test_codes_and_output_match_naive_reference() -> None:
    layer = make()
    ids = [1, 5, 17, 200, 5]
    codes = naive_codes(layer, ids)
    assert torch.equal(layer.eval().codes()[torch.tensor(ids) - 1], codes)
    expected = torch.stack(
        [layer.centroids[torch.arange(4), c].detach().reshape(-1) for c in codes]
    )
    for mode in (True, False):
        layer.train(mode)
        torch.testing.assert_close(layer(torch.tensor(ids)), expected, rtol=0, atol=1e-6)


def test_straight_through_gradients() -> None:
    layer = make().train()
    ids = torch.tensor([[1, 2, 0], [3, 3, 4]])
    out = layer(ids)
    weights = torch.randn_like(out)
    (out * weights).sum().backward(retain_graph=True)
    # d out / d query is the identity (straight-through); padding gets nothing
    grad = layer.query.weight.grad
    torch.testing.assert_close(grad[1], weights[0, 0])
    torch.testing.assert_close(grad[3], weights[1, 0] + weights[1, 1])
    assert torch.all(grad[0] == 0) and torch.all(grad[5:] == 0)
    # the task loss alone does not move the centroids; the aux loss does
    assert layer.centroids.grad is None or torch.all(layer.centroids.grad == 0)
    layer.aux_loss().backward()
    assert layer.centroids.grad.abs().sum() > 0


def test_aux_loss_formula_training_only() -> None:
    layer = make(beta=0.5, aux_weight=2.0)
    layer.eval()
    layer(torch.arange(1, 50))
    assert layer.aux_loss().item() == 0.0
    layer.train()
    ids = torch.tensor([0, 3, 7, 7])
    out = layer(ids)
    aux = layer.aux_loss()
    q = layer.query.weight[torch.tensor([3, 7, 7])].detach()
    expected = 2.0 * (1 + 0.5) * ((out[1:].detach() - q) ** 2).mean()  # padding row excluded
    assert aux.item() > 0
    torch.testing.assert_close(aux, expected)
    assert layer.aux_loss().item() == 0.0  # reset after reading


def test_aux_training_pulls_centroids_to_queries() -> None:
    layer = make(n=100, num_centroids=8).train()
    optimizer = torch.optim.Adam([layer.centroids], lr=0.05)
    losses = []
    for _ in range(40):
        layer(torch.arange(1, 101))
        loss = layer.aux_loss()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]


def test_eval_table_follows_parameter_updates() -> None:
    layer = make().eval()
    before = layer.full_table().clone()
    assert layer.full_table() is layer.full_table()  # cached
    with torch.no_grad():
        layer.centroids.mul_(2.0)  # in place, like an optimizer step: codes and values change
    after = layer.full_table()
    assert not torch.equal(after, before)
    fresh = DPQEmbedding(201, 16, num_subspaces=4, num_centroids=10)
    fresh.load_state_dict(layer.state_dict())
    assert torch.equal(fresh.eval().full_table(), after)
    assert torch.all(after[0] == 0)
    ids = torch.randint(0, 201, (50,))
    assert torch.equal(layer(ids), after[ids])


@pytest.mark.parametrize(("num_subspaces", "num_centroids"), [(4, 10), (16, 2), (1, 256), (8, 300)])
def test_serving_form_rebuilds_table_exactly(num_subspaces: int, num_centroids: int) -> None:
    layer = make(n=150, num_subspaces=num_subspaces, num_centroids=num_centroids).eval()
    tensors = layer.serving_tensors()
    bits = code_bits(num_centroids)
    assert tensors["codes"].dtype == torch.uint8
    assert tensors["codes"].numel() == (150 * num_subspaces * bits + 7) // 8
    assert tensors["centroids"].shape == (num_subspaces, num_centroids, 16 // num_subspaces)
    rebuilt = DPQEmbedding.table_from_serving(tensors, layer.serving_meta())
    assert torch.equal(rebuilt, layer.full_table())


def test_serving_bits_hand_computed() -> None:
    assert code_bits(256) == 8 and code_bits(100) == 7 and code_bits(2) == 1 and code_bits(257) == 9
    layer = DPQEmbedding(1001, 64, num_subspaces=16, num_centroids=100)
    assert layer.serving_bits() == 1000 * 16 * 7 + 32 * 100 * 64


def test_table3_gmf_dpq_fraction() -> None:
    """MGQE paper Table 3: DPQ (D=64, K=256) GMF on MovieLens-1M is 30.4 % of the full model."""
    embedding = sum(DPQEmbedding(n + 1, 64).serving_bits() for n in (GMF_USERS, GMF_ITEMS))
    full = 32 * (GMF_USERS + GMF_ITEMS) * 64 + GMF_OTHER_BITS
    fraction = 100 * (embedding + GMF_OTHER_BITS) / full
    assert abs(fraction - 30.4) < 0.1, fraction


def dpq_grid(n: int, d: int, configured: int) -> list[tuple[int, int, int]]:
    """Every (serving bits, K, D) the solver may choose, sized by building the layer: K the
    configured one or a power of two below it (>= 2), D a divisor of d."""
    ks = [configured] + [1 << b for b in range(16, 0, -1) if 1 << b < configured]
    ds = [D for D in range(1, d + 1) if d % D == 0]
    return [
        (DPQEmbedding(n + 1, d, num_subspaces=D, num_centroids=K).serving_bits(), K, D)
        for K in ks
        for D in ds
    ]


@pytest.mark.parametrize("n", [943, 1682, 3416])  # ml-100k users, ml-100k items, ML-1M items
def test_solve_budget_is_the_closest_fit_of_the_grid(n: int) -> None:
    """The solver picks D and K: the largest layer of the grid that fits (a brute force over the
    same grid agrees), ties to the larger K; the YAML's other knobs are kept."""
    d = 64
    full = 32 * n * d
    grid = dpq_grid(n, d, 256)
    for budget in (0.5, 0.35, 0.25, 0.2, 0.1, 0.08, 0.05, 0.01):
        knobs = DPQEmbedding.solve_budget(budget, n, d, num_centroids=256, beta=0.3)
        assert knobs["beta"] == 0.3
        bits = DPQEmbedding(n + 1, d, **knobs).serving_bits()
        assert bits <= budget * full
        best = max(g for g in grid if g[0] <= budget * full)  # most bits, then the larger K
        assert (bits, knobs["num_centroids"], knobs["num_subspaces"]) == best, budget


def test_small_budgets_are_reachable_by_fewer_centroids() -> None:
    """With K fixed at 256 the 32 K d centroid bits alone exceed 10 % of a 943- or 1682-id table;
    choosing K too reaches 10 % and 5 %."""
    d = 64
    for n in (943, 1682):
        full = 32 * n * d
        assert DPQEmbedding(n + 1, d, num_subspaces=1).serving_bits() > 0.1 * full
        for budget in (0.1, 0.05):
            knobs = DPQEmbedding.solve_budget(budget, n, d)
            assert knobs["num_centroids"] < 256
            assert 0.8 * budget * full < DPQEmbedding(n + 1, d, **knobs).serving_bits()
            assert DPQEmbedding(n + 1, d, **knobs).serving_bits() <= budget * full


def test_solve_budget_keeps_k_and_breaks_ties_to_the_larger_k() -> None:
    n, d = 3416, 64
    assert DPQEmbedding.solve_budget(0.35, n, d) == {"num_subspaces": 64, "num_centroids": 256}
    assert DPQEmbedding.solve_budget(0.2, n, d)["num_subspaces"] == 32
    # n = 128, d = 4: K=4, D=1 and K=2, D=4 both take 768 bits (128*2 + 32*4*4 = 128*4 + 32*2*4)
    for configured in (4, 8):
        knobs = DPQEmbedding.solve_budget(
            768 / (32 * 128 * 4), 128, 4, num_subspaces=4, num_centroids=configured
        )
        assert (knobs["num_centroids"], knobs["num_subspaces"]) == (4, 1)
        assert DPQEmbedding(129, 4, **knobs).serving_bits() == 768
    smallest = (n * 1 + 32 * 2 * d) / (32 * n * d)  # D = 1, K = 2
    with pytest.raises(
        ConfigError,
        match=r"^method\.budget=0\.001 .*num_subspaces=1, num_centroids=2\).*"
        r"method\.budget >= 0\.00107377$",
    ):
        DPQEmbedding.solve_budget(0.001, n, d)
    assert DPQEmbedding.solve_budget(smallest, n, d) == {"num_subspaces": 1, "num_centroids": 2}


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        (
            {"num_subspaces": 48},
            r"^method\.num_subspaces=48 must divide embedding_dim=64; use one of",
        ),
        ({"num_subspaces": 0}, r"^method\.num_subspaces=0 "),
        ({"num_centroids": 1}, r"^method\.num_centroids=1 "),
        ({"num_centroids": 70000}, r"^method\.num_centroids=70000 "),
        ({"beta": -1}, r"^method\.beta=-1 "),
        ({"aux_weight": -0.5}, r"^method\.aux_weight=-0\.5 "),
        ({"init_std": 0}, r"^method\.init_std=0 "),
    ],
)
def test_check_knobs(knobs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DPQEmbedding.check_knobs(64, **knobs)
    with pytest.raises(ConfigError, match=message):
        DPQEmbedding(10, 64, **knobs)


def test_training_full_table_decodes_once_per_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """A softmax loss needs the whole table and the batch's ids in one step: the codes of the
    whole-table decode are reused by the lookup (no second search) until a parameter changes,
    and the lookup equals a fresh one."""
    from recbench.embeddings import dpq

    layer = make().train()
    ids = torch.tensor([[3, 0, 17], [17, 200, 5]])
    fresh = layer(ids).detach()
    layer.aux_loss()
    calls = []
    original = dpq.nearest_centroids

    def counting(q: torch.Tensor, c: torch.Tensor, **kw: bool) -> tuple:
        calls.append(len(q))
        return original(q, c, **kw)

    monkeypatch.setattr(dpq, "nearest_centroids", counting)
    table = layer.full_table()
    reused = layer(ids)
    assert calls == [200]  # one search over every real id, none for the lookup
    torch.testing.assert_close(reused, fresh)
    torch.testing.assert_close(table[ids], reused)
    with torch.no_grad():
        layer.query.weight.add_(1.0)  # a parameter update invalidates the codes
    layer(ids)
    assert calls == [200, 5]  # the distinct ids 0, 3, 5, 17, 200
