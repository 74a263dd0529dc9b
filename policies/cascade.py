"""Cascade: call a cheap model first, and escalate to a strong one when the answer looks weak.

The policy side of a two-step dispatch, for the engine to run:

    plan = policy.cascade_plan(batch)[0]          # CascadePlan(first, escalate_to, threshold)
    answer = call(plan.first)
    if policy.should_escalate(prompt, answer):    # P(answer is good) < plan.threshold
        answer = call(plan.escalate_to)

The scorer is a logistic regression on features of (prompt, answer): both embeddings, their
product and the answer's length, trained on the first model's recorded answers and whether they
were right (RouterBench `M|model_response`, RouteLLM `M_response`). The threshold is picked on
out-of-fold scores of the training data: the lowest escalation rate whose cascade quality stays
within `tolerance` of always calling the strong model.

For single-step routing (and every other policy's evaluator) it is also a per-model logistic
quality predictor on the prompt alone, so `router:<cascade>` still routes without the two-step
dispatch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from policies.base import PromptBatch
from policies.learned import sigmoid
from policies.logistic import LogisticPolicy


@dataclass(frozen=True)
class CascadePlan:
    first: str
    escalate_to: str
    threshold: float  # escalate when P(first answer is good) < threshold


class CascadePolicy(LogisticPolicy):
    name = "cascade"

    def __init__(
        self,
        first: str | None = None,
        escalate_to: str | None = None,
        threshold: float | None = None,
        tolerance: float = 0.01,
        max_cost_share: float = 0.2,
        C: float = 1.0,
        calibration: str = "platt",
        calib_folds: int = 5,
        text_chars: int = 400,
        seed: int = 0,
        encoder=None,
    ):
        self.first = first
        self.escalate_to = escalate_to
        self.threshold = threshold
        self.tolerance = tolerance
        self.max_cost_share = max_cost_share
        super().__init__(C, calibration, calib_folds, text_chars, seed, encoder)

    # ---- features of (prompt, answer) ------------------------------------------------------------
    def answer_view(self, answers: list[str | None]) -> list[str]:
        return [(a or "")[: self.text_chars] for a in answers]

    @staticmethod
    def pair_features(P: np.ndarray, A: np.ndarray, answers: list[str | None]) -> np.ndarray:
        n = np.array([len(a or "") for a in answers], dtype=float)
        length = np.stack([np.log1p(n) / 8, (n == 0).astype(float)], axis=1)
        return np.concatenate([P, A, P * A, length], axis=1).astype(np.float32)

    # ---- fitting -------------------------------------------------------------------------------
    def pick_models(self, data) -> tuple[str, str]:
        models = list(data.models)
        Y = np.where(data.mask, data.quality, np.nan)
        mq = np.nanmean(Y, axis=0)
        cost = (
            np.nanmean(data.cost, axis=0)
            if data.cost is not None and np.isfinite(data.cost).any()
            else np.ones(len(models))
        )
        strong = self.escalate_to or models[int(np.nanargmax(mq))]
        if strong not in models:
            raise ValueError(f"escalate_to {strong!r} is not in the data's models {models}")
        if self.first:
            if self.first not in models:
                raise ValueError(f"first {self.first!r} is not in the data's models {models}")
            return self.first, strong
        js = models.index(strong)
        cheap = [j for j in range(len(models)) if j != js and cost[j] <= self.max_cost_share * cost[js]]
        if not cheap:
            cheap = [int(np.argmin(np.where(np.arange(len(models)) == js, np.inf, cost)))]
        return models[max(cheap, key=lambda j: mq[j])], strong

    def fit(self, data, embeddings=None, answer_embeddings=None) -> CascadePolicy:
        super().fit(data, embeddings=embeddings)
        X = self.embed(data.texts) if embeddings is None else np.asarray(embeddings, dtype=np.float32)
        self.first_, self.escalate_to_ = self.pick_models(data)
        jf, js = data.models.index(self.first_), data.models.index(self.escalate_to_)
        answers = (data.responses or {}).get(self.first_)
        if answers is None or answer_embeddings is None:
            raise ValueError(
                f"a cascade learns from the first model's answers; the data has no responses for {self.first_}"
            )
        rows = np.flatnonzero(data.mask[:, jf] & data.mask[:, js])
        F = self.pair_features(X[rows], np.asarray(answer_embeddings)[rows], [answers[i] for i in rows])
        good = (data.quality[rows, jf] >= 0.5).astype(float)
        from sklearn.linear_model import LogisticRegression

        def fit_scorer(idx):
            if len(set(good[idx])) < 2:
                return np.zeros(F.shape[1]), float(
                    np.log((good[idx].mean() + 1e-3) / (1 - good[idx].mean() + 1e-3))
                )
            lr = LogisticRegression(C=self.C, max_iter=2000).fit(F[idx], good[idx])
            return lr.coef_[0], float(lr.intercept_[0])

        # out-of-fold scores pick the threshold; the served scorer is then fitted on everything
        oof = np.zeros(len(rows))
        fold = np.random.default_rng(self.seed).permutation(len(rows)) % max(2, self.calib_folds)
        for f in np.unique(fold):
            w, b = fit_scorer(np.flatnonzero(fold != f))
            oof[fold == f] = sigmoid(F[fold == f] @ w + b)
        self.scorer_coef_, self.scorer_intercept_ = fit_scorer(np.arange(len(rows)))
        self.scorer_coef_ = np.asarray(self.scorer_coef_, dtype=np.float32)
        qf, qs = data.quality[rows, jf], data.quality[rows, js]
        if self.threshold is not None:
            self.threshold_ = float(self.threshold)
        else:
            target = qs.mean() - self.tolerance
            self.threshold_ = 1.0
            cuts = np.unique(np.concatenate([[0.0], oof, [1.0]]))
            for k, t in enumerate(cuts):
                if np.where(oof < t, qs, qf).mean() >= target:
                    # the fewest escalations that hold; the cut sits midway between the last
                    # escalated score and the first kept one, not on a training point
                    self.threshold_ = float(t if k == 0 else (cuts[k - 1] + t) / 2)
                    break
        esc = oof < self.threshold_
        self.metrics_["cascade"] = {
            "first": self.first_,
            "escalate_to": self.escalate_to_,
            "threshold": self.threshold_,
            "out_of_fold_escalation_rate": round(float(esc.mean()), 4),
            "out_of_fold_quality": round(float(np.where(esc, qs, qf).mean()), 4),
            "strong_quality": round(float(qs.mean()), 4),
            "first_quality": round(float(qf.mean()), 4),
            "scorer_auc": _auc(oof, good),
        }
        return self

    # ---- the two-step interface for the engine ---------------------------------------------------
    def cascade_plan(self, batch: PromptBatch) -> list[CascadePlan]:
        self._check_fitted()
        return [CascadePlan(self.first_, self.escalate_to_, self.threshold_)] * len(batch)

    def answer_quality(self, prompts: list[str], answers: list[str | None]) -> np.ndarray:
        """P(each first-model answer is good), from the prompt and the answer."""
        self._check_fitted()
        P = self.embed(prompts)
        A = np.asarray(self.encoder.encode(self.answer_view(answers)), dtype=np.float32)
        return self.scorer(P, A, answers)

    def should_escalate(self, prompt: str, answer: str | None) -> bool:
        return bool(self.answer_quality([prompt], [answer])[0] < self.threshold_)

    def scorer(self, P: np.ndarray, A: np.ndarray, answers: list[str | None]) -> np.ndarray:
        """P(answer is good) from prompt embeddings, answer embeddings and the answers."""
        return sigmoid(self.pair_features(P, A, answers) @ self.scorer_coef_ + self.scorer_intercept_)


def _auc(score: np.ndarray, y: np.ndarray) -> float | None:
    pos, neg = score[y == 1], score[y == 0]
    if not len(pos) or not len(neg):
        return None
    ranks = np.argsort(np.argsort(np.concatenate([pos, neg]))) + 1
    return round(float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))), 4)
