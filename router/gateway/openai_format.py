"""OpenAI wire format for answers, stream chunks and the `x-moe-router-*` headers."""

from __future__ import annotations

import base64
import json
import struct
import time
from typing import Any

from adapters import ChatChunk, ChatResult, Usage
from router.caching import CacheHit
from router.errors import RouterError
from router.executor import Outcome, StreamHandle
from router.gateway.json_response import dumps
from router.planner import Plan, external_id
from router.schemas import ChatCompletionRequest

HEADER_PREFIX = "x-moe-router-"
MAX_EXPERT_HEADER = 4096


def usage_body(u: Usage) -> dict[str, Any]:
    out: dict[str, Any] = {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens,
    }
    if u.cached_tokens:
        out["prompt_tokens_details"] = {"cached_tokens": u.cached_tokens}
    return out


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
        "id": external_id(o.request_id, "cmpl-"),
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
    return b"data: " + dumps(obj) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


def _fmt(x: float | None, digits: int = 6) -> str:
    return "none" if x is None else f"{x:.{digits}g}"


def plan_headers(
    plan: Plan, model: str, fallbacks: list[str], spilled: list[str] | None = None
) -> dict[str, str]:
    """Headers known before the answer (all a stream can carry). `spilled`: `model:reason` for each
    model skipped at capacity (they are in `fallbacks` too, which stays a plain list of models)."""
    h = HEADER_PREFIX
    pred = next((c for c in plan.decision.ranked if c.model == model), None)
    out = {
        h + "request-id": plan.request_id,
        h + "model": model,
        h + "policy": plan.policy or "none",
        h + "routed": "true" if plan.routed else "false",
        h + "fallbacks": ",".join(fallbacks) or "none",
    }
    if spilled:
        out[h + "spilled"] = ",".join(spilled)
    if plan.affinity is not None:
        out[h + "affinity"] = plan.affinity
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
    out = plan_headers(o.plan, o.model, o.fallbacks, o.spilled)
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


class ChatAnswer:
    """OpenAI's chat completion, or legacy completion (`respond`'s format)."""

    def __init__(self, req: ChatCompletionRequest, legacy: bool = False):
        self.legacy = legacy
        self.include_usage = bool(req.stream_options and req.stream_options.include_usage)

    def body(self, result: ChatResult, outcome: Outcome) -> dict[str, Any]:
        return completion_body(result, outcome) if self.legacy else chat_body(result, outcome)

    def stream(self) -> ChatStream:
        return ChatStream(self.legacy, self.include_usage)


class ChatStream:
    """OpenAI chat-completion chunks (or legacy completion chunks), then `[DONE]`."""

    def __init__(self, legacy: bool = False, include_usage: bool = False):
        self.legacy, self.include_usage = legacy, include_usage
        self.created = int(time.time())

    def opening(self, handle: StreamHandle) -> list[bytes]:
        self.rid, self.model = handle.plan.request_id, handle.model
        if self.legacy:
            self.rid = external_id(self.rid, "cmpl-")
        return []

    def chunk(self, c: ChatChunk) -> list[bytes]:
        if not (c.delta or c.finish_reason):
            return []
        return [sse(chunk_body(self.rid, self.model, self.created, c, self.legacy))]

    def closing(self, handle: StreamHandle) -> list[bytes]:
        out = []
        if self.include_usage and handle.outcome is not None:
            out.append(
                sse(
                    {
                        "id": self.rid,
                        "object": "text_completion" if self.legacy else "chat.completion.chunk",
                        "created": self.created,
                        "model": self.model,
                        "choices": [],
                        "usage": usage_body(handle.outcome.usage),
                    }
                )
            )
        return [*out, SSE_DONE]

    def failure(self, err: RouterError) -> list[bytes]:
        return [sse(err.body()), SSE_DONE]


def embeddings_body(vectors: list[list[float]], model: str, usage: Usage, encoding: str) -> dict[str, Any]:
    """OpenAI's embeddings list; `base64` is little-endian float32, as the openai SDK decodes it."""

    def encode(v: list[float]) -> list[float] | str:
        if encoding == "base64":
            return base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode()
        return v

    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)],
        "model": model,
        "usage": {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.prompt_tokens},
    }
