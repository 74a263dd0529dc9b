"""A fitted policy serving under the pool's model names (`model_map:` in a policy's config entry;
the names and their checks: router/model_map.py)."""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

import numpy as np

from policies.base import Policy, PromptBatch
from policies.capabilities import CascadeRouter, OnlineRouter, implements
from router.model_map import rename


class MappedPolicy(Policy):
    """A fitted policy under other model names. Its columns keep their order, so quality passes
    through unchanged; only the names it reports (`models_`) are the pool's. Cost and latency it
    leaves to the gateway (the pool's prices, measured latency): the models answering now are the
    pool's, whose prices and speed need not be those of the data's models."""

    def __init__(self, inner: Policy, mapping: dict[str, str]):
        self.inner = inner
        self.mapping = dict(mapping)
        self.models_ = rename(list(inner.models_), self.mapping, "the artifact")
        self.name = inner.name
        self.needs_embeddings = inner.needs_embeddings
        self.blocking = inner.blocking

    def __getattr__(self, attr: str) -> Any:
        # anything else the gateway reads (metrics_, should_escalate, ...) is the policy's own
        if attr == "inner":
            raise AttributeError(attr)
        return getattr(self.inner, attr)

    def predict_quality(self, batch: PromptBatch) -> np.ndarray:
        return self.inner.predict_quality(batch)


class MappedCascade(MappedPolicy):
    """A cascade under other names: the models its plans name (first, escalate_to, ...) are the pool's."""

    def cascade_plan(self, batch: PromptBatch) -> list[Any]:
        def pool_names(plan):
            names = {f.name: getattr(plan, f.name) for f in fields(plan)}
            return replace(
                plan,
                **{k: self.mapping[v] for k, v in names.items() if isinstance(v, str) and v in self.mapping},
            )

        return [pool_names(p) for p in self.inner.cascade_plan(batch)]

    def should_escalate(self, prompt: str, answer: str | None, second: str | None = None) -> bool:
        return self.inner.should_escalate(prompt, answer, second)


def mapped(policy: Policy, mapping: dict[str, str]) -> Policy:
    """`policy` serving under `mapping` (itself when the mapping is empty)."""
    if not mapping:
        return policy
    if implements(policy, OnlineRouter):
        raise ValueError("model_map applies to offline artifacts; an online policy learns under pool names")
    cls = MappedCascade if implements(policy, CascadeRouter) else MappedPolicy
    return cls(policy, mapping)
