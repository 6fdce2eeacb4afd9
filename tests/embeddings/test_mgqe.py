"""MGQE: frequency tiers as id ranges, per-tier capacity, per-tier batched lookup, exact serving form."""

from __future__ import annotations

import warnings

import pytest
import torch

from recbench.embeddings import DPQEmbedding, MGQEmbedding, ScalarQuantEmbedding
from recbench.embeddings import mgqe as mgqe_module
from recbench.embeddings.mgqe import resolve_tiers
from recbench.errors import ConfigError

GMF_USERS, GMF_ITEMS, GMF_OTHER_BITS = 6040, 3416, 32 * 65  # GMF's Linear(64, 1): 64 weights + bias
VARIANTS = {
    "shared_k": {"variant": "shared_k", "num_centroids": [16, 4], "num_subspaces": 4},
    "unshared_k": {"variant": "unshared_k", "num_centroids": [16, 4], "num_subspaces": 4},
    "unshared_d": {"variant": "unshared_d", "num_centroids": [8, 5], "num_subspaces": [8, 2]},
}


def make(variant: str = "shared_k", n: int = 100, d: int = 16, **kw) -> MGQEmbedding:
    layer = MGQEmbedding(n + 1, d, tier_fractions=[0.2, 0.8], **{**VARIANTS[variant], **kw})
    with torch.no_grad():  # spread-out values so nearest centroids are unambiguous
        layer.query.weight[1:] = torch.randn(n, d)
        for centroids in layer.centroids:
            centroids.copy_(torch.randn_like(centroids))
    return layer


def naive_lookup(layer: MGQEmbedding, i: int) -> torch.Tensor:
    """One id at a time, Python loops: find its tier, then per subspace the nearest of the centroids
    that tier may use."""
    tier = next(t for t, (a, b) in enumerate(zip(layer.tier_starts, layer.tier_ends)) if a <= i < b)
    centroids = layer.tier_centroids(tier).detach()
    D, K, s = centroids.shape
    q = layer.query.weight[i].detach().view(D, s)
    parts = []
    for j in range(D):
        best = min(range(K), key=lambda k, j=j: float(((q[j] - centroids[j, k]) ** 2).sum()))
        parts.append(centroids[j, best])
    return torch.cat(parts)


def test_tiers_are_contiguous_id_ranges() -> None:
    assert resolve_tiers(3416, [0.1, 0.9]) == [342, 3074]
    assert resolve_tiers(6040, [0.1, 0.9]) == [604, 5436]
    assert resolve_tiers(10, [0.25, 0.25, 0.5]) == [3, 2, 5]
    assert resolve_tiers(5, [0.5, 0.5], tier_sizes=[1, 4]) == [1, 4]
    layer = MGQEmbedding(3417, 64)
    assert layer.tier_sizes == [342, 3074]
    assert (layer.tier_starts, layer.tier_ends) == ([1, 343], [343, 3417])
    assert MGQEmbedding(11, 8, tier_sizes=[2, 8], num_subspaces=4).tier_sizes == [2, 8]
    with pytest.raises(ConfigError, match=r"^method\.tier_sizes=\[2, 7\] sums to 9"):
        MGQEmbedding(11, 8, tier_sizes=[2, 7], num_subspaces=4)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_lookup_matches_naive_per_item_reference(variant: str) -> None:
    layer = make(variant)
    ids = torch.tensor([[3, 0, 57], [20, 21, 100]])  # head (1..20), padding, tail (21..100)
    expected = torch.stack(
        [naive_lookup(layer, i) if i else torch.zeros(16) for i in ids.reshape(-1).tolist()]
    )
    for mode in (True, False):
        layer.train(mode)
        out = layer(ids)
        assert out.shape == (2, 3, 16)
        torch.testing.assert_close(out.reshape(-1, 16), expected, rtol=0, atol=1e-6)


def test_shared_k_codes_stay_below_tier_k() -> None:
    layer = make("shared_k", n=200).eval()
    head, tail = layer.codes()
    assert head.shape == (40, 4) and tail.shape == (160, 4)
    assert int(tail.max()) < 4 and int(head.max()) < 16
    assert int(head.max()) >= 4  # the head really uses the extra centroids
    # without the restriction many tail ids would pick a centroid >= 4
    full = layer.centroids[0].detach()
    q = layer.query.weight[41:].detach().view(-1, 4, 4)
    unrestricted = ((q.unsqueeze(2) - full.unsqueeze(0)) ** 2).sum(-1).argmin(-1)
    assert int((unrestricted >= 4).sum()) > 0


def test_lookup_is_batched_per_tier(monkeypatch: pytest.MonkeyPatch) -> None:
    layer = make("shared_k").train()
    calls: list[int] = []
    original = mgqe_module.nearest_centroids

    def counting(queries: torch.Tensor, centroids: torch.Tensor, **kw: bool) -> tuple:
        calls.append(queries.shape[0])
        return original(queries, centroids, **kw)

    monkeypatch.setattr(mgqe_module, "nearest_centroids", counting)
    ids = torch.randint(0, 101, (64, 7))
    ids[0, :2] = torch.tensor([1, 100])  # both tiers present
    layer(ids)
    assert len(calls) == 2  # one search per tier, not per item
    assert sum(calls) == len(set(ids[ids != 0].tolist()))  # once per distinct id
    calls.clear()
    ids = torch.tensor([[1, 2, 3], [4, 0, 20]])  # head ids only
    layer(ids)
    assert calls == [5]  # only the head tier is present; padding is not looked up
    calls.clear()
    layer.eval()(ids)
    layer(ids)
    assert calls == [20, 80]  # eval: one search per tier over its id range, then cached


def test_out_of_range_ids_raise() -> None:
    layer = make().train()
    with pytest.raises(IndexError):
        layer(torch.tensor([1, 101]))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_gradients_and_aux(variant: str) -> None:
    layer = make(variant).train()
    out = layer(torch.arange(0, 101))
    (out * torch.randn_like(out)).sum().backward(retain_graph=True)
    assert layer.query.weight.grad[1:].abs().sum(1).gt(0).all()  # straight-through to every real id
    assert torch.all(layer.query.weight.grad[0] == 0)
    for centroids in layer.centroids:
        assert centroids.grad is None or torch.all(centroids.grad == 0)
    aux = layer.aux_loss()
    assert aux.item() > 0
    q = layer.query.weight[1:].detach()
    expected = 1.25 * ((out[1:].detach() - q) ** 2).mean()  # beta 0.25, weight 1, padding excluded
    torch.testing.assert_close(aux, expected)
    aux.backward()
    for centroids in layer.centroids:
        assert centroids.grad.abs().sum() > 0
    layer.eval()
    layer(torch.arange(0, 101))
    assert layer.aux_loss().item() == 0.0


def test_serving_bits_hand_computed() -> None:
    n, d = 1000, 64  # tiers of 100 and 900 ids
    shared = MGQEmbedding(n + 1, d, num_centroids=[256, 64], num_subspaces=16)
    assert shared.serving_bits() == 100 * 16 * 8 + 900 * 16 * 6 + 32 * 256 * d
    unshared_k = MGQEmbedding(
        n + 1, d, variant="unshared_k", num_centroids=[256, 50], num_subspaces=16
    )
    assert unshared_k.serving_bits() == (100 * 16 * 8 + 32 * 256 * d) + (900 * 16 * 6 + 32 * 50 * d)
    unshared_d = MGQEmbedding(
        n + 1, d, variant="unshared_d", num_centroids=256, num_subspaces=[64, 32]
    )
    assert unshared_d.serving_bits() == (100 * 64 * 8 + 32 * 256 * d) + (
        900 * 32 * 8 + 32 * 256 * d
    )


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_serving_form_rebuilds_table_exactly(variant: str) -> None:
    layer = make(variant, n=77).eval()
    tensors = layer.serving_tensors()
    assert all(t.dtype == torch.uint8 for k, t in tensors.items() if k.startswith("codes"))
    stored = sum(t.numel() * t.element_size() * 8 for t in tensors.values())
    assert layer.serving_bits() <= stored < layer.serving_bits() + 8 * len(tensors)
    rebuilt = MGQEmbedding.table_from_serving(tensors, layer.serving_meta())
    assert torch.equal(rebuilt, layer.full_table())


def table3_fraction(cls: type, **knobs) -> float:
    embedding = sum(cls(n + 1, 64, **knobs).serving_bits() for n in (GMF_USERS, GMF_ITEMS))
    return 100 * (embedding + GMF_OTHER_BITS) / (32 * (GMF_USERS + GMF_ITEMS) * 64 + GMF_OTHER_BITS)


def test_table3_gmf_fractions() -> None:
    """MGQE paper Table 3 (GMF, MovieLens-1M): SQ 25.0 %, DPQ 30.4 %, MGQE 20.7 %.

    With the serving formula (tail codes at 6 bits, the shared 256 x 64 centroid table counted once
    per layer) MGQE comes to 24.80 %; the paper's 20.7 % is reproduced only if each layer's centroid
    table is counted at the tail's K=64 rows (20.74 %) -- see the method's report.
    """
    shared = table3_fraction(MGQEmbedding)
    codes = (604 + 342) * 64 * 8 + (5436 + 3074) * 64 * 6
    by_hand = 100 * (codes + 2 * 32 * 256 * 64 + GMF_OTHER_BITS) / (32 * 9456 * 64 + GMF_OTHER_BITS)
    assert shared == pytest.approx(by_hand, abs=1e-9)
    assert abs(shared - 24.80) < 0.01
    assert shared < table3_fraction(ScalarQuantEmbedding) < table3_fraction(DPQEmbedding)
    unshared_k = table3_fraction(MGQEmbedding, variant="unshared_k")
    unshared_d = table3_fraction(
        MGQEmbedding, variant="unshared_d", num_subspaces=[64, 32], num_centroids=256
    )
    assert abs(unshared_k - 26.15) < 0.01 and abs(unshared_d - 24.59) < 0.01


def mgqe_grid(
    n: int, d: int, variant: str, ks: list[int], d_lists: list[list[int]]
) -> list[tuple[int, list[int], list[int]]]:
    """Every (serving bits, K list, D list) the solver may choose, sized by building the layer:
    the K list halved together (each K >= 2), the D lists as given."""
    ladders, scale = [list(ks)], 1
    while any(k > 2 for k in ladders[-1]):
        ladders.append([max(2, k // 2**scale) for k in ks])
        scale += 1
    return [
        (
            MGQEmbedding(
                n + 1, d, variant=variant, num_centroids=k, num_subspaces=D
            ).serving_bits(),
            k,
            D,
        )
        for k in ladders
        for D in d_lists
    ]


@pytest.mark.parametrize("variant", ["shared_k", "unshared_k", "unshared_d"])
@pytest.mark.parametrize("n", [943, 1682, 3416])  # ml-100k users, ml-100k items, ML-1M items
def test_solve_budget_is_the_closest_fit_of_the_grid(n: int, variant: str) -> None:
    """The solver picks D and the K list: the largest layer of the grid that fits (a brute force
    over the same grid agrees), ties to the larger K; 10 % and 5 % are reachable. unshared_d keeps
    the configured 2:1 ratio of the D_i (64 = d, so every halving is a divisor)."""
    d = 64
    full = 32 * n * d
    divisors = [D for D in range(1, d + 1) if d % D == 0]
    if variant == "unshared_d":
        configured: dict = {"num_subspaces": [64, 32]}
        d_lists = [[D, max(1, D // 2)] for D in divisors]
    else:
        configured, d_lists = {}, [[D, D] for D in divisors]
    grid = mgqe_grid(n, d, variant, [256, 64], d_lists)
    for budget in (0.5, 0.3, 0.25, 0.2, 0.12, 0.1, 0.05, 0.01):
        knobs = MGQEmbedding.solve_budget(budget, n, d, variant=variant, beta=0.3, **configured)
        assert knobs["beta"] == 0.3 and knobs["variant"] == variant
        layer = MGQEmbedding(n + 1, d, **knobs)
        assert layer.serving_bits() <= budget * full
        fitting = [g for g in grid if g[0] <= budget * full]
        best = max(fitting, key=lambda g: (g[0], g[1]))  # most bits, then the larger K
        assert (layer.serving_bits(), layer.num_centroids, layer.num_subspaces) == best, budget
        if best[1] == [256, 64]:
            assert "num_centroids" not in knobs  # the configured K stay as given


def test_solve_budget() -> None:
    n, d = 3416, 64
    assert MGQEmbedding.solve_budget(0.3, n, d) == {"num_subspaces": 64}
    knobs = MGQEmbedding.solve_budget(0.2, n, d, num_centroids=[256, 64])
    assert knobs == {"num_subspaces": 64, "num_centroids": [128, 32]}  # 19.998 % of full
    knobs = MGQEmbedding.solve_budget(
        0.2, n, d, variant="unshared_d", num_centroids=256, num_subspaces=[64, 32]
    )
    assert knobs["num_subspaces"][0] == 2 * knobs["num_subspaces"][1]  # ratio 2:1 kept
    with pytest.raises(
        ConfigError,
        match=r"^method\.budget=0\.001 .*num_centroids=\[2, 2\]\).*method\.budget >= ",
    ):
        MGQEmbedding.solve_budget(0.001, n, d)


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"variant": "mixed"}, r"^method\.variant=mixed is unknown; use shared_k"),
        (
            {"num_subspaces": [64, 32]},
            r"^method\.num_subspaces=\[64, 32\] varies by tier.*unshared_d",
        ),
        ({"num_subspaces": 48}, r"^method\.num_subspaces\[0\]=48 must divide embedding_dim=64"),
        ({"num_centroids": [256, 64, 16]}, r"^method\.num_centroids=\[256, 64, 16\] has 3 entries"),
        ({"num_centroids": [256, 1]}, r"^method\.num_centroids\[1\]=1 "),
        (
            {"tier_fractions": [0.1, 0.8]},
            r"^method\.tier_fractions=\[0\.1, 0\.8\] must be positive",
        ),
        ({"tier_sizes": [10, -1]}, r"^method\.tier_sizes=\[10, -1\] must be"),
        ({"beta": -1.0}, r"^method\.beta=-1\.0 "),
    ],
)
def test_check_knobs(knobs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        MGQEmbedding.check_knobs(64, **knobs)
    with pytest.raises(ConfigError, match=message):
        MGQEmbedding(101, 64, **knobs)


def test_accepts_omegaconf_lists_and_warns_on_unsorted_counts() -> None:
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(
        {"tier_fractions": [0.5, 0.5], "num_centroids": [8, 4], "num_subspaces": 4}
    )
    layer = MGQEmbedding(11, 8, **cfg)
    assert layer.knobs()["num_centroids"] == [8, 4]
    counts = torch.tensor([0, 5, 9, 3, 1, 1, 1, 1, 1, 1, 1])
    with pytest.warns(UserWarning, match="not in descending order"):
        MGQEmbedding(11, 8, counts=counts, num_subspaces=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MGQEmbedding(11, 8, counts=counts.sort(descending=True).values, num_subspaces=4)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(
    ("cls", "knobs"),
    [
        (ScalarQuantEmbedding, {"bits": 5}),
        (DPQEmbedding, {}),
        (DPQEmbedding, {"num_subspaces": 16}),
        (MGQEmbedding, {}),
        (MGQEmbedding, {"variant": "unshared_d", "num_subspaces": [64, 32], "num_centroids": 256}),
    ],
)
def test_cuda_training_step_and_served_table_match_cpu(cls: type, knobs: dict) -> None:
    layer = cls(3417, 64, **knobs).cuda().train()
    optimizer = torch.optim.Adam(layer.parameters(), lr=1e-2)
    ids = torch.randint(0, 3417, (256, 5), device="cuda")
    out = layer(ids)
    ((out * torch.randn_like(out)).sum() + layer.aux_loss()).backward()
    optimizer.step()
    layer.eval()
    table = layer.full_table()
    assert table.is_cuda and torch.equal(layer(ids), table[ids])
    rebuilt = cls.table_from_serving(layer.serving_tensors(), layer.serving_meta())
    assert torch.equal(rebuilt, table.cpu())
    twin = cls(3417, 64, **knobs)
    twin.load_state_dict({k: v.cpu() for k, v in layer.state_dict().items()})
    differing = int((twin.eval().full_table() != table.cpu()).any(1).sum())
    # SQ and scalar subspaces (sort + exact comparisons) give the same served table on both devices;
    # the matrix-product distances of wider subspaces may break a rare near-tie differently.
    exact = cls is ScalarQuantEmbedding or knobs.get("num_subspaces", 64) == 64
    assert differing <= (0 if exact else 3)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_distinct_id_lookup_equals_per_occurrence_training(variant: str) -> None:
    """Searching once per distinct id must not change the loss or any gradient: the reference
    straight-through lookup and aux loss below work row by row over every occurrence."""
    layer = make(variant).train()
    ids = torch.tensor([[3, 3, 0, 90], [3, 57, 90, 1], [0, 0, 57, 3]])
    out = layer(ids)
    weights = torch.randn_like(out)
    loss = (out * weights).sum() + 3.0 * layer.aux_loss()
    loss.backward()
    got = [layer.query.weight.grad.clone()] + [c.grad.clone() for c in layer.centroids]
    layer.zero_grad()

    flat = ids.reshape(-1)
    rows, aux = [], torch.zeros(())
    for i in flat.tolist():
        if i == 0:
            rows.append(torch.zeros(layer.embedding_dim))
            continue
        tier = next(
            t for t, (a, b) in enumerate(zip(layer.tier_starts, layer.tier_ends)) if a <= i < b
        )
        centroids = layer.tier_centroids(tier)
        q = layer.query.weight[i].view(centroids.shape[0], -1)
        codes = ((q.detach().unsqueeze(1) - centroids.detach()) ** 2).sum(-1).argmin(-1)
        chosen = centroids[torch.arange(centroids.shape[0]), codes]
        rows.append((q + (chosen - q).detach()).reshape(-1))
        aux = aux + ((chosen - q.detach()) ** 2).sum() + 0.25 * ((chosen.detach() - q) ** 2).sum()
    reference = torch.stack(rows).view_as(out)
    torch.testing.assert_close(out, reference)
    real = int((flat != 0).sum())
    ((reference * weights).sum() + 3.0 * aux / (real * layer.embedding_dim)).backward()
    expected = [layer.query.weight.grad] + [c.grad for c in layer.centroids]
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)


def test_dpq_distinct_id_lookup_equals_per_occurrence_training() -> None:
    layer = DPQEmbedding(51, 8, num_subspaces=4, num_centroids=6).train()
    ids = torch.tensor([7, 7, 7, 0, 12, 50, 12, 7])
    out = layer(ids)
    (out.pow(2).sum() + layer.aux_loss()).backward()
    got = (layer.query.weight.grad.clone(), layer.centroids.grad.clone())
    layer.zero_grad()
    q = layer.query.weight[ids].view(-1, 4, 2)
    codes = ((q.detach().unsqueeze(2) - layer.centroids.detach()) ** 2).sum(-1).argmin(-1)
    chosen = layer.centroids[torch.arange(4), codes]
    real = (ids != 0).view(-1, 1, 1)
    reference = ((q + (chosen - q).detach()) * real).view(-1, 8)
    torch.testing.assert_close(out, reference)
    aux = (((chosen - q.detach()) ** 2 + 0.25 * (chosen.detach() - q) ** 2) * real).sum() / (7 * 8)
    (reference.pow(2).sum() + aux).backward()
    torch.testing.assert_close(got[0], layer.query.weight.grad)
    torch.testing.assert_close(got[1], layer.centroids.grad)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_codes_from_serving_compare_only_same_centroids(variant: str) -> None:
    """Equal codes must mean the same centroid: shared_k gives the raw codes; private tables are
    offset per tier; a narrower tier's missing positions never match anything."""
    layer = make(variant).eval()
    codes = MGQEmbedding.codes_from_serving(layer.serving_tensors(), layer.serving_meta())
    per_tier = layer.codes()
    width = max(layer.num_subspaces)
    assert codes.shape == (100, width)
    head, tail = codes[:20], codes[20:]
    if variant == "shared_k":
        assert torch.equal(codes, torch.cat(per_tier))
    else:
        assert torch.equal(head[:, : per_tier[0].shape[1]], per_tier[0])
        assert torch.equal(tail[:, : per_tier[1].shape[1]], per_tier[1] + layer.num_centroids[0])
        assert int(tail[:, : per_tier[1].shape[1]].min()) >= layer.num_centroids[0]
    filler = codes[codes < 0]
    assert filler.numel() == (
        80 * (width - layer.num_subspaces[1]) if variant == "unshared_d" else 0
    )
    assert filler.unique().numel() == filler.numel()
