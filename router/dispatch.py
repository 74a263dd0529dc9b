"""Send a request down a ranked candidate list: retries, Retry-After, fallbacks, circuit breakers.

For each candidate in order: skip it if its circuit is open, or if it is at capacity (a spill: its
`max_concurrency` slots or `tpm_limit` are taken, see router.capacity); try it, retrying retryable
failures with exponential backoff (or the backend's Retry-After, up to a cap); on final failure
move to the next candidate. A stream falls back only before its first content token; after that a failure
ends the stream (the caller turns it into an error event).

One deadline per request: every attempt, retry wait and fallback shares `dispatch.timeout_s` from
the moment dispatch starts (until the answer, or a stream's first token). A retry that cannot
finish before the deadline is not started.

What counts against a model's circuit breaker. Unreachable, overloaded, rate-limited or
misconfigured backends count at once. Answers that might be the *request's* fault — a 5xx or a
malformed answer, a timeout — count only once another candidate has answered the same request
(so the request was fine); a request that fails on every candidate is not held against any of
them, and a client cannot open every breaker with requests crafted to fail.

Clients see stable, sanitized errors (the models and an error code per model); the upstream's
own message, URLs and status text go to the server log with the request id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from adapters import Adapter, BackendError, ChatChunk, ChatRequest, ChatResult, EmbedResult
from adapters.errors import (
    BackendNotConfigured,
    BackendRateLimited,
    BackendRejected,
    BackendTimeout,
    BackendUnavailable,
)
from router.account import RequestHealth, Seen
from router.capacity import Capacity
from router.config import DispatchSettings
from router.errors import RateLimited, RouterError, ServiceUnavailable, UpstreamFailed
from router.metrics import Metrics
from router.state.capacity import Full, Lease

T = TypeVar("T")
log = logging.getLogger("moe_router.dispatch")

# failures that are the model's whatever the request was: they count against its breaker at once
_MODELS_FAULT = (BackendUnavailable, BackendRateLimited, BackendNotConfigured)


def error_code(err: BackendError) -> str:
    """A stable code per failure class, for clients (never the upstream's text)."""
    return {
        BackendTimeout: "upstream_timeout",
        BackendUnavailable: "upstream_unavailable",
        BackendRateLimited: "upstream_rate_limited",
        BackendRejected: "upstream_rejected",
        BackendNotConfigured: "upstream_not_configured",
    }.get(type(err), "upstream_error")


@dataclass
class Attempts:
    """What happened on the way to an answer."""

    fallbacks: list[str] = field(default_factory=list)  # models given up on, in order
    errors: list[tuple[str, BackendError]] = field(default_factory=list)
    skipped_open: list[str] = field(default_factory=list)  # skipped: circuit open
    deferred: list[str] = field(default_factory=list)  # failures counted only if another model answers
    spilled: list[tuple[str, Full]] = field(default_factory=list)  # skipped: at capacity
    lease: Lease | None = None  # the answering model's capacity slot (released by the caller)
    # (model, latency_ms) of answers held for the request's settlement to record (`held=True`)
    successes: list[tuple[str, float]] = field(default_factory=list)

    def spills(self) -> list[str]:
        """`model:reason` per model skipped at capacity (the `x-moe-router-spilled` header)."""
        return [f"{m}:{full.reason}" for m, full in self.spilled]

    def failure(self) -> RouterError:
        if not self.errors and self.spilled:
            wait = min(full.retry_after_s for _, full in self.spilled)
            return RateLimited(
                f"every candidate model is at capacity: {', '.join(self.spills())}",
                code="capacity_exhausted",
                headers={"retry-after": str(max(1, round(wait)))},
            )
        if not self.errors:
            return ServiceUnavailable(
                f"no candidate could be tried: circuit open for {', '.join(self.skipped_open) or 'all models'}",
                code="circuit_open",
            )
        summary = ", ".join(f"{m} ({error_code(e)})" for m, e in self.errors[-4:])
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
        health: RequestHealth,
        metrics: Metrics,
        settings: DispatchSettings,
        sleep: Callable[[float], object] = asyncio.sleep,
        capacity: Capacity | None = None,
    ):
        self.capacity = capacity
        self.adapters = adapters
        self.health = health
        self.metrics = metrics
        self.settings = settings
        self._sleep = sleep

    def deadline(self) -> float:
        """The loop-time deadline of a request whose dispatch starts now."""
        return asyncio.get_running_loop().time() + self.settings.timeout_s

    def _delay(self, err: BackendError, attempt: int) -> float | None:
        """Seconds to wait before retrying the same model, or None to give up on it."""
        if not err.retryable or attempt >= self.settings.retries:
            return None
        if err.retry_after is not None:
            return err.retry_after if err.retry_after <= self.settings.max_retry_after_s else None
        base = min(self.settings.backoff_s * 2**attempt, self.settings.max_backoff_s)
        return base * (0.5 + random.random() / 2)

    async def _failed(self, model: str, err: BackendError, attempts: Attempts | None = None) -> None:
        self.metrics.upstream_errors.labels(model, type(err).__name__).inc()
        if isinstance(err, BackendRejected):
            await self.health.release(model)  # the request was bad, not the model
        elif attempts is not None and not isinstance(err, _MODELS_FAULT):
            await self.health.release(model)  # judged once the request's fate is known
            attempts.deferred.append(model)
        else:
            await self._count_failure(model)

    async def _count_failure(self, model: str) -> None:
        await self.health.record_failure(model)
        status = await self.health.snapshot([model])
        self.metrics.breaker_open.labels(model).set(0.0 if status[model].routable else 1.0)

    async def _succeeded(self, model: str, latency_ms: float, attempts: Attempts, held: bool) -> None:
        if held:  # the request's settlement records it, in the same round trip as its spend
            attempts.successes.append((model, latency_ms))
        else:
            await self.health.record_success(model, latency_ms)
        self.metrics.breaker_open.labels(model).set(0.0)
        for other in dict.fromkeys(attempts.deferred):  # the request was fine: those were the models'
            if other != model:
                await self._count_failure(other)

    def _candidates(self, ranked: Sequence[str]) -> list[str]:
        return list(ranked[: 1 + self.settings.max_fallbacks])

    def _gave_up(
        self, attempts: Attempts, model: str, err: BackendError | None, why: str | None = None
    ) -> None:
        attempts.fallbacks.append(model)
        reason = why or (type(err).__name__ if err else "circuit_open")
        self.metrics.fallbacks.labels(model, reason).inc()

    async def _slot(
        self, model: str, tokens: Callable[[str], int] | None, attempts: Attempts
    ) -> Lease | None | bool:
        """A capacity lease on `model` (None: it has no limits), or False: full, spilled."""
        if self.capacity is None:
            return None
        got = await self.capacity.acquire(model, tokens(model) if tokens else 0)
        if isinstance(got, Full):
            attempts.spilled.append((model, got))
            self._gave_up(attempts, model, None, "capacity")
            return False
        return got

    async def _first_success(
        self,
        ranked: Sequence[str],
        attempt: Callable[[str], Awaitable[T]],
        deadline: float,
        request_id: str,
        tokens: Callable[[str], int] | None = None,
        seen: Seen | None = None,
    ) -> tuple[str, T, Attempts, float]:
        """Run `attempt(model)` down the candidates until one succeeds: (model, value, attempts, t0).
        `seen`: the breakers the request's plan saw closed (its first go-ahead per model).

        The answering model's capacity lease is `attempts.lease`: the caller releases it when the
        request is over; every other lease taken here is released here, on every path."""
        loop = asyncio.get_running_loop()
        attempts = Attempts()
        for model in self._candidates(ranked):
            if loop.time() >= deadline:
                break
            lease = await self._slot(model, tokens, attempts)
            if lease is False:
                continue
            try:
                err: BackendError | None = None
                n = 0
                while await self.health.acquire(model, seen):
                    t0 = time.perf_counter()
                    try:
                        async with asyncio.timeout_at(deadline):
                            value = await attempt(model)
                    except TimeoutError:
                        err = BackendTimeout(
                            f"no answer within the request's deadline ({self.settings.timeout_s:g} s)"
                        )
                    except BackendError as e:
                        err = e
                    except BaseException:
                        await self.health.release(model)
                        raise
                    else:
                        attempts.lease, lease = lease, None
                        return model, value, attempts, t0
                    log.warning(
                        "request %s: %s failed: %s: %s", request_id, model, type(err).__name__, err.message
                    )
                    attempts.errors.append((model, err))
                    await self._failed(model, err, attempts)
                    delay = self._delay(err, n)
                    if delay is None or loop.time() + delay >= deadline:
                        break
                    self.metrics.retries.labels(model).inc()
                    await self._sleep(delay)
                    n += 1
                else:
                    if err is None:
                        attempts.skipped_open.append(model)
            finally:
                if lease is not None and self.capacity is not None:
                    self.capacity.release(lease)
            self._gave_up(attempts, model, err)
        raise attempts.failure()

    def release(self, attempts: Attempts, actual_tokens: int | None) -> None:
        """Give back the answering model's capacity slot (once; synchronous, safe anywhere)."""
        if self.capacity is not None:
            self.capacity.release(attempts.lease, actual_tokens)

    async def chat(
        self,
        ranked: Sequence[str],
        request: Callable[[str], ChatRequest],
        *,
        deadline: float | None = None,
        request_id: str = "-",
        tokens: Callable[[str], int] | None = None,
        held: bool = False,
        seen: Seen | None = None,
    ) -> tuple[str, ChatResult, Attempts, float]:
        """(model, result, attempts, latency_ms) from the first candidate that answers.

        `request(model)` is what that model is sent (its own output cap); `tokens(model)` what it
        counts against the model's `tpm_limit` until the real usage is known. `held`: the model's
        success goes to `attempts.successes` for the request's settlement instead of the store."""
        model, result, attempts, t0 = await self._first_success(
            ranked,
            lambda m: self.adapters[m].chat(request(m)),
            deadline if deadline is not None else self.deadline(),
            request_id,
            tokens,
            seen,
        )
        latency_ms = (time.perf_counter() - t0) * 1000
        self.release(attempts, result.usage.total_tokens if result.usage else None)
        await self._succeeded(model, latency_ms, attempts, held)
        return model, result, attempts, latency_ms

    async def embed(
        self,
        ranked: Sequence[str],
        texts: list[str],
        dimensions: int | None = None,
        *,
        deadline: float | None = None,
        request_id: str = "-",
        tokens: int = 0,
        held: bool = False,
        seen: Seen | None = None,
    ) -> tuple[str, EmbedResult, Attempts, float]:
        """(model, result, attempts, latency_ms) from the first embedding model that answers."""

        async def one(model: str) -> EmbedResult:
            embed = getattr(self.adapters[model], "embed", None)
            if embed is None:
                raise BackendRejected(f"the {model} backend cannot embed")
            return await embed(texts, dimensions)

        model, result, attempts, t0 = await self._first_success(
            ranked,
            one,
            deadline if deadline is not None else self.deadline(),
            request_id,
            lambda _: tokens,
            seen,
        )
        latency_ms = (time.perf_counter() - t0) * 1000
        self.release(attempts, result.usage.total_tokens or None)
        await self._succeeded(model, latency_ms, attempts, held)
        return model, result, attempts, latency_ms

    async def open_stream(
        self,
        ranked: Sequence[str],
        request: Callable[[str], ChatRequest],
        *,
        deadline: float | None = None,
        request_id: str = "-",
        tokens: Callable[[str], int] | None = None,
        seen: Seen | None = None,
    ) -> OpenStream:
        """Start streaming from the first candidate that yields content; fall back before that.

        The stream holds its model's capacity slot (`attempts.lease`) until whoever ends it calls
        `release`."""

        async def first_content(model: str) -> tuple[list[ChatChunk], AsyncIterator[ChatChunk]]:
            it = self.adapters[model].stream(request(model)).__aiter__()
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

        model, (head, rest), attempts, t0 = await self._first_success(
            ranked,
            first_content,
            deadline if deadline is not None else self.deadline(),
            request_id,
            tokens,
            seen,
        )
        return OpenStream(model, attempts, head, rest, t0)

    async def finish_stream(
        self,
        stream: OpenStream,
        err: BackendError | None,
        cancelled: bool = False,
        request_id: str = "-",
        held: bool = False,
    ) -> float:
        """Record the outcome of a committed stream (`held`: a success in `stream.attempts.successes`,
        as for `chat`); returns its latency in ms."""
        latency_ms = (time.perf_counter() - stream.started) * 1000
        if cancelled:
            await self.health.release(stream.model)
        elif err is None:
            await self._succeeded(stream.model, latency_ms, stream.attempts, held)
        else:
            log.warning(
                "request %s: %s failed mid-stream: %s: %s",
                request_id,
                stream.model,
                type(err).__name__,
                err.message,
            )
            await self._failed(stream.model, err)
        return latency_ms


async def aclose_quietly(it: AsyncIterator) -> None:
    close = getattr(it, "aclose", None)
    if close is not None:
        # closing a broken upstream stream must not mask the error that broke it
        with contextlib.suppress(Exception):
            await close()
