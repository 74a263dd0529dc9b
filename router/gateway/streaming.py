"""Server-sent events from an engine stream, in any API's format.

The engine streams `ChatChunk`s; a `StreamFormat` (OpenAI chat, Anthropic messages, OpenAI
responses) turns the opening, each chunk, the end and a failure into that API's events. One relay
handles what every format shares: a failure after the first token ends the stream with the
format's error event (there is no falling back once text went out), and the response ends the
engine stream however it ends, so the request is always settled.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable
from typing import Protocol

from fastapi.responses import StreamingResponse

from adapters import BackendError, ChatChunk
from router.dispatch import error_code
from router.errors import RouterError, UpstreamFailed
from router.executor import StreamHandle
from router.metrics import Metrics

log = logging.getLogger("moe_router.gateway")


class StreamFormat(Protocol):
    def opening(self, handle: StreamHandle) -> Iterable[bytes]: ...
    def chunk(self, chunk: ChatChunk) -> Iterable[bytes]: ...
    def closing(self, handle: StreamHandle) -> Iterable[bytes]:
        """After the last chunk: `handle.outcome` (usage, cost) is known."""

    def failure(self, err: RouterError) -> Iterable[bytes]: ...


async def events(handle: StreamHandle, fmt: StreamFormat, metrics: Metrics) -> AsyncIterator[bytes]:
    for b in fmt.opening(handle):
        yield b
    err: RouterError | None = None
    try:
        async for chunk in handle.chunks:
            for b in fmt.chunk(chunk):
                yield b
    except BackendError as e:
        err = UpstreamFailed(f"{handle.model} failed mid-stream ({error_code(e)})", status=e.status)
    except Exception:  # noqa: BLE001 - never leak a traceback into a stream
        log.exception("request %s: stream relay failed", handle.plan.request_id)
        err = RouterError("internal error while streaming")
    if err is not None:
        metrics.errors.labels(err.type, err.code or "none").inc()
        for b in fmt.failure(err):
            yield b
        return
    for b in fmt.closing(handle):
        yield b


class SettledStreamingResponse(StreamingResponse):
    """A stream response that ends its engine stream however the response ends — even if the
    body was never iterated (the client left before the first byte)."""

    def __init__(self, handle: StreamHandle, chunks: AsyncIterator[bytes], headers: dict[str, str]):
        super().__init__(
            chunks,
            media_type="text/event-stream",
            headers=headers | {"cache-control": "no-cache"},
        )
        self.handle = handle

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.handle.finish()  # synchronous: cannot be cancelled
