"""The one seam between the router and a model backend.

An adapter is a transport: it turns a `ChatRequest` into a `ChatResult` (or a stream of
`ChatChunk`s) and knows nothing of routing, prices or policies. The engine only ever talks
to this protocol; which concrete adapter serves a model is named in the config.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

# One in-process model loads at a time: transformers resolves its names lazily, and two threads
# importing from it at once can fail ("cannot import name 'AutoModelForCausalLM'"), as a chat
# model and an embedding model warming up side by side did.
LOCAL_LOAD_LOCK = threading.Lock()


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens the provider read from its prompt cache (when it says)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class ChatRequest:
    """What a backend needs to answer: OpenAI-style messages and sampling options.

    `extra` carries OpenAI fields the router does not interpret (tools, response_format, seed, ...),
    already checked against the gateway's allowlist; HTTP adapters pass them through, local adapters
    ignore what they cannot honour.
    """

    messages: list[dict[str, Any]]
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ChatResult:
    message: dict[str, Any]  # {"role": "assistant", "content": ..., maybe "tool_calls": ...}
    finish_reason: str | None
    usage: Usage | None  # None when the backend did not report it
    # Local MoE backends: how often each expert was selected, per layer ({"layer.N": [counts...]}).
    expert_usage: dict[str, list[int]] | None = None
    logprobs: dict[str, Any] | None = None  # the choice's `logprobs`, as OpenAI's chat API writes them

    @property
    def text(self) -> str:
        return self.message.get("content") or ""


def merge_params(request: ChatRequest, configured: dict[str, Any]) -> dict[str, Any]:
    """A request's parameters *under* the configured ones: configuration always wins, except that
    the output cap is the smaller of the two (the router's budget reservation assumed it)."""
    out: dict[str, Any] = dict(request.extra)
    for key in ("max_tokens", "temperature", "top_p", "stop"):
        value = getattr(request, key)
        if value is not None:
            out[key] = value
    out.update(configured)
    caps = [v for v in (request.max_tokens, configured.get("max_tokens")) if v is not None]
    if caps:
        out["max_tokens"] = min(caps)
    return out


@dataclass
class ChatChunk:
    delta: dict[str, Any]  # {"content": "..."} or {"role": "assistant"} or tool-call deltas
    finish_reason: str | None = None
    usage: Usage | None = None  # set on the last chunk when known
    expert_usage: dict[str, list[int]] | None = None
    logprobs: dict[str, Any] | None = None  # this chunk's share of the choice's `logprobs`


@dataclass
class EmbedResult:
    vectors: list[list[float]]
    usage: Usage


@runtime_checkable
class Adapter(Protocol):
    """A model backend. Implementations raise `adapters.errors.BackendError` subclasses."""

    async def chat(self, request: ChatRequest) -> ChatResult: ...

    def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]: ...

    async def health(self) -> bool: ...

    # Optional: `async def probe(self, timeout_s) -> (reachable: bool | None, detail: str)`, a free
    # check that the backend is there (None: it cannot be checked without a paid call), used by
    # `moe-router models` and `config validate --check`.
    # Embedding backends (config `kind: embedding`) also implement
    # `async def embed(self, texts: list[str], dimensions: int | None = None) -> EmbedResult`.

    async def start(self) -> None:
        """Acquire resources (load weights, open pools). Idempotent; may be awaited concurrently."""

    async def aclose(self) -> None: ...
