"""Composition-of-Experts routing with no training data.

A zero-shot classifier puts each prompt in content categories (code, math, reasoning, ...) by
cosine similarity between its embedding and a few example descriptions per category; a model's
predicted quality is its prior quality per category (from config), weighted by the category
probabilities. So a fresh install already routes code to the model configured as good at code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib import resources

import numpy as np
import yaml

from policies.base import ModelInfo, PriorPolicy, PromptBatch
from policies.encoders import PromptEncoder


def default_categories() -> dict[str, list[str]]:
    text = resources.files("policies").joinpath("categories.yaml").read_text()
    return {k: list(v) for k, v in yaml.safe_load(text).items()}


class CategoryPolicy(PriorPolicy):
    name = "category"
    needs_embeddings = True

    def __init__(
        self,
        categories: Mapping[str, Sequence[str]] | None = None,
        temperature: float = 0.05,
        encoder: PromptEncoder | None = None,
    ):
        self.categories = categories
        self.temperature = temperature
        self.encoder = encoder

    def fit(self, catalog: Sequence[ModelInfo]) -> CategoryPolicy:
        super().fit(catalog)
        cats = dict(self.categories or default_categories())
        if not cats:
            raise ValueError("category policy needs at least one category")
        encoder = self.encoder or PromptEncoder()
        self.categories_ = list(cats)
        # one unit-norm centroid per category, from its example descriptions
        cents = []
        for c in self.categories_:
            if not cats[c]:
                raise ValueError(f"category {c!r} has no descriptions")
            v = encoder.encode(list(cats[c])).mean(0)
            cents.append(v / np.linalg.norm(v))
        self.centroids_ = np.stack(cents)
        self.prior_ = np.array(
            [[m.prior(c) for c in self.categories_] for m in self.catalog_]
        )  # (models, cats)
        return self

    def predict_proba(self, batch: PromptBatch) -> np.ndarray:
        """(n_prompts, n_categories) category probabilities."""
        self._check_fitted()
        if batch.embeddings is None:
            raise ValueError("category policy needs prompt embeddings")
        sim = batch.embeddings @ self.centroids_.T / self.temperature
        sim -= sim.max(axis=1, keepdims=True)
        p = np.exp(sim)
        return p / p.sum(axis=1, keepdims=True)

    def predict_category(self, batch: PromptBatch) -> list[str]:
        return [self.categories_[i] for i in self.predict_proba(batch).argmax(axis=1)]

    def predict_quality(self, batch: PromptBatch) -> np.ndarray:
        return self.predict_proba(batch) @ self.prior_.T
