"""Rewards for training an LLM router with GRPO: plain functions with trl's reward signature.

`f(completions, **kwargs) -> list[float]`, one float per completion. trl passes every dataset
column as a keyword (one value per completion); the GRPO dataset of `training.llm_router` has:

- `models`: the roster, in order (list[str])
- `quality`: each model's known quality on this prompt, 0..1, None where masked (list)
- `cost`: each model's cost on this prompt, USD, None where unknown (list)

A completion is a string, or (conversational datasets) a list of messages whose last `content`
is the answer. The answer format is `<route>model-name</route>`; `parse_route` reads it the same
way the serving policy does (whitespace and case in the name are ignored: tokenizers may decode
"gpt-4" as "gpt - 4").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from policies.llm_router import match_model, parse_route, route_tags

__all__ = ["cost_penalty", "format_reward", "outcome_reward", "parse_route"]

# format_reward's partial credit
STRICT = 1.0  # the whole answer is exactly one <route>name</route>, name in the roster
EXTRA_TEXT = 0.5  # exactly one tag with a roster name, but other text around it
BAD_NAME = 0.2  # tags present, but not exactly one, or the name is not in the roster
NO_TAG = 0.0  # no complete <route>...</route> tag


def completion_text(completion: Any) -> str:
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content") or "")
    return ""


def _per_row(value: Any, n: int) -> list[Any]:
    """A column as trl passes it (one value per completion); a single roster is broadcast."""
    if value is None:
        return [None] * n
    if isinstance(value, list | tuple) and len(value) == n and (n == 0 or isinstance(value[0], list | tuple)):
        return list(value)
    return [value] * n


def _known(v: Any) -> bool:
    return v is not None and isinstance(v, int | float) and math.isfinite(v)


def format_reward(completions: Sequence[Any], models: Any, **kwargs: Any) -> list[float]:
    """1.0 for exactly `<route>name</route>` (surrounding whitespace allowed) with a roster name;
    0.5 for one such tag inside other text; 0.2 for tags that are malformed in content (name not
    in the roster, or several tags); 0.0 without a complete tag."""
    rosters = _per_row(models, len(completions))
    out = []
    for c, roster in zip(completions, rosters, strict=True):
        text = completion_text(c)
        tags = route_tags(text)
        if not tags:
            out.append(NO_TAG)
        elif len(tags) > 1 or match_model(tags[0], roster) is None:
            out.append(BAD_NAME)
        elif text.strip() == f"<route>{tags[0]}</route>":
            out.append(STRICT)
        else:
            out.append(EXTRA_TEXT)
    return out


def outcome_reward(completions: Sequence[Any], models: Any, quality: Any, **kwargs: Any) -> list[float]:
    """The chosen model's known quality on this prompt; 0.0 when the answer names no roster model
    or the chosen model's quality on this prompt is masked (unknown)."""
    n = len(completions)
    out = []
    for c, roster, q in zip(completions, _per_row(models, n), _per_row(quality, n), strict=True):
        choice = parse_route(completion_text(c), roster)
        v = q[roster.index(choice)] if choice is not None and q is not None else None
        out.append(float(v) if _known(v) else 0.0)
    return out


def cost_penalty(
    completions: Sequence[Any], models: Any, cost: Any, cost_lambda: float = 0.1, **kwargs: Any
) -> list[float]:
    """-cost_lambda x (chosen model's cost / the most expensive model's cost on this prompt), in
    [-cost_lambda, 0]. 0.0 when nothing parseable was chosen (format_reward already scores that)
    or the cost is unknown. Bind the weight with `functools.partial(cost_penalty, cost_lambda=x)`."""
    n = len(completions)
    out = []
    for c, roster, row in zip(completions, _per_row(models, n), _per_row(cost, n), strict=True):
        choice = parse_route(completion_text(c), roster)
        known = [v for v in (row or []) if _known(v)]
        top = max(known, default=0.0)
        v = row[roster.index(choice)] if choice is not None and row is not None else None
        out.append(-cost_lambda * float(v) / top if _known(v) and top > 0 else 0.0)
    return out
