"""Per-model logistic regression on prompt embeddings: P(model j answers well | prompt).

Fractional quality (partial credit) is fitted as a soft label: each prompt counts as a positive
with weight q and a negative with weight 1 - q, which is the cross-entropy against q. Serving
needs only the coefficients (numpy)."""

from __future__ import annotations

import numpy as np

from policies.learned import LearnedPolicy, sigmoid, soft_targets


class LogisticPolicy(LearnedPolicy):
    name = "logistic"

    def __init__(
        self,
        C: float = 1.0,
        calibration: str = "platt",
        calib_folds: int = 5,
        text_chars: int = 400,
        seed: int = 0,
        encoder=None,
    ):
        self.C = C
        self._set_common(calibration, calib_folds, text_chars, seed, encoder)

    def _fit_scores(self, X, Y, M):
        from sklearn.linear_model import LogisticRegression

        m, d = Y.shape[1], X.shape[1]
        self.coef_ = np.zeros((m, d))
        self.intercept_ = np.zeros(m)
        for j in range(m):
            rows, q = soft_targets(Y, M, j)
            mean = q.mean() if len(q) else 0.5
            if len(q) == 0 or np.all(q == q[0]):  # nothing to separate: a constant
                self.intercept_[j] = float(np.log(max(mean, 1e-4) / max(1 - mean, 1e-4)))
                continue
            Xj = np.concatenate([X[rows], X[rows]])
            yj = np.concatenate([np.ones(len(rows)), np.zeros(len(rows))])
            wj = np.concatenate([q, 1 - q])
            keep = wj > 0
            lr = LogisticRegression(C=self.C, max_iter=1000)
            lr.fit(Xj[keep], yj[keep], sample_weight=wj[keep])
            self.coef_[j] = lr.coef_[0]
            self.intercept_[j] = lr.intercept_[0]

    def _scores(self, X):
        return sigmoid(np.asarray(X, dtype=float) @ self.coef_.T + self.intercept_)
