"""Rating error on held-out ratings."""

from __future__ import annotations

import numpy as np
import torch

from recbench.data.prepared import PreparedData
from recbench.engine.evaluators.metrics import check_finite, eval_mode, rating_metrics


class RatingEvaluator:
    """RMSE/MAE on the held-out ratings of one part, predictions clipped to the rating range."""

    def __init__(
        self, data: PreparedData, *, batch_size: int = 65536, device: torch.device | str = "cpu"
    ) -> None:
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.range = data.rating_range
        self.parts = {
            name: (
                torch.from_numpy(part.user).to(self.device),
                torch.from_numpy(part.item).to(self.device),
                torch.from_numpy(np.asarray(part.rating, dtype=np.float32)).to(self.device),
            )
            for name, part in (("valid", data.valid), ("test", data.test))
            if part.rating is not None and len(part) > 0
        }

    def has(self, part: str) -> bool:
        return part in self.parts

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, part: str) -> dict[str, float]:
        users, items, ratings = self.parts[part]
        with eval_mode(model):
            preds = torch.cat(
                [
                    model.score(users[s : s + self.batch_size], items[s : s + self.batch_size])
                    for s in range(0, len(users), self.batch_size)
                ]
            )
        check_finite(preds, f"{part} rating predictions")
        if self.range is not None:
            preds = preds.clamp(self.range[0], self.range[1])
        return rating_metrics(preds, ratings)
