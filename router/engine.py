"""The routing engine: the one pipeline the HTTP gateway and the Python SDK share.

caller (key) -> rate limit -> cache? -> plan: target, prompt features (embedding only if the
policy needs it), predictions, exclusions + constraints + budget room -> `decide`
-> reserve budget -> dispatch with retries/fallbacks -> settle to the real cost
-> metrics, ledger, cache.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from adapters import Adapter, BackendError, ChatChunk, ChatRequest, ChatResult, Usage, build_adapter
from policies.base import Policy, PromptBatch
from policies.decision import BUDGET, REQUEST, SERVICE, Candidate, Decision, Exclusion, decide
from policies.encoders import PromptEncoder
from router import constraints as C
from router.access import Access, Caller
from router.caching import CacheHit, ResponseCaching
from router.config import ModelSpec, RouterConfig
from router.dispatch import Attempts, Dispatcher, OpenStream, aclose_quietly
from router.embed_batcher import EmbedBatcher
from router.errors import (
    BadRequest,
    BudgetExceeded,
    ConstraintsUnsatisfiable,
    ContextTooLong,
    Forbidden,
    NotFound,
    RouterError,
    ServiceUnavailable,
)
from router.metrics import Metrics
from router.policy_set import PolicySet
from router.schemas import ChatCompletionRequest
from router.state import FeedbackRecord, HealthOptions, MemoryStore, RedisStore, RequestRecord, Store
from router.state.budgets import Reservation

log = logging.getLogger("moe_router")


@dataclass
class Plan:
    """A routing decision for one request, before dispatch."""

    request_id: str
    decision: Decision
    prompt: str
    prompt_tokens: int
    routed: bool  # False when the caller named a model
    cascade: Any = None  # policies.cascade.CascadePlan when the policy asks for a two-step dispatch
    propensity: float | None = None  # probability the policy gave its chosen model (1.0 if deterministic)

    @property
    def policy(self) -> str | None:
        return self.decision.policy if self.routed else None


@dataclass
class Outcome:
    """What happened: the answering model, spend and timing (headers, logs and the SDK read this)."""

    plan: Plan
    model: str
    usage: Usage
    cost_usd: float
    latency_ms: float
    fallbacks: list[str] = field(default_factory=list)
    expert_usage: dict[str, list[int]] | None = None
    cache: CacheHit | None = None
    budget_left_usd: float | None = None
    cascade: str | None = None  # "accepted:<first>" | "escalated:<first>" | "escalation_failed:<first>"

    @property
    def request_id(self) -> str:
        return self.plan.request_id

    @property
    def predicted(self) -> Candidate | None:
        return next((c for c in self.plan.decision.ranked if c.model == self.model), None)


@dataclass
class StreamHandle:
    """A committed stream. `model` is known before the first byte goes out; `outcome` after the end."""

    plan: Plan
    model: str
    fallbacks: list[str]
    chunks: AsyncIterator[ChatChunk] | None = None
    outcome: Outcome | None = None
    cache: CacheHit | None = None


@dataclass
class _Admission:
    """Bookkeeping of one admitted request, settled exactly once whatever happens."""

    caller: Caller
    tokens: int
    reservation: Reservation | None = None


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
        fail_open=o.budgets == "open",
        retry_every_s=o.retry_every_s,
        spill_path=o.spill_path,
    )


class Engine:
    def __init__(
        self, config: RouterConfig, *, store: Store | None = None, encoder: PromptEncoder | None = None
    ):
        self.config = config
        self.specs: dict[str, ModelSpec] = {m.name: m for m in config.models}
        self.metrics = Metrics()
        self.encoder = encoder or PromptEncoder(config.encoder.model, cache_size=config.encoder.cache_size)
        self.policies = PolicySet(config, self.encoder)
        self.embedder = EmbedBatcher(self.encoder)
        self.store = store or build_store(config, self.metrics)
        self.health = self.store.health
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
        self.dispatcher = Dispatcher(self.adapters, self.health, self.metrics, config.dispatch)
        self._starting: asyncio.Task | None = None
        self._judging: set[asyncio.Task] = set()
        self._judge_rng = np.random.default_rng()

    # ---- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Load local models and the encoder in the background; requests await what they need."""
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
        await asyncio.gather(*(start_one(n, a) for n, a in self.adapters.items()))

    async def wait_started(self) -> None:
        await self.start()
        await asyncio.shield(self._starting)

    async def aclose(self) -> None:
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()
        if self._judging:  # ratings in flight are feedback: let them land
            await asyncio.wait(set(self._judging), timeout=self.config.dispatch.timeout_s)
        await self.embedder.aclose()
        for a in self.adapters.values():
            try:
                await a.aclose()
            except Exception as e:  # noqa: BLE001 - shutting down: log and keep closing the others
                log.warning("closing adapter failed: %s", e)
        await self.store.aclose()

    async def readiness(self) -> dict:
        ready = {}
        for name, a in self.adapters.items():
            try:
                ready[name] = bool(await a.health())
            except Exception:  # noqa: BLE001 - a failing health probe means "not ready", nothing more
                ready[name] = False
        state_ok = await self.store.ping()
        serving = any(ready.values())
        status = "unready" if not serving else "ok" if state_ok and not self.store.degraded else "degraded"
        return {
            "status": status,
            "models": ready,
            "unavailable": dict(self.unavailable),
            "state": {"kind": self.store.kind, "reachable": state_ok},
        }

    # ---- access --------------------------------------------------------------------------------
    async def authenticate(self, raw_key: str | None) -> Caller:
        return await self.access.authenticate(raw_key)

    # ---- routing -------------------------------------------------------------------------------
    def resolve(self, model: str) -> tuple[Policy | None, str]:
        """`router` / `router:<policy>` -> (policy, name); a configured model name -> (None, model)."""
        if model == "router" or model.startswith("router:"):
            name = model.partition(":")[2] or self.policies.default
            policy = self.policies.get(name)
            if policy is None:
                raise NotFound(
                    f"unknown routing policy {name!r}; available: {', '.join(self.policies.names)}",
                    param="model",
                    code="policy_not_found",
                )
            return policy, name
        if model not in self.specs:
            raise NotFound(
                f"the model {model!r} does not exist; use 'router' or one of: {', '.join(self.specs)}",
                param="model",
            )
        return None, model

    async def _features(self, policy: Policy, text: str, tokens: int) -> PromptBatch:
        batch = PromptBatch([text], prompt_tokens=np.array([tokens]))
        if policy.needs_embeddings:
            batch.embeddings = await self.embedder.encode(text)
        return batch

    async def plan(self, req: ChatCompletionRequest, caller: Caller | None = None) -> Plan:
        """Choose (and rank fallbacks) without calling any model. Raises a RouterError when nothing fits."""
        caller = caller or Caller()
        t0 = time.perf_counter()
        policy, name = self.resolve(req.model)
        if len(req.messages) > self.config.server.max_messages:
            raise BadRequest(f"too many messages (max {self.config.server.max_messages})", param="messages")
        text = C.routing_text(req.messages)
        tokens = C.prompt_tokens(req.messages)
        out_tokens = req.output_limit()
        names = [name] if policy is None else list(self.specs)
        status = await self.health.snapshot(names)
        blocked = C.exclusions(
            [self.specs[n] for n in names],
            unavailable=self.unavailable,
            status=status,
            prompt_tokens=tokens,
            output_tokens=out_tokens,
            capabilities=C.required_capabilities(req) if policy is not None else set(),
            key_models=caller.models,
        )
        room = await self.access.room(caller)
        if room is not None:
            for n in names:
                need = self.access.max_cost(self.specs[n], tokens, out_tokens)
                if need > room:
                    blocked[n].append(
                        Exclusion(
                            "budget",
                            f"{n} may cost up to ${need:.6g}; ${max(room, 0):.6g} of budget left",
                            BUDGET,
                        )
                    )
        cost = [self._predicted_cost(self.specs[n], tokens, out_tokens) for n in names]
        latency = [status[n].ewma_ms or self.specs[n].latency_ms for n in names]
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        if policy is None:
            decision = decide(names, [float("nan")], cost, latency, blocked=blocked, policy="")
            if not decision.ranked:
                raise _named_model_error(decision)
            return Plan(rid, decision, text, tokens, routed=False)

        online = policy.online
        if online:
            await self.store.bandits.refresh(name, policy)
        batch = await self._features(policy, text, tokens)
        quality = np.zeros(len(names))
        if policy.blocking:  # keep the event loop serving other requests meanwhile
            scored = (await asyncio.to_thread(policy.predict_quality, batch))[0]
        else:
            scored = policy.predict_quality(batch)[0]
        col = {m: j for j, m in enumerate(policy.models_)}
        for i, n in enumerate(names):
            if n in col:
                quality[i] = scored[col[n]]
            else:
                blocked[n].append(
                    Exclusion("not_scored", f"policy {name!r} has no prediction for {n}", SERVICE)
                )
        pcost = policy.predict_cost(batch)
        if pcost is not None:
            cost = [float(pcost[0, col[n]]) if n in col else cost[i] for i, n in enumerate(names)]
        plat = policy.predict_latency(batch)
        if plat is not None:
            latency = [float(plat[0, col[n]]) if n in col else latency[i] for i, n in enumerate(names)]
        weight = self.config.routing.cost_weight
        if req.routing is not None and req.routing.cost_weight is not None:
            weight = req.routing.cost_weight
        decision = decide(
            names,
            quality,
            cost,
            latency,
            constraints=C.to_constraints(req.routing),
            cost_weight=weight,
            blocked=blocked,
            policy=name,
        )
        if not decision.ranked:
            kind, message, param = decision.failure()
            if kind == REQUEST:
                raise ConstraintsUnsatisfiable(message, param=param)
            if kind == BUDGET:
                raise BudgetExceeded(message)
            raise ServiceUnavailable(message)
        propensity = self._explore(policy, batch, decision) if online else 1.0
        self.metrics.decision_latency.labels(name).observe(time.perf_counter() - t0)
        self.metrics.choices.labels(name, decision.chosen.model).inc()
        return Plan(
            rid,
            decision,
            text,
            tokens,
            routed=True,
            cascade=self._cascade_plan(policy, batch, decision),
            propensity=propensity,
        )

    @staticmethod
    def _explore(policy: Any, batch: PromptBatch, decision: Decision) -> float:
        """An online policy draws its arm among the eligible candidates; the others stay in
        fallback order. Returns the drawn arm's probability (logged for off-policy evaluation)."""
        by_model = {c.model: c for c in decision.ranked}
        every = {c.model: c.cost_usd for c in decision.excluded} | {
            m: c.cost_usd for m, c in by_model.items()
        }
        models = policy.models_
        cost = np.array([every.get(m, 0.0) for m in models])
        eligible = np.array([m in by_model for m in models])
        probs = policy.action_probabilities(batch, cost, eligible, decision.cost_weight)
        arm = policy.sample_arm(probs)
        chosen = by_model[models[arm]]
        decision.ranked.remove(chosen)
        decision.ranked.insert(0, chosen)
        return float(probs[arm])

    @staticmethod
    def _cascade_plan(policy: Policy, batch: PromptBatch, decision: Decision) -> Any:
        """A cascade policy's two-step plan, when both of its models are allowed for this request."""
        if not hasattr(policy, "cascade_plan"):
            return None
        cp = policy.cascade_plan(batch)[0]
        allowed = {c.model for c in decision.ranked}
        return cp if cp.first != cp.escalate_to and {cp.first, cp.escalate_to} <= allowed else None

    def _predicted_cost(self, spec: ModelSpec, prompt_tokens: int, out_tokens: int | None) -> float:
        expected = min(out_tokens, spec.expected_output_tokens) if out_tokens else spec.expected_output_tokens
        return spec.info().cost_usd(prompt_tokens, expected)

    # ---- answering -----------------------------------------------------------------------------
    @staticmethod
    def backend_request(req: ChatCompletionRequest) -> ChatRequest:
        return ChatRequest(
            messages=[m.model_dump(exclude_none=True) for m in req.messages],
            max_tokens=req.output_limit(),
            temperature=req.temperature,
            top_p=req.top_p,
            stop=req.stop,
            extra=req.passthrough(),
        )

    def _tried(self, plan: Plan) -> list[str]:
        return [c.model for c in plan.decision.ranked][: 1 + self.config.dispatch.max_fallbacks]

    async def _admit(self, req: ChatCompletionRequest, caller: Caller) -> tuple[_Admission, CacheHit | None]:
        tokens = C.prompt_tokens(req.messages) + (req.output_limit() or 0)
        await self.access.admit(caller, tokens)
        hit = await self.caching.lookup(caller.scope, req) if self.caching.wanted(req) else None
        return _Admission(caller, tokens), hit

    async def _reserve(self, adm: _Admission, plan: Plan, req: ChatCompletionRequest) -> None:
        # enough for the dearest model this request may end up on (the chosen one or a fallback),
        # or for both steps of a cascade
        def worst(m: str) -> float:
            return self.access.max_cost(self.specs[m], plan.prompt_tokens, req.output_limit())

        need = max(worst(m) for m in self._tried(plan))
        if plan.cascade is not None:
            need = max(need, worst(plan.cascade.first) + worst(plan.cascade.escalate_to))
        adm.reservation = await self.access.reserve(adm.caller, need)
        if adm.reservation is not None:
            await self.store.log.record_event(
                "reserve",
                {
                    "id": plan.request_id,
                    "key": adm.caller.name,
                    "usd": adm.reservation.usd,
                    "created": time.time(),
                },
            )

    async def chat(
        self, req: ChatCompletionRequest, caller: Caller | None = None
    ) -> tuple[ChatResult, Outcome]:
        caller = caller or Caller()
        adm, hit = await self._admit(req, caller)
        if hit is not None:
            outcome = await self._cached(req, adm, hit)
            return hit.result, outcome
        plan = await self.plan(req, caller)
        await self._reserve(adm, plan, req)
        try:
            if plan.cascade is not None:
                result, outcome = await self._run_cascade(plan, req)
            else:
                model, result, attempts, latency_ms = await self.dispatcher.chat(
                    self._tried(plan), self.backend_request(req)
                )
                outcome = self._outcome(
                    plan, model, result.usage, result.text, latency_ms, attempts, result.expert_usage
                )
        except BaseException as e:
            await self._failed(plan, adm, e)
            raise
        await self._settle(outcome, adm)
        self._judge_later(outcome, req, result.text)
        model = outcome.model
        if self.caching.wanted(req):
            await self.caching.store(caller.scope, req, model, result)
        return result, outcome

    async def _run_cascade(self, plan: Plan, req: ChatCompletionRequest) -> tuple[ChatResult, Outcome]:
        """Two-step dispatch: the cheap model answers; a scorer decides whether to ask the strong one.

        The first step falls back to the strong model if the cheap one fails. An escalation that
        fails leaves the first answer standing. Cost and latency add up over both steps.
        """
        cp = plan.cascade
        request = self.backend_request(req)
        rest = [m for m in self._tried(plan) if m not in (cp.first, cp.escalate_to)]
        order = [cp.first, cp.escalate_to, *rest][: 1 + self.config.dispatch.max_fallbacks]
        model, result, attempts, latency_ms = await self.dispatcher.chat(order, request)
        first = self._outcome(
            plan, model, result.usage, result.text, latency_ms, attempts, result.expert_usage
        )
        if model != cp.first:
            return result, first
        policy = self.policies.get(plan.decision.policy)
        escalate = await asyncio.to_thread(policy.should_escalate, plan.prompt, result.text)
        self.metrics.cascade.labels(plan.decision.policy, "escalated" if escalate else "accepted").inc()
        if not escalate:
            first.cascade = f"accepted:{cp.first}"
            return result, first
        try:
            model2, result2, attempts2, latency2 = await self.dispatcher.chat([cp.escalate_to], request)
        except RouterError:
            first.cascade = f"escalation_failed:{cp.first}"
            return result, first
        second = self._outcome(
            plan, model2, result2.usage, result2.text, latency2, attempts2, result2.expert_usage
        )
        second.cost_usd += first.cost_usd
        second.latency_ms += first.latency_ms
        second.cascade = f"escalated:{cp.first}"
        return result2, second

    async def stream(self, req: ChatCompletionRequest, caller: Caller | None = None) -> StreamHandle:
        """Commit to a model (falling back until one yields content), then hand out its chunks."""
        caller = caller or Caller()
        adm, hit = await self._admit(req, caller)
        if hit is not None:
            outcome = await self._cached(req, adm, hit)
            handle = StreamHandle(outcome.plan, hit.model, [], _replay(hit.result), outcome, cache=hit)
            return handle
        plan = await self.plan(req, caller)
        await self._reserve(adm, plan, req)
        try:
            opened = await self.dispatcher.open_stream(self._tried(plan), self.backend_request(req))
        except BaseException as e:
            await self._failed(plan, adm, e)
            raise
        handle = StreamHandle(plan, opened.model, list(opened.attempts.fallbacks))
        handle.chunks = self._relay(handle, opened, adm, req)
        return handle

    async def _relay(
        self, handle: StreamHandle, opened: OpenStream, adm: _Admission, req: ChatCompletionRequest
    ) -> AsyncIterator[ChatChunk]:
        text: list[str] = []
        usage: Usage | None = None
        finish: str | None = None
        experts = None
        err: BackendError | None = None
        cancelled = False
        try:
            for chunk in opened.head:
                text.append(chunk.delta.get("content") or "")
                usage, finish = chunk.usage or usage, chunk.finish_reason or finish
                yield chunk
            async for chunk in opened.rest:
                text.append(chunk.delta.get("content") or "")
                usage, finish = chunk.usage or usage, chunk.finish_reason or finish
                experts = chunk.expert_usage or experts
                yield chunk
        except BackendError as e:
            err = e
            raise
        except (asyncio.CancelledError, GeneratorExit):
            cancelled = True
            raise
        finally:
            # spend is settled whatever happened: tokens produced before a failure or a client
            # disconnect were paid for
            await aclose_quietly(opened.rest)
            latency_ms = await self.dispatcher.finish_stream(opened, err, cancelled)
            answer = "".join(text)
            handle.outcome = self._outcome(
                handle.plan, opened.model, usage, answer, latency_ms, opened.attempts, experts
            )
            status = "error" if err else "cancelled" if cancelled else "ok"
            await self._settle(handle.outcome, adm, status=status, error=err.message if err else None)
            if status == "ok":
                self._judge_later(handle.outcome, req, answer)
            if status == "ok" and self.caching.wanted(req):
                result = ChatResult({"role": "assistant", "content": answer}, finish, handle.outcome.usage)
                await self.caching.store(adm.caller.scope, req, opened.model, result)

    # ---- accounting ----------------------------------------------------------------------------
    def _outcome(
        self,
        plan: Plan,
        model: str,
        usage: Usage | None,
        text: str,
        latency_ms: float,
        attempts: Attempts,
        experts: dict[str, list[int]] | None,
    ) -> Outcome:
        if usage is None:  # backend did not report usage: estimate from the texts
            usage = Usage(plan.prompt_tokens, C.estimate_tokens(text))
        cost = self.specs[model].info().cost_usd(usage.prompt_tokens, usage.completion_tokens)
        return Outcome(plan, model, usage, cost, latency_ms, list(attempts.fallbacks), experts)

    async def _settle(
        self, o: Outcome, adm: _Admission, status: str = "ok", error: str | None = None
    ) -> None:
        await self.access.settle(adm.reservation, o.cost_usd)
        await self.access.settle_tokens(adm.caller, adm.tokens, o.usage.total_tokens)
        if adm.reservation is not None:
            o.budget_left_usd = await self.access.room(adm.caller)
        m = self.metrics
        m.tokens.labels(o.model, "prompt").inc(o.usage.prompt_tokens)
        m.tokens.labels(o.model, "completion").inc(o.usage.completion_tokens)
        m.cost.labels(o.model).inc(o.cost_usd)
        if o.cache is None:
            m.model_latency.labels(o.model).observe(o.latency_ms / 1000)
        m.observe_experts(o.model, o.expert_usage)
        pred = o.predicted
        await self.store.log.record_request(
            RequestRecord(
                id=o.request_id,
                model=o.model,
                policy=o.plan.policy,
                prompt=o.plan.prompt,
                prompt_tokens=o.usage.prompt_tokens,
                completion_tokens=o.usage.completion_tokens,
                cost_usd=o.cost_usd,
                latency_ms=o.latency_ms,
                status=status,
                error=error,
                key=adm.caller.name,
                fallbacks=o.fallbacks,
                predicted={
                    "quality": pred.quality if pred is not None and o.plan.routed else None,
                    "cost_usd": None if pred is None else pred.cost_usd,
                    "latency_ms": None if pred is None else pred.latency_ms,
                },
                cost_weight=o.plan.decision.cost_weight if o.plan.routed else None,
                # the probability of the answering model: known only if it was the policy's choice
                propensity=o.plan.propensity
                if o.plan.routed and not o.fallbacks and o.plan.decision.chosen.model == o.model
                else None,
                reserved_usd=adm.reservation.usd if adm.reservation else None,
                cache=o.cache.kind if o.cache else None,
            )
        )

    async def _failed(self, plan: Plan, adm: _Admission, err: BaseException) -> None:
        await self.access.settle(adm.reservation, 0.0)  # nothing was produced: refund
        await self.access.settle_tokens(adm.caller, adm.tokens, plan.prompt_tokens)
        message = err.message if isinstance(err, RouterError) else type(err).__name__
        await self.store.log.record_request(
            RequestRecord(
                id=plan.request_id,
                model=None,
                policy=plan.policy,
                prompt=plan.prompt,
                prompt_tokens=plan.prompt_tokens,
                status="error" if isinstance(err, RouterError) else "cancelled",
                error=message,
                key=adm.caller.name,
                fallbacks=self._tried(plan),
                reserved_usd=adm.reservation.usd if adm.reservation else None,
            )
        )

    async def _cached(self, req: ChatCompletionRequest, adm: _Admission, hit: CacheHit) -> Outcome:
        text = C.routing_text(req.messages)
        plan = Plan(f"chatcmpl-{uuid.uuid4().hex}", Decision("", 0.0, [], []), text, adm.tokens, routed=False)
        usage = hit.result.usage or Usage(C.prompt_tokens(req.messages), C.estimate_tokens(hit.result.text))
        outcome = Outcome(plan, hit.model, usage, 0.0, 0.0, cache=hit)
        await self._settle(outcome, adm)
        return outcome

    async def feedback(
        self, request_id: str, rating: float, source: str = "user", comment: str | None = None
    ):
        rec = await self.store.log.get_request(request_id)
        if rec is None:
            raise NotFound(
                f"no response with id {request_id!r} is known", param="id", code="response_not_found"
            )
        fb = FeedbackRecord(request_id, rating, source=source, model=rec.model, comment=comment)
        await self.store.log.record_feedback(fb)
        self.metrics.feedback.labels(rec.model or "none", source).inc()
        await self._learn(rec, rating)
        return fb

    # ---- automatic judge -----------------------------------------------------------------------
    def _judge_later(self, o: Outcome, req: ChatCompletionRequest, answer: str) -> None:
        """Rate a routed answer in the background (config `judge`); the rating is feedback."""
        j = self.config.judge
        reference = req.routing.reference if req.routing is not None else None
        if j.mode == "off" or not o.plan.routed or (j.mode != "llm" and reference is None):
            return
        if j.sample_rate < 1.0 and self._judge_rng.random() >= j.sample_rate:
            return
        task = asyncio.create_task(self._judge(o, answer, reference))
        self._judging.add(task)
        task.add_done_callback(self._judging.discard)

    async def _judge(self, o: Outcome, answer: str, reference: str | None) -> None:
        from router import judge

        mode = self.config.judge.mode
        try:
            if mode == "exact":
                rating = judge.exact(answer, reference or "")
            elif mode == "contains":
                rating = judge.contains(answer, reference or "")
            else:
                rating = await self._llm_grade(o, answer)
            if rating is not None:
                await self.feedback(o.request_id, rating, source="judge")
        except Exception as e:  # noqa: BLE001 - a judge failure must never surface to a client
            self.metrics.judge_failures.labels(mode).inc()
            log.warning("judging %s failed: %s", o.request_id, getattr(e, "message", type(e).__name__))

    async def _llm_grade(self, o: Outcome, answer: str) -> float | None:
        from router import judge

        name = self.config.judge.model
        ask = ChatRequest(
            messages=[{"role": "user", "content": judge.judge_prompt(o.plan.prompt, answer)}],
            max_tokens=8,
            temperature=0.0,
        )
        model, result, _, latency_ms = await self.dispatcher.chat([name], ask)
        usage = result.usage or Usage(
            C.estimate_tokens(ask.messages[0]["content"]), C.estimate_tokens(result.text)
        )
        cost = self.specs[model].info().cost_usd(usage.prompt_tokens, usage.completion_tokens)
        self.metrics.cost.labels(model).inc(cost)
        # the judge's own spend goes to the ledger like any call, under its own id
        await self.store.log.record_request(
            RequestRecord(
                id=f"judge-{o.request_id}",
                model=model,
                policy=None,
                prompt=f"[judge] {o.request_id}",
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                cost_usd=cost,
                latency_ms=latency_ms,
                key="judge",
            )
        )
        grade = judge.parse_grade(result.text)
        if grade is None:
            self.metrics.judge_failures.labels("llm_unparsable").inc()
        return grade

    async def _learn(self, rec: RequestRecord, rating: float) -> None:
        """Feed a rating to the online policy that routed the request (shared through the store)."""
        policy = self.policies.get(rec.policy) if rec.policy else None
        if policy is None or not policy.online or rec.model not in policy.models_:
            return
        batch = await self._features(policy, rec.prompt, rec.prompt_tokens)
        x, y = policy.observation(batch, rec.model, rating)
        await self.store.bandits.record(rec.policy, policy, rec.model, x, y)
        self.metrics.policy_updates.labels(rec.policy, rec.model).inc()


def _named_model_error(decision: Decision) -> RouterError:
    (cand,) = decision.excluded
    first = cand.excluded[0]
    if first.code == "context_window":
        return ContextTooLong(first.message, param="messages")
    if first.code == "key_models":
        return Forbidden(first.message, param="model")
    if first.kind == BUDGET:
        return BudgetExceeded(first.message)
    if first.kind == REQUEST:
        return BadRequest(first.message, param=first.param)
    return ServiceUnavailable(first.message, code=first.code)


async def _replay(result: ChatResult) -> AsyncIterator[ChatChunk]:
    yield ChatChunk({"role": "assistant", "content": result.text}, None)
    yield ChatChunk({}, result.finish_reason or "stop", usage=result.usage)
