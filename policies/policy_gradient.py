"""An offline policy-gradient router: a softmax policy pi(model | prompt embedding) trained with a
GRPO-style group-relative objective on logged outcomes.

Reward of sending prompt x to model m (a plain function, `rewards`):

    r(x, m) = quality(x, m) - cost_lambda * cost(x, m) / max_m' cost(x, m')

`cost_lambda` defaults to 0 (pure quality): the shared decision function already trades quality
against cost at serving time, so a cost term here is only for a policy that should *prefer*
cheaper models among equally good ones by itself (the preference survives calibration, so the
dearer model's calibrated quality is then understated). The cost term is relative (the most
expensive observed model of the prompt costs 1), so it is unit-free like the decision function's.

One group is one prompt with every model whose quality is observed (masked cells are left out of
the group: not in its mean or std, and the softmax is taken over the observed models only, so a
masked cell is never a reward of 0). The advantage is group-relative (`group_advantages`):

    A(x, m) = (r(x, m) - mean_group r) / (std_group r + eps)     (population std)

The loss is the exact expectation over the group, minus an entropy bonus:

    L(x) = - sum_m pi(m | x) A(x, m) - entropy_coef * H(pi(. | x))

Why the exact expectation and not sampled REINFORCE: offline, every model's reward on a training
prompt is known, so the expectation over the group costs one pass over m models; sampling k
models per prompt estimates the same gradient with added variance and nothing gained. For a
policy flexible enough to fit each prompt, the optimum is pi(m | x) ∝ exp(A(x, m) / entropy_coef):
the entropy bonus keeps pi graded rather than one-hot, which is what calibration needs.

`_scores` returns pi(m | x) over all models (softmax probabilities): LearnedPolicy's per-model
Platt calibration maps them to observed quality, so `min_quality` means what it does for every
policy and `policies.decision` applies the cost trade-off. `calibration="none"` would serve pi
itself, which sums to 1 over models and is not a quality; keep Platt or isotonic.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from policies.learned import LearnedPolicy


def rewards(
    Y: np.ndarray, M: np.ndarray, cost: np.ndarray | None = None, cost_lambda: float = 0.0
) -> np.ndarray:
    """r = quality - cost_lambda * cost / (the prompt's highest observed cost); NaN where masked.

    A cell with a quality but no cost is charged its model's mean relative cost (0 if never known)."""
    R = np.where(M, Y, np.nan).astype(float)
    if cost is None or not cost_lambda:
        return R
    c = np.asarray(cost, dtype=float)
    known = np.isfinite(c)
    top = np.where(known, c, -np.inf).max(axis=1, keepdims=True)
    rel = np.where(known, c / np.where(top > 0, top, 1.0), np.nan)  # a prompt where all is free: 0
    mean = np.nan_to_num(_finite_mean(rel, axis=0))
    rel = np.where(known, rel, mean)
    return R - cost_lambda * rel


def _finite_mean(a: np.ndarray, axis: int) -> np.ndarray:
    """Mean of the finite entries along `axis`; NaN where there are none (no warning)."""
    ok = np.isfinite(a)
    n = ok.sum(axis=axis)
    return np.where(n > 0, np.where(ok, a, 0.0).sum(axis=axis) / np.maximum(n, 1), np.nan)


def group_advantages(R: np.ndarray, M: np.ndarray, eps: float = 1e-6, std: bool = True) -> np.ndarray:
    """(r - group mean) / (group std + eps) per prompt over its observed models; 0 where masked.

    `std=False` only centres (no scaling): a group of near-equal rewards then gives small
    advantages instead of being blown up to unit scale."""
    M = np.asarray(M, dtype=bool)
    n = M.sum(axis=1, keepdims=True)
    r = np.where(M, R, 0.0)
    mean = r.sum(axis=1, keepdims=True) / np.maximum(n, 1)
    A = np.where(M, r - mean, 0.0)
    if std:
        sd = np.sqrt((A**2).sum(axis=1, keepdims=True) / np.maximum(n, 1))
        A = A / np.where(sd > 0, sd + eps, 1.0)  # an all-equal group stays 0
    return A


class PolicyGradientPolicy(LearnedPolicy):
    name = "pg"

    def __init__(
        self,
        hidden: int = 128,
        cost_lambda: float = 0.0,
        entropy_coef: float = 0.1,
        std_normalize: bool = True,
        dropout: float = 0.2,
        weight_decay: float = 1e-3,
        lr: float = 1e-3,
        epochs: int = 200,
        calibration: str = "platt",
        calib_folds: int = 5,
        text_chars: int = 400,
        seed: int = 0,
        encoder=None,
    ):
        self.hidden = hidden  # 0: a linear policy
        self.cost_lambda = cost_lambda
        self.entropy_coef = entropy_coef
        self.std_normalize = std_normalize
        self.dropout = dropout
        self.weight_decay = weight_decay
        self.lr = lr
        self.epochs = epochs
        self._set_common(calibration, calib_folds, text_chars, seed, encoder)

    # LearnedPolicy hands `_fit_scores` only (X, Y, M) and its cross-fitted calibration refits
    # clones on row subsets, so the per-prompt cost travels as a lookup keyed by embedding row.
    _cost_by_row: dict[bytes, np.ndarray] | None = None

    def fit(self, data: Any, embeddings: np.ndarray | None = None) -> PolicyGradientPolicy:
        X = self.embed(data.texts) if embeddings is None else np.asarray(embeddings, dtype=np.float32)
        cost = getattr(data, "cost", None)
        self._cost_by_row = None
        if self.cost_lambda and cost is not None and len(X) == len(cost):
            rows: dict[bytes, list[np.ndarray]] = {}
            for x, c in zip(X, np.asarray(cost, dtype=float), strict=True):
                rows.setdefault(x.tobytes(), []).append(c)
            # identical prompts embed identically: their costs are averaged
            self._cost_by_row = {k: _finite_mean(np.stack(v), axis=0) for k, v in rows.items()}
        try:
            super().fit(data, embeddings=X)
        finally:
            self._cost_by_row = None  # training-only; never part of the artifact
        used = bool(self.cost_lambda) and cost is not None
        self.metrics_["pg"] = {"cost_lambda": float(self.cost_lambda), "cost_in_reward": used}
        return self

    def clone(self) -> PolicyGradientPolicy:
        inner = type(self)(**self.get_params())
        inner._cost_by_row = self._cost_by_row
        return inner

    def _fit_scores(self, X, Y, M):
        import torch

        from policies.torch_fit import fit_module

        cost = None
        if self._cost_by_row is not None:
            cost = np.stack([self._cost_by_row[x.tobytes()] for x in np.asarray(X, dtype=np.float32)])
        A = group_advantages(rewards(Y, M, cost, self.cost_lambda), M, std=self.std_normalize)
        Xt = torch.as_tensor(np.asarray(X, dtype=np.float32))
        At = torch.as_tensor(A.astype(np.float32))
        Mt = torch.as_tensor(np.asarray(M, dtype=bool))
        torch.manual_seed(self.seed)
        d, m = X.shape[1], Y.shape[1]
        if self.hidden > 0:
            net = torch.nn.Sequential(
                torch.nn.Linear(d, self.hidden),
                torch.nn.ReLU(),
                torch.nn.Dropout(self.dropout),
                torch.nn.Linear(self.hidden, m),
            )
        else:
            net = torch.nn.Sequential(torch.nn.Linear(d, m))
        beta = float(self.entropy_coef)

        def loss(mod, i):
            return pg_loss(mod(Xt[i]), At[i], Mt[i], beta)

        # one thread: these matmuls are small, and on shared cores several threads spin (a fit on
        # the planted test data took 25x the CPU time with 2 threads under load than with 1)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            fit_module(
                net,
                loss,
                len(X),
                epochs=self.epochs,
                lr=self.lr,
                weight_decay=self.weight_decay,
                seed=self.seed,
            )
        finally:
            torch.set_num_threads(threads)
        layers = [mod for mod in net if isinstance(mod, torch.nn.Linear)]
        if self.hidden > 0:
            self.w1_ = layers[0].weight.detach().numpy().T.copy()
            self.b1_ = layers[0].bias.detach().numpy().copy()
        self.w2_ = layers[-1].weight.detach().numpy().T.copy()
        self.b2_ = layers[-1].bias.detach().numpy().copy()

    def logits(self, X: np.ndarray) -> np.ndarray:
        h = np.asarray(X, dtype=np.float32)
        if self.hidden > 0:
            h = np.maximum(h @ self.w1_ + self.b1_, 0.0)
        return h @ self.w2_ + self.b2_

    def _scores(self, X):
        z = self.logits(X)
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    def action_probs(self, batch) -> np.ndarray:
        """pi(model | prompt), uncalibrated: the policy itself (rows sum to 1)."""
        self._check_fitted()
        return self._scores(self.features(batch))


def pg_loss(logits, A, M, entropy_coef: float):
    """Mean over prompts of -E_{m ~ pi}[A] - entropy_coef * H(pi), pi a softmax over observed models."""
    import torch

    logp = torch.log_softmax(logits.masked_fill(~M, -1e9), dim=1)
    p = logp.exp() * M
    gain = (p * A).sum(1)
    entropy = -(p * torch.where(M, logp, torch.zeros_like(logp))).sum(1)
    has = M.any(1).float()  # a prompt with nothing observed teaches nothing
    return -((gain + entropy_coef * entropy) * has).sum() / has.sum().clamp(min=1.0)
