"""k-nearest-neighbour routing: a prompt's quality per model is what the most similar training
prompts (cosine over embeddings) got from it, shrunk toward the model's mean when neighbours
are few or the model was not observed on them."""

from __future__ import annotations

import numpy as np

from policies.learned import LearnedPolicy, column_prior


class KNNPolicy(LearnedPolicy):
    name = "knn"

    def __init__(
        self,
        k: int = 40,
        prior_weight: float = 1.0,
        calibration: str = "platt",
        calib_folds: int = 5,
        text_chars: int = 400,
        seed: int = 0,
        encoder=None,
    ):
        self.k = k
        self.prior_weight = prior_weight
        self._set_common(calibration, calib_folds, text_chars, seed, encoder)

    def _fit_scores(self, X, Y, M):
        if self.k < 1:
            raise ValueError("k must be >= 1")
        self.X_ = np.asarray(X, dtype=np.float32)
        self.Y_ = np.where(M, Y, 0.0).astype(np.float32)
        self.M_ = M.astype(np.float32)
        self.prior_ = column_prior(Y, M)

    def _scores(self, X):
        k = min(self.k, len(self.X_))
        sim = np.asarray(X, dtype=np.float32) @ self.X_.T
        nn = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        w = np.maximum(np.take_along_axis(sim, nn, axis=1), 0.0)[:, :, None]  # (n, k, 1)
        obs = self.M_[nn] * w
        num = (obs * self.Y_[nn]).sum(1) + self.prior_weight * self.prior_
        den = obs.sum(1) + self.prior_weight
        return num / den
