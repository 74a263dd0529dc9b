"""Cluster routing: k-means over prompt embeddings; a model's predicted quality for a prompt is
its mean quality on the prompt's cluster (shrunk toward its overall mean for small clusters)."""

from __future__ import annotations

import numpy as np

from policies.learned import LearnedPolicy, column_prior


class ClusterPolicy(LearnedPolicy):
    name = "cluster"

    def __init__(
        self,
        n_clusters: int = 16,
        prior_weight: float = 5.0,
        calibration: str = "platt",
        calib_folds: int = 5,
        text_chars: int = 400,
        seed: int = 0,
        encoder=None,
    ):
        self.n_clusters = n_clusters
        self.prior_weight = prior_weight
        self._set_common(calibration, calib_folds, text_chars, seed, encoder)

    def _fit_scores(self, X, Y, M):
        from sklearn.cluster import KMeans

        k = max(1, min(self.n_clusters, len(X) // 5))
        km = KMeans(n_clusters=k, n_init=4, random_state=self.seed).fit(X)
        self.centroids_ = km.cluster_centers_.astype(np.float32)
        prior = column_prior(Y, M)
        Yz = np.where(M, Y, 0.0)
        table = np.zeros((k, Y.shape[1]))
        for c in range(k):
            sel = km.labels_ == c
            table[c] = (Yz[sel].sum(0) + self.prior_weight * prior) / (M[sel].sum(0) + self.prior_weight)
        self.table_ = table

    def predict_cluster(self, X: np.ndarray) -> np.ndarray:
        d = ((np.asarray(X)[:, None, :] - self.centroids_[None]) ** 2).sum(-1)
        return d.argmin(1)

    def _scores(self, X):
        return self.table_[self.predict_cluster(X)]
