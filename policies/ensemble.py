"""Stacking: the out-of-fold predictions of several learned policies, combined per model.

The base policies err in different places (knn is local, logistic linear, mf shares structure
across models, cluster averages over regions of prompt space), so a combiner that learns, per
model, how far to trust each of them beats the best one alone when their errors are not the same.

Fitting, on the training data only:
1. folds by prompt (identical texts share one), seeded; `calib_folds` of them;
2. each base policy (its raw scores, no calibration of its own) is fitted on all folds but one
   and scores the held-out one: every prompt gets, per model, a score from each base that did not
   see it;
3. per model, a logistic regression on the standardised logits of the bases' scores for that
   model, and, when chosen, the prompt features of `policies.features`. Its L2 strength C (a grid)
   and whether the features go in are chosen on the cross-fitted log-loss over the same folds:
   the features are kept (`features: auto`) only when they lower it by more than one standard
   error (paired over prompts). Soft labels: quality q counts as a positive of weight q and a
   negative of weight 1 - q;
4. calibration (Platt by default) maps the chosen combiner's cross-fitted outputs to quality;
5. the bases are refitted on all the data. The artifact stores their learned state as
   `<base>.<attribute>` next to the combiner's, so serving rebuilds them without retraining.
"""

from __future__ import annotations

from functools import partial
from typing import Any, ClassVar

import numpy as np

from policies.base import PromptBatch
from policies.features import category_centroids, feature_names, prompt_features
from policies.folds import group_folds, out_of_fold
from policies.learned import LearnedPolicy, logit, out_of_fold_scores, sigmoid

DEFAULT_BASES = ("knn", "logistic", "mf", "cluster")
C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)
FEATURES = ("auto", "on", "off")


def prompt_folds(texts: list[str], k: int, seed: int) -> np.ndarray:
    """Fold id per row, seeded; rows with the same prompt text share a fold."""
    _, group = np.unique(np.asarray(texts, dtype=object).astype(str), return_inverse=True)
    return group_folds(group, k, seed)


def soft_log_loss(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Per-row cross-entropy of predicted p against (soft) quality q."""
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return -(q * np.log(p) + (1 - q) * np.log(1 - p))


def fit_logistic(Z: np.ndarray, q: np.ndarray, C: float) -> tuple[np.ndarray, float]:
    """L2 logistic regression on soft labels: (coef, intercept); a constant when q is constant."""
    from sklearn.linear_model import LogisticRegression

    if len(q) == 0 or np.all(q == q[0]):
        mean = float(q.mean()) if len(q) else 0.5
        return np.zeros(Z.shape[1]), float(logit(np.array(mean)))
    Zd = np.concatenate([Z, Z])
    yd = np.concatenate([np.ones(len(q)), np.zeros(len(q))])
    wd = np.concatenate([q, 1 - q])
    keep = wd > 0
    lr = LogisticRegression(C=C, max_iter=1000).fit(Zd[keep], yd[keep], sample_weight=wd[keep])
    return lr.coef_[0].copy(), float(lr.intercept_[0])


def cross_fit(Z: np.ndarray, q: np.ndarray, fold: np.ndarray, C: float) -> np.ndarray:
    """Each row's prediction by a combiner fitted on the other folds."""

    def fit_predict(train: np.ndarray, test: np.ndarray) -> np.ndarray:
        coef, b = fit_logistic(Z[train], q[train], C)
        return sigmoid(Z[test] @ coef + b)

    return out_of_fold(fold, fit_predict, np.empty(len(q)))


class EnsemblePolicy(LearnedPolicy):
    name = "ensemble"
    needs_embeddings: ClassVar[bool] = True

    def __init__(
        self,
        bases: list[str] | tuple[str, ...] = DEFAULT_BASES,
        base_params: dict[str, dict[str, Any]] | None = None,
        features: str = "auto",
        calibration: str = "platt",
        calib_folds: int = 5,
        text_chars: int = 400,
        seed: int = 0,
        encoder=None,
    ):
        if isinstance(bases, str):
            bases = [b.strip() for b in bases.split(",") if b.strip()]
        self.bases = list(bases)
        self.base_params = dict(base_params or {})
        if features not in FEATURES:
            raise ValueError(f"features must be one of {FEATURES}, not {features!r}")
        self.features_mode = features
        self._set_common(calibration, calib_folds, text_chars, seed, encoder)
        if not self.bases or len(set(self.bases)) != len(self.bases):
            raise ValueError(f"bases must be distinct policy names, not {self.bases}")
        unknown = sorted(set(self.base_params) - set(self.bases))
        if unknown:
            raise ValueError(f"base_params for policies not in bases: {unknown}")
        for b in self.bases:
            self._base(b)  # a bad name or parameter fails before any data is read
        self._fitted_bases: list[LearnedPolicy] | None = None

    def get_params(self) -> dict[str, Any]:
        params = super().get_params()
        params["features"] = self.features_mode  # `features` is the base class's method
        return params

    def _base(self, name: str) -> LearnedPolicy:
        from policies.registry import policy_class

        cls = policy_class(name)
        # stackable: a policy learned through LearnedPolicy.fit alone (raw scores from embeddings)
        if not issubclass(cls, LearnedPolicy) or cls.fit is not LearnedPolicy.fit:
            raise ValueError(f"policy {name!r} cannot be an ensemble base (it is not a plain learned policy)")
        params = {**self.base_params.get(name, {}), "calibration": "none", "seed": self.seed}
        try:
            return cls(**params)
        except TypeError as e:
            raise ValueError(f"bad base_params for {name!r}: {e}") from None

    # ---- fitting -------------------------------------------------------------------------------
    def fit(self, data: Any, embeddings: np.ndarray | None = None) -> EnsemblePolicy:
        import time

        X, Y, M = self._training_arrays(data, embeddings)
        fold = prompt_folds(list(data.texts), self.calib_folds, self.seed)
        if self.calib_folds < 2 or len(np.unique(fold)) < self.calib_folds:
            raise ValueError("the ensemble needs calib_folds >= 2 and at least that many distinct prompts")
        self.models_ = list(data.models)
        self.metrics_: dict[str, Any] = {"train_prompts": int(len(X)), "observed_cells": int(M.sum())}
        if self.features_mode != "off" and self.encoder is not None:
            self.categories_, self.category_centroids_ = category_centroids(self.encoder)
        else:
            self.categories_, self.category_centroids_ = [], np.zeros((0, X.shape[1]), np.float32)
        F = prompt_features(self.view(list(data.texts)), data.tokens(), X, self.category_centroids_)

        S = np.empty((len(X), len(self.models_), len(self.bases)))
        fitted, seconds = [], {}
        for b, name in enumerate(self.bases):
            t0 = time.perf_counter()
            S[:, :, b] = out_of_fold_scores(partial(self._base, name), X, Y, M, fold, self.models_)
            full = self._base(name)
            full.models_ = self.models_
            full._fit_scores(X, Y, M)
            for k, v in vars(full).items():
                if k.endswith("_") and not k.startswith("_") and k not in ("models_", "metrics_"):
                    setattr(self, f"{name}.{k}", v)
            fitted.append(full)
            seconds[name] = round(time.perf_counter() - t0, 3)
        self.metrics_["base_seconds"] = seconds
        self.metrics_["base_out_of_fold_brier"] = {
            name: round(float(np.mean((S[:, :, b][M] - Y[M]) ** 2)), 5) for b, name in enumerate(self.bases)
        }
        oof = self._fit_combiner(S, F, Y, M, fold)
        self.cal_a_ = np.ones(len(self.models_))
        self.cal_b_ = np.zeros(len(self.models_))
        if self.calibration == "none":
            self.metrics_["calibration"] = {"method": "none"}
        else:
            self._fit_maps(oof, Y, M)
        self._fit_cost_latency(data)
        self._fitted_bases = fitted
        return self

    def _design(self, S: np.ndarray, F: np.ndarray) -> np.ndarray:
        """(n, m, bases + features) raw combiner inputs: the bases' logits, the prompt features."""
        n, m, _ = S.shape
        return np.concatenate([logit(S, 1e-3), np.broadcast_to(F[:, None, :], (n, m, F.shape[1]))], axis=2)

    def _fit_combiner(self, S, F, Y, M, fold) -> np.ndarray:
        """Choose and fit the per-model combiners; returns their cross-fitted outputs (n, m)."""
        Zall = self._design(S, F)
        nb, m = len(self.bases), len(self.models_)
        self.z_mean_ = Zall.reshape(-1, Zall.shape[2]).mean(0)
        self.z_scale_ = np.maximum(Zall.reshape(-1, Zall.shape[2]).std(0), 1e-6)
        Zall = (Zall - self.z_mean_) / self.z_scale_
        self.coef_ = np.zeros((m, Zall.shape[2]))
        self.intercept_ = np.zeros(m)
        self.C_, self.features_used_ = [], []
        options = {"auto": (False, True), "on": (True,), "off": (False,)}[self.features_mode]
        if F.shape[1] == 0:
            options = (False,)
        oof = np.full(Y.shape, np.nan)
        report = {}
        for j in range(m):
            rows = np.flatnonzero(M[:, j])
            q = Y[rows, j]
            best = {}
            for use in options:
                Z = Zall[rows, j] if use else Zall[rows, j, :nb]
                runs = [(C, cross_fit(Z, q, fold[rows], C)) for C in C_GRID]
                losses = [soft_log_loss(p, q) for _, p in runs]
                k = int(np.argmin([loss.mean() for loss in losses]))
                best[use] = (runs[k][0], runs[k][1], losses[k])
            use = options[0]
            if len(options) == 2:
                d = best[True][2] - best[False][2]  # per prompt: with features minus without
                se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else np.inf
                use = bool(d.mean() + se < 0)
            C, p, _ = best[use]
            Z = Zall[rows, j] if use else Zall[rows, j, :nb]
            coef, self.intercept_[j] = fit_logistic(Z, q, C)
            self.coef_[j, : Z.shape[1]] = coef
            oof[rows, j] = p
            self.C_.append(C)
            self.features_used_.append(use)
            report[self.models_[j]] = {
                "C": C,
                "features": use,
                **{
                    f"cv_log_loss_{'with' if u else 'without'}_features": round(float(v[2].mean()), 5)
                    for u, v in best.items()
                },
            }
        self.metrics_["combiner"] = report
        self.metrics_["feature_names"] = feature_names(self.categories_)
        return oof

    # ---- prediction ----------------------------------------------------------------------------
    def base_models(self) -> list[LearnedPolicy]:
        """The fitted base policies (rebuilt from the stored state after loading an artifact)."""
        if self._fitted_bases is None:
            out = []
            state = vars(self)
            for name in self.bases:
                p = self._base(name)
                p.models_ = self.models_
                for k, v in state.items():
                    if k.startswith(f"{name}."):
                        setattr(p, k[len(name) + 1 :], v)
                out.append(p)
            self._fitted_bases = out
        return self._fitted_bases

    def predict_quality(self, batch: PromptBatch) -> np.ndarray:
        self._check_fitted()
        X = self.features(batch)
        S = np.stack([b._scores(X) for b in self.base_models()], axis=2)
        F = prompt_features(self.view(list(batch.texts)), batch.tokens(), X, self.category_centroids_)
        Z = (self._design(S, F) - self.z_mean_) / self.z_scale_
        return self.calibrate(sigmoid((Z * self.coef_[None]).sum(2) + self.intercept_))
