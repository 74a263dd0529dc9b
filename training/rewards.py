"""Rewards for training an LLM router with GRPO: plain functions with trl's reward signature.

`f(completions, **kwargs) -> list[float]`, one float per completion. trl passes every dataset
column as a keyword (one value per completion); the GRPO dataset of `training.llm_router` has:

- `models`: the roster, in order (list[str])
- `quality`: each model's known quality on this prompt, 0..1, None where masked (list)
- `cost`: each model's cost on this prompt, USD, None where unknown (list)
- `first` (optional, Router-R1 second rounds): the model already asked, whose answer the router
  read; naming it again keeps that answer, naming another model pays for both calls

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

# format_reward: all or nothing. Partial credit for a tag with any name (0.2 in an earlier
# revision) was hacked on an H100: the policy settled on answering the instruction's own
# `Reply with <route>model-name</route>`, paid for the tag while routing nowhere (issue 13).
STRICT = 1.0  # the whole answer is exactly one <route>name</route>, name in the roster
NOT_STRICT = 0.0  # anything else: unknown name, several tags, extra text, no tag


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
    """1.0 only for exactly one `<route>name</route>` (surrounding whitespace allowed) naming a
    roster model; 0.0 for anything else (an unknown name, several tags, any other text): the
    format is worth nothing unless it routes."""
    rosters = _per_row(models, len(completions))
    out = []
    for c, roster in zip(completions, rosters, strict=True):
        text = completion_text(c)
        tags = route_tags(text)
        ok = (
            len(tags) == 1
            and match_model(tags[0], roster) is not None
            and text.strip() == f"<route>{tags[0]}</route>"
        )
        out.append(STRICT if ok else NOT_STRICT)
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
    completions: Sequence[Any],
    models: Any,
    cost: Any,
    cost_lambda: float = 0.1,
    first: Any = None,
    **kwargs: Any,
) -> list[float]:
    """-cost_lambda x (chosen model's cost / the most expensive model's cost on this prompt), in
    [-cost_lambda, 0]; in a second round (`first` names the model already asked) that call's
    relative cost is added when another model is chosen. 0.0 when nothing parseable was chosen
    (format_reward already scores that) or the cost is unknown. Bind the weight with
    `functools.partial(cost_penalty, cost_lambda=x)`."""
    n = len(completions)
    firsts = first if isinstance(first, list | tuple) and len(first) == n else [first] * n
    out = []
    for c, roster, row, f in zip(completions, _per_row(models, n), _per_row(cost, n), firsts, strict=True):
        choice = parse_route(completion_text(c), roster)
        known = [v for v in (row or []) if _known(v)]
        top = max(known, default=0.0)
        calls = [choice] + ([f] if f in roster and f != choice else []) if choice is not None else []
        spent = [row[roster.index(m)] for m in calls] if row is not None else []
        ok = bool(spent) and all(_known(v) for v in spent) and top > 0
        out.append(-cost_lambda * float(sum(spent)) / top if ok else 0.0)
    return out
