"""Response caching for the engine: exact and semantic lookups, per caller and requested model.

Exact: the whole request (messages and sampling options) hashed. Semantic: the conversation up
to the last user message must be identical (hashed into the scope), and the last user message
must be similar enough to a recent one (cosine of MiniLM embeddings >= threshold). Prompts
longer than the encoder reads (~256 word pieces) are never matched semantically: two long
prompts that differ only past that point would look identical to it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from adapters import ChatResult, Usage
from policies.encoders import PromptEncoder
from router.access import Caller
from router.config import CacheSettings
from router.constraints import encodable
from router.schemas import ChatCompletionRequest
from router.state.cache import ResponseCache, exact_key

SEMANTIC_MAX_CHARS = 800  # ~200 word pieces: safely inside MiniLM's 256


@dataclass
class CacheHit:
    kind: str  # exact | semantic
    model: str
    result: ChatResult
    similarity: float | None = None


def _prefix_hash(req: ChatCompletionRequest) -> str:
    head = [m.model_dump(exclude_none=True) for m in req.messages[:-1]]
    return hashlib.sha256(json.dumps(head, sort_keys=True, default=str).encode()).hexdigest()[:16]


class ResponseCaching:
    def __init__(self, settings: CacheSettings, cache: ResponseCache, encoder: PromptEncoder):
        self.s = settings
        self.cache = cache
        self.encoder = encoder

    def wanted(self, req: ChatCompletionRequest, caller: Caller) -> bool:
        if not (self.s.exact.enabled or self.s.semantic.enabled):
            return False
        if caller.key is None and not caller.admin and not self.s.shared_anonymous:
            return False  # anonymous callers could read each other's answers: opt-in only
        asked = req.routing.cache if req.routing is not None else None
        return self.s.default if asked is None else asked

    def _exact_key(self, scope: str, req: ChatCompletionRequest) -> str:
        payload = req.model_dump(exclude={"stream", "stream_options", "user"}, exclude_none=True)
        return exact_key(f"{scope}:{req.model}", payload)

    def _semantic_scope(self, scope: str, req: ChatCompletionRequest) -> str | None:
        last = req.messages[-1]
        if last.role != "user" or len(last.text()) > SEMANTIC_MAX_CHARS or last.has_image():
            return None
        return f"{scope}:{req.model}:{_prefix_hash(req)}"

    async def _vector(self, req: ChatCompletionRequest) -> np.ndarray:
        return (await asyncio.to_thread(self.encoder.encode, [encodable(req.messages[-1].text())]))[0]

    async def lookup(self, scope: str, req: ChatCompletionRequest) -> CacheHit | None:
        if self.s.exact.enabled:
            hit = await self.cache.get(self._exact_key(scope, req))
            if hit is not None:
                return CacheHit("exact", hit["model"], _result(hit))
        if self.s.semantic.enabled:
            sscope = self._semantic_scope(scope, req)
            if sscope is not None:
                hit = await self.cache.similar(
                    sscope, await self._vector(req), self.s.semantic.threshold, self.s.semantic.ttl_s
                )
                if hit is not None:
                    return CacheHit("semantic", hit["model"], _result(hit), hit["similarity"])
        return None

    async def store(self, scope: str, req: ChatCompletionRequest, model: str, result: ChatResult) -> None:
        value = {
            "model": model,
            "message": result.message,
            "finish_reason": result.finish_reason,
            "usage": None
            if result.usage is None
            else [result.usage.prompt_tokens, result.usage.completion_tokens],
        }
        if self.s.exact.enabled:
            await self.cache.put(self._exact_key(scope, req), value, self.s.exact.ttl_s)
        if self.s.semantic.enabled:
            sscope = self._semantic_scope(scope, req)
            if sscope is not None:
                await self.cache.add(
                    sscope, await self._vector(req), value, self.s.semantic.ttl_s, self.s.semantic.max_entries
                )


def _result(v: dict[str, Any]) -> ChatResult:
    usage = Usage(*v["usage"]) if v.get("usage") else None
    return ChatResult(message=v["message"], finish_reason=v.get("finish_reason"), usage=usage)
