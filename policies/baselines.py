"""Baselines that need no training data: their knowledge is the model catalogue from config."""

from __future__ import annotations

import numpy as np

from policies.base import PriorPolicy, PromptBatch


class CheapestPolicy(PriorPolicy):
    """Always prefers the cheapest model: predicted quality is the same for every model, so the
    shared decision's tie-break (cheaper first) does the choosing; constraints still apply."""

    name = "cheapest"

    def predict_quality(self, batch: PromptBatch) -> np.ndarray:
        self._check_fitted()
        return np.ones((len(batch), len(self.models_)))


class StrongestPolicy(PriorPolicy):
    """Prefers the model with the best prior quality (the catalogue's `quality.default`)."""

    name = "strongest"

    def predict_quality(self, batch: PromptBatch) -> np.ndarray:
        self._check_fitted()
        return self._prior_matrix(len(batch))


class RandomPolicy(PriorPolicy):
    """Uniformly random preferences, reproducible from `seed`.

    The generator is derived from the seed and the prompt text, so the same prompt gets the
    same ranking in every replica and across restarts, and `predict_quality` stays pure."""

    name = "random"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def predict_quality(self, batch: PromptBatch) -> np.ndarray:
        self._check_fitted()
        import zlib

        rows = [
            np.random.default_rng([self.seed, zlib.crc32(t.encode())]).random(len(self.models_))
            for t in batch.texts
        ]
        return np.array(rows).reshape(len(batch), len(self.models_))
