"""OpenAI wire format for answers, stream chunks and the `x-moe-router-*` headers."""

from __future__ import annotations

import json
import time
from typing import Any

from adapters import ChatChunk, ChatResult, Usage
from router.caching import CacheHit
from router.executor import Outcome
from router.planner import Plan

HEADER_PREFIX = "x-moe-router-"
MAX_EXPERT_HEADER = 4096


def usage_body(u: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens,
    }


def chat_body(result: ChatResult, o: Outcome) -> dict[str, Any]:
    return {
        "id": o.request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": o.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", **result.message},
                "finish_reason": result.finish_reason,
            }
        ],
        "usage": usage_body(o.usage),
    }


def completion_body(result: ChatResult, o: Outcome) -> dict[str, Any]:
    return {
        "id": o.request_id.replace("chatcmpl-", "cmpl-", 1),
        "object": "text_completion",
        "created": int(time.time()),
        "model": o.model,
        "choices": [
            {"index": 0, "text": result.text, "logprobs": None, "finish_reason": result.finish_reason}
        ],
        "usage": usage_body(o.usage),
    }


def chunk_body(rid: str, model: str, created: int, c: ChatChunk, legacy: bool = False) -> dict[str, Any]:
    if legacy:
        choice = {
            "index": 0,
            "text": c.delta.get("content") or "",
            "logprobs": None,
            "finish_reason": c.finish_reason,
        }
        return {
            "id": rid,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [choice],
        }
    return {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": c.delta, "finish_reason": c.finish_reason}],
    }


def sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


def _fmt(x: float | None, digits: int = 6) -> str:
    return "none" if x is None else f"{x:.{digits}g}"


def plan_headers(plan: Plan, model: str, fallbacks: list[str]) -> dict[str, str]:
    """Headers known before the answer (all a stream can carry)."""
    h = HEADER_PREFIX
    pred = next((c for c in plan.decision.ranked if c.model == model), None)
    out = {
        h + "request-id": plan.request_id,
        h + "model": model,
        h + "policy": plan.policy or "none",
        h + "routed": "true" if plan.routed else "false",
        h + "fallbacks": ",".join(fallbacks) or "none",
    }
    if pred is not None:
        if plan.routed:
            out[h + "predicted-quality"] = _fmt(pred.quality, 4)
            out[h + "cost-weight"] = _fmt(plan.decision.cost_weight, 4)
        out[h + "predicted-cost-usd"] = _fmt(pred.cost_usd)
        out[h + "predicted-latency-ms"] = _fmt(pred.latency_ms, 5)
    return out


def cache_headers(hit: CacheHit) -> dict[str, str]:
    out = {HEADER_PREFIX + "cache": hit.kind}
    if hit.similarity is not None:
        out[HEADER_PREFIX + "cache-similarity"] = f"{hit.similarity:.4f}"
    return out


def outcome_headers(o: Outcome) -> dict[str, str]:
    h = HEADER_PREFIX
    out = plan_headers(o.plan, o.model, o.fallbacks)
    out[h + "cost-usd"] = _fmt(o.cost_usd)
    out[h + "latency-ms"] = f"{o.latency_ms:.1f}"
    if o.expert_usage:
        out[h + "experts"] = expert_header(o.expert_usage)
    if o.cache is not None:
        out |= cache_headers(o.cache)
    if o.cascade is not None:
        out[h + "cascade"] = o.cascade
    if o.budget_left_usd is not None:
        out[h + "budget-remaining-usd"] = _fmt(o.budget_left_usd)
    return out


def expert_header(usage: dict[str, list[int]]) -> str:
    """Per-layer expert selection counts as compact JSON; totals per expert if that is too long."""
    text = json.dumps(usage, separators=(",", ":"))
    if len(text) <= MAX_EXPERT_HEADER:
        return text
    n = max(len(v) for v in usage.values())
    totals = [sum(v[i] for v in usage.values() if i < len(v)) for i in range(n)]
    return json.dumps({"all_layers": totals}, separators=(",", ":"))
