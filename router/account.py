"""The money path: admit and reserve -> settle, exactly once per request, whatever happens.

A `Ticket` is one request's claim on its caller's rate limits and budgets. `Account.open` checks
the key, counts the request against its rpm/tpm and holds the most the planned request may cost in
every budget scope, all in one step (one round trip to Redis: router.state.admission); `admit`
and `reserve` do the same in two. `settle` books what really happened — tokens against the
minute that counted them, cost against the reservation, metrics, the ledger record and the health
of the models that answered (one round trip too) — and does it exactly once: the first call
starts the settlement as a task of its own, later calls return that same task.

`RequestHealth` is model health as one request sees it. A model's success in a request is held by
the dispatcher and comes back with the request's outcome (`Charge.successes`), so its settlement
records it in the same round trip. And the breaker's go-ahead for a model the request's own plan
saw closed less than `CLOSED_FRESH_S` ago (`Plan.breakers`, a `Seen`) is that observation (a
closed breaker lets every request through: asking again would only add a round trip); a retry, a
half-open probe or an older plan asks the store.
Plans read the breakers and latencies through a per-replica snapshot kept `SNAPSHOT_TTL_S`
(0.25 s): a breaker another replica opens is seen here within that long (the requests sent
meanwhile fail over as before), one this replica opens is seen at once (a failure or a refused
go-ahead drops the snapshot). On Redis that saves a round trip on almost every request.

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
import uuid
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from router import tracing
from router.access import Access, Caller
from router.config import LogSettings
from router.health import CLOSED, ModelHealth, ModelStatus
from router.metrics import Metrics
from router.request_log import log_request
from router.state import RequestRecord, Store
from router.state.admission import Settle
from router.state.budgets import MICROS, BudgetScope, Reservation, to_micros

log = logging.getLogger("moe_router.account")
T = TypeVar("T")
CLOSED_FRESH_S = 1.0
SNAPSHOT_TTL_S = 0.25


@dataclass(eq=False)
class Ticket:
    caller: Caller
    tokens: int  # counted against the key's tokens-per-minute at admission
    window: int | None  # the minute they were counted in
    reservation: Reservation | None = None
    settlement: asyncio.Task | None = field(default=None, repr=False)
    scopes: Sequence[BudgetScope] = ()  # of the reservation
    id: str = ""  # the request's: its admission and settlement are each applied once under it

    @property
    def settled(self) -> bool:
        return self.settlement is not None


@dataclass
class Charge:
    """What a request really used, for its settlement."""

    record: RequestRecord  # the ledger record (its cost_usd is what is charged)
    total_tokens: int  # real prompt + completion tokens (rate-limit correction)
    observe_latency: bool = True  # a model answered (not a cache, not a failure): time it
    successes: list[tuple[str, float]] = field(default_factory=list)  # (model, latency_ms) to record


class Account:
    def __init__(self, access: Access, store: Store, metrics: Metrics, log_settings: LogSettings):
        self.access = access
        self.store = store
        self.metrics = metrics
        self.log_settings = log_settings
        self._running: set[asyncio.Task] = set()
        self._open: set[Ticket] = set()  # admitted and not yet settled

    async def open(self, caller: Caller, tokens: int, usd: float | None, request_id: str) -> Ticket:
        """Admission and reservation in one step (`Access.open`: 401/429, or `Replan`); nothing to
        settle if this raises. Shielded: a request cancelled while the store admits it still
        settles what was taken."""
        event = {
            "id": request_id,
            "key": caller.name,
            "usd": to_micros(usd or 0.0) / MICROS,
            "created": time.time(),
        }
        admitting = asyncio.ensure_future(self.access.open(caller, tokens, usd, event, request_id))
        try:
            got = await asyncio.shield(admitting)
        except asyncio.CancelledError:
            admitting.add_done_callback(lambda t: self._give_back(caller, tokens, t, request_id))
            raise
        return self._ticket(caller, tokens, got.window, got.reservation, request_id)

    def _ticket(
        self, caller: Caller, tokens: int, window: int | None, reservation: Reservation | None, id: str = ""
    ) -> Ticket:
        ticket = Ticket(caller, tokens, window, reservation, id=id or uuid.uuid4().hex)
        if reservation is not None:
            ticket.scopes = self.access.scopes(caller)
        self._open.add(ticket)
        return ticket

    def _give_back(self, caller: Caller, tokens: int, admitting: asyncio.Future, id: str) -> None:
        if not admitting.cancelled() and admitting.exception() is None:
            got = admitting.result()
            self.settle(self._ticket(caller, tokens, got.window, got.reservation, id), None)

    async def admit(self, caller: Caller, tokens: int) -> Ticket:
        """Rate limits (429 when over). Nothing to settle yet if this raises."""
        window = await self.access.admit(caller, tokens)
        return self._ticket(caller, tokens, window, None)

    async def reserve(self, ticket: Ticket, usd: float, request_id: str) -> None:
        """Hold `usd` in every budget scope of the caller (429 when one cannot cover it)."""
        ticket.id = request_id
        ticket.reservation = await self.access.reserve(ticket.caller, usd, request_id)
        ticket.scopes = self.access.scopes(ticket.caller) if ticket.reservation is not None else ()
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
        key = ticket.caller.key
        counted = key is not None and key.tpm is not None and ticket.window is not None
        rec = charge.record if charge else None
        if rec is not None:
            self._observe(rec, charge)
            rec.prompt = self.redact(rec.prompt)
            tracing.annotate(rec)
            log_request(rec, self.log_settings.requests)
        settle = Settle(
            ticket.reservation,
            ticket.scopes,
            cost,
            key.id if key is not None else None,
            ticket.window if counted else None,
            used - ticket.tokens,
            rec,
            charge.successes if charge else [],
            ticket.id,
        )
        left = await self.store.money.settle(settle)
        if ticket.reservation is None or charge is None:
            return None
        return self.access.settled(ticket.scopes, left)

    def _observe(self, rec: RequestRecord, charge: Charge) -> None:
        if rec.model is not None:
            m = self.metrics
            m.tokens.labels(rec.model, "prompt").inc(rec.prompt_tokens)
            m.tokens.labels(rec.model, "completion").inc(rec.completion_tokens)
            if rec.cached_tokens:
                m.cached_tokens.labels(rec.model).inc(rec.cached_tokens)
            m.cost.labels(rec.model).inc(rec.cost_usd)
            if charge.observe_latency:
                m.model_latency.labels(rec.model).observe(rec.latency_ms / 1000)

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


@dataclass
class Seen:
    """The models a plan saw with a closed breaker, and when (monotonic): each one's first
    go-ahead in the request that plan is for (router.dispatch takes it with the plan)."""

    at: float
    closed: set[str]


class RequestHealth:
    """Model health as one request sees it (see the module docstring): its plan's view of the
    breakers answers its first go-ahead per model; everything else goes to the store's health."""

    def __init__(self, inner: ModelHealth, ttl_s: float = SNAPSHOT_TTL_S):
        self.inner = inner
        self.ttl_s = ttl_s
        self._snapshots: dict[tuple[str, ...], tuple[float, dict[str, ModelStatus]]] = {}

    async def _snapshot(self, models: Sequence[str]) -> tuple[float, dict[str, ModelStatus]]:
        key, now = tuple(models), time.monotonic()
        hit = self._snapshots.get(key)
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit
        got = await self.inner.snapshot(models)
        if len(self._snapshots) >= 256:  # model sets are few (policies x pools); stay bounded
            self._snapshots.clear()
        self._snapshots[key] = (now, got)
        return now, got

    async def snapshot(self, models: Sequence[str]) -> dict[str, ModelStatus]:
        return dict((await self._snapshot(models))[1])

    async def view(self, models: Sequence[str]) -> tuple[dict[str, ModelStatus], Seen]:
        """What a plan reads: the models' status, and which breakers it saw closed."""
        at, got = await self._snapshot(models)
        return dict(got), Seen(at, {m for m, st in got.items() if st.breaker == CLOSED})

    async def acquire(self, model: str, seen: Seen | None = None) -> bool:
        """May `model` be tried now? `seen`: the request's plan's view, which answers for a model
        it saw closed less than `CLOSED_FRESH_S` ago, once (a retry of it asks the store)."""
        if seen is not None and model in seen.closed and time.monotonic() - seen.at < CLOSED_FRESH_S:
            seen.closed.discard(model)
            return True
        ok = await self.inner.acquire(model)
        if not ok:
            self._snapshots.clear()
        return ok

    async def record_success(self, model: str, latency_ms: float) -> None:
        await self.inner.record_success(model, latency_ms)

    async def record_failure(self, model: str) -> None:
        self._snapshots.clear()
        await self.inner.record_failure(model)
        self._snapshots.clear()  # and what a plan read meanwhile

    async def release(self, model: str) -> None:
        await self.inner.release(model)
