"""The routing engine: the one pipeline the HTTP gateway and the Python SDK share.

It composes four parts, each testable alone, and reads top to bottom per request:

    cache? -> planner.plan (policy + constraints -> ranked models)
    -> account.open (key, rate limits and budget reservation: one step) -> executor (dispatch:
    retries, fallbacks, deadline) -> account.settle (exactly once: spend, tokens, ledger, health)
    -> feedback (judge, learning)

The plan comes before admission because the reservation is the plan's most expensive answer; it
is made on what this replica knows of the caller's key and budgets, and made again in the rare
case admission finds that shared state knows better (`Replan`, router.access).

- `router.planner`: request -> plan, calling no model and moving no money;
- `router.account`: the money path, settled exactly once on every path;
- `router.executor`: plan -> answer (plain, streamed, cascade) over the dispatcher;
- `router.feedback`: ratings (ownership, replace semantics), the automatic judge, learning.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from adapters import Adapter, BackendError, ChatChunk, ChatResult, EmbedResult, Usage, build_adapter
from policies.decision import Decision
from policies.encoders import PromptEncoder
from router import constraints as C
from router.access import Access, Caller, Replan
from router.account import Account, Charge, RequestHealth, Ticket
from router.caching import CacheHit, ResponseCaching
from router.capacity import Capacity
from router.config import ModelSpec, RouterConfig
from router.dispatch import Dispatcher, aclose_quietly
from router.embed_batcher import EmbedBatcher
from router.errors import BudgetExceeded, RouterError, ServiceUnavailable
from router.executor import Executor, LiveStream, Outcome, StreamHandle
from router.feedback import Feedback
from router.ledger import Ledger, build_ledger
from router.metrics import Metrics
from router.planner import Plan, Planner, new_request_id
from router.policy_set import PolicySet
from router.refusals import Refusals
from router.schemas import ChatCompletionRequest, EmbeddingsRequest
from router.state import FeedbackRecord, HealthOptions, MemoryStore, RedisStore, RequestRecord, Store
from router.tracing import Tracing, span

log = logging.getLogger("moe_router")
T = TypeVar("T")
REPLANS = 3  # plans made again at most, when admission finds the key or a budget changed

__all__ = ["Engine", "Outcome", "Plan", "StreamHandle", "build_store"]


def build_store(config: RouterConfig, metrics: Metrics) -> Store:
    h = HealthOptions(
        config.breaker.failure_threshold,
        config.breaker.reset_after_s,
        config.health.ewma_alpha,
        config.health.window,
    )
    if config.state == "memory":
        return MemoryStore(h)
    o = config.outage
    return RedisStore(
        config.state,
        h,
        metrics=metrics,
        timeout_s=o.timeout_s,
        budgets=o.budgets,
        allowance=o.allowance,
        retry_every_s=o.retry_every_s,
        spill_path=o.spill_path,
        max_entries=config.log.max_entries,
        request_ttl_s=config.log.request_ttl_s,
        capacity_outage_share=config.capacity.outage_share,
        replay_s=o.replay_s,
        applied_ttl_s=o.applied_ttl_s,
    )


class Engine:
    def __init__(
        self,
        config: RouterConfig,
        *,
        store: Store | None = None,
        encoder: PromptEncoder | None = None,
        tracing: Tracing | None = None,
    ):
        self.config = config
        self.tracing = tracing or Tracing(config.tracing)
        self.specs: dict[str, ModelSpec] = {m.name: m for m in config.models}
        self.metrics = Metrics()
        enc = config.encoder
        self.encoder = encoder or PromptEncoder(
            config.encoder_model(), cache_size=enc.cache_size, threads=enc.threads
        )
        self.policies = PolicySet(config, self.encoder)
        self.embedder = EmbedBatcher(self.encoder, window_ms=enc.batch_window_ms)
        self.store = store or build_store(config, self.metrics)
        self.ledger: Ledger | None = build_ledger(config, self.store)  # None: `ledger: none`
        self.access = Access(config, self.store)
        self.caching = ResponseCaching(config.cache, self.store.cache, self.encoder)
        self.unavailable: dict[str, str] = {}
        self.adapters: dict[str, Adapter] = {}
        for spec in config.models:
            missing = spec.missing_env()
            if missing:
                self.unavailable[spec.name] = f"set {', '.join(missing)} to enable it"
                continue
            try:
                self.adapters[spec.name] = build_adapter(spec.backend, spec.resolved_params())
            except (TypeError, ValueError, ImportError) as e:
                self.unavailable[spec.name] = f"backend {spec.backend!r} cannot be built: {e}"
        lease_ttl = config.capacity.lease_ttl_s or config.dispatch.timeout_s + 30
        self.capacity = Capacity(self.specs, self.store.capacity, self.metrics, lease_ttl)
        health = RequestHealth(self.store.health)  # the planner's view of breakers is the dispatcher's
        self.dispatcher = Dispatcher(
            self.adapters,
            health,
            self.metrics,
            config.dispatch,
            capacity=self.capacity,
        )
        self.planner = Planner(
            config,
            self.policies,
            self.embedder,
            health,
            self.access,
            self.store.bandits,
            self.store.sessions,
            self.metrics,
            self.unavailable,
        )
        self.account = Account(self.access, self.store, self.metrics, config.log)
        self.refusals = Refusals(self.store.log, self.metrics, self.account.spawn)
        self.executor = Executor(config, self.dispatcher, self.policies, self.metrics)
        self.feedbacks = Feedback(
            config, self.store, self.policies, self.access, self.account, self.dispatcher, self.metrics
        )
        self._starting: asyncio.Task | None = None
        # warm-up: local models load at start and /ready waits for them (default: when there are any)
        warmup = config.server.warmup
        self.warmup = any(self.specs[n].local for n in self.adapters) if warmup is None else warmup
        self._streams: set[LiveStream] = set()  # committed streams not yet ended

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
        for live in list(self._streams):  # streams the shutdown cut: end (and settle) them now
            live.end()
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

    async def _open(
        self, caller: Caller, tokens: int, planned: Callable[[], Awaitable[Plan | None]]
    ) -> tuple[Ticket, Plan | None]:
        """`planned()` (None: nothing to reserve), then the ticket: admitted and reserved in one
        step. Planned again when admission says the key or a budget changed (`Replan`), or when the
        planner found no model the budget covers by this replica's knowledge and shared state has
        more left. A failure before admission still tells a revoked key so first."""
        refusal: Exception | None = None
        for attempt in range(REPLANS + 1):
            try:
                plan = await planned()
            except BudgetExceeded:
                if attempt < REPLANS and await self.access.refresh(caller):
                    continue
                await self.access.check(caller)
                raise
            except RouterError:
                await self.access.check(caller)
                raise
            rid = plan.request_id if plan is not None else new_request_id()
            try:
                usd = plan.reservation_usd() if plan is not None else None
                return await self.account.open(caller, tokens, usd, rid), plan
            except Replan as e:
                refusal = e.refusal
                continue
        if refusal is not None:  # the last refusal was a budget's: what the request would get again
            raise refusal
        raise ServiceUnavailable("the API key kept changing during the request; retry")

    async def _start(
        self,
        req: ChatCompletionRequest,
        caller: Caller,
        dispatch: Callable[[Plan], Awaitable[Any]],
        session: str | None,
    ) -> _Started:
        """cache? -> plan -> admit and reserve -> dispatch(plan); if any step after admission
        fails, the ticket is settled (what was reserved goes back, the failure is logged) before
        the error propagates."""
        hit: CacheHit | None = None

        async def planned() -> Plan | None:
            nonlocal hit
            self.planner.check(req)  # refused parameters cost the caller nothing
            if self.caching.wanted(req, caller):
                hit = await self.caching.lookup(caller.scope, req)
            return None if hit is not None else await self.planner.plan(req, caller, session)

        tokens = C.prompt_tokens(req.messages) + (req.output_limit() or 0)
        ticket, plan = await self._open(caller, tokens, planned)
        try:
            if hit is not None:
                return _Started(ticket, hit=hit, cached=await self._cached(req, ticket, hit))
            with span("dispatch"):
                value = await dispatch(plan)
            return _Started(ticket, plan=plan, value=value)
        except BaseException as e:
            await self._settle(ticket, None if plan is None else self._failure(plan, ticket, e))
            raise

    async def chat(
        self, req: ChatCompletionRequest, caller: Caller | None = None, session: str | None = None
    ) -> tuple[ChatResult, Outcome]:
        """Answer `req`. `session`: the client's conversation id (affinity), if it sent one."""
        return await self._traced("chat", lambda: self._chat(req, caller or Caller(), session))

    async def _chat(
        self, req: ChatCompletionRequest, caller: Caller, session: str | None
    ) -> tuple[ChatResult, Outcome]:
        started = await self._start(req, caller, lambda plan: self.executor.chat(plan, req), session)
        if started.cached is not None:
            return started.hit.result, started.cached
        result, outcome = started.value
        record = self._record(outcome, started.ticket)
        outcome.budget_left_usd = await self._settle(
            started.ticket, Charge(record, outcome.usage.total_tokens)
        )
        self.feedbacks.judge_later(outcome, _reference(req), result.text, record)
        await self.planner.remember(outcome.plan, outcome.model)
        if self.caching.wanted(req, caller):
            await self.caching.store(caller.scope, req, outcome.model, result)
        return result, outcome

    async def stream(
        self, req: ChatCompletionRequest, caller: Caller | None = None, session: str | None = None
    ) -> StreamHandle:
        """Commit to a model (falling back until one yields content), then hand out its chunks.

        The stream is settled when it ends — completed, failed, or abandoned by its consumer —
        and `handle.done` resolves once it is (and its trace span ends then)."""
        request_span = self.tracing.request("stream")
        try:
            with self.tracing.use(request_span):
                return await self._stream(req, caller or Caller(), session, request_span)
        except BaseException as e:
            self.tracing.end(request_span, e)
            raise

    async def _stream(
        self, req: ChatCompletionRequest, caller: Caller, session: str | None, request_span: Any
    ) -> StreamHandle:
        started = await self._start(req, caller, lambda plan: self.executor.open_stream(plan, req), session)
        if started.cached is not None:
            hit = started.hit
            self.tracing.end(request_span)
            return StreamHandle(
                started.cached.plan, hit.model, [], _replay(hit.result), started.cached, cache=hit
            )
        plan, opened, ticket = started.plan, started.value, started.ticket
        handle = StreamHandle(
            plan, opened.model, list(opened.attempts.fallbacks), spilled=opened.attempts.spills()
        )
        handle.done = asyncio.get_running_loop().create_future()

        def ended(live: LiveStream) -> None:
            self._streams.discard(live)
            # what the stream produced is known now (the final usage chunk needs it at once);
            # closing the upstream, health and settlement need awaits: they run on their own
            latency_ms = (time.perf_counter() - live.opened.started) * 1000
            handle.outcome = self.executor.outcome(
                plan,
                live.opened.model,
                live.usage,
                "".join(live.text),
                latency_ms,
                live.opened.attempts,
                live.expert_usage,
            )
            # the model's capacity slot is free as soon as the stream is (no await: it cannot be skipped)
            self.dispatcher.release(live.opened.attempts, handle.outcome.usage.total_tokens)
            with self.tracing.use(request_span):  # the settlement task belongs to the request's span
                task = self.account.spawn(self._end_stream(handle, live, ticket, req, caller, request_span))
            task.add_done_callback(lambda _: handle.done.done() or handle.done.set_result(None))

        handle.live = LiveStream(opened, ended)
        self._streams.add(handle.live)
        handle.chunks = self.executor.relay(handle.live)
        return handle

    async def _end_stream(
        self,
        handle: StreamHandle,
        live: LiveStream,
        ticket: Ticket,
        req: ChatCompletionRequest,
        caller: Caller,
        request_span: Any = None,
    ) -> None:
        """Close the upstream (a dropped client stops the model), then settle what was produced."""
        try:
            await self._end_stream_settle(handle, live, ticket, req, caller)
        finally:
            self.tracing.end(request_span)

    async def _end_stream_settle(
        self,
        handle: StreamHandle,
        live: LiveStream,
        ticket: Ticket,
        req: ChatCompletionRequest,
        caller: Caller,
    ) -> None:
        status, outcome = live.status, handle.outcome
        self.account.defer_health(ticket)  # the model's success is recorded by the settlement
        try:
            await aclose_quietly(live.opened.rest)
            await self.dispatcher.finish_stream(
                live.opened,
                live.error,
                cancelled=status == "client_closed",
                request_id=handle.plan.request_id,
            )
        except Exception:  # noqa: BLE001 - health bookkeeping must not keep the spend from settling
            log.exception("request %s: finishing the stream failed", handle.plan.request_id)
        error = None if live.error is None else f"{outcome.model} failed mid-stream"
        record = self._record(outcome, ticket, status, error)
        outcome.budget_left_usd = await self._settle(ticket, Charge(record, outcome.usage.total_tokens))
        if status == "ok":
            answer = "".join(live.text)
            self.feedbacks.judge_later(outcome, _reference(req), answer, record)
            await self.planner.remember(outcome.plan, outcome.model)
            if self.caching.wanted(req, caller):
                result = ChatResult(
                    {"role": "assistant", "content": answer}, live.finish_reason, outcome.usage
                )
                await self.caching.store(caller.scope, req, outcome.model, result)

    async def embed(
        self, req: EmbeddingsRequest, caller: Caller | None = None
    ) -> tuple[EmbedResult, Outcome]:
        """`/v1/embeddings`: the named embedding model, with the same admission, budget reservation,
        breakers and ledger as a chat request (no routing: vector spaces differ between models)."""
        return await self._traced("embeddings", lambda: self._embed(req, caller or Caller()))

    async def _embed(self, req: EmbeddingsRequest, caller: Caller) -> tuple[EmbedResult, Outcome]:
        texts = req.texts()
        tokens = sum(C.estimate_tokens(t) for t in texts)
        ticket, plan = await self._open(
            caller, tokens, lambda: self.planner.plan_embedding(req.model, texts, caller)
        )
        try:
            model, result, attempts, latency_ms = await self.dispatcher.embed(
                plan.candidates(),
                texts,
                req.dimensions,
                request_id=plan.request_id,
                tokens=plan.prompt_tokens,
            )
        except BaseException as e:
            await self._settle(ticket, None if plan is None else self._failure(plan, ticket, e))
            raise
        usage = result.usage if result.usage.prompt_tokens else Usage(plan.prompt_tokens, 0)
        cost = self.specs[model].info().cost_usd(usage.prompt_tokens, 0)
        outcome = Outcome(
            plan, model, usage, cost, latency_ms, list(attempts.fallbacks), spilled=attempts.spills()
        )
        charge = Charge(self._record(outcome, ticket), usage.total_tokens)
        outcome.budget_left_usd = await self._settle(ticket, charge)
        return result, outcome

    async def _traced(self, kind: str, work: Callable[[], Awaitable[T]]) -> T:
        """Run `work` inside a request span (just run it when tracing is off)."""
        request_span = self.tracing.request(kind)
        if request_span is None:
            return await work()
        error: BaseException | None = None
        try:
            with self.tracing.use(request_span):
                return await work()
        except BaseException as e:
            error = e
            raise
        finally:
            self.tracing.end(request_span, error)

    async def _settle(self, ticket: Ticket, charge: Charge | None) -> float | None:
        with span("settle"):
            return await self.account.settled(ticket, charge)

    # ---- records -------------------------------------------------------------------------------
    def _record(
        self, o: Outcome, ticket: Ticket, status: str = "ok", error: str | None = None
    ) -> RequestRecord:
        pred = o.predicted
        plan = o.plan
        return RequestRecord(
            id=o.request_id,
            model=o.model,
            policy=plan.policy,
            prompt=plan.prompt,
            prompt_tokens=o.usage.prompt_tokens,
            completion_tokens=o.usage.completion_tokens,
            cached_tokens=o.usage.cached_tokens,
            cost_usd=o.cost_usd,
            latency_ms=o.latency_ms,
            status=status,
            error=error,
            key=ticket.caller.name,
            owner=ticket.caller.scope,
            fallbacks=o.fallbacks,
            predicted={
                "quality": pred.quality if pred is not None and plan.routed else None,
                "cost_usd": None if pred is None else pred.cost_usd,
                "latency_ms": None if pred is None else pred.latency_ms,
            },
            cost_weight=plan.decision.cost_weight if plan.routed else None,
            # the probability of the answering model: known only if it was the policy's choice
            propensity=plan.propensity
            if plan.routed and not o.fallbacks and plan.decision.chosen.model == o.model
            else None,
            reserved_usd=ticket.reservation.usd if ticket.reservation else None,
            cache=o.cache.kind if o.cache else None,
            decision=plan.decision.compact() if plan.routed else None,
            learn=plan.learn,
        )

    def _failure(self, plan: Plan, ticket: Ticket, err: BaseException) -> Charge:
        if isinstance(err, RouterError):
            status, message = "error", err.message
        elif isinstance(err, asyncio.CancelledError):
            status, message = "client_closed", "the request was cancelled before an answer"
        else:
            status, message = "error", f"internal error ({type(err).__name__})"
        record = RequestRecord(
            id=plan.request_id,
            model=None,
            policy=plan.policy,
            prompt=plan.prompt,
            prompt_tokens=plan.prompt_tokens,
            status=status,
            error=message,
            key=ticket.caller.name,
            owner=ticket.caller.scope,
            fallbacks=plan.candidates(),
            reserved_usd=ticket.reservation.usd if ticket.reservation else None,
            decision=plan.decision.compact() if plan.routed else None,
        )
        return Charge(record, plan.prompt_tokens, observe_latency=False)

    async def _cached(self, req: ChatCompletionRequest, ticket: Ticket, hit: CacheHit) -> Outcome:
        text = C.routing_text(req.messages)
        plan = Plan(new_request_id(), Decision("", 0.0, [], []), text, ticket.tokens, routed=False)
        usage = hit.result.usage or Usage(C.prompt_tokens(req.messages), C.estimate_tokens(hit.result.text))
        outcome = Outcome(plan, hit.model, usage, 0.0, 0.0, cache=hit)
        charge = Charge(self._record(outcome, ticket), usage.total_tokens, observe_latency=False)
        outcome.budget_left_usd = await self._settle(ticket, charge)
        return outcome


@dataclass
class _Started:
    """A request admitted and either answered from a cache (already settled) or dispatched."""

    ticket: Ticket
    hit: CacheHit | None = None
    cached: Outcome | None = None
    plan: Plan | None = None
    value: Any = None  # what dispatch returned


def _reference(req: ChatCompletionRequest) -> str | None:
    return req.routing.reference if req.routing is not None else None


async def _replay(result: ChatResult) -> AsyncIterator[ChatChunk]:
    yield ChatChunk({"role": "assistant", "content": result.text}, None)
    yield ChatChunk({}, result.finish_reason or "stop", usage=result.usage)
