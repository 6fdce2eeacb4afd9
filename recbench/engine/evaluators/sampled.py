"""The sampled evaluation protocol: the held-out item against a fixed set of sampled items.

For every evaluated user (validation and test parts separately), ``num_sampled`` distinct items the
user never interacted with (in train, validation or test) are drawn uniformly, **once** per
(dataset content, seed, num_sampled), and saved to

    <directory>/<dataset>-<fingerprint>-seed<seed>-n<num_sampled>.npz

where ``fingerprint`` hashes the prepared data (id maps and every part's events, not the task), so
the ranking and the sequential task of the same dataset, and every model and method, read the very
same file; later runs load it and never redraw. The positive's 0-based rank among the
``1 + num_sampled`` candidates uses the full-ranking rule (``#higher + 0.5 * #equal``), and HR@K,
NDCG@K and MRR are computed by the same code as the full protocol. Metric names are the same as for
full ranking; the protocol is recorded in the configuration (``eval.protocol``) and as the run tag
``eval_protocol`` (see ``recbench.tasks.TaskParts.tags``).

Candidates are scored with ``model.score(context, candidates)`` with ``candidates`` shaped
``(B, 1 + num_sampled)`` (positive first), so only those items are scored.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from recbench.data.prepared import PreparedData
from recbench.engine.evaluators.metrics import eval_mode, metrics_from_ranks, ranks_of_targets
from recbench.errors import ConfigError, DataError

log = logging.getLogger(__name__)

DEFAULT_DIRECTORY = Path("outputs") / "negatives"
_FORMAT_VERSION = 1


def _array_bytes(arr: np.ndarray) -> bytes:
    arr = np.asarray(arr)
    if arr.dtype.kind in "biuf":
        return np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder("<"))).tobytes()
    return "\x1f".join(map(str, arr.tolist())).encode()


def data_fingerprint(data: PreparedData) -> str:
    """Content hash of the prepared data: id maps and the (user, item) events of every part.
    Independent of the task, so ranking and sequential runs of one dataset share negatives."""
    h = hashlib.sha256(f"v{_FORMAT_VERSION}:{data.num_users}:{data.num_items}".encode())
    for arr in (data.users.raw, data.items.raw):
        h.update(_array_bytes(arr))
    for part in (data.train, data.valid, data.test):
        h.update(_array_bytes(part.user))
        h.update(_array_bytes(part.item))
    return h.hexdigest()


def negatives_path(
    data: PreparedData, seed: int, num_sampled: int, directory: str | os.PathLike[str]
) -> Path:
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", str(data.name)) or "dataset"
    return Path(directory) / f"{name}-{data_fingerprint(data)[:16]}-seed{seed}-n{num_sampled}.npz"


def _interacted_keys(data: PreparedData) -> np.ndarray:
    n = data.num_items + 1
    users = np.concatenate([data.train.user, data.valid.user, data.test.user]).astype(np.int64)
    items = np.concatenate([data.train.item, data.valid.item, data.test.item]).astype(np.int64)
    return np.unique(users * n + items)


def draw_negatives(
    data: PreparedData, users: np.ndarray, num_sampled: int, rng: np.random.Generator
) -> np.ndarray:
    """``(len(users), num_sampled)`` distinct items per user, uniform over the items the user never
    interacted with (vectorised rejection sampling)."""
    n = data.num_items
    keys = _interacted_keys(data)
    seen_per_user = np.bincount(keys // (n + 1), minlength=data.num_users + 1)
    users = np.asarray(users, dtype=np.int64)
    short = users[n - seen_per_user[users] < num_sampled]
    if len(short):
        raise DataError(
            f"user {int(short[0])} of {data.name!r} has fewer than eval.num_sampled={num_sampled} "
            "items it never interacted with; lower eval.num_sampled or use eval.protocol=full"
        )
    out = np.zeros((len(users), num_sampled), dtype=np.int64)
    filled = np.zeros(len(users), dtype=np.int64)
    todo = np.arange(len(users))
    for _ in range(10_000):
        if len(todo) == 0:
            return out
        need = num_sampled - filled[todo]
        width = int(need.max()) * 2 + 8
        cand = rng.integers(1, n + 1, size=(len(todo), width), dtype=np.int64)
        # Candidates already chosen for the row come first, so "first occurrence" keeps them.
        merged = np.concatenate([out[todo], cand], 1)
        row_key = users[todo, None] * (n + 1) + merged
        ok = merged != 0
        pos = np.searchsorted(keys, row_key).clip(max=len(keys) - 1)
        ok &= keys[pos] != row_key
        flat = (np.arange(len(todo))[:, None] * (n + 1) + merged).ravel()
        first = np.zeros(flat.shape, dtype=bool)
        first[np.unique(flat, return_index=True)[1]] = True
        ok &= first.reshape(merged.shape)
        rank = np.cumsum(ok, 1)
        take = ok & (rank <= num_sampled)
        rows, cols = np.nonzero(take)
        new = np.zeros((len(todo), num_sampled), dtype=np.int64)
        new[rows, rank[rows, cols] - 1] = merged[rows, cols]
        out[todo] = new
        filled[todo] = np.minimum(rank[:, -1], num_sampled)
        todo = todo[filled[todo] < num_sampled]
    raise DataError("sampling evaluation negatives did not converge")  # pragma: no cover


def load_or_draw(
    data: PreparedData,
    *,
    seed: int,
    num_sampled: int,
    directory: str | os.PathLike[str] = DEFAULT_DIRECTORY,
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], Path]:
    """The saved negatives for (data, seed, num_sampled), drawing and saving them the first time.

    Returns ``({"valid": (users, negatives), "test": (users, negatives)}, path)``.
    """
    if int(num_sampled) < 1:
        raise ConfigError(
            f"eval.num_sampled={num_sampled} must be >= 1 (the SASRec paper uses 100)"
        )
    path = negatives_path(data, seed, num_sampled, directory)
    fingerprint = data_fingerprint(data)
    if path.exists():
        with np.load(path, allow_pickle=False) as saved:
            if str(saved["fingerprint"]) != fingerprint:
                raise DataError(
                    f"{path} belongs to other data (fingerprint mismatch); delete it to redraw"
                )
            parts = {p: (saved[f"{p}_users"], saved[f"{p}_negatives"]) for p in ("valid", "test")}
        log.info("sampled protocol: reusing %s", path)
        return parts, path

    rng = np.random.default_rng(
        np.random.SeedSequence([int(seed), int(num_sampled), _FORMAT_VERSION])
    )
    parts = {}
    for part_name, part in (("valid", data.valid), ("test", data.test)):
        users = np.asarray(part.user, dtype=np.int64)
        parts[part_name] = (users, draw_negatives(data, users, int(num_sampled), rng))
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write to a temporary file and rename: concurrent runs never read a half-written file (two
    # runs racing draw identical negatives from the same seed, so either file is the same).
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez_compressed(
                fh,
                fingerprint=np.array(fingerprint),
                dataset=np.array(str(data.name)),
                seed=np.array(int(seed)),
                num_sampled=np.array(int(num_sampled)),
                **{f"{p}_users": u for p, (u, _) in parts.items()},
                **{f"{p}_negatives": neg for p, (_, neg) in parts.items()},
            )
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    log.info("sampled protocol: drew %d negatives per user, saved to %s", num_sampled, path)
    return parts, path


class SampledEvaluator:
    """Ranks the held-out item of each user against that user's saved sampled items.

    A ``contracts.RankingEvaluation``, as the full-ranking ``RankingEvaluator`` is
    (``evaluate(model, part)``, ``popularity(counts, part)``, ``context_of(users, part)``, ``k``).
    """

    protocol = "sampled"

    def __init__(
        self,
        data: PreparedData,
        *,
        seed: int,
        num_sampled: int = 100,
        k: int = 10,
        batch_size: int = 1024,
        device: torch.device | str = "cpu",
        directory: str | os.PathLike[str] = DEFAULT_DIRECTORY,
        context_of: Callable[[Tensor, str], Tensor] | None = None,
    ) -> None:
        self.k = k
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.num_sampled = int(num_sampled)
        saved, self.path = load_or_draw(
            data, seed=seed, num_sampled=num_sampled, directory=directory
        )
        targets = {"valid": data.valid, "test": data.test}
        self.parts: dict[str, tuple[Tensor, Tensor]] = {}
        for part, (users, negatives) in saved.items():
            held_out = np.zeros(data.num_users + 1, dtype=np.int64)
            held_out[targets[part].user] = targets[part].item
            candidates = np.concatenate([held_out[users][:, None], negatives], 1)
            self.parts[part] = (
                torch.from_numpy(users).to(self.device),
                torch.from_numpy(candidates).to(self.device),
            )
        self.context_of = context_of or (lambda users, part: users)

    def candidates(self, part: str) -> tuple[Tensor, Tensor]:
        """(users, candidates): ``candidates[:, 0]`` is the held-out item, the rest the negatives."""
        return self.parts[part]

    def ranks(self, score_fn: Callable[[Tensor, Tensor], Tensor], part: str) -> Tensor:
        """Ranks of the held-out items under ``score_fn(context, candidates) -> (B, 1 + N)``."""
        users, candidates = self.parts[part]
        out = []
        for start in range(0, len(users), self.batch_size):
            batch_users = users[start : start + self.batch_size]
            batch_cands = candidates[start : start + self.batch_size]
            scores = score_fn(self.context_of(batch_users, part), batch_cands).float()
            zeros = torch.zeros(len(batch_users), dtype=torch.long, device=scores.device)
            out.append(ranks_of_targets(scores, zeros, where=f"{part} scores (sampled protocol)"))
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, part: str) -> dict[str, float]:
        with eval_mode(model):
            return metrics_from_ranks(self.ranks(model.score, part), self.k)

    @torch.no_grad()
    def popularity(self, item_counts: Tensor, part: str) -> dict[str, float]:
        """Most-popular baseline under the same candidates (training counts as scores)."""
        counts = item_counts.to(self.device, torch.float32)
        return metrics_from_ranks(self.ranks(lambda ctx, cands: counts[cands], part), self.k)
