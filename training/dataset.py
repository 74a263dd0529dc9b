"""`RoutingDataset`: what routing policies learn from, and what offline evaluation replays.

Prompts x models matrices of quality (0..1), cost (USD) and, when known, latency (ms) and token
counts. A cell nobody observed is *masked* (`mask[i, j] = False`) and holds NaN, never 0: a blank
in the source is missing information, not a wrong answer. Splits are by prompt (identical prompt
texts always land on the same side), seeded.

The same object feeds the supervised policies here, bandit replay and offline RL: keep it plain
arrays + lists so those can index it directly.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from policies.folds import group_folds


@dataclass
class LoadReport:
    """What a loader kept, masked and dropped, and why (printed by the CLI, stored in artifacts)."""

    source: str = ""
    rows_read: int = 0
    rows_kept: int = 0
    cells_masked: int = 0  # (prompt, model) cells with no quality observation
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> rows
    notes: list[str] = field(default_factory=list)

    def drop(self, reason: str, n: int = 1) -> None:
        if n:
            self.dropped[reason] = self.dropped.get(reason, 0) + n

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "rows_read": self.rows_read,
            "rows_kept": self.rows_kept,
            "cells_masked": self.cells_masked,
            "dropped": dict(self.dropped),
            "notes": list(self.notes),
        }

    def summary(self) -> str:
        drops = ", ".join(f"{n} {r}" for r, n in self.dropped.items()) or "none"
        notes = "".join(f"; {n}" for n in self.notes)
        return (
            f"{self.rows_kept} prompts kept of {self.rows_read} rows read; "
            f"{self.cells_masked} cells masked; dropped: {drops}{notes}"
        )


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclass
class RoutingDataset:
    texts: list[str]
    models: list[str]
    quality: np.ndarray  # (n, m) float in 0..1, NaN where masked
    mask: np.ndarray  # (n, m) bool: quality observed
    cost: np.ndarray | None = None  # (n, m) USD, NaN where unknown
    latency: np.ndarray | None = None  # (n, m) ms, NaN where unknown
    prompt_tokens: np.ndarray | None = None  # (n,)
    completion_tokens: np.ndarray | None = None  # (n, m), NaN where unknown
    prompt_ids: list[str] | None = None  # stable ids (source ids, or text hashes)
    responses: dict[str, list[str | None]] | None = None  # model -> answer text per prompt
    meta: dict[str, list[Any]] = field(default_factory=dict)  # per-prompt columns (subject, task ...)
    report: LoadReport = field(default_factory=LoadReport)

    def __post_init__(self) -> None:
        n, m = len(self.texts), len(self.models)
        self.quality = np.asarray(self.quality, dtype=float).reshape(n, m)
        self.mask = np.asarray(self.mask, dtype=bool).reshape(n, m)
        self.quality = np.where(self.mask, self.quality, np.nan)
        for name in ("cost", "latency", "completion_tokens"):
            a = getattr(self, name)
            if a is not None:
                a = np.asarray(a, dtype=float)
                if a.shape != (n, m):
                    raise ValueError(f"{name} has shape {a.shape}, expected {(n, m)}")
                setattr(self, name, a)
        if self.prompt_tokens is not None:
            self.prompt_tokens = np.asarray(self.prompt_tokens, dtype=float).reshape(n)
        if self.prompt_ids is None:
            self.prompt_ids = [text_key(t) for t in self.texts]
        if len(set(self.models)) != m:
            raise ValueError(f"duplicate model names: {self.models}")
        q = self.quality[self.mask]
        if q.size and (q.min() < 0 or q.max() > 1):
            raise ValueError(f"quality must be in 0..1 (found {q.min():g}..{q.max():g})")

    # ---- shape ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.texts)

    @property
    def n_models(self) -> int:
        return len(self.models)

    @property
    def complete(self) -> np.ndarray:
        """(n,) rows where every model's quality (and cost, when there is a cost matrix) is known."""
        ok = self.mask.all(axis=1)
        if self.cost is not None:
            ok &= np.isfinite(self.cost).all(axis=1)
        return ok

    def tokens(self) -> np.ndarray:
        """Prompt tokens per prompt: recorded counts, else the gateway's estimate (chars / 4)."""
        if self.prompt_tokens is not None and np.isfinite(self.prompt_tokens).all():
            return self.prompt_tokens
        est = np.array([max(1, len(t) // 4) for t in self.texts], dtype=float)
        if self.prompt_tokens is None:
            return est
        return np.where(np.isfinite(self.prompt_tokens), self.prompt_tokens, est)

    def describe(self) -> dict[str, Any]:
        """A small JSON-able summary (stored in artifacts and reports)."""
        q = np.where(self.mask, self.quality, np.nan)
        d: dict[str, Any] = {
            "prompts": len(self),
            "models": list(self.models),
            "observed_cells": int(self.mask.sum()),
            "masked_cells": int((~self.mask).sum()),
            "mean_quality": {m: _r(_nanmean(q[:, j])) for j, m in enumerate(self.models)},
            "load": self.report.as_dict(),
        }
        if self.cost is not None:
            d["mean_cost_usd"] = {m: _r(_nanmean(self.cost[:, j]), 9) for j, m in enumerate(self.models)}
        return d

    # ---- selection -----------------------------------------------------------------------------
    def subset(self, idx: Sequence[int] | np.ndarray) -> RoutingDataset:
        idx = np.asarray(idx)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)

        def rows(a):
            return None if a is None else a[idx]

        return replace(
            self,
            texts=[self.texts[i] for i in idx],
            quality=self.quality[idx],
            mask=self.mask[idx],
            cost=rows(self.cost),
            latency=rows(self.latency),
            prompt_tokens=rows(self.prompt_tokens),
            completion_tokens=rows(self.completion_tokens),
            prompt_ids=[self.prompt_ids[i] for i in idx],
            responses=None
            if self.responses is None
            else {m: [r[i] for i in idx] for m, r in self.responses.items()},
            meta={k: [v[i] for i in idx] for k, v in self.meta.items()},
        )

    def select_models(self, models: Sequence[str]) -> RoutingDataset:
        missing = [m for m in models if m not in self.models]
        if missing:
            raise ValueError(f"models not in the data: {missing}; the data has {self.models}")
        cols = [self.models.index(m) for m in models]

        def c(a):
            return None if a is None else a[:, cols]

        return replace(
            self,
            models=list(models),
            quality=self.quality[:, cols],
            mask=self.mask[:, cols],
            cost=c(self.cost),
            latency=c(self.latency),
            completion_tokens=c(self.completion_tokens),
            responses=None
            if self.responses is None
            else {m: r for m, r in self.responses.items() if m in models},
        )

    def _groups(self) -> np.ndarray:
        """Group id per row: rows with the same prompt text share one, so a split never cuts them."""
        ids: dict[str, int] = {}
        return np.array([ids.setdefault(t, len(ids)) for t in self.texts])

    def split(self, test_size: float = 0.2, seed: int = 0) -> tuple[RoutingDataset, RoutingDataset]:
        """Seeded split by prompt: no prompt text is on both sides."""
        if not 0 < test_size < 1:
            raise ValueError("test_size must be between 0 and 1")
        g = self._groups()
        n_groups = g.max() + 1 if len(g) else 0
        perm = np.random.default_rng(seed).permutation(n_groups)
        n_test = max(1, round(test_size * n_groups))
        test_groups = np.zeros(n_groups, dtype=bool)
        test_groups[perm[:n_test]] = True
        is_test = test_groups[g]
        return self.subset(~is_test), self.subset(is_test)

    def kfold(self, k: int = 5, seed: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Seeded k-fold by prompt: yields (train_idx, test_idx) row indices."""
        g = self._groups()
        n_groups = g.max() + 1 if len(g) else 0
        if k < 2 or k > n_groups:
            raise ValueError(f"k must be between 2 and the number of distinct prompts ({n_groups})")
        fold = group_folds(g, k, seed)
        for f in range(k):
            yield np.flatnonzero(fold != f), np.flatnonzero(fold == f)

    # ---- pairwise view (Bradley-Terry, preference data) -------------------------------------------
    def pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Every observed pair of models on a prompt with different quality, as
        (prompt_idx, model_a, model_b, y) with y = 1 when a did better than b."""
        pi, a, b, y = [], [], [], []
        for i in range(len(self)):
            obs = np.flatnonzero(self.mask[i])
            for u in range(len(obs)):
                for v in range(u + 1, len(obs)):
                    qa, qb = self.quality[i, obs[u]], self.quality[i, obs[v]]
                    if qa != qb:
                        pi.append(i)
                        a.append(obs[u])
                        b.append(obs[v])
                        y.append(1.0 if qa > qb else 0.0)
        return np.array(pi, dtype=int), np.array(a, dtype=int), np.array(b, dtype=int), np.array(y)


def _nanmean(a: np.ndarray) -> float:
    """The mean of the finite values; NaN (no warning) when there are none (a masked column)."""
    ok = np.isfinite(a)
    return float(a[ok].mean()) if ok.any() else float("nan")


def _r(x: float, nd: int = 4) -> float | None:
    return None if not np.isfinite(x) else round(float(x), nd)
