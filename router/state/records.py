"""What the gateway remembers about each request and the feedback on it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from typing import Any


def _as_dict(record) -> dict[str, Any]:
    """The record's fields, its lists and dicts copied one level down (what is logged is a
    snapshot); deeper values (a decision's ranking) are shared, written once, never changed.
    `dataclasses.asdict` deep-copies everything: ~2% of a named-model request's CPU."""
    return {
        f.name: (v.copy() if isinstance(v := getattr(record, f.name), (dict, list)) else v)
        for f in fields(record)
    }


@dataclass
class RequestRecord:
    """One answered (or failed) request: enough to join feedback to it and learn from it later."""

    id: str
    model: str | None  # the model that answered (None when all failed)
    policy: str | None  # None when the caller named a model (routing bypassed)
    prompt: str  # the routing text as config `log.prompts` keeps it (none | hash | truncated | full)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens the provider served from its prompt cache
    cost_usd: float = 0.0
    latency_ms: float = 0.0
    # ok | error | client_closed (the client went away before the end) | refused (router.refusals)
    status: str = "ok"
    error: str | None = None
    key: str | None = None  # API key name, when keys are in use
    owner: str = "anonymous"  # who may rate it: the API key's id (`Caller.scope`)
    fallbacks: list[str] = field(default_factory=list)  # models that failed before `model` answered
    predicted: dict[str, float | None] = field(default_factory=dict)  # quality / cost_usd / latency_ms
    cost_weight: float | None = None
    propensity: float | None = None  # probability the policy gave the chosen model (bandits)
    reserved_usd: float | None = None  # budget reserved before dispatch (settled to cost_usd)
    cache: str | None = None  # exact | semantic when answered from a cache
    # routed requests: the ranking the policy gave, compact (`decision_summary`); None for named
    # models, unless reached by a vendor name's alias (its `notes.alias` names it)
    decision: dict[str, Any] | None = None
    # online policies: what feedback on this request teaches them (the context vector and the
    # prior quality of each model), so a rating is learned without keeping or re-reading the prompt
    learn: dict[str, Any] | None = None
    created: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return _as_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RequestRecord:
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class FeedbackRecord:
    """One rater's rating of one request; a later rating by the same rater replaces it."""

    request_id: str
    rating: float  # 0..1
    source: str = "user"  # user | judge
    model: str | None = None
    comment: str | None = None
    rater: str = "anonymous"  # the caller's scope (key id), "admin" or "judge"
    created: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return _as_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeedbackRecord:
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in known})
