"""The money path: admit -> reserve -> settle, exactly once per request, whatever happens.

A `Ticket` is one request's claim on its caller's rate limits and budgets. `Account.admit` counts
the request against the key's rpm/tpm; `reserve` holds the most the planned request may cost in
every budget scope; `settle` books what really happened — tokens against the minute that counted
them, cost against the reservation, metrics, and the ledger record — and does it exactly once:
the first call starts the settlement as a task of its own, later calls return that same task.

The task runs apart from the request, so cancelling the request (a client that disconnects, a
server shutting down) cannot interrupt it halfway: awaits in a cancelled request's `finally` would
be cancelled with it, which is how a dropped stream used to keep its whole reservation. `aclose`
waits for the settlements still running before the state store closes.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from router import tracing
from router.access import Access, Caller
from router.config import LogSettings
from router.metrics import Metrics
from router.request_log import log_request
from router.state import RequestRecord, Store
from router.state.budgets import Reservation

log = logging.getLogger("moe_router.account")
T = TypeVar("T")


@dataclass(eq=False)
class Ticket:
    caller: Caller
    tokens: int  # counted against the key's tokens-per-minute at admission
    window: int | None  # the minute they were counted in
    reservation: Reservation | None = None
    settlement: asyncio.Task | None = field(default=None, repr=False)

    @property
    def settled(self) -> bool:
        return self.settlement is not None


@dataclass
class Charge:
    """What a request really used, for its settlement."""

    record: RequestRecord  # the ledger record (its cost_usd is what is charged)
    total_tokens: int  # real prompt + completion tokens (rate-limit correction)
    observe_latency: bool = True  # a model answered (not a cache, not a failure): time it


class Account:
    def __init__(self, access: Access, store: Store, metrics: Metrics, log_settings: LogSettings):
        self.access = access
        self.store = store
        self.metrics = metrics
        self.log_settings = log_settings
        self._running: set[asyncio.Task] = set()
        self._open: set[Ticket] = set()  # admitted and not yet settled

    async def admit(self, caller: Caller, tokens: int) -> Ticket:
        """Rate limits (429 when over). Nothing to settle yet if this raises."""
        window = await self.access.admit(caller, tokens)
        ticket = Ticket(caller, tokens, window)
        self._open.add(ticket)
        return ticket

    async def reserve(self, ticket: Ticket, usd: float, request_id: str) -> None:
        """Hold `usd` in every budget scope of the caller (429 when one cannot cover it)."""
        ticket.reservation = await self.access.reserve(ticket.caller, usd)
        if ticket.reservation is not None:
            await self.store.log.record_event(
                "reserve",
                {
                    "id": request_id,
                    "key": ticket.caller.name,
                    "usd": ticket.reservation.usd,
                    "created": time.time(),
                },
            )

    def settle(self, ticket: Ticket, charge: Charge | None) -> asyncio.Task:
        """Settle `ticket` (exactly once: a second call returns the first settlement). `charge`
        None: the request ended before any model was asked (refund everything, no record)."""
        if ticket.settlement is None:
            ticket.settlement = self.spawn(self._settle(ticket, charge))
            self._open.discard(ticket)
        return ticket.settlement

    def spawn(self, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run `work` on its own, beyond the reach of the request's cancellation; `aclose` waits for it."""
        task = asyncio.get_running_loop().create_task(work)
        self._running.add(task)
        task.add_done_callback(self._done)
        return task

    async def settled(self, ticket: Ticket, charge: Charge | None) -> float | None:
        """`settle` and wait for it; the remaining budget afterwards (None: unlimited). If the
        waiting request is cancelled, the settlement still completes on its own."""
        return await asyncio.shield(self.settle(ticket, charge))

    def _done(self, task: asyncio.Task) -> None:
        self._running.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("money-path task failed: %r", task.exception())

    async def _settle(self, ticket: Ticket, charge: Charge | None) -> float | None:
        cost = charge.record.cost_usd if charge else 0.0
        used = charge.total_tokens if charge else 0
        await self.access.settle(ticket.reservation, cost)
        await self.access.settle_tokens(ticket.caller, ticket.tokens, used, ticket.window)
        if charge is None:
            return None
        rec = charge.record
        if rec.model is not None:
            m = self.metrics
            m.tokens.labels(rec.model, "prompt").inc(rec.prompt_tokens)
            m.tokens.labels(rec.model, "completion").inc(rec.completion_tokens)
            if rec.cached_tokens:
                m.cached_tokens.labels(rec.model).inc(rec.cached_tokens)
            m.cost.labels(rec.model).inc(rec.cost_usd)
            if charge.observe_latency:
                m.model_latency.labels(rec.model).observe(rec.latency_ms / 1000)
        rec.prompt = self.redact(rec.prompt)
        tracing.annotate(rec)
        log_request(rec, self.log_settings.requests)
        await self.store.log.record_request(rec)
        return await self.access.room(ticket.caller) if ticket.reservation is not None else None

    async def book(self, record: RequestRecord) -> None:
        """A call the gateway made on its own behalf (the judge): metrics and ledger, no budget."""
        if record.model is not None:
            self.metrics.cost.labels(record.model).inc(record.cost_usd)
        record.prompt = self.redact(record.prompt)
        await self.store.log.record_request(record)

    def redact(self, prompt: str) -> str:
        """The prompt as config `log.prompts` keeps it."""
        mode = self.log_settings.prompts
        if mode == "full":
            return prompt
        if mode == "truncated":
            return prompt[: self.log_settings.prompt_chars]
        if mode == "hash":
            return "sha256:" + hashlib.sha256(prompt.encode("utf-8", "replace")).hexdigest()
        return ""

    async def aclose(self, timeout_s: float = 10.0) -> None:
        """Server shutdown: wait until every admitted request has settled (requests the server
        cancelled settle as they unwind), then for the settlements to finish."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self._open and loop.time() < deadline:
            await asyncio.sleep(0.01)
        if self._open:
            log.error(
                "%d admitted requests had not settled %g s into the shutdown", len(self._open), timeout_s
            )
        while self._running:
            done, _ = await asyncio.wait(set(self._running), timeout=timeout_s)
            if not done:
                log.error(
                    "%d settlements did not finish within %g s of shutdown", len(self._running), timeout_s
                )
                return
