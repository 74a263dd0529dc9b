"""Pure-ASGI middleware: request-body size limit (413) and per-endpoint request metrics."""

from __future__ import annotations

import json
import time

from router.errors import PayloadTooLarge
from router.metrics import Metrics


async def _send_error(send, err) -> None:
    body = json.dumps(err.body()).encode()
    await send(
        {
            "type": "http.response.start",
            "status": err.status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """Refuse bodies over `max_bytes` with an OpenAI-format 413, by Content-Length or while reading."""

    def __init__(self, app, max_bytes: int, metrics: Metrics | None = None):
        self.app = app
        self.max_bytes = max_bytes
        self.metrics = metrics

    def _error(self) -> PayloadTooLarge:
        if self.metrics is not None:
            self.metrics.errors.labels("invalid_request_error", "request_too_large").inc()
        return PayloadTooLarge(f"request body exceeds {self.max_bytes} bytes")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await _send_error(send, self._error())
        # Read the whole body first (the gateway needs all of it anyway), so an oversized chunked
        # body is refused before any handler starts parsing it.
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            seen += len(body)
            if seen > self.max_bytes:
                return await _send_error(send, self._error())
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # after the body: wait for the disconnect, as servers do

        await self.app(scope, replay, send)


class RequestMetrics:
    """Counts requests by endpoint and status and times them (streams: until the last byte)."""

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = 500

        async def tracking_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.request_latency.labels(endpoint).observe(time.perf_counter() - t0)
