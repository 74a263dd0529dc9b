"""Item response theory over prompt embeddings: a router for models it was never trained on.

P(model m answers prompt x well) = sigmoid(a_m . s(x) + b_m - d(x)): the prompt side (a skill
vector s(x) and a difficulty d(x), from one small network over the prompt's embedding) is shared by
every model; a model is only its ability vector a_m and bias b_m (ensemble * dim + 1 numbers). Fitted on many
models and tasks at once, the prompt side is what transfers: a new model needs only its ensemble * dim + 1
numbers, which `fit_ability` estimates from a few graded answers (prompt side frozen, a Gaussian
prior from the training models' abilities keeps K = 25 answers from over-fitting), and
`ability_from_benchmarks` from a few public scores (the ability whose predicted accuracy on each
benchmark's prompts matches them). Calibration also keeps the K items' residuals (graded outcome
minus prediction): a calibrated model's prediction for a prompt adds the mean residual of its
`residual_k` nearest calibration items, times a weight fitted leave-one-out on the items (0 when
their residuals have no local structure), so a new pool's own tasks, which the frozen prompt side
may not separate, still shape its routing. The fit averages the logits of `ensemble` independently
fitted prompt sides (one wider model of the same form) and refits each model's ability to convergence
with the prompt side frozen (`refit`): a single early-stopped fit varied with its training seed.

Serving a pool (`attach_pool`): each pool model's ability comes from, best first, an ability the
artifact holds under its name (trained or calibrated), one in the abilities file (`moe-router
calibrate`), its public benchmark numbers in config; a model with none of them is scored by its
configured category priors (`policies.category`). `sources()` says which applies to each model,
and `route` shows it. Online feedback refines these through the bandits (`linucb`, `thompson`
with `warm_start: irt`), which learn the residual of this policy's predictions.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from policies.base import ModelInfo, PromptBatch
from policies.learned import LearnedPolicy, sigmoid

# where an ability came from, best first; "prior" = no ability: category priors score the model
SOURCES = ("trained", "calibrated", "benchmarks", "prior")
MAX_ABILITY = 1e4  # an abilities-file number beyond this is no fit's (and would overflow the logits)
BENCHMARK_TASKS = ("mmlu", "gsm8k", "arc_challenge", "humaneval", "cmmlu")
PROBES_PER_TASK = 200
log = logging.getLogger("moe_router.irt")


def shipped_artifact() -> Path:
    """The pretrained artifact in the wheel (fitted on every shared set; docs/learned-policies.md)."""
    return Path(__file__).resolve().parent / "pretrained" / "irt"


class IRTPolicy(LearnedPolicy):
    name = "irt"

    def __init__(
        self,
        dim: int = 8,
        hidden: int = 128,
        weight_decay: float = 1e-4,
        lr: float = 3e-3,
        epochs: int = 40,
        patience: int = 5,
        prior_strength: float = 1.0,
        calibration: str = "none",
        calib_folds: int = 5,
        text_chars: int = 400,
        seed: int = 0,
        ensemble: int = 3,
        refit: float = 1e-3,
        residual_k: int = 20,
        residual_z: float = 1.0,
        encoder=None,
    ):
        self.dim = dim
        self.residual_k = residual_k
        self.residual_z = residual_z
        self.ensemble = ensemble
        self.refit = refit
        self.hidden = hidden
        self.weight_decay = weight_decay
        self.lr = lr
        self.epochs = epochs
        self.patience = patience
        self.prior_strength = prior_strength
        self._set_common(calibration, calib_folds, text_chars, seed, encoder)

    # ---- fitting -------------------------------------------------------------------------------
    def fit(self, data: Any, embeddings: np.ndarray | None = None) -> IRTPolicy:
        X, Y, M = self._training_arrays(data, embeddings)
        self.models_ = list(data.models)
        self.metrics_: dict[str, Any] = {"train_prompts": int(len(X)), "observed_cells": int(M.sum())}
        self._fit_calibration(X, Y, M)
        self._fit_scores(X, Y, M)
        self._fit_cost_latency(data)
        seen = M.any(axis=0)
        self.source_ = ["trained" if s else "prior" for s in seen]
        self._fit_prior(seen)
        for j in np.flatnonzero(~seen):  # a model with no labels (--exclude-model): the mean ability
            self.ability_[j], self.bias_[j] = self.ability_mean_[:-1], self.ability_mean_[-1]
        self._fit_probes(X, data)
        return self

    def _fit_scores(self, X, Y, M):
        """Fit `ensemble` prompt sides and abilities (seeds seed, seed+1, ...) and fold them into
        one: the mean of their logits is itself an IRT model, with the members' hidden units,
        skills and abilities side by side (skill dim = ensemble * dim) and the mean difficulty
        and bias, so prediction and `fit_ability` do not change."""
        members = [self._fit_member(X, Y, M, self.seed + i) for i in range(max(1, self.ensemble))]
        k = len(members)
        if k == 1:
            for name, v in members[0].items():
                setattr(self, name, v)
            return
        from scipy.linalg import block_diag

        if self.hidden:
            self.body_w_ = np.concatenate([m["body_w_"] for m in members], axis=1)
            self.body_b_ = np.concatenate([m["body_b_"] for m in members])
        # without a hidden layer every member reads the same embedding: skills side by side
        self.skill_w_ = (
            block_diag(*[m["skill_w_"] for m in members])
            if self.hidden
            else np.concatenate([m["skill_w_"] for m in members], axis=1)
        ).astype(np.float32) / k
        self.diff_w_ = (
            np.concatenate([m["diff_w_"] for m in members])
            if self.hidden
            else np.sum([m["diff_w_"] for m in members], axis=0)
        ).astype(np.float32) / k
        self.diff_b_ = np.mean([m["diff_b_"] for m in members], axis=0).astype(np.float32)
        self.ability_ = np.concatenate([m["ability_"] for m in members], axis=1)
        self.bias_ = np.mean([m["bias_"] for m in members], axis=0).astype(np.float32)

    def _fit_member(self, X, Y, M, seed: int) -> dict[str, np.ndarray]:
        import torch

        from policies.torch_fit import fit_module, masked_bce, start_at_base_rates, tensors

        Xt, Yt, Mt = tensors(X, Y, M)
        torch.manual_seed(seed)
        m, dim, hidden = Y.shape[1], self.dim, self.hidden

        class IRT(torch.nn.Module):
            def __init__(self, d_in):
                super().__init__()
                self.body = (
                    torch.nn.Sequential(torch.nn.Linear(d_in, hidden), torch.nn.GELU())
                    if hidden
                    else torch.nn.Identity()
                )
                width = hidden or d_in
                self.skill = torch.nn.Linear(width, dim, bias=False)
                self.difficulty = torch.nn.Linear(width, 1)
                self.ability = torch.nn.Parameter(torch.randn(m, dim) / dim**0.5)
                self.bias = torch.nn.Parameter(torch.zeros(m))

            def forward(self, x):
                h = self.body(x)
                return self.skill(h) @ self.ability.T + self.bias - self.difficulty(h)

        net = IRT(X.shape[1])
        start_at_base_rates(net.bias, Yt, Mt)
        fit_module(
            net,
            lambda mod, i: masked_bce(mod(Xt[i]), Yt[i], Mt[i]),
            len(X),
            epochs=self.epochs,
            lr=self.lr,
            weight_decay=self.weight_decay,
            batch_size=512,
            patience=self.patience,
            seed=seed,
        )
        out = {}
        if hidden:
            out["body_w_"] = net.body[0].weight.detach().numpy().T.copy()  # (d_in, hidden)
            out["body_b_"] = net.body[0].bias.detach().numpy().copy()
        out["skill_w_"] = net.skill.weight.detach().numpy().T.copy()  # (width, dim)
        out["diff_w_"] = net.difficulty.weight.detach().numpy()[0].copy()  # (width,)
        out["diff_b_"] = net.difficulty.bias.detach().numpy().copy()  # (1,)
        out["ability_"] = net.ability.detach().numpy().copy()  # (m, dim)
        out["bias_"] = net.bias.detach().numpy().copy()  # (m,)
        if self.refit:
            self._refit_abilities(out, X, Y, M)
        return out

    def _refit_abilities(self, out: dict[str, np.ndarray], X, Y, M) -> None:
        """Each model's (ability, bias) refitted to convergence on all its labels, the prompt side
        frozen (a convex problem, L2 `refit` per label): early stopping ends the joint fit after a
        few epochs, set by the prompt side, long before the abilities have converged."""
        h = np.asarray(X, np.float32)
        if "body_w_" in out:
            z = h @ out["body_w_"] + out["body_b_"]
            h = 0.5 * z * (1.0 + _erf(z / np.sqrt(2.0)))
        s, d = h @ out["skill_w_"], h @ out["diff_w_"] + out["diff_b_"][0]
        for j in range(Y.shape[1]):
            rows = np.flatnonzero(M[:, j])
            if len(rows) == 0:
                continue
            z0 = np.append(out["ability_"][j], out["bias_"][j]).astype(float)
            cov = np.eye(len(z0)) / (self.refit * len(rows))
            a, b = _map_logistic(s[rows], d[rows], np.asarray(Y[rows, j], float), z0 * 0, cov, 1.0)
            out["ability_"][j], out["bias_"][j] = a, b

    def _fit_prior(self, seen: np.ndarray) -> None:
        """A Gaussian over [ability, bias] from the trained models: a new model's prior."""
        Z = np.concatenate([self.ability_[seen], self.bias_[seen, None]], axis=1)
        self.ability_mean_ = Z.mean(0)
        cov = np.cov(Z.T) if len(Z) > 2 else np.eye(Z.shape[1])
        self.ability_cov_ = cov + 0.05 * np.eye(Z.shape[1])  # ridge: fewer models than dimensions

    def _fit_probes(self, X: np.ndarray, data: Any) -> None:
        """Up to PROBES_PER_TASK prompts' skill and difficulty per benchmark task: what public
        benchmark numbers are matched against."""
        tasks = (getattr(data, "meta", None) or {}).get("task")
        names, S, D = [], [], []
        if tasks is not None:
            rng = np.random.default_rng(self.seed)
            for t in BENCHMARK_TASKS:
                rows = np.flatnonzero(np.asarray(tasks) == t)
                if len(rows) == 0:
                    continue
                rows = rng.permutation(rows)[:PROBES_PER_TASK]
                s, d = self.prompt_side(X[rows])
                names.append(t)
                S.append(np.pad(s, ((0, PROBES_PER_TASK - len(s)), (0, 0)), constant_values=np.nan))
                D.append(np.pad(d, (0, PROBES_PER_TASK - len(d)), constant_values=np.nan))
        self.probe_tasks_ = names
        if names:
            self.probe_skill_ = np.stack(S).astype(np.float32)
            self.probe_diff_ = np.stack(D).astype(np.float32)

    # ---- the prompt side and scores ------------------------------------------------------------
    def prompt_side(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(skill (n, dim), difficulty (n,)) of prompt embeddings X."""
        h = np.asarray(X, dtype=np.float32)
        if getattr(self, "body_w_", None) is not None:
            z = h @ self.body_w_ + self.body_b_
            h = 0.5 * z * (1.0 + _erf(z / np.sqrt(2.0)))  # GELU, as fitted
        return h @ self.skill_w_, h @ self.diff_w_ + self.diff_b_[0]

    def _scores(self, X):
        s, d = self.prompt_side(X)
        return self._add_residuals(X, sigmoid(s @ self.ability_.T + self.bias_ - d[:, None]))

    def _add_residuals(self, X: np.ndarray, q: np.ndarray) -> np.ndarray:
        """Each calibrated model's local correction: the mean stored residual (graded outcome
        minus the IRT prediction, times the model's weight from `fit_model`) of its `residual_k`
        calibration items nearest to the prompt (cosine of the embeddings). The K items come
        from the new pool's own tasks, which the frozen prompt side may not separate."""
        of = getattr(self, "resid_of_", None)
        if not of or not self.residual_k:
            return q
        of = np.asarray(of)
        sim = _unit(X) @ np.asarray(self.resid_x_, np.float32).T
        res = np.asarray(self.resid_y_, np.float32)
        for j, m in enumerate(self.models_):
            rows = np.flatnonzero(of == m)
            if not len(rows):
                continue
            k = min(int(self.residual_k), len(rows))
            near = np.argpartition(-sim[:, rows], k - 1, axis=1)[:, :k]
            q[:, j] = np.clip(q[:, j] + res[rows][near].mean(1), 0.0, 1.0)
        return q

    # ---- abilities of new models ---------------------------------------------------------------
    def fit_ability(
        self, X: np.ndarray, y: np.ndarray, prior: tuple[np.ndarray, np.ndarray] | None = None
    ) -> tuple[np.ndarray, float]:
        """MAP (ability, bias) of one model from graded answers y (0..1) to prompts X, prompt side
        frozen. `prior`: (mean, covariance) over [ability, bias]; default the training models'."""
        s, d = self.prompt_side(X)
        return _map_logistic(s, d, np.asarray(y, float), *(prior or self._prior()), self.prior_strength)

    def residuals(self, X: np.ndarray, y: np.ndarray, ability: np.ndarray, bias: float) -> np.ndarray:
        """Graded outcome minus the predicted P(right) of a model with this ability, per prompt."""
        s, d = self.prompt_side(X)
        return np.asarray(y, float) - sigmoid(s @ np.asarray(ability, float) + bias - d)

    def fit_model(
        self, X: np.ndarray, y: np.ndarray, prior: tuple[np.ndarray, np.ndarray] | None = None
    ) -> tuple[np.ndarray, float, np.ndarray]:
        """What calibration stores for one model from its graded answers y to prompts X (offline
        and online alike): the MAP (ability, bias) and each item's residual under it times the
        model's residual weight (`residual_weight`), which `set_ability(..., residual=(X, r))`
        serves as a local correction."""
        a, b = self.fit_ability(X, y, prior)
        r = self.residuals(X, y, a, b)
        return a, b, r * self.residual_weight(X, r)

    def residual_weight(self, X: np.ndarray, r: np.ndarray) -> float:
        """How much of the nearest items' mean residual to add, in [0, 1]: the least-squares
        coefficient of each calibration item's residual on the mean residual of its
        `residual_k` nearest other items (leave-one-out). Residuals without local structure
        (one task the prompt side already covers) give ~0, so the correction adds no noise;
        a task the prompt side misjudges for this model gives up to 1. Below 5 * `residual_k`
        items the weight is 0: the neighbourhoods span a fifth of the items or more, and the
        leave-one-out weight was noise (docs/benchmarks.md: at K = 25-50 it cost AIQ)."""
        r = np.asarray(r, float)
        k = int(self.residual_k)
        if k < 1 or len(r) < 5 * k:  # fewer: the k nearest are no longer local, the weight noise
            return 0.0
        U = _unit(X)
        sim = U @ U.T
        np.fill_diagonal(sim, -np.inf)
        m = r[np.argpartition(-sim, k - 1, axis=1)[:, :k]].mean(1)
        den = float(m @ m)
        if den <= 0:
            return 0.0
        w = float(r @ m) / den
        se = np.sqrt(float(np.sum((r - w * m) ** 2)) / max(len(r) - 1, 1) / den)
        return float(np.clip(w - self.residual_z * se, 0.0, 1.0))

    def _prior(self) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(self.ability_mean_, float), np.asarray(self.ability_cov_, float)

    def ability_from_benchmarks(self, scores: Mapping[str, float]) -> tuple[np.ndarray, float] | None:
        """The ability whose predicted accuracy on each benchmark's probe prompts matches `scores`
        (0..1 or percent), under the prior; None when no score names a task the artifact probes."""
        tasks = list(getattr(self, "probe_tasks_", []))
        pairs = [(tasks.index(_task(k)), _fraction(v)) for k, v in scores.items() if _task(k) in tasks]
        if not pairs:
            return None
        from scipy.optimize import minimize

        mean, cov = self._prior()
        prec = np.linalg.inv(cov)

        def loss(z):
            err = 0.0
            for t, target in pairs:
                ok = np.isfinite(self.probe_diff_[t])
                p = sigmoid(self.probe_skill_[t][ok] @ z[:-1] + z[-1] - self.probe_diff_[t][ok])
                err += (p.mean() - target) ** 2
            # the squared errors are in accuracy units (~0.01): the prior only breaks ties
            return err / 1e-3 + 0.5 * (z - mean) @ prec @ (z - mean) / len(mean)

        z = minimize(loss, mean.copy(), method="L-BFGS-B").x
        return z[:-1], float(z[-1])

    def predicted_accuracy(self, ability: np.ndarray, bias: float) -> dict[str, float]:
        """Expected accuracy on each probed benchmark of a model with this ability."""
        out = {}
        for t, name in enumerate(getattr(self, "probe_tasks_", [])):
            ok = np.isfinite(self.probe_diff_[t])
            out[name] = float(
                sigmoid(self.probe_skill_[t][ok] @ ability + bias - self.probe_diff_[t][ok]).mean()
            )
        return out

    def set_ability(
        self,
        model: str,
        ability: np.ndarray,
        bias: float,
        source: str,
        cost_coef: np.ndarray | None = None,
        residual: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        """Add or replace one model's ability (and its cost model, when known); `residual`:
        (embeddings, residuals) of its calibration items (`fit_model`), else it has none."""
        self._set_residual(model, *(residual or (None, None)))
        ability = np.asarray(ability, np.float32).reshape(1, -1)
        if model in self.models_:
            j = self.models_.index(model)
            self.ability_[j], self.bias_[j], self.source_[j] = ability[0], bias, source
        else:
            self.models_ = [*self.models_, model]
            self.ability_ = np.concatenate([self.ability_, ability])
            self.bias_ = np.append(self.bias_, np.float32(bias))
            self.source_ = [*self.source_, source]
            for attr in ("cal_a_", "cal_b_"):
                setattr(self, attr, np.append(getattr(self, attr), 1.0 if attr == "cal_a_" else 0.0))
            for attr in ("cost_coef_", "latency_coef_"):
                coef = getattr(self, attr, None)
                if coef is not None:  # unknown until told: the others' mean
                    setattr(self, attr, np.concatenate([coef, np.nanmean(coef, axis=0, keepdims=True)]))
        if cost_coef is not None and getattr(self, "cost_coef_", None) is not None:
            self.cost_coef_[self.models_.index(model)] = cost_coef

    def _set_residual(self, model: str, X: np.ndarray | None, r: np.ndarray | None) -> None:
        """Replace `model`'s calibration items (new arrays: copies of the policy share the old)."""
        of = list(getattr(self, "resid_of_", None) or [])
        keep = [i for i, m in enumerate(of) if m != model]
        xs = [np.asarray(self.resid_x_, np.float16)[keep]] if keep else []
        ys = [np.asarray(self.resid_y_, np.float32)[keep]] if keep else []
        of = [of[i] for i in keep]
        if X is not None and len(X) and np.any(r):  # all zero (weight 0): nothing to add
            xs.append(_unit(X).astype(np.float16))
            ys.append(np.asarray(r, np.float32))
            of += [model] * len(X)
        if of:
            self.resid_x_, self.resid_y_, self.resid_of_ = np.concatenate(xs), np.concatenate(ys), of
        else:
            self._clear_residuals()

    def _clear_residuals(self) -> None:
        for k in ("resid_x_", "resid_y_", "resid_of_"):
            if hasattr(self, k):
                delattr(self, k)

    def residual_of(self, model: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(unit embeddings, residuals) of `model`'s calibration items, or None."""
        of = np.asarray(getattr(self, "resid_of_", None) or [])
        rows = np.flatnonzero(of == model)
        return (np.asarray(self.resid_x_)[rows], np.asarray(self.resid_y_)[rows]) if len(rows) else None

    def ability_of(self, model: str) -> tuple[np.ndarray, float, str] | None:
        if model not in self.models_:
            return None
        j = self.models_.index(model)
        src = self.source_[j] if j < len(self.source_) else "trained"
        return None if src == "prior" else (self.ability_[j], float(self.bias_[j]), src)

    # ---- serving a pool ------------------------------------------------------------------------
    def attach_pool(
        self, catalog: Sequence[ModelInfo], abilities_file: str | Path | None = None, categories: Any = None
    ) -> IRTPolicy:
        """Serve `catalog`'s models: each gets an ability (see the module docstring) or, lacking
        one, is scored by its category priors. Returns self."""
        from policies.category import CategoryPolicy

        self._artifact = {m: self.ability_of(m) for m in self.models_}
        self._artifact_resid = {m: self.residual_of(m) for m in self.models_}
        self._catalog = list(catalog)
        self._abilities_file = Path(abilities_file) if abilities_file else None
        self._file_mtime: float | None = None
        self._checked = 0.0
        self._lock = threading.Lock()
        self._category = CategoryPolicy(categories=categories, encoder=self.encoder).fit(self._catalog)
        self.cost_coef_ = None  # prices of the pool's models (config), not of the training data
        self.latency_coef_ = None
        self._resolve()
        return self

    def _resolve(self) -> None:
        stored = read_abilities(self._abilities_file) if self._abilities_file else {}
        dim = self.ability_.shape[1]
        A = np.zeros((len(self._catalog), dim), np.float32)
        B = np.zeros(len(self._catalog), np.float32)
        src = []
        resid: dict[str, tuple[np.ndarray, np.ndarray] | None] = {}
        for j, info in enumerate(self._catalog):
            found = self._artifact.get(info.name)
            resid[info.name] = self._artifact_resid.get(info.name)
            if found is None and info.name in stored and len(stored[info.name]["ability"]) == dim:
                e = stored[info.name]
                found = (np.asarray(e["ability"]), float(e["bias"]), "calibrated")
                resid[info.name] = unpack_residual(e.get("residual"))
                width = (self.body_w_ if getattr(self, "body_w_", None) is not None else self.skill_w_).shape[
                    0
                ]
                if resid[info.name] is not None and resid[info.name][0].shape[1] != width:
                    resid[info.name] = None  # items embedded by another encoder
            if found is None and info.benchmarks:
                z = self.ability_from_benchmarks(info.benchmarks)
                found = None if z is None else (z[0], z[1], "benchmarks")
            if found is None:
                src.append("prior")
                continue
            A[j], B[j] = found[0], found[1]
            src.append(found[2])
        self.models_ = [m.name for m in self._catalog]
        self.ability_, self.bias_, self.source_ = A, B, src
        self._clear_residuals()
        for j, m in enumerate(self.models_):
            if src[j] != "prior" and resid.get(m) is not None:
                self._set_residual(m, *resid[m])
        self.cal_a_ = np.ones(len(src))
        self.cal_b_ = np.zeros(len(src))

    def _refresh(self) -> None:
        """Pick up a rewritten abilities file (at most once a second): calibration serves at once."""
        f = self._abilities_file
        now = time.monotonic()
        if f is None or now - self._checked < 1.0:
            return
        self._checked = now
        try:
            mtime = os.stat(f).st_mtime
        except OSError:
            mtime = None
        if mtime != self._file_mtime:
            with self._lock:
                self._file_mtime = mtime
                self._resolve()

    def sources(self) -> dict[str, str]:
        """Where each served model's ability comes from (SOURCES)."""
        if hasattr(self, "_catalog"):
            self._refresh()
        return dict(zip(self.models_, self.source_, strict=False))

    def predict_quality(self, batch: PromptBatch) -> np.ndarray:
        self._check_fitted()
        if not hasattr(self, "_catalog"):
            return super().predict_quality(batch)
        self._refresh()
        X = self.features(batch)
        q = self._scores(X)
        prior = np.array([s == "prior" for s in self.source_])
        if prior.any():
            cb = PromptBatch(
                texts=batch.texts, embeddings=X if batch.embeddings is None else batch.embeddings
            )
            q[:, prior] = self._category.predict_quality(cb)[:, prior]
        return q


def planned_sources(
    catalog: Sequence[ModelInfo], artifact: str | Path | None = None, abilities_file: str | Path | None = None
) -> dict[str, str]:
    """Where an irt policy serving `catalog` would take each model's quality from, read from the
    artifact's metadata and the abilities file only (no encoder: for `moe-router models`)."""
    from policies.artifacts import read_metadata

    meta = read_metadata(artifact or shipped_artifact())
    srcs = meta["state"].get("source_") or ["trained"] * len(meta["models"])
    have = {m: s for m, s in zip(meta["models"], srcs, strict=False) if s != "prior"}
    dim = int(meta["params"].get("dim", 0)) * int(meta["params"].get("ensemble", 1))
    probed = meta["state"].get("probe_tasks_", [])
    stored = read_abilities(abilities_file)
    out = {}
    for info in catalog:
        if info.name in have:
            out[info.name] = have[info.name]
        elif info.name in stored and len(stored[info.name]["ability"]) == dim:
            out[info.name] = "calibrated"
        elif any(_task(k) in probed for k in info.benchmarks):
            out[info.name] = "benchmarks"
        else:
            out[info.name] = "prior"
    return out


# ---- the abilities file ---------------------------------------------------------------------------
def read_abilities(path: str | Path | None) -> dict[str, dict[str, Any]]:
    """{model: {"ability": [...], "bias": b, ...}} from the abilities file; {} when absent. The file
    can be edited by hand: an unreadable file, or an entry whose ability or bias is not finite
    numbers (`_entry_error`), is logged and left out, so that model is served as if uncalibrated
    instead of the policy failing (at start-up or on the request that re-reads the file)."""
    if path is None:
        return {}
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        log.warning("abilities file %s is unreadable (%s): no model is served as calibrated", path, e)
        return {}
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, dict):
        log.warning("abilities file %s has no 'models' object: no model is served as calibrated", path)
        return {}
    out = {}
    for name, entry in models.items():
        error = _entry_error(entry)
        if error:
            log.warning("abilities file %s: %r is left out: %s", path, name, error)
        else:
            out[name] = entry
    return out


def _entry_error(entry: Any) -> str | None:
    """Why an abilities-file entry cannot be served, or None."""
    if not isinstance(entry, dict) or "ability" not in entry or "bias" not in entry:
        return "an entry needs 'ability' and 'bias'"
    ability, bias = entry["ability"], entry["bias"]
    if not isinstance(ability, list) or not ability or not all(_number(v) for v in ability):
        return f"'ability' must be a list of numbers of magnitude at most {MAX_ABILITY:g}"
    if not _number(bias):
        return f"'bias' must be a number of magnitude at most {MAX_ABILITY:g}"
    return None


def _number(v: Any) -> bool:
    """A finite JSON number a fit could have produced (not a bool, not NaN, not 1e308)."""
    return isinstance(v, int | float) and not isinstance(v, bool) and abs(v) <= MAX_ABILITY


def write_ability(path: str | Path, model: str, entry: dict[str, Any]) -> None:
    """Add or replace one model's entry, atomically (a serving gateway reads the file any time),
    under a lock file beside it: calibrations running at once (processes, threads) each read,
    update and replace the whole file, and would otherwise drop each other's models."""
    from filelock import FileLock

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path.with_name(path.name + ".lock")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = {}
        if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
            data = {"format": "moe-router-abilities", "models": {}}
        data["models"][model] = entry
        tmp = path.with_suffix(path.suffix + f".{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(path)


def pack_residual(X: np.ndarray, r: np.ndarray) -> dict[str, Any]:
    """A model's calibration items for the abilities file: unit embeddings as base64 float16."""
    import base64

    x = _unit(X).astype("<f2")
    return {
        "dim": int(x.shape[1]),
        "embeddings_f16": base64.b64encode(x.tobytes()).decode(),
        "residuals": [round(float(v), 5) for v in r],
    }


def unpack_residual(entry: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """`pack_residual`'s inverse; None when absent or malformed."""
    import base64

    try:
        r = np.asarray(entry["residuals"], np.float32)
        x = np.frombuffer(base64.b64decode(entry["embeddings_f16"]), "<f2").reshape(len(r), int(entry["dim"]))
    except (TypeError, KeyError, ValueError):
        return None
    if r.ndim != 1 or not len(r) or not (np.isfinite(r).all() and np.isfinite(x).all()):
        return None
    return x.astype(np.float32), r


# ---- helpers --------------------------------------------------------------------------------------
def _unit(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, np.float32)
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


def _map_logistic(s, d, y, mean, cov, strength: float) -> tuple[np.ndarray, float]:
    """argmin over z = [a, b] of sum BCE(sigmoid(s a + b - d), y) + strength/2 (z-mean)' cov^-1 (z-mean)."""
    from scipy.optimize import minimize

    F = np.concatenate([s, np.ones((len(s), 1))], axis=1).astype(float)
    prec = strength * np.linalg.inv(cov)
    d = np.asarray(d, float)

    def loss(z):
        t = F @ z - d
        p = sigmoid(t)
        nll = np.sum(np.logaddexp(0.0, t) - y * t)
        r = z - mean
        return nll + 0.5 * r @ prec @ r, F.T @ (p - y) + prec @ r

    z = minimize(loss, mean.copy(), jac=True, method="L-BFGS-B").x
    return z[:-1].astype(np.float32), float(z[-1])


TASK_ALIASES = {"arc": "arc_challenge", "arc_c": "arc_challenge", "gsm": "gsm8k", "human_eval": "humaneval"}


def _task(name: str) -> str:
    t = name.strip().lower().replace("-", "_")
    return TASK_ALIASES.get(t, t)


def _fraction(v: float) -> float:
    v = float(v)
    return v / 100.0 if v > 1.0 else v


def _erf(x: np.ndarray) -> np.ndarray:
    from scipy.special import erf

    return erf(x)
