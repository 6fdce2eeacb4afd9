"""The sequential task's evaluation contexts: the validation prediction is conditioned on the
training sequence, the test prediction on the training sequence followed by the validation item
(last ``max_len`` items, left-padded; the windows of ``recbench.engine.samplers.sequences``).
Exclusion of already-seen items is the evaluator's job (``RankingEvaluator``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from recbench.data.prepared import PreparedData
from recbench.engine.samplers.sequences import check_max_len, left_padded_windows


def evaluation_sequences(data: PreparedData, max_len: int) -> dict[str, np.ndarray]:
    """Per part, a ``(num_users + 1, max_len)`` table: row u is user u's context. ``valid``: the
    training sequence; ``test``: the training sequence followed by the validation item."""
    indptr, items = data.train_csr()
    num_rows = data.num_users + 1
    rows = np.arange(num_rows, dtype=np.int64)
    valid = left_padded_windows(items, indptr[:-1], indptr[1:], max_len)
    # Test: shift the training window left by one and append the validation item.
    next_item = np.zeros(num_rows, dtype=np.int64)
    next_item[data.valid.user] = data.valid.item
    test = left_padded_windows(items, indptr[:-1], indptr[1:], max_len + 1)[:, 1:].copy()
    has_valid = next_item[rows] != 0
    test[has_valid, :-1] = test[has_valid, 1:]
    test[has_valid, -1] = next_item[has_valid]
    if not has_valid.all():  # users without a validation item keep their training window
        test[~has_valid] = valid[~has_valid]
    return {"valid": valid, "test": test}


class SequenceContext:
    """``context_of(users, part)`` for ``RankingEvaluator``: user ids -> their left-padded input
    sequences for the validation or the test prediction."""

    def __init__(
        self, data: PreparedData, max_len: int, device: torch.device | str = "cpu"
    ) -> None:
        check_max_len(max_len)
        self.max_len = int(max_len)
        self.tables = {
            part: torch.from_numpy(table).to(device)
            for part, table in evaluation_sequences(data, max_len).items()
        }

    def __call__(self, users: Tensor, part: str) -> Tensor:
        return self.tables[part][users]
