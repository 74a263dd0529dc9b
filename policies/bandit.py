"""Contextual bandits that learn online from feedback: LinUCB and linear Thompson sampling.

One arm per model. The context is the prompt embedding, reduced by a fixed, seeded Gaussian
random projection to `dim` dimensions plus a bias term (so every replica and every restart maps a
prompt to the same context). Per arm the bandit keeps ridge-regression sufficient statistics

    A = ridge * I + sum x x^T        b = sum y x        (y = observed quality - prior quality)

which are sums: order-free and mergeable, which is what lets replicas share one bandit through
Redis (`router.state.bandit`).

What is learned, and what is not. The reward of a routed request is the quality feedback minus
the cost term of the shared decision function, `(1 - w) * rating - w * cost / c_ref` with
`w = cost_weight` (config, or the request's). Cost is known before the call (prices x tokens), so
the bandit learns only the unknown part, quality, and leaves cost, constraints and the trade-off to
`policies.decision` like every other policy: constraints are applied before the arm is chosen.

Warm start: the bandit learns the *residual* of a prior quality: the catalogue's prior per model
(config `quality.default`) or, with `warm_start: <artifact dir>`, a trained policy's calibrated
predictions; `warm_start: irt` (or an irt artifact) starts from the pool-agnostic `irt` policy,
i.e. each model's calibrated ability (docs/learned-policies.md, "Zero-shot routing"). An untrained bandit therefore routes like its prior and explores around it.

Exploration and propensity: `action_probabilities` gives the exact probability of each arm, which
the engine samples from and logs (`RequestRecord.propensity`) for off-policy evaluation:
- LinUCB: the arm maximising the decision score of `mean + alpha * sqrt(x^T A^-1 x)`;
- Thompson: `samples` draws of theta ~ N(theta_hat, alpha^2 A^-1); the policy is "the arm a
  uniformly drawn sample prefers", so the empirical frequencies *are* its probabilities;
both mixed with `epsilon` uniform exploration over the eligible arms (so every eligible arm has
propensity >= epsilon / k, which keeps IPS weights bounded).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from policies.base import ModelInfo, PriorPolicy, PromptBatch
from policies.decision import choose


class LinearBandit(PriorPolicy):
    name: ClassVar[str] = "bandit"
    needs_embeddings: ClassVar[bool] = True

    def __init__(
        self,
        dim: int = 32,
        alpha: float = 0.1,
        ridge: float = 1.0,
        epsilon: float = 0.02,
        samples: int = 64,
        warm_start: str | None = None,
        seed: int = 0,
        encoder: Any = None,
        abilities_file: str | None = None,
    ):
        if dim < 1 or ridge <= 0 or alpha < 0 or not 0 <= epsilon <= 1 or samples < 1:
            raise ValueError("bandit needs dim >= 1, ridge > 0, alpha >= 0, 0 <= epsilon <= 1, samples >= 1")
        self.dim = int(dim)
        self.alpha = float(alpha)
        self.ridge = float(ridge)
        self.epsilon = float(epsilon)
        self.samples = int(samples)
        self.warm_start = warm_start
        self.seed = int(seed)
        self.encoder = encoder
        self.abilities_file = abilities_file

    # ---- set-up ----------------------------------------------------------------------------------
    def fit(self, catalog: Sequence[ModelInfo]) -> LinearBandit:
        super().fit(catalog)
        self.prior_ = np.array([m.prior() for m in self.catalog_], dtype=float)
        self.warm_ = None
        if self.warm_start:
            from policies.artifacts import load_policy
            from policies.irt import shipped_artifact

            # "irt": the pretrained pool-agnostic policy, so the prior is each model's calibrated
            # ability (or benchmarks, or category priors), as the gateway's `irt` serves it
            src = shipped_artifact() if self.warm_start == "irt" else self.warm_start
            warm = load_policy(src, encoder=self.encoder)
            if hasattr(warm, "attach_pool"):
                warm.attach_pool(self.catalog_, self.abilities_file)
            self.warm_ = (warm, [warm.models_.index(m) if m in warm.models_ else -1 for m in self.models_])
        self.reset()
        return self

    def reset(self) -> None:
        """Forget everything learned (statistics back to the ridge prior)."""
        k, d = len(self.models_), self.dim + 1
        self.A_ = np.tile(np.eye(d) * self.ridge, (k, 1, 1))
        self.b_ = np.zeros((k, d))
        self.n_ = np.zeros(k)
        self._inv: np.ndarray | None = None
        self._rng = np.random.default_rng(self.seed)
        self._proj: np.ndarray | None = None

    def state(self) -> dict[str, np.ndarray]:
        """The learned statistics (copies): `A` (k, d, d), `b` (k, d), `n` (k,). What replicas
        snapshot and share; the exploration RNG and the projection are not part of it."""
        return {"A": self.A_.copy(), "b": self.b_.copy(), "n": self.n_.copy()}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Replace the learned statistics with `state` (as `state()` gives them, for these models
        and this `dim`). Unlike `reset`, the RNG keeps its stream."""
        A, b, n = (np.asarray(state[k], dtype=float) for k in ("A", "b", "n"))
        if A.shape != self.A_.shape or b.shape != self.b_.shape or n.shape != self.n_.shape:
            raise ValueError(
                f"bandit state of shapes {A.shape}, {b.shape}, {n.shape} does not fit "
                f"{self.A_.shape}, {self.b_.shape}, {self.n_.shape}"
            )
        self.A_, self.b_, self.n_ = A.copy(), b.copy(), n.copy()
        self._inv = None

    def projection(self, emb_dim: int) -> np.ndarray:
        if self._proj is None or self._proj.shape[0] != emb_dim:
            rng = np.random.default_rng([self.seed, emb_dim, self.dim])
            self._proj = rng.standard_normal((emb_dim, self.dim)) / np.sqrt(self.dim)
        return self._proj

    def contexts(self, batch: PromptBatch) -> np.ndarray:
        """(n, dim + 1): projected embedding and a bias term."""
        if batch.embeddings is None:
            if self.encoder is None:
                raise ValueError(f"policy {self.name!r} needs prompt embeddings")
            batch.embeddings = np.asarray(self.encoder.encode(batch.texts), dtype=np.float32)
        e = np.asarray(batch.embeddings, dtype=float)
        z = e @ self.projection(e.shape[1])
        return np.hstack([z, np.ones((len(z), 1))])

    def prior_quality(self, batch: PromptBatch) -> np.ndarray:
        n = len(batch)
        prior = np.tile(self.prior_, (n, 1))
        if self.warm_ is not None:
            warm, cols = self.warm_
            pred = warm.predict_quality(batch)
            for j, c in enumerate(cols):
                if c >= 0:
                    prior[:, j] = pred[:, c]
        return prior

    # ---- learning --------------------------------------------------------------------------------
    def update(self, model: str, x: np.ndarray, y: float, sign: float = 1.0) -> None:
        """Add (sign=1) or remove (sign=-1) one observation's sufficient statistics."""
        j = self.models_.index(model)
        x = np.asarray(x, dtype=float)
        self.A_[j] += sign * np.outer(x, x)
        self.b_[j] += sign * y * x
        self.n_[j] += sign
        self._inv = None

    def observation(self, batch: PromptBatch, model: str, reward: float) -> tuple[np.ndarray, float]:
        """The (context, residual) one feedback contributes: what replicas exchange."""
        x = self.contexts(batch)[0]
        j = self.models_.index(model)
        return x, float(reward) - float(self.prior_quality(batch)[0, j])

    def observe(self, batch: PromptBatch, model: str, reward: float) -> None:
        if model not in self.models_:
            return
        x, y = self.observation(batch, model, reward)
        self.update(model, x, y)

    def inverses(self) -> np.ndarray:
        if self._inv is None:
            self._inv = np.linalg.inv(self.A_)
        return self._inv

    def theta(self) -> np.ndarray:
        return np.einsum("kij,kj->ki", self.inverses(), self.b_)

    # ---- predicting ------------------------------------------------------------------------------
    def predict_quality(self, batch: PromptBatch) -> np.ndarray:
        """The posterior mean quality (what ranks fallbacks and what `min_quality` is checked on)."""
        self._check_fitted()
        x = self.contexts(batch)
        return np.clip(self.prior_quality(batch) + x @ self.theta().T, 0.0, 1.0)

    def width(self, x: np.ndarray) -> np.ndarray:
        """(n, k) posterior standard deviation of each arm's mean at each context."""
        return np.sqrt(np.maximum(np.einsum("ni,kij,nj->nk", x, self.inverses(), x), 0.0))

    def optimistic(self, batch: PromptBatch) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def action_probabilities(
        self, batch: PromptBatch, cost: np.ndarray, eligible: np.ndarray, cost_weight: float
    ) -> np.ndarray:
        """(k,) probability of choosing each arm for the first prompt of `batch`; zero where not
        eligible; sums to 1 when any arm is eligible."""
        self._check_fitted()
        eligible = np.asarray(eligible, dtype=bool)
        k = int(eligible.sum())
        if k == 0:
            return np.zeros(len(self.models_))
        q = self.optimistic(batch)  # (s, k_models): one or more draws
        c = np.broadcast_to(np.asarray(cost, dtype=float), q.shape)
        picks = choose(q, c, cost_weight, np.broadcast_to(eligible, q.shape))
        greedy = np.bincount(picks[picks >= 0], minlength=len(self.models_)) / len(picks)
        return (1.0 - self.epsilon) * greedy + self.epsilon * eligible / k

    def sample_arm(self, probs: np.ndarray) -> int:
        return int(self._rng.choice(len(probs), p=probs / probs.sum()))


class LinUCBPolicy(LinearBandit):
    """LinUCB (Li et al., 2010) with a disjoint linear model per arm."""

    name = "linucb"

    def optimistic(self, batch: PromptBatch) -> np.ndarray:
        x = self.contexts(batch)[:1]
        mean = self.prior_quality(batch)[:1] + x @ self.theta().T
        return mean + self.alpha * self.width(x)


class ThompsonPolicy(LinearBandit):
    """Linear Thompson sampling (Agrawal & Goyal, 2013): theta ~ N(theta_hat, alpha^2 A^-1)."""

    name = "thompson"

    def optimistic(self, batch: PromptBatch) -> np.ndarray:
        x = self.contexts(batch)[0]
        mean = self.prior_quality(batch)[0] + self.theta() @ x
        # the arm's mean at x is Gaussian with sd alpha * sqrt(x^T A^-1 x): draw it directly
        sd = self.alpha * self.width(x[None, :])[0]
        return mean + sd * self._rng.standard_normal((self.samples, len(self.models_)))
