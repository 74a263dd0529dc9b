"""Contextual Bradley-Terry (Elo-like) routing for pairwise preference data.

Each model j has a strength s_j(x) = theta_j + u_j . x for prompt embedding x, and
P(a beats b on x) = sigmoid(s_a(x) - s_b(x)). It learns from comparisons only, so it fits
arena-style data where no absolute score exists ("A's answer was better than B's"); in the
canonical format a comparison is two rows on one prompt_id (winner 1, loser 0, tie 0.5 each).
From a quality matrix it uses every pair of models whose quality differs on a prompt.

Strengths are relative; the raw score is the probability of beating an average model, which
calibration (on the observed quality) turns into a quality estimate.
"""

from __future__ import annotations

import numpy as np

from policies.learned import LearnedPolicy, sigmoid


class BradleyTerryPolicy(LearnedPolicy):
    name = "bt"

    def __init__(
        self,
        weight_decay: float = 1e-3,
        lr: float = 3e-3,
        epochs: int = 100,
        max_pairs: int = 400_000,
        calibration: str = "platt",
        calib_folds: int = 5,
        text_chars: int = 400,
        seed: int = 0,
        encoder=None,
    ):
        self.weight_decay = weight_decay
        self.lr = lr
        self.epochs = epochs
        self.max_pairs = max_pairs
        self._set_common(calibration, calib_folds, text_chars, seed, encoder)

    @staticmethod
    def _pairs(Y, M):
        n, m = Y.shape
        ia, ib = np.triu_indices(m, 1)
        ok = M[:, ia] & M[:, ib] & (Y[:, ia] != Y[:, ib])
        rows, k = np.nonzero(ok)
        a, b = ia[k], ib[k]
        y = (Y[rows, a] > Y[rows, b]).astype(np.float32)
        return rows, a, b, y

    def _fit_scores(self, X, Y, M):
        import torch

        from policies.torch_fit import fit_module

        rows, a, b, y = self._pairs(Y, M)
        m = Y.shape[1]
        if len(rows) > self.max_pairs:
            keep = np.random.default_rng(self.seed).choice(len(rows), self.max_pairs, replace=False)
            rows, a, b, y = rows[keep], a[keep], b[keep], y[keep]
        torch.manual_seed(self.seed)
        lin = torch.nn.Linear(X.shape[1], m)
        torch.nn.init.zeros_(lin.weight)
        torch.nn.init.zeros_(lin.bias)
        if len(rows):
            Xt = torch.as_tensor(np.asarray(X, dtype=np.float32))
            R, A, B = (torch.as_tensor(v) for v in (rows, a, b))
            Yt = torch.as_tensor(y)

            def loss(mod, i):
                s = mod(Xt[R[i]])
                d = s.gather(1, A[i, None])[:, 0] - s.gather(1, B[i, None])[:, 0]
                return torch.nn.functional.binary_cross_entropy_with_logits(d, Yt[i])

            fit_module(
                lin,
                loss,
                len(rows),
                epochs=self.epochs,
                lr=self.lr,
                weight_decay=self.weight_decay,
                batch_size=2048,
                patience=5,
                seed=self.seed,
            )
        self.coef_ = lin.weight.detach().numpy().T.copy()  # (d, m)
        self.intercept_ = lin.bias.detach().numpy().copy()
        self.pairs_ = int(len(rows))

    def strengths(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(X, dtype=np.float32) @ self.coef_ + self.intercept_

    def _scores(self, X):
        s = self.strengths(X)
        return sigmoid(s - s.mean(1, keepdims=True))
