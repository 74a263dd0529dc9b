"""Send a request down a ranked candidate list: retries, Retry-After, fallbacks, circuit breakers.

For each candidate in order: skip it if its circuit is open; try it, retrying retryable failures
with exponential backoff (or the backend's Retry-After, up to a cap); on final failure move to the
next candidate. A stream falls back only before its first content token; after that a failure
ends the stream (the caller turns it into an error event).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from adapters import Adapter, BackendError, ChatChunk, ChatRequest, ChatResult
from adapters.errors import BackendRateLimited, BackendRejected, BackendTimeout, BackendUnavailable
from router.config import DispatchSettings
from router.errors import RouterError, ServiceUnavailable, UpstreamFailed
from router.health import ModelHealth
from router.metrics import Metrics

T = TypeVar("T")


@dataclass
class Attempts:
    """What happened on the way to an answer."""

    fallbacks: list[str] = field(default_factory=list)  # models given up on, in order
    errors: list[tuple[str, BackendError]] = field(default_factory=list)
    skipped_open: list[str] = field(default_factory=list)  # skipped: circuit open

    def failure(self) -> RouterError:
        if not self.errors:
            return ServiceUnavailable(
                f"no candidate could be tried: circuit open for {', '.join(self.skipped_open) or 'all models'}",
                code="circuit_open",
            )
        summary = "; ".join(f"{m}: {type(e).__name__}: {e.message}" for m, e in self.errors[-4:])
        last = self.errors[-1][1]
        if isinstance(last, BackendRejected):
            return RouterError(
                f"the upstream model rejected the request: {summary}",
                status=400,
                code="upstream_rejected",
            )
        status = (
            504
            if isinstance(last, BackendTimeout)
            else 503
            if isinstance(last, BackendUnavailable | BackendRateLimited)
            else 502
        )
        headers = {}
        if isinstance(last, BackendRateLimited) and last.retry_after is not None:
            headers["retry-after"] = str(max(1, round(last.retry_after)))
        return UpstreamFailed(f"all candidate models failed: {summary}", status=status, headers=headers)


@dataclass
class OpenStream:
    """A stream that has produced its first content (or finished): committed to `model`."""

    model: str
    attempts: Attempts
    head: list[ChatChunk]  # chunks already read, to be sent first
    rest: AsyncIterator[ChatChunk]
    started: float  # perf_counter when the successful attempt began


class Dispatcher:
    def __init__(
        self,
        adapters: Mapping[str, Adapter],
        health: ModelHealth,
        metrics: Metrics,
        settings: DispatchSettings,
        sleep: Callable[[float], object] = asyncio.sleep,
    ):
        self.adapters = adapters
        self.health = health
        self.metrics = metrics
        self.settings = settings
        self._sleep = sleep

    def _delay(self, err: BackendError, attempt: int) -> float | None:
        """Seconds to wait before retrying the same model, or None to give up on it."""
        if not err.retryable or attempt >= self.settings.retries:
            return None
        if err.retry_after is not None:
            return err.retry_after if err.retry_after <= self.settings.max_retry_after_s else None
        base = min(self.settings.backoff_s * 2**attempt, self.settings.max_backoff_s)
        return base * (0.5 + random.random() / 2)

    async def _failed(self, model: str, err: BackendError) -> None:
        self.metrics.upstream_errors.labels(model, type(err).__name__).inc()
        if isinstance(err, BackendRejected):
            await self.health.release(model)  # the request was bad, not the model
        else:
            await self.health.record_failure(model)

    def _candidates(self, ranked: Sequence[str]) -> list[str]:
        return list(ranked[: 1 + self.settings.max_fallbacks])

    def _gave_up(self, attempts: Attempts, model: str, err: BackendError | None) -> None:
        attempts.fallbacks.append(model)
        self.metrics.fallbacks.labels(model, type(err).__name__ if err else "circuit_open").inc()

    async def _first_success(
        self, ranked: Sequence[str], attempt: Callable[[str], Awaitable[T]]
    ) -> tuple[str, T, Attempts, float]:
        """Run `attempt(model)` down the candidates until one succeeds: (model, value, attempts, t0)."""
        attempts = Attempts()
        for model in self._candidates(ranked):
            err: BackendError | None = None
            n = 0
            while await self.health.acquire(model):
                t0 = time.perf_counter()
                try:
                    async with asyncio.timeout(self.settings.timeout_s):
                        value = await attempt(model)
                except TimeoutError:
                    err = BackendTimeout(f"no answer within {self.settings.timeout_s:g} s")
                except BackendError as e:
                    err = e
                except asyncio.CancelledError:
                    await self.health.release(model)
                    raise
                else:
                    return model, value, attempts, t0
                attempts.errors.append((model, err))
                await self._failed(model, err)
                delay = self._delay(err, n)
                if delay is None:
                    break
                self.metrics.retries.labels(model).inc()
                await self._sleep(delay)
                n += 1
            else:
                if err is None:
                    attempts.skipped_open.append(model)
            self._gave_up(attempts, model, err)
        raise attempts.failure()

    async def chat(
        self, ranked: Sequence[str], request: ChatRequest
    ) -> tuple[str, ChatResult, Attempts, float]:
        """(model, result, attempts, latency_ms) from the first candidate that answers."""
        model, result, attempts, t0 = await self._first_success(
            ranked, lambda m: self.adapters[m].chat(request)
        )
        latency_ms = (time.perf_counter() - t0) * 1000
        await self.health.record_success(model, latency_ms)
        return model, result, attempts, latency_ms

    async def open_stream(self, ranked: Sequence[str], request: ChatRequest) -> OpenStream:
        """Start streaming from the first candidate that yields content; fall back before that."""

        async def first_content(model: str) -> tuple[list[ChatChunk], AsyncIterator[ChatChunk]]:
            it = self.adapters[model].stream(request).__aiter__()
            head: list[ChatChunk] = []
            try:
                while (chunk := await anext(it, None)) is not None:
                    head.append(chunk)
                    if chunk.delta.get("content") or chunk.delta.get("tool_calls") or chunk.finish_reason:
                        break
            except BaseException:
                await aclose_quietly(it)
                raise
            return head, it

        model, (head, rest), attempts, t0 = await self._first_success(ranked, first_content)
        return OpenStream(model, attempts, head, rest, t0)

    async def finish_stream(
        self, stream: OpenStream, err: BackendError | None, cancelled: bool = False
    ) -> float:
        """Record the outcome of a committed stream; returns its latency in ms."""
        latency_ms = (time.perf_counter() - stream.started) * 1000
        if cancelled:
            await self.health.release(stream.model)
        elif err is None:
            await self.health.record_success(stream.model, latency_ms)
        else:
            await self._failed(stream.model, err)
        return latency_ms


async def aclose_quietly(it: AsyncIterator) -> None:
    close = getattr(it, "aclose", None)
    if close is not None:
        # closing a broken upstream stream must not mask the error that broke it
        with contextlib.suppress(Exception):
            await close()
