"""Any provider litellm knows (Anthropic, Bedrock, Vertex, Gemini, Mistral, Cohere, ...), via `litellm.acompletion`.

Params are passed to litellm as they are (`model: anthropic/claude-3-5-haiku-latest`, `api_key`,
`api_base`, `api_version`, provider-specific options). litellm's own retries are switched off: the
router's dispatcher owns retries, fallbacks and circuit breakers.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import AsyncIterator
from typing import Any

from adapters.base import ChatChunk, ChatRequest, ChatResult, EmbedResult, Usage, merge_params
from adapters.errors import (
    BackendError,
    BackendNotConfigured,
    BackendRateLimited,
    BackendRejected,
    BackendTimeout,
    BackendUnavailable,
)
from adapters.openai_compat import retry_after_seconds
from adapters.redact import redact, secret_values


@functools.cache
def _litellm() -> Any:
    """litellm, imported on first use (start, or the first call): its import takes seconds, which
    checking a config (`config validate`, `models`) never needs."""
    # litellm fetches its model price map from the internet at import unless told otherwise; the
    # router does its own pricing, so the bundled map is enough (and the gateway must start offline)
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.suppress_debug_info = True
    litellm.telemetry = False
    return litellm


class LiteLLMAdapter:
    def __init__(self, model: str, timeout: float = 120.0, **params: Any):
        if not model:
            raise ValueError("a litellm backend needs 'model'")
        self.model = model
        self.timeout = timeout
        self.params = params
        self._secrets = secret_values(params)

    async def start(self) -> None:
        await asyncio.to_thread(_litellm)  # off the event loop: the gateway answers meanwhile

    async def aclose(self) -> None:
        return None

    async def probe(self, timeout_s: float = 3.0) -> tuple[bool | None, str]:
        """A configured `api_base` is probed with a GET (any answer means reachable); a provider
        litellm knows by name is not (a real probe would be a paid call)."""
        base = self.params.get("api_base") or self.params.get("base_url")
        if not base:
            return None, f"{self.model.split('/')[0]} via litellm: only a paid call could check it"
        import httpx

        try:
            async with httpx.AsyncClient(timeout=timeout_s) as c:
                r = await c.get(str(base))
        except httpx.HTTPError as e:
            return False, f"{base} unreachable ({type(e).__name__})"
        if r.status_code >= 500:
            return False, f"{base} answers HTTP {r.status_code}"
        return True, f"{base} reachable"

    async def health(self) -> bool:
        # Probing a paid provider costs money; the breaker reports real failures instead.
        return True

    def _kwargs(self, request: ChatRequest, stream: bool) -> dict[str, Any]:
        kw: dict[str, Any] = {
            **merge_params(request, self.params),
            "model": self.model,
            "messages": request.messages,
            "timeout": self.timeout,
            "num_retries": 0,
            "stream": stream,
        }
        if stream:
            kw["stream_options"] = {"include_usage": True}
        else:
            kw.pop("stream_options", None)
        return kw

    async def chat(self, request: ChatRequest) -> ChatResult:
        try:
            resp = await _litellm().acompletion(**self._kwargs(request, stream=False))
        except Exception as e:  # noqa: BLE001 - litellm raises many types; all are classified here
            raise classify(e, self._secrets) from None
        choice = resp.choices[0]
        message = choice.message.model_dump(exclude_none=True)
        message.setdefault("role", "assistant")
        for key in [k for k in message if k.startswith("provider_specific") or k == "function_call"]:
            message.pop(key)
        return ChatResult(message=message, finish_reason=choice.finish_reason, usage=_usage(resp))

    async def embed(self, texts: list[str], dimensions: int | None = None) -> EmbedResult:
        kw = {"dimensions": dimensions} if dimensions else {}
        try:
            resp = await _litellm().aembedding(
                **(kw | self.params), model=self.model, input=texts, timeout=self.timeout, num_retries=0
            )
        except Exception as e:  # noqa: BLE001 - litellm raises many types; all are classified here
            raise classify(e, self._secrets) from None
        rows = sorted(resp.data, key=lambda d: d["index"] if isinstance(d, dict) else d.index)
        vectors = [list(d["embedding"] if isinstance(d, dict) else d.embedding) for d in rows]
        return EmbedResult(vectors, _usage(resp) or Usage(0, 0))

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        try:
            resp = await _litellm().acompletion(**self._kwargs(request, stream=True))
            async for chunk in resp:
                usage = _usage(chunk)
                if not chunk.choices:
                    if usage is not None:
                        yield ChatChunk(delta={}, usage=usage)
                    continue
                choice = chunk.choices[0]
                delta = {
                    k: v
                    for k, v in choice.delta.model_dump(exclude_none=True).items()
                    if k in ("role", "content", "tool_calls", "thinking_blocks")
                }
                yield ChatChunk(delta=delta, finish_reason=choice.finish_reason, usage=usage)
        except BackendError:
            raise
        except Exception as e:  # noqa: BLE001
            raise classify(e, self._secrets) from None


def _usage(obj: Any) -> Usage | None:
    u = getattr(obj, "usage", None)
    if u is None:
        return None
    details = getattr(u, "prompt_tokens_details", None)
    cached = getattr(details, "cached_tokens", 0) or getattr(u, "cache_read_input_tokens", 0) or 0
    return Usage(
        int(getattr(u, "prompt_tokens", 0) or 0), int(getattr(u, "completion_tokens", 0) or 0), int(cached)
    )


def classify(e: Exception, secrets: frozenset[str] = frozenset()) -> BackendError:
    """Map a litellm exception to the router's failure classes (its message scrubbed of `secrets`)."""
    msg = redact(f"{type(e).__name__}: {getattr(e, 'message', None) or e}", secrets)
    status = getattr(e, "status_code", None)
    response = getattr(e, "response", None)
    headers = getattr(response, "headers", None) or {}
    retry_after = retry_after_seconds(headers.get("retry-after")) if hasattr(headers, "get") else None
    litellm = _litellm()
    if isinstance(e, litellm.Timeout):
        return BackendTimeout(msg, upstream_status=status)
    if isinstance(e, litellm.RateLimitError):
        return BackendRateLimited(msg, retry_after=retry_after, upstream_status=status)
    if isinstance(e, litellm.AuthenticationError | litellm.PermissionDeniedError):
        return BackendNotConfigured(msg, upstream_status=status)
    if isinstance(e, litellm.ServiceUnavailableError | litellm.APIConnectionError):
        return BackendUnavailable(msg, retry_after=retry_after, upstream_status=status)
    if isinstance(e, litellm.BadRequestError | litellm.NotFoundError | litellm.UnprocessableEntityError):
        return BackendRejected(msg, upstream_status=status)
    if isinstance(status, int) and 400 <= status < 500 and status not in (408, 409, 429):
        return BackendRejected(msg, upstream_status=status)
    return BackendError(msg, retry_after=retry_after, upstream_status=status)
