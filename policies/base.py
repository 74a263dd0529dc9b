"""The routing-policy interface: a policy is an estimator, like a scikit-learn one.

`__init__` stores hyper-parameters only; `fit` learns and returns `self`; learned state ends in
`_`; the `predict_*` methods never mutate. A policy predicts, per prompt and per model, the
quality it expects (0..1) and, where it learns them, cost (USD) and latency (ms). Choosing a
model under constraints is *not* its job: `policies.decision.decide` does that for every policy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np


@dataclass(frozen=True)
class ModelInfo:
    """What a policy may know of a candidate model without calling it (from config)."""

    name: str
    input_price_per_1m: float = 0.0
    output_price_per_1m: float = 0.0
    # prior quality in 0..1, per prompt category ("default" is the fallback)
    quality: dict[str, float] = field(default_factory=dict)
    latency_ms: float | None = None  # prior expected latency of a typical answer
    description: str = ""
    # USD per 1M prompt tokens read from the provider's prompt cache (None: the input price)
    cached_input_price_per_1m: float | None = None
    # public benchmark scores (mmlu, gsm8k, arc_challenge, humaneval; 0..1 or percent): the `irt`
    # policy's ability for a model it has no calibration for
    benchmarks: dict[str, float] = field(default_factory=dict)

    def prior(self, category: str = "default") -> float:
        return self.quality.get(category, self.quality.get("default", 0.5))

    def cost_usd(self, prompt_tokens: float, completion_tokens: float, cached_tokens: float = 0) -> float:
        """What an answer costs; `cached_tokens` of the prompt were read from the provider's cache."""
        usd = prompt_tokens * self.input_price_per_1m + completion_tokens * self.output_price_per_1m
        if cached_tokens and self.cached_input_price_per_1m is not None:
            usd -= min(cached_tokens, prompt_tokens) * (
                self.input_price_per_1m - self.cached_input_price_per_1m
            )
        return usd / 1e6

    def cache_value_usd(self, prompt_tokens: float) -> float:
        """What reading `prompt_tokens` from this model's prompt cache saves over sending them fresh."""
        if self.cached_input_price_per_1m is None:
            return 0.0
        return prompt_tokens * (self.input_price_per_1m - self.cached_input_price_per_1m) / 1e6


@dataclass
class PromptBatch:
    """The policy-visible features of a batch of prompts.

    `embeddings` is filled by the caller only when the policy asks for them (`needs_embeddings`).
    """

    texts: list[str]
    embeddings: np.ndarray | None = None  # (n, d), L2-normalised
    prompt_tokens: np.ndarray | None = None  # (n,) estimated input tokens

    def __len__(self) -> int:
        return len(self.texts)

    def tokens(self) -> np.ndarray:
        if self.prompt_tokens is not None:
            return np.asarray(self.prompt_tokens, dtype=float)
        return np.array([max(1, len(t) // 4) for t in self.texts], dtype=float)


class Policy:
    """Base class. Subclasses set `name`, override `fit`/`predict_quality` and may override
    `predict_cost`/`predict_latency` (returning None means "no opinion": the engine then uses
    prices × token estimates and measured latency)."""

    name: ClassVar[str] = "base"
    needs_embeddings: ClassVar[bool] = False
    # what some policies can do beyond this (a cascade's two steps, learning online, an artifact
    # layout or encoder of their own) is declared in policies/capabilities.py
    # predicting runs a model (e.g. an LM generating): the gateway calls it in a worker thread
    blocking: ClassVar[bool] = False

    models_: list[str]

    def get_params(self) -> dict[str, Any]:
        import inspect

        sig = inspect.signature(type(self).__init__)
        return {p: getattr(self, p) for p in sig.parameters if p != "self" and hasattr(self, p)}

    def fit(self, data: Any) -> Policy:  # pragma: no cover - abstract
        raise NotImplementedError

    def predict_quality(self, batch: PromptBatch) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def predict_cost(self, batch: PromptBatch) -> np.ndarray | None:
        return None

    def predict_latency(self, batch: PromptBatch) -> np.ndarray | None:
        return None

    def observe(self, batch: PromptBatch, model: str, reward: float) -> None:
        """Online feedback on one prompt (bandits override this); offline policies ignore it."""

    @property
    def fitted(self) -> bool:
        return hasattr(self, "models_")

    def _check_fitted(self) -> None:
        if not self.fitted:
            raise RuntimeError(f"policy {self.name!r} is not fitted")


class PriorPolicy(Policy):
    """A policy whose knowledge is the model catalogue itself (prices and prior qualities from
    config). `fit` takes that catalogue; no data needed."""

    def fit(self, catalog: Sequence[ModelInfo]) -> PriorPolicy:
        self.catalog_ = list(catalog)
        self.models_ = [m.name for m in self.catalog_]
        return self

    def _prior_matrix(self, n: int, category: str = "default") -> np.ndarray:
        row = np.array([m.prior(category) for m in self.catalog_], dtype=float)
        return np.tile(row, (n, 1))
