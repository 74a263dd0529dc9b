"""The routing engine: the one request path the HTTP gateway and the Python SDK share.

A request is a straight sequence of named steps, each a call on one part (router.wiring builds
the parts from the config):

    check   planner.check: parameters no backend may receive are refused (400), nothing spent
    plan    caching.lookup, or planner.plan: policy + constraints -> ranked models, nothing called
    admit   account.open: key, rate limits and the plan's budget reservation, in one step
    dispatch  executor: the plan's models in order (retries, fallbacks, one deadline; a stream is
            the executor's until it ends)
    account   records (the ledger record of what happened) -> account.settle, exactly once
    respond   after an answer: judge, affinity, response cache; the caller gets the answer

The plan comes before admission because the reservation is the plan's most expensive answer; it
is made on what this replica knows of the caller's key and budgets, and made again in the rare
case admission finds that shared state knows better (`Replan`, router.access). If any step after
admission fails, the ticket is settled (what was reserved goes back, the failure is recorded)
before the error propagates. A stream's accounting waits for the stream's end in a task of its
own (`_account_stream`), started when it is committed: the consumer cannot cancel it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

from adapters import Adapter, BackendError, ChatChunk, ChatResult, EmbedResult, Usage
from policies.decision import Decision
from policies.encoders import PromptEncoder
from router import constraints as C
from router import records
from router.access import Caller, Replan
from router.account import Charge, Ticket
from router.caching import CacheHit
from router.config import RouterConfig
from router.errors import BudgetExceeded, RouterError, ServiceUnavailable
from router.executor import LiveStream, Outcome, StreamHandle
from router.planner import Checked, Plan, new_request_id
from router.schemas import ChatCompletionRequest, EmbeddingsRequest
from router.state import FeedbackRecord, Store
from router.tracing import Tracing, span
from router.wiring import Parts, build_store, wire

log = logging.getLogger("moe_router")
REPLANS = 3  # plans made again at most, when admission finds the key or a budget changed

__all__ = ["Engine", "Outcome", "Plan", "StreamHandle", "build_store"]


@dataclass
class Admitted:
    """A request past admission: its ticket, and either a cached answer or a plan."""

    ticket: Ticket
    plan: Plan | None = None
    hit: CacheHit | None = None


class Engine(Parts):
    def __init__(
        self,
        config: RouterConfig,
        *,
        store: Store | None = None,
        encoder: PromptEncoder | None = None,
        tracing: Tracing | None = None,
    ):
        super().__init__(**vars(wire(config, store=store, encoder=encoder, tracing=tracing)))
        self._starting: asyncio.Task | None = None

    # ---- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Load the encoder (and, with warm-up, local models) in the background; requests await
        what they need, and without warm-up a local model loads on its first request."""
        if self.ledger is not None:
            await self.ledger.start()  # in the background: a database that is down is waited for
        if self._starting is None:
            self._starting = asyncio.create_task(self._start_all())

    async def _start_all(self) -> None:
        async def start_one(name: str, adapter: Adapter) -> None:
            try:
                await adapter.start()
            except BackendError as e:
                log.warning("model %s failed to start: %s", name, e.message)

        if any(p.needs_embeddings for _, p in self.policies.items()):
            await asyncio.to_thread(self.encoder.load)
        started = {n: a for n, a in self.adapters.items() if self.warmup or not self.specs[n].local}
        await asyncio.gather(*(start_one(n, a) for n, a in started.items()))
        if self.warmup:
            log.info(
                "warm-up done: %s loaded", ", ".join(n for n in started if self.specs[n].local) or "encoder"
            )

    @property
    def warming_up(self) -> bool:
        """Warm-up is on and has not finished (/ready answers 503 meanwhile)."""
        return self.warmup and (self._starting is None or not self._starting.done())

    async def wait_started(self) -> None:
        await self.start()
        await asyncio.shield(self._starting)

    async def aclose(self) -> None:
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()
        self.executor.end_all()  # streams the shutdown cut: end them (their accounting runs)
        await self.account.aclose()  # then every admitted request's settlement
        await self.feedbacks.aclose(self.config.dispatch.timeout_s)
        await self.capacity.aclose()  # the slots the requests above gave back reach the store
        if self.ledger is not None:  # after every settlement and rating is in its feed
            await self.ledger.aclose()
        await self.embedder.aclose()
        for a in self.adapters.values():
            try:
                await a.aclose()
            except Exception as e:  # noqa: BLE001 - shutting down: log and keep closing the others
                log.warning("closing adapter failed: %s", e)
        await self.store.aclose()
        await asyncio.to_thread(self.tracing.shutdown)

    async def readiness(self) -> dict:
        ready = {}
        for name, a in self.adapters.items():
            try:
                # without warm-up a local model loads on its first request: servable, not loaded yet
                ready[name] = bool(await a.health()) or (not self.warmup and self.specs[name].local)
            except Exception:  # noqa: BLE001 - a failing health probe means "not ready", nothing more
                ready[name] = False
        state_ok = await self.store.ping()
        serving = any(ready.values())
        status = "unready" if not serving else "ok" if state_ok and not self.store.degraded else "degraded"
        if self.warming_up:
            status = "warming_up"
        return {
            "status": status,
            "warmup": "loading" if self.warming_up else "done" if self.warmup else "off",
            "models": ready,
            "unavailable": dict(self.unavailable),
            "state": {"kind": self.store.kind, "reachable": state_ok},
        }

    # ---- requests ------------------------------------------------------------------------------
    async def authenticate(self, raw_key: str | None, operator: bool = False) -> Caller:
        return await self.access.authenticate(raw_key, operator)

    async def plan(
        self, req: ChatCompletionRequest, caller: Caller | None = None, session: str | None = None
    ) -> Plan:
        if caller is not None:
            await self.access.check(caller)
        return await self.planner.plan(req, caller, session)

    async def feedback(
        self, caller: Caller | None, request_id: str, rating: float, comment: str | None = None
    ) -> FeedbackRecord:
        caller = caller or Caller()
        await self.access.check(caller)
        return await self.feedbacks.rate(caller, request_id, rating, comment)

    async def chat(
        self, req: ChatCompletionRequest, caller: Caller | None = None, session: str | None = None
    ) -> tuple[ChatResult, Outcome]:
        """Answer `req`. `session`: the client's conversation id (affinity), if it sent one."""
        caller = caller or Caller()
        with self._traced("chat"):
            admitted = await self._admit(req, caller, session)
            ticket, plan, hit = admitted.ticket, admitted.plan, admitted.hit
            try:
                if hit is not None:
                    return hit.result, await self._account_cached(req, ticket, hit)
                with span("dispatch"):
                    result, outcome = await self.executor.chat(plan, req)
            except BaseException as e:
                await self._account_failure(plan, ticket, e)
                raise
            record = records.answered(outcome, ticket)
            await self._account(ticket, outcome, record)
            await self._respond(req, caller, outcome, result, record)
            return result, outcome

    async def stream(
        self, req: ChatCompletionRequest, caller: Caller | None = None, session: str | None = None
    ) -> StreamHandle:
        """Commit to a model (falling back until one yields content), then hand out its chunks.

        The stream is settled when it ends — completed, failed, or abandoned by its consumer —
        and `handle.done` resolves once it is (and its trace span ends then)."""
        caller = caller or Caller()
        request_span = self.tracing.request("stream")
        try:
            with self.tracing.use(request_span):
                admitted = await self._admit(req, caller, session)
                ticket, plan, hit = admitted.ticket, admitted.plan, admitted.hit
                try:
                    if hit is not None:
                        outcome = await self._account_cached(req, ticket, hit)
                        self.tracing.end(request_span)
                        return StreamHandle(
                            outcome.plan, hit.model, [], _replay(hit.result), outcome, cache=hit
                        )
                    with span("dispatch"):
                        handle = await self.executor.open_stream(plan, req)
                except BaseException as e:
                    await self._account_failure(plan, ticket, e)
                    raise
                # its accounting waits for its end, on its own: the consumer cannot cancel it
                handle.done = self.account.spawn(
                    self._account_stream(handle.live, ticket, req, caller, request_span)
                )
                return handle
        except BaseException as e:
            self.tracing.end(request_span, e)
            raise

    async def embed(
        self, req: EmbeddingsRequest, caller: Caller | None = None
    ) -> tuple[EmbedResult, Outcome]:
        """`/v1/embeddings`: the named embedding model, with the same admission, budget reservation,
        breakers and ledger as a chat request (no routing: vector spaces differ between models)."""
        caller = caller or Caller()
        with self._traced("embeddings"):
            admitted = await self._admit(req, caller, None)
            ticket, plan = admitted.ticket, admitted.plan
            try:
                result, outcome = await self.executor.embed(plan, req.texts(), req.dimensions)
            except BaseException as e:
                await self._account_failure(plan, ticket, e)
                raise
            await self._account(ticket, outcome, records.answered(outcome, ticket))
            return result, outcome

    # ---- the steps -----------------------------------------------------------------------------
    async def _admit(
        self, req: ChatCompletionRequest | EmbeddingsRequest, caller: Caller, session: str | None
    ) -> Admitted:
        """check -> the cache's answer or a plan -> admitted and reserved in one step. Planned again
        when admission says the key or a budget changed (`Replan`), or when the planner found no
        model the budget covers by this replica's knowledge and shared state has more left. A
        failure before admission still tells a revoked key so first."""
        hit: CacheHit | None = None
        checked: Checked | None = None
        try:
            if isinstance(req, EmbeddingsRequest):
                tokens = sum(C.estimate_tokens(t) for t in req.texts())
            else:
                checked = self.planner.check(req)  # refused parameters cost the caller nothing
                tokens = C.prompt_tokens(req.messages) + (req.output_limit() or 0)
                if self.caching.wanted(req, caller):
                    hit = await self.caching.lookup(caller.scope, req)
        except RouterError:
            await self.access.check(caller)
            raise
        refusal: Exception | None = None
        for attempt in range(REPLANS + 1):
            plan: Plan | None = None
            if hit is None:
                try:
                    plan = await self._plan(req, caller, session, checked)
                except BudgetExceeded:
                    if attempt < REPLANS and await self.access.refresh(caller):
                        continue
                    await self.access.check(caller)
                    raise
                except RouterError:
                    await self.access.check(caller)
                    raise
            rid = plan.request_id if plan is not None else new_request_id()
            usd = plan.reservation_usd() if plan is not None else None  # a cache hit reserves nothing
            try:
                return Admitted(await self.account.open(caller, tokens, usd, rid), plan, hit)
            except Replan as e:
                refusal = e.refusal
        if refusal is not None:  # the last refusal was a budget's: what the request would get again
            raise refusal
        raise ServiceUnavailable("the API key kept changing during the request; retry")

    async def _plan(
        self,
        req: ChatCompletionRequest | EmbeddingsRequest,
        caller: Caller,
        session: str | None,
        checked: Checked | None,
    ) -> Plan:
        if isinstance(req, EmbeddingsRequest):
            return await self.planner.plan_embedding(req.model, req.texts(), caller)
        return await self.planner.plan(req, caller, session, checked)

    async def _account(self, ticket: Ticket, outcome: Outcome, record) -> None:
        """Settle an answered request (exactly once); the budget left goes on the outcome."""
        charge = Charge(record, outcome.usage.total_tokens, successes=outcome.successes)
        outcome.budget_left_usd = await self._settle(ticket, charge)

    async def _account_failure(self, plan: Plan | None, ticket: Ticket, err: BaseException) -> None:
        """Settle a request that failed after admission: the reservation goes back, the failure
        is recorded (nothing is recorded when there was no plan to record; a ticket already
        settling keeps its first settlement)."""
        charge = None
        if plan is not None:
            charge = Charge(records.failed(plan, ticket, err), plan.prompt_tokens, observe_latency=False)
        await self._settle(ticket, charge)

    async def _account_cached(self, req: ChatCompletionRequest, ticket: Ticket, hit: CacheHit) -> Outcome:
        text = C.routing_text(req.messages)
        plan = Plan(new_request_id(), Decision("", 0.0, [], []), text, ticket.tokens, routed=False)
        usage = hit.result.usage or Usage(C.prompt_tokens(req.messages), C.estimate_tokens(hit.result.text))
        outcome = Outcome(plan, hit.model, usage, 0.0, 0.0, cache=hit)
        charge = Charge(records.answered(outcome, ticket), usage.total_tokens, observe_latency=False)
        outcome.budget_left_usd = await self._settle(ticket, charge)
        return outcome

    async def _account_stream(
        self, live: LiveStream, ticket: Ticket, req: ChatCompletionRequest, caller: Caller, request_span
    ) -> None:
        """A committed stream's account, from its end: settle what it produced, then `_respond`."""
        try:
            outcome = await self.executor.finished(live)
            record = records.answered(outcome, ticket, live.status, live.failure)
            await self._account(ticket, outcome, record)
            if live.status == "ok":
                await self._respond(req, caller, outcome, live.answer(), record)
        finally:
            self.tracing.end(request_span)

    async def _respond(
        self, req: ChatCompletionRequest, caller: Caller, outcome: Outcome, result: ChatResult, record
    ) -> None:
        """After an answer (plain or streamed): the judge, the conversation's model, the cache."""
        reference = req.routing.reference if req.routing is not None else None
        self.feedbacks.judge_later(outcome, reference, result.text, record)
        await self.planner.remember(outcome.plan, outcome.model)
        if self.caching.wanted(req, caller):
            await self.caching.store(caller.scope, req, outcome.model, result)

    async def _settle(self, ticket: Ticket, charge: Charge | None) -> float | None:
        with span("settle"):
            return await self.account.settled(ticket, charge)

    @contextlib.contextmanager
    def _traced(self, kind: str) -> Iterator[None]:
        """The request's span around the block (nothing when tracing is off)."""
        request_span = self.tracing.request(kind)
        if request_span is None:
            yield
            return
        error: BaseException | None = None
        try:
            with self.tracing.use(request_span):
                yield
        except BaseException as e:
            error = e
            raise
        finally:
            self.tracing.end(request_span, error)


async def _replay(result: ChatResult) -> AsyncIterator[ChatChunk]:
    yield ChatChunk({"role": "assistant", "content": result.text}, None)
    yield ChatChunk({}, result.finish_reason or "stop", usage=result.usage)
