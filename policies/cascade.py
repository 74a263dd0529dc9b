"""Cascade: call a cheap model first, and escalate to a strong one when the answer looks weak.

The policy side of a two-step dispatch, for the engine to run:

    plan = policy.cascade_plan(batch)[0]      # CascadePlan(first, escalate_to, threshold, second)
    answer = call(plan.first)                 # (and call(plan.second) too, for an agreement plan)
    if policy.should_escalate(prompt, answer[, second_answer]):   # P(answer good) < threshold
        answer = call(plan.escalate_to)

Two plans (AutoMix / FrugalGPT family), both trained on recorded answers (RouterBench
`M|model_response`, RouteLLM `M_response`):

- single: one cheap model; a scorer reads (prompt, answer) and says whether the answer is good.
- agreement: two cheap models answer; the scorer also knows whether they state the same final
  answer (self-consistency across models). Both cheap calls are paid on every prompt. Offline
  only: the gateway serves the single form (an agreement artifact routes in one step there).

The scorer's features are `policies.answers.answer_features` (is a final answer stated, its value,
calculator-annotation errors, share of the prompt's numbers used, hedging, agreement, ...) and,
for the logistic scorer, the prompt and answer embeddings and their product. `second="auto"`
picks the plan (single, or which pair) and `scorer="auto"` picks logistic regression or gradient
boosting, both by out-of-fold results on the training data only; the threshold is then the fewest
out-of-fold escalations whose cascade quality stays within `tolerance` of always calling the
strong model. Serving needs numpy only: the boosted trees are stored as arrays.

For single-step routing (and every other policy's evaluator) it is also a per-model logistic
quality predictor on the prompt alone, so `router:<cascade>` still routes without the two-step
dispatch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np

from policies.answers import answer_features
from policies.base import PromptBatch
from policies.folds import out_of_fold
from policies.learned import out_of_fold_scores, sigmoid
from policies.logistic import LogisticPolicy

SCORERS = ("auto", "logistic", "boosting")


@dataclass(frozen=True)
class CascadePlan:
    first: str
    escalate_to: str
    threshold: float  # escalate when P(first answer is good) < threshold
    second: str | None = None  # agreement plan: a second cheap model answers too


class CascadePolicy(LogisticPolicy):
    name = "cascade"
    # artifacts written before the answer-feature scorer carry neither: they read as these
    scorer_kind_ = "embedding"
    second_: str | None = None

    def __init__(
        self,
        first: str | None = None,
        escalate_to: str | None = None,
        second: str | None = "auto",
        scorer: str = "auto",
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
        if scorer not in SCORERS:
            raise ValueError(f"scorer must be one of {SCORERS}, not {scorer!r}")
        self.first = first
        self.escalate_to = escalate_to
        self.second = second
        self.scorer = scorer
        self.threshold = threshold
        self.tolerance = tolerance
        self.max_cost_share = max_cost_share
        super().__init__(C, calibration, calib_folds, text_chars, seed, encoder)

    # ---- features of (prompt, answer[, second answer]) -----------------------------------------
    def answer_view(self, answers: list[str | None]) -> list[str]:
        return [(a or "")[: self.text_chars] for a in answers]

    @staticmethod
    def hand_features(prompts, answers, seconds=None) -> np.ndarray:
        seconds = seconds if seconds is not None else [None] * len(answers)
        return np.array(
            [answer_features(p, a, s) for p, a, s in zip(prompts, answers, seconds, strict=True)],
            dtype=np.float32,
        ).reshape(len(answers), -1)

    @staticmethod
    def logistic_features(H: np.ndarray, P: np.ndarray, A: np.ndarray) -> np.ndarray:
        return np.concatenate([H, P, A, P * A], axis=1).astype(np.float32)

    # ---- fitting -------------------------------------------------------------------------------
    def pick_models(self, data) -> tuple[str, str]:
        """(first, strong) of the single plan: the best cheap model, and the best model."""
        models = list(data.models)
        mq, cost = _means(data)
        strong = self.escalate_to or models[int(np.nanargmax(mq))]
        if strong not in models:
            raise ValueError(f"escalate_to {strong!r} is not in the data's models {models}")
        if self.first:
            if self.first not in models:
                raise ValueError(f"first {self.first!r} is not in the data's models {models}")
            return self.first, strong
        return models[max(self._cheap(data, strong), key=lambda j: mq[j])], strong

    def _cheap(self, data, strong: str) -> list[int]:
        models = list(data.models)
        _, cost = _means(data)
        js = models.index(strong)
        cheap = [j for j in range(len(models)) if j != js and cost[j] <= self.max_cost_share * cost[js]]
        return cheap or [int(np.argmin(np.where(np.arange(len(models)) == js, np.inf, cost)))]

    def candidate_plans(self, data) -> list[tuple[str, str | None]]:
        """(first, second) plans to compare; the first of a pair is the better one (its answer
        stands when the two agree)."""
        first, strong = self.pick_models(data)
        answered = set((data.responses or {}).keys())
        if self.second not in (None, "auto", "none"):
            if self.second not in data.models:
                raise ValueError(f"second {self.second!r} is not in the data's models {data.models}")
            return [(first, self.second)]
        plans: list[tuple[str, str | None]] = [(first, None)]
        if self.second != "auto":
            return plans
        mq, _ = _means(data)
        cheap = [data.models[j] for j in self._cheap(data, strong) if data.models[j] in answered]
        by_q = sorted(cheap, key=lambda m: -mq[data.models.index(m)])
        for i, a in enumerate(by_q):
            for b in by_q[i + 1 :]:
                if not self.first or a == self.first:
                    plans.append((a, b))
                elif b == self.first:
                    plans.append((b, a))
        return plans

    def fit(
        self, data, embeddings=None, answer_embeddings: Callable[[str], np.ndarray] | None = None
    ) -> CascadePolicy:
        """`answer_embeddings(model)`: embeddings of that model's recorded answers, as
        `answer_view` shows them (a cache); computed here when not given."""
        super().fit(data, embeddings=embeddings)
        X = self.embed(data.texts) if embeddings is None else np.asarray(embeddings, dtype=np.float32)
        first, strong = self.pick_models(data)
        responses = data.responses or {}
        if first not in responses:
            raise ValueError(
                f"a cascade learns from the first model's answers; the data has no responses for {first}"
            )
        self.escalate_to_ = strong
        fold = np.random.default_rng(self.seed).permutation(len(X)) % max(2, self.calib_folds)
        prompts = list(data.texts)
        _, C = _means(data, per_prompt=True)

        def table(plan):
            f, s = plan
            need = [f, strong] + ([s] if s else [])
            rows = np.flatnonzero(np.all([data.mask[:, data.models.index(m)] for m in need], axis=0))
            H = self.hand_features(
                [prompts[i] for i in rows],
                [responses[f][i] for i in rows],
                None if s is None else [responses[s][i] for i in rows],
            )
            return rows, H

        # 1. the plan: each candidate's out-of-fold cascade with a quick scorer (answer features)
        compared = []
        for plan in self.candidate_plans(data):
            rows, H = table(plan)
            good = data.quality[rows, data.models.index(plan[0])] >= 0.5
            oof = _oof(partial(_fit_logistic, C=self.C), H, good, fold[rows])
            compared.append((_plan_outcome(self, data, C, plan, strong, rows, oof), plan))
        compared.sort(key=lambda t: t[0]["key"])
        (self.first_, self.second_) = compared[0][1]
        # 2. the scorer for that plan, chosen by out-of-fold AUC
        rows, H = table((self.first_, self.second_))
        jf, js = data.models.index(self.first_), data.models.index(strong)
        good = data.quality[rows, jf] >= 0.5
        # the one-step router's view of the prompt (how likely each of the two models is right),
        # out of fold here as the served predictor (fitted on everything) is for a new prompt
        Y, Mk = np.asarray(data.quality, dtype=float)[:, [jf, js]], np.asarray(data.mask)[:, [jf, js]]
        onestep = out_of_fold_scores(partial(LogisticPolicy, C=self.C, calibration="none"), X, Y, Mk, fold)
        H = np.concatenate([H, onestep[rows]], axis=1).astype(np.float32)
        A = (
            answer_embeddings(self.first_)
            if answer_embeddings is not None
            else np.asarray(self.encoder.encode(self.answer_view(responses[self.first_])), dtype=np.float32)
        )
        F = self.logistic_features(H, X[rows], np.asarray(A, dtype=np.float32)[rows])
        fits = {
            "logistic": (partial(_fit_logistic, C=self.C, scaled=H.shape[1]), F),
            "boosting": (partial(_fit_boosting, seed=self.seed), H),
        }
        kinds = list(fits) if self.scorer == "auto" else [self.scorer]
        oofs = {k: _oof(fits[k][0], fits[k][1], good, fold[rows]) for k in kinds}
        aucs = {k: _auc(oofs[k], good.astype(float)) for k in kinds}
        # out-of-fold AUC ranks every prompt; a cost-at-one-quality criterion proved noisier
        self.scorer_kind_ = max(kinds, key=lambda k: aucs[k] or 0.0)
        fit_scorer, inputs = fits[self.scorer_kind_]
        model = fit_scorer(inputs, good)
        for k, v in model.items():
            setattr(self, k, v)
        oof = oofs[self.scorer_kind_]
        # 3. the threshold, on the chosen scorer's out-of-fold scores
        qf, qs = data.quality[rows, jf], data.quality[rows, js]
        if self.threshold is not None:
            self.threshold_ = float(self.threshold)
        else:
            self.threshold_ = _pick_threshold(oof, qf, qs, qs.mean() - self.tolerance)
        esc = oof < self.threshold_
        self.metrics_["cascade"] = {
            "first": self.first_,
            "second": self.second_,
            "escalate_to": self.escalate_to_,
            "threshold": self.threshold_,
            "scorer": self.scorer_kind_,
            "scorer_auc": aucs[self.scorer_kind_],
            "scorer_auc_by_kind": aucs,
            "out_of_fold_escalation_rate": round(float(esc.mean()), 4),
            "out_of_fold_quality": round(float(np.where(esc, qs, qf).mean()), 4),
            "strong_quality": round(float(qs.mean()), 4),
            "first_quality": round(float(qf.mean()), 4),
            "plans_compared": [
                {"first": p[0], "second": p[1], **{k: v for k, v in o.items() if k != "key"}}
                for o, p in compared[:5]
            ],
        }
        return self

    # ---- the two-step interface for the engine ---------------------------------------------------
    def cascade_plan(self, batch: PromptBatch) -> list[CascadePlan]:
        self._check_fitted()
        return [CascadePlan(self.first_, self.escalate_to_, self.threshold_, self.second_)] * len(batch)

    def answer_quality(
        self, prompts: list[str], answers: list[str | None], seconds: list[str | None] | None = None
    ) -> np.ndarray:
        """P(each first-model answer is good), from the prompt, the answer (and the second's)."""
        self._check_fitted()
        P = self.embed(prompts)
        if self.scorer_kind_ == "boosting":
            return self.score(prompts, answers, seconds, P)
        A = np.asarray(self.encoder.encode(self.answer_view(answers)), dtype=np.float32)
        return self.score(prompts, answers, seconds, P, A)

    def should_escalate(self, prompt: str, answer: str | None, second: str | None = None) -> bool:
        seconds = None if self.second_ is None or second is None else [second]
        return bool(self.answer_quality([prompt], [answer], seconds)[0] < self.threshold_)

    def score(self, prompts, answers, seconds=None, P=None, A=None) -> np.ndarray:
        """P(answer is good); `P`: prompt embeddings, `A`: answer embeddings (logistic scorer only)."""
        if self.second_ is not None and seconds is None:
            raise ValueError(f"this cascade's scorer reads the answers of {self.first_} and {self.second_}")
        if self.scorer_kind_ == "embedding":  # an artifact from before the answer features
            n = np.array([len(a or "") for a in answers], dtype=float)
            length = np.stack([np.log1p(n) / 8, (n == 0).astype(float)], axis=1)
            F = np.concatenate([P, A, P * A, length], axis=1)
            return sigmoid(F @ self.scorer_coef_ + self.scorer_intercept_)
        cols = [self.models_.index(self.first_), self.models_.index(self.escalate_to_)]
        H = np.concatenate([self.hand_features(prompts, answers, seconds), self._scores(P)[:, cols]], axis=1)
        if self.scorer_kind_ == "boosting":
            return sigmoid(_trees(vars(self), H))
        return sigmoid(self.logistic_features(H, P, A) @ self.scorer_coef_ + self.scorer_intercept_)


# ---- helpers ---------------------------------------------------------------------------------------
def _means(data, per_prompt: bool = False):
    """Mean quality per model, and cost per model (per prompt when asked; ones without costs)."""
    mq = np.nanmean(np.where(data.mask, data.quality, np.nan), axis=0)
    n, m = data.quality.shape
    if data.cost is None or not np.isfinite(data.cost).any():
        C = np.ones((n, m))
    else:
        C = np.where(np.isfinite(data.cost), data.cost, np.nanmean(data.cost, axis=0))
    return mq, (C if per_prompt else C.mean(0))


def _fit_logistic(F: np.ndarray, y: np.ndarray, C: float, scaled: int | None = None) -> dict:
    """Logistic regression with the first `scaled` columns (all by default: the answer features)
    standardised, folded back into one weight vector for serving. Embedding columns stay as they
    are: standardising hundreds of unit-norm dimensions would let them drown the few features."""
    from sklearn.linear_model import LogisticRegression

    if len(set(y)) < 2:
        p = (y.mean() + 1e-3) / (1 + 2e-3)
        return {
            "scorer_coef_": np.zeros(F.shape[1], np.float32),
            "scorer_intercept_": float(np.log(p / (1 - p))),
        }
    k = F.shape[1] if scaled is None else scaled
    mu, sd = np.zeros(F.shape[1]), np.ones(F.shape[1])
    # the floor keeps a near-constant column (one answer length for all) from a huge weight
    mu[:k], sd[:k] = F[:, :k].mean(0), np.maximum(F[:, :k].std(0), 0.05)
    lr = LogisticRegression(C=C, max_iter=2000).fit((F - mu) / sd, y)
    w = lr.coef_[0] / sd
    return {"scorer_coef_": w.astype(np.float32), "scorer_intercept_": float(lr.intercept_[0] - w @ mu)}


def _fit_boosting(H: np.ndarray, y: np.ndarray, seed: int) -> dict:
    """Gradient-boosted trees (scikit-learn), kept as flat arrays so serving needs only numpy."""
    from sklearn.ensemble import GradientBoostingClassifier

    if len(set(y)) < 2:
        p = (y.mean() + 1e-3) / (1 + 2e-3)
        leaf = np.array([np.log(p / (1 - p))])
        return {
            "gb_left_": np.array([-1]),
            "gb_right_": np.array([-1]),
            "gb_feature_": np.array([0]),
            "gb_threshold_": np.array([0.0]),
            "gb_value_": leaf,
            "gb_roots_": np.array([0]),
        }
    gb = GradientBoostingClassifier(
        init="zero",
        n_estimators=100,
        max_depth=3,
        min_samples_leaf=20,  # a leaf speaks for 20 answers at least: small data does not overfit
        learning_rate=0.1,
        subsample=0.8,
        random_state=seed,
    ).fit(H, y)
    parts, roots, off = [], [], 0
    for est in gb.estimators_[:, 0]:
        t = est.tree_
        parts.append(
            (
                np.where(t.children_left >= 0, t.children_left + off, -1),
                np.where(t.children_right >= 0, t.children_right + off, -1),
                t.feature,
                t.threshold,
                t.value[:, 0, 0],
            )
        )
        roots.append(off)
        off += t.node_count
    left, right, feat, thr, val = (np.concatenate(x) for x in zip(*parts, strict=True))
    return {
        "gb_left_": left,
        "gb_right_": right,
        "gb_feature_": np.maximum(feat, 0),
        "gb_threshold_": thr,
        "gb_value_": val * gb.learning_rate,
        "gb_roots_": np.asarray(roots),
    }


def _trees(m: dict, H: np.ndarray) -> np.ndarray:
    """Raw score of the stored trees (`gb_*_` arrays in `m`): each row walks every tree to a leaf
    (x <= threshold: left, compared in float32 as scikit-learn does), the leaves' values summed."""
    X = np.asarray(H, dtype=np.float32)
    left, right, feat, thr = m["gb_left_"], m["gb_right_"], m["gb_feature_"], m["gb_threshold_"]
    node = np.repeat(np.asarray(m["gb_roots_"])[None, :], len(X), axis=0)
    rows = np.arange(len(X))[:, None]
    while True:
        inner = left[node] >= 0
        if not inner.any():
            break
        go_left = X[rows, feat[node]] <= thr[node]
        node = np.where(inner, np.where(go_left, left[node], right[node]), node)
    return m["gb_value_"][node].sum(axis=1)


def _oof(fit: Callable[..., dict], F: np.ndarray, y: np.ndarray, fold: np.ndarray) -> np.ndarray:
    """Out-of-fold P(good): each row scored by `fit(F, y)` fitted without its fold."""

    def fit_predict(train: np.ndarray, test: np.ndarray) -> np.ndarray:
        model = fit(F[train], y[train])
        if "gb_roots_" in model:
            return sigmoid(_trees(model, F[test]))
        return sigmoid(F[test] @ model["scorer_coef_"] + model["scorer_intercept_"])

    return out_of_fold(fold, fit_predict, np.zeros(len(y)))


def _pick_threshold(oof: np.ndarray, qf: np.ndarray, qs: np.ndarray, target: float) -> float:
    """The fewest escalations whose cascade quality reaches `target`; the cut sits midway
    between the last escalated score and the first kept one, not on a training point."""
    cuts = np.unique(np.concatenate([[0.0], oof, [1.0]]))
    for k, t in enumerate(cuts):
        if np.where(oof < t, qs, qf).mean() >= target:
            return float(t if k == 0 else (cuts[k - 1] + t) / 2)
    return 1.0


def _plan_outcome(policy, data, C, plan, strong, rows, oof) -> dict:
    """Out-of-fold cost of a plan where its cascade first reaches the strong model's quality
    (less the tolerance), escalating the lowest scores first; the sort key ranks plans by it."""
    f, s = plan
    jf, js = data.models.index(f), data.models.index(strong)
    qf, qs = data.quality[rows, jf], data.quality[rows, js]
    base = C[rows, jf] + (C[rows, data.models.index(s)] if s else 0.0)
    order = np.argsort(oof, kind="stable")
    q = qf.sum() + np.concatenate([[0.0], np.cumsum((qs - qf)[order])])
    c = base.sum() + np.concatenate([[0.0], np.cumsum(C[rows, js][order])])
    q, c = q / len(rows), c / len(rows)
    hit = np.flatnonzero(q >= qs.mean() - policy.tolerance)
    cost = float(c[hit[0]]) if len(hit) else None
    return {
        "cost_to_strong_quality": cost,
        "strong_cost": float(C[rows, js].mean()),
        "max_quality": round(float(q.max()), 4),
        "key": (0, cost) if cost is not None else (1, -float(q.max())),
    }


def _auc(score: np.ndarray, y: np.ndarray) -> float | None:
    pos, neg = score[y == 1], score[y == 0]
    if not len(pos) or not len(neg):
        return None
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([pos, neg]))  # ties share their mean rank
    return round(float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))), 4)
