"""What every learned policy shares: prompt features, calibration, cost and latency models.

A learned policy is fitted on a routing dataset (anything with `texts`, `models`, `quality`,
`mask`, `cost`, `latency` and `tokens()`: `training.RoutingDataset` is one) and is then a plain
object of arrays: serving needs numpy and the encoder, never `training/` nor sklearn.

- Features: the unit-norm embedding of the prompt's *tail* (`text_chars` characters). The part of
  a long prompt that needs answering comes last (few-shot examples and context come first), and
  the encoder reads only its first ~256 tokens, so embedding the head would make every few-shot
  prompt of a benchmark look the same.
- Calibration: a subclass predicts raw per-model scores; out-of-fold scores are mapped to
  observed quality by Platt scaling (or isotonic regression) per model, so a predicted 0.8 means
  "right about 80% of the time" and `min_quality` constraints mean something. Training metrics
  report Brier score and ECE before and after (cross-fitted, so not flattered).
- Cost: per model, USD = a * prompt_tokens + b (non-negative least squares on observed costs): `b`
  carries the expected output length. Latency: the same form, when the data has latency.

Learned state is every attribute ending in `_`: arrays go to safetensors, the rest to JSON
(`policies.artifacts`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from policies.base import Policy, PromptBatch
from policies.folds import out_of_fold

CALIBRATIONS = ("platt", "isotonic", "none")


def tail(text: str, chars: int) -> str:
    return text if chars <= 0 or len(text) <= chars else text[-chars:]


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -40, 40)))


def logit(p: np.ndarray, eps: float = 1e-4) -> np.ndarray:
    p = np.clip(p, eps, 1 - eps)
    return np.log(p / (1 - p))


def brier(p: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((p - y) ** 2)) if len(y) else float("nan")


def ece(p: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error over equal-width probability bins."""
    if not len(y):
        return float("nan")
    idx = np.minimum((p * bins).astype(int), bins - 1)
    err = 0.0
    for b in range(bins):
        sel = idx == b
        if sel.any():
            err += sel.mean() * abs(p[sel].mean() - y[sel].mean())
    return float(err)


def out_of_fold_scores(
    make: Callable[[], LearnedPolicy],
    X: np.ndarray,
    Y: np.ndarray,
    M: np.ndarray,
    fold: np.ndarray,
    models: list[str] | None = None,
) -> np.ndarray:
    """(n, m) raw scores (`_scores`), each row's from a fresh `make()` fitted (`_fit_scores`) on
    the other folds; `models`: the fitted copies' `models_`."""

    def fit_predict(train: np.ndarray, test: np.ndarray) -> np.ndarray:
        inner = make()
        if models is not None:
            inner.models_ = models
        inner._fit_scores(X[train], Y[train], M[train])
        return inner._scores(X[test])

    return out_of_fold(fold, fit_predict, np.full(Y.shape, np.nan))


def fit_linear_nonneg(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """y ≈ a * x + b with a, b >= 0 (cost and latency grow with prompt length, never below 0)."""
    from scipy.optimize import nnls

    if len(y) == 0:
        return 0.0, float("nan")
    a, _ = nnls(np.stack([x, np.ones_like(x)], axis=1), y)
    return float(a[0]), float(a[1])


class LearnedPolicy(Policy):
    """Base of the policies fitted on routing data. Subclasses implement `_fit_scores(X, Y, M)`
    (Y: quality with NaN where masked, M: mask) and `_scores(X) -> (n, n_models)` raw scores in
    0..1 (probability-like; calibration maps them to observed quality)."""

    name: ClassVar[str] = "learned"
    needs_embeddings: ClassVar[bool] = True
    # hyper-parameters every learned policy has (subclasses list them in __init__ too)
    common: ClassVar[tuple[str, ...]] = ("calibration", "calib_folds", "text_chars", "seed")

    encoder: Any = None
    calibration: str = "platt"
    calib_folds: int = 5
    text_chars: int = 400
    seed: int = 0

    # ---- features ------------------------------------------------------------------------------
    def _set_common(self, calibration, calib_folds, text_chars, seed, encoder) -> None:
        if calibration not in CALIBRATIONS:
            raise ValueError(f"calibration must be one of {CALIBRATIONS}, not {calibration!r}")
        self.calibration = calibration
        self.calib_folds = int(calib_folds)
        self.text_chars = int(text_chars)
        self.seed = int(seed)
        self.encoder = encoder

    def view(self, texts: list[str]) -> list[str]:
        """The text the encoder sees for each prompt (its tail)."""
        return [tail(t, self.text_chars) for t in texts]

    def embed(self, texts: list[str]) -> np.ndarray:
        if self.encoder is None:
            raise ValueError(f"policy {self.name!r} needs a prompt encoder (pass encoder=...)")
        return np.asarray(self.encoder.encode(self.view(list(texts))), dtype=np.float32)

    def features(self, batch: PromptBatch) -> np.ndarray:
        """Prompt embeddings: the caller's when they embed the same text we would, else our own."""
        emb = batch.embeddings
        if emb is not None and all(len(t) <= self.text_chars for t in batch.texts):
            return np.asarray(emb, dtype=np.float32)
        return self.embed(batch.texts)

    # ---- fitting -------------------------------------------------------------------------------
    def clone(self) -> LearnedPolicy:
        return type(self)(**self.get_params())

    def fit(self, data: Any, embeddings: np.ndarray | None = None) -> LearnedPolicy:
        """Learn from a routing dataset. `embeddings`: precomputed `embed(data.texts)` (a cache)."""
        X, Y, M = self._training_arrays(data, embeddings)
        self.models_ = list(data.models)
        self.metrics_: dict[str, Any] = {"train_prompts": int(len(X)), "observed_cells": int(M.sum())}
        self._fit_calibration(X, Y, M)
        self._fit_scores(X, Y, M)
        self._fit_cost_latency(data)
        return self

    def _training_arrays(
        self, data: Any, embeddings: np.ndarray | None = None, embed: bool = True
    ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
        """(X, Y, M): the prompts' embeddings (None when `embed` is False), observed quality and
        its mask; ValueError when they do not line up or nothing was observed."""
        X = None
        if embed:
            X = self.embed(data.texts) if embeddings is None else np.asarray(embeddings, dtype=np.float32)
            if len(X) != len(data.texts):
                raise ValueError(f"{len(X)} embeddings for {len(data.texts)} prompts")
        Y = np.asarray(data.quality, dtype=float)
        M = np.asarray(data.mask, dtype=bool)
        if not M.any():
            raise ValueError("no observed quality to learn from")
        return X, Y, M

    def _fit_calibration(self, X: np.ndarray, Y: np.ndarray, M: np.ndarray) -> None:
        m = Y.shape[1]
        self.cal_a_ = np.ones(m)
        self.cal_b_ = np.zeros(m)
        if self.calibration == "none" or len(X) < 2 * self.calib_folds:
            self.metrics_["calibration"] = {"method": "none"}
            return
        # out-of-fold raw scores: each prompt scored by a policy that did not see it
        fold = np.random.default_rng(self.seed).permutation(len(X)) % self.calib_folds

        def uncalibrated() -> LearnedPolicy:
            inner = self.clone()
            inner.calibration = "none"
            return inner

        self._fit_maps(out_of_fold_scores(uncalibrated, X, Y, M, fold, self.models_), Y, M)

    def _fit_maps(self, oof: np.ndarray, Y: np.ndarray, M: np.ndarray) -> None:
        """Per-model calibration maps from out-of-fold raw scores `oof`, and their metrics."""
        m = Y.shape[1]
        before, after = [], []
        iso_x, iso_y = [], []
        for j in range(m):
            sel = M[:, j]
            s, y = oof[sel, j], Y[sel, j]
            before.append((s, y))
            params = self._fit_map(s, y)
            if self.calibration == "platt":
                self.cal_a_[j], self.cal_b_[j] = params
            else:
                iso_x.append(params[0])
                iso_y.append(params[1])
            # honest "after": map fitted on one half, measured on the other
            half = np.random.default_rng(self.seed + 1).permutation(len(s)) % 2
            for h in (0, 1):
                p = self._apply_map(self._fit_map(s[half != h], y[half != h]), s[half == h])
                after.append((p, y[half == h]))
        if self.calibration == "isotonic":
            width = max(len(x) for x in iso_x)
            # ragged knots padded by repeating the last one (np.interp is fine with that)
            self.iso_x_ = np.stack([np.pad(x, (0, width - len(x)), mode="edge") for x in iso_x])
            self.iso_y_ = np.stack([np.pad(y, (0, width - len(y)), mode="edge") for y in iso_y])

        def pooled(pairs):
            p = np.concatenate([a for a, _ in pairs])
            y = np.concatenate([b for _, b in pairs])
            return {"brier": round(brier(p, y), 5), "ece": round(ece(p, y), 5)}

        self.metrics_["calibration"] = {
            "method": self.calibration,
            "folds": self.calib_folds,
            "out_of_fold_raw": pooled(before),
            "out_of_fold_calibrated": pooled(after),
        }

    def _fit_map(self, s: np.ndarray, y: np.ndarray):
        if self.calibration == "platt":
            return _platt(logit(s), y)
        from sklearn.isotonic import IsotonicRegression

        if len(s) < 2:
            return np.array([0.0, 1.0]), np.array([0.0, 1.0])
        iso = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(s, y)
        return np.asarray(iso.X_thresholds_, float), np.asarray(iso.y_thresholds_, float)

    def _apply_map(self, params, s: np.ndarray) -> np.ndarray:
        if self.calibration == "platt":
            a, b = params
            return sigmoid(a * logit(s) + b)
        return np.interp(s, params[0], params[1])

    def _fit_cost_latency(self, data: Any) -> None:
        tok = np.asarray(data.tokens(), dtype=float)
        for attr, out in (("cost", "cost_coef_"), ("latency", "latency_coef_")):
            a = getattr(data, attr, None)
            if a is None or not np.isfinite(a).any():
                continue
            coef = np.zeros((len(self.models_), 2))
            for j in range(len(self.models_)):
                ok = np.isfinite(a[:, j])
                if ok.any():
                    coef[j] = fit_linear_nonneg(tok[ok], a[ok, j])
                else:  # never observed: the mean of the others, as the least wrong guess
                    coef[j] = np.nan
            if np.isnan(coef).any():
                coef = np.where(np.isnan(coef), np.nanmean(coef, axis=0, keepdims=True), coef)
            setattr(self, out, coef)

    # ---- prediction ----------------------------------------------------------------------------
    def predict_quality(self, batch: PromptBatch) -> np.ndarray:
        self._check_fitted()
        return self.calibrate(self._scores(self.features(batch)))

    def calibrate(self, raw: np.ndarray) -> np.ndarray:
        if self.calibration == "platt":
            return sigmoid(self.cal_a_ * logit(raw) + self.cal_b_)
        if self.calibration == "isotonic" and hasattr(self, "iso_x_"):
            return np.stack(
                [np.interp(raw[:, j], self.iso_x_[j], self.iso_y_[j]) for j in range(raw.shape[1])], axis=1
            )
        return np.clip(raw, 0.0, 1.0)

    def _linear(self, attr: str, batch: PromptBatch) -> np.ndarray | None:
        coef = getattr(self, attr, None)
        if coef is None:
            return None
        return np.maximum(batch.tokens()[:, None] * coef[:, 0] + coef[:, 1], 0.0)

    def predict_cost(self, batch: PromptBatch) -> np.ndarray | None:
        return self._linear("cost_coef_", batch)

    def predict_latency(self, batch: PromptBatch) -> np.ndarray | None:
        return self._linear("latency_coef_", batch)

    # ---- for subclasses ------------------------------------------------------------------------
    def _fit_scores(self, X: np.ndarray, Y: np.ndarray, M: np.ndarray) -> None:  # pragma: no cover
        raise NotImplementedError

    def _scores(self, X: np.ndarray) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError


def _platt(z: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Fit p = sigmoid(a * z + b) to soft labels y (cross-entropy, a small L2 pull toward the
    identity map keeps it finite on separable data)."""
    from scipy.optimize import minimize

    if len(y) == 0:
        return 1.0, 0.0
    lam = 1e-2

    def loss(ab):
        a, b = ab
        t = a * z + b
        # log(1 + e^t) - y t, computed stably
        nll = np.mean(np.logaddexp(0.0, t) - y * t)
        p = sigmoid(t)
        grad = np.array([np.mean((p - y) * z), np.mean(p - y)])
        return nll + lam * (a - 1) ** 2 / 2, grad + np.array([lam * (a - 1), 0.0])

    res = minimize(loss, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B")
    return float(res.x[0]), float(res.x[1])


def soft_targets(Y: np.ndarray, M: np.ndarray, j: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows observed for model j and their quality targets."""
    rows = np.flatnonzero(M[:, j])
    return rows, Y[rows, j]


def column_prior(Y: np.ndarray, M: np.ndarray) -> np.ndarray:
    """Per-model mean observed quality (0.5 for a model never observed)."""
    s = np.where(M, Y, 0.0).sum(0)
    n = M.sum(0)
    return np.where(n > 0, s / np.maximum(n, 1), 0.5)
