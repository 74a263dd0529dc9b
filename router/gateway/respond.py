"""One way to answer a chat-shaped request in any API's format, plain or streamed.

Every format route (OpenAI chat and completions, Anthropic messages, OpenAI responses) translates
its request, then calls `respond` with its `AnswerFormat`: the same engine calls, the same headers
(plan, outcome, cache hits — streamed or not), the same stream relay. `then`, where given, gets the
finished response body before the client can see it complete (the Responses API stores it there,
so a client may continue from it at once).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, cast

from fastapi.responses import Response

from adapters import ChatResult
from router.access import Caller
from router.executor import Outcome, StreamHandle
from router.gateway import openai_format as fmt
from router.gateway.engine_client import EngineClient
from router.gateway.json_response import JSONResponse
from router.gateway.streaming import SettledStreamingResponse, StreamFormat, events
from router.schemas import ChatCompletionRequest

Then = Callable[[dict[str, Any]], Awaitable[None]]


class FinalStream(StreamFormat, Protocol):
    """A stream format that keeps the completed response it sent (`final`, once `closing` ran)."""

    final: dict[str, Any] | None


class AnswerFormat(Protocol):
    def body(self, result: ChatResult, outcome: Outcome) -> dict[str, Any]: ...
    def stream(self) -> StreamFormat: ...


async def respond(
    engine: EngineClient,
    req: ChatCompletionRequest,
    who: Caller,
    session: str | None,
    answer: AnswerFormat,
    then: Then | None = None,
) -> Response:
    if req.stream:
        handle = await engine.stream(req, who, session)
        stream = answer.stream()
        chunks = events(handle, stream, engine.metrics)
        if then is not None:
            chunks = _then_before_closing(chunks, cast(FinalStream, stream), then)
        return SettledStreamingResponse(handle, chunks, stream_headers(handle))
    result, outcome = await engine.chat(req, who, session)
    body = answer.body(result, outcome)
    if then is not None:
        await asyncio.shield(then(body))
    return JSONResponse(body, headers=fmt.outcome_headers(outcome))


def stream_headers(handle: StreamHandle) -> dict[str, str]:
    """What a stream can say before its first byte (a cache hit included)."""
    headers = fmt.plan_headers(handle.plan, handle.model, handle.fallbacks, handle.spilled)
    if handle.cache is not None:
        headers |= fmt.cache_headers(handle.cache)
    return headers


async def _then_before_closing(
    chunks: AsyncIterator[bytes], stream: FinalStream, then: Then
) -> AsyncIterator[bytes]:
    done = False
    async for b in chunks:
        if not done and stream.final is not None:  # the closing events are next
            done = True
            await asyncio.shield(then(stream.final))
        yield b
