"""Off-policy evaluation: what would a candidate policy have scored on traffic another policy routed?

Each logged request i has a context x_i, the arm a_i the logging policy chose with probability
p_i (its propensity, logged by the gateway), and a reward r_i (the feedback rating). For a target
policy pi with probabilities pi(a | x):

- IPS     mean_i  w_i r_i,  w_i = pi(a_i | x_i) / p_i              (unbiased; high variance)
- SNIPS   sum_i w_i r_i / sum_i w_i                                 (self-normalised; small bias)
- DM      mean_i  sum_a pi(a | x_i) q(x_i, a)                       (a reward model q; biased if q is)
- DR      DM + mean_i w_i (r_i - q(x_i, a_i))                       (unbiased if p is right *or* q is)

Intervals are normal 95% intervals from the per-request terms (delta method for SNIPS); they are
honest only with enough requests where the target agrees with the log, which `support` reports
(the effective sample size of the weights). The reward model `q` is a ridge regression per arm on
prompt embeddings, cross-fitted (each request scored by a model that did not see it) so DR's
correction term is not flattered by over-fitting.

Written here rather than taken from Open Bandit Pipeline: these are a few lines of numpy each,
and a dependency for them would not pay for itself.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import norm


@dataclass(frozen=True)
class Estimate:
    estimator: str
    value: float
    low: float
    high: float

    def as_dict(self) -> dict:
        return asdict(self)


def _interval(name: str, terms: np.ndarray, value: float | None = None, level: float = 0.95) -> Estimate:
    n = len(terms)
    v = float(np.mean(terms)) if value is None else value
    half = float(norm.ppf(0.5 + level / 2) * np.std(terms, ddof=1) / np.sqrt(n)) if n > 1 else float("inf")
    return Estimate(name, v, v - half, v + half)


def estimate(
    rewards: np.ndarray,
    actions: np.ndarray,
    propensities: np.ndarray,
    target: np.ndarray,
    q_hat: np.ndarray | None = None,
    level: float = 0.95,
) -> dict[str, Estimate]:
    """rewards, actions (arm index), propensities: (n,); target: (n, k) pi(a | x_i);
    q_hat: (n, k) reward-model predictions (enables DM and DR)."""
    r = np.asarray(rewards, dtype=float)
    a = np.asarray(actions, dtype=int)
    p = np.asarray(propensities, dtype=float)
    pi = np.asarray(target, dtype=float)
    if not (len(r) == len(a) == len(p) == len(pi)) or len(r) == 0:
        raise ValueError("rewards, actions, propensities and target need the same, non-zero length")
    if (p <= 0).any() or (p > 1).any():
        raise ValueError("propensities must be in (0, 1]")
    rows = np.arange(len(r))
    w = pi[rows, a] / p
    out = {"ips": _interval("ips", w * r, level=level)}
    if w.sum() > 0:
        v = float((w * r).sum() / w.sum())
        out["snips"] = _interval("snips", w * (r - v) / w.mean(), value=v, level=level)
    if q_hat is not None:
        q = np.asarray(q_hat, dtype=float)
        direct = (pi * q).sum(axis=1)
        out["dm"] = _interval("dm", direct, level=level)
        out["dr"] = _interval("dr", direct + w * (r - q[rows, a]), level=level)
    return out


def effective_sample_size(target_on_logged: np.ndarray, propensities: np.ndarray) -> float:
    """Kish's effective sample size of the importance weights (n when target == logging)."""
    w = np.asarray(target_on_logged, dtype=float) / np.asarray(propensities, dtype=float)
    return float(w.sum() ** 2 / (w**2).sum()) if (w > 0).any() else 0.0


def reward_model(
    X: np.ndarray, actions: np.ndarray, rewards: np.ndarray, k: int, folds: int = 2, seed: int = 0
) -> np.ndarray:
    """(n, k) cross-fitted predictions of each arm's reward: ridge per arm on X, falling back to
    the arm's (or the overall) mean reward where an arm has too few observations."""
    from sklearn.linear_model import Ridge

    X = np.asarray(X, dtype=float)
    a = np.asarray(actions, dtype=int)
    r = np.asarray(rewards, dtype=float)
    fold = np.random.default_rng(seed).permutation(len(r)) % folds
    out = np.empty((len(r), k))
    for f in range(folds):
        train, test = fold != f, fold == f
        base = r[train].mean() if train.any() else r.mean()
        for j in range(k):
            sel = train & (a == j)
            if sel.sum() >= 5:
                out[test, j] = np.clip(Ridge(alpha=1.0).fit(X[sel], r[sel]).predict(X[test]), 0.0, 1.0)
            else:
                out[test, j] = r[sel].mean() if sel.any() else base
    return out
