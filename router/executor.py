"""Plan -> answer: dispatch a planned request (plain, streamed, or as a two-step cascade).

The executor builds what each candidate is sent (the request's allowlisted parameters and its
output cap), runs the dispatcher under the request's one deadline, and turns what came back into
an `Outcome` (model, usage, cost, latency). It moves no money: the account settles outcomes.

A committed stream is a `LiveStream`, and its lifecycle is the executor's: the relay hands out its
chunks, keeps what settlement needs (text, usage, finish reason) and ends the stream when the
upstream stalls longer than the deadline. `end` runs exactly once when the stream ends for any
reason — completed, failed, abandoned by its consumer, cut by shutdown — without awaiting anything,
so a cancelled consumer cannot skip it: the outcome is known and the model's capacity slot is free
from then on. `finished` is the rest, awaited by whoever accounts for the stream: the upstream
closed (a dropped client stops the model) and the model's health recorded.

Model successes are held for the request's settlement (`Outcome.successes`), which records them in
the same round trip as the spend.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from adapters import BackendError, ChatChunk, ChatRequest, ChatResult, EmbedResult, Usage
from adapters.errors import BackendTimeout
from router import constraints as C
from router.caching import CacheHit
from router.config import ModelSpec, RouterConfig
from router.dispatch import Attempts, Dispatcher, OpenStream, aclose_quietly, tried
from router.errors import RouterError
from router.metrics import Metrics
from router.planner import Plan
from router.policy_set import PolicySet
from router.schemas import ChatCompletionRequest

log = logging.getLogger("moe_router")


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
    spilled: list[str] = field(default_factory=list)  # `model:reason` skipped at capacity
    cache: CacheHit | None = None
    budget_left_usd: float | None = None
    cascade: str | None = None  # "accepted:<first>" | "escalated:<first>" | "escalation_failed:<first>"
    successes: list[tuple[str, float]] = field(default_factory=list)  # (model, ms): for the settlement

    @property
    def request_id(self) -> str:
        return self.plan.request_id

    @property
    def predicted(self):
        return next((c for c in self.plan.decision.ranked if c.model == self.model), None)


@dataclass(eq=False)
class LiveStream:
    """A committed stream and what it has produced so far."""

    executor: Executor
    handle: StreamHandle
    opened: OpenStream
    text: list[str] = field(default_factory=list)
    usage: Usage | None = None
    finish_reason: str | None = None
    expert_usage: dict[str, list[int]] | None = None
    error: BackendError | None = None
    completed: bool = False
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def status(self) -> str:
        return "ok" if self.completed else "error" if self.error else "client_closed"

    @property
    def failure(self) -> str | None:
        """What the ledger says of a stream that failed."""
        return None if self.error is None else f"{self.opened.model} failed mid-stream"

    def answer(self) -> ChatResult:
        assert self.handle.outcome is not None
        message = {"role": "assistant", "content": "".join(self.text)}
        return ChatResult(message, self.finish_reason, self.handle.outcome.usage)

    def take(self, chunk: ChatChunk) -> None:
        self.text.append(chunk.delta.get("content") or "")
        self.usage = chunk.usage or self.usage
        self.finish_reason = chunk.finish_reason or self.finish_reason
        self.expert_usage = chunk.expert_usage or self.expert_usage

    def end(self) -> None:
        """Idempotent and synchronous: safe in any `finally`, cancelled or not."""
        self.executor.end(self)


@dataclass
class StreamHandle:
    """A committed stream. `model` is known before the first byte goes out; `outcome` after the end."""

    plan: Plan
    model: str
    fallbacks: list[str]
    chunks: AsyncIterator[ChatChunk] | None = None
    outcome: Outcome | None = None
    cache: CacheHit | None = None
    live: LiveStream | None = None
    done: asyncio.Future | None = None  # resolves once the stream is accounted for (settled)
    spilled: list[str] = field(default_factory=list)  # `model:reason` skipped at capacity

    def finish(self) -> None:
        """End the stream if its consumer never will (e.g. the response was never sent)."""
        if self.live is not None:
            self.live.end()


# parameters only models with the capability receive (config `capabilities`): a reasoning effort
# sent to a model without reasoning is a 400 at OpenAI
CAPABILITY_PARAMS = {"reasoning_effort": "reasoning", "thinking": "thinking"}


MIN_THINKING_BUDGET = 1024  # Anthropic's smallest budget_tokens


def thinking_within(thinking: dict, cap: int) -> dict | None:
    """Anthropic's `thinking` as a model with output cap `cap` takes it: `adaptive` as a budget of
    half the cap (models that predate adaptive thinking refuse it), a budget below the cap (as the
    API requires; the cap may have been lowered to the model's limit); None when the cap leaves no
    room to think."""
    if thinking.get("type") not in ("enabled", "adaptive"):
        return thinking
    budget = thinking.get("budget_tokens") or cap // 2
    budget = min(budget, cap - 1)
    if budget < MIN_THINKING_BUDGET:
        return None
    return {"type": "enabled", "budget_tokens": budget}


def _marked(m: dict) -> bool:
    return "cache_control" in m or (
        isinstance(m.get("content"), list) and any("cache_control" in p for p in m["content"])
    )


def _unmarked(m: dict) -> dict:
    """`m` (a message or a tool) without prompt-cache marks, on it or on its content parts."""
    m = {k: v for k, v in m.items() if k != "cache_control"}
    if isinstance(m.get("content"), list):
        m["content"] = [{k: v for k, v in p.items() if k != "cache_control"} for p in m["content"]]
    return m


def _for_capabilities(messages: list[dict], cache_marks: bool, thinking: bool) -> list[dict]:
    """`messages` as a model is sent them: without prompt-cache marks (`cache_control` on a tool
    result or text parts) unless it has the `cache_control` capability, without an assistant's
    `thinking_blocks` unless it has `thinking`. The same list when there is nothing to take out."""
    strip_marks = not cache_marks and any(_marked(m) for m in messages)
    strip_thinking = not thinking and any("thinking_blocks" in m for m in messages)
    if not (strip_marks or strip_thinking):
        return messages
    out = []
    for m in messages:
        if strip_thinking and "thinking_blocks" in m:
            m = {k: v for k, v in m.items() if k != "thinking_blocks"}
        if strip_marks and _marked(m):
            m = _unmarked(m)
        out.append(m)
    return out


class Executor:
    def __init__(self, config: RouterConfig, dispatcher: Dispatcher, policies: PolicySet, metrics: Metrics):
        self.config = config
        self.specs: dict[str, ModelSpec] = {m.name: m for m in config.models}
        self.dispatcher = dispatcher
        self.policies = policies
        self.metrics = metrics
        self.streams: set[LiveStream] = set()  # committed and not yet ended

    def request_for(self, req: ChatCompletionRequest, plan: Plan) -> Callable[[str], ChatRequest]:
        """What each candidate is sent: the messages, sampling options, the allowlisted parameters
        and the output cap its reservation assumed (so an answer never costs more than reserved)."""
        messages = [m.model_dump(exclude_none=True) for m in req.messages]
        extra = req.forwarded() | req.extra_params()
        variants: dict[tuple[bool, bool], list[dict]] = {}

        def build(model: str) -> ChatRequest:
            caps = self.specs[model].capabilities if model in self.specs else ()
            key = ("cache_control" in caps, "thinking" in caps)
            if key not in variants:
                variants[key] = _for_capabilities(messages, *key)
            sent = {
                k: v for k, v in extra.items() if k not in CAPABILITY_PARAMS or CAPABILITY_PARAMS[k] in caps
            }
            if "tools" in sent and "cache_control" not in caps and any(_marked(t) for t in sent["tools"]):
                sent["tools"] = [_unmarked(t) for t in sent["tools"]]
            if "thinking" in sent:
                sent.pop("reasoning_effort", None)  # a thinking model is told by `thinking`
                thinking = thinking_within(sent["thinking"], plan.output_caps[model])
                if thinking is None:
                    sent.pop("thinking")
                else:
                    sent["thinking"] = thinking
            return ChatRequest(
                messages=variants[key],
                max_tokens=plan.output_caps[model],
                temperature=req.temperature,
                top_p=req.top_p,
                stop=req.stop,
                extra=sent,
            )

        return build

    def tokens_for(self, plan: Plan) -> Callable[[str], int] | None:
        """What a dispatch to each candidate counts against its `tpm_limit` (prompt + expected output)."""
        capacity = self.dispatcher.capacity
        if capacity is None:
            return None
        return lambda m: capacity.need(m, plan.prompt_tokens, plan.output_caps.get(m))

    def outcome(
        self,
        plan: Plan,
        model: str,
        usage: Usage | None,
        text: str,
        latency_ms: float,
        attempts: Attempts,
        experts: dict[str, list[int]] | None,
    ) -> Outcome:
        """What one model's answer used; its expert selections (local MoE) are counted here, the
        one step every answer passes — plain, cascade step or stream, completed or cut."""
        self.metrics.observe_experts(model, experts)
        if usage is None:  # backend did not report usage: estimate from the texts
            usage = Usage(plan.prompt_tokens, C.estimate_tokens(text))
        cost = self.specs[model].cost_usd(usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens)
        return Outcome(
            plan,
            model,
            usage,
            cost,
            latency_ms,
            list(attempts.fallbacks),
            experts,
            attempts.spills(),
            successes=list(attempts.successes),
        )

    async def chat(self, plan: Plan, req: ChatCompletionRequest) -> tuple[ChatResult, Outcome]:
        deadline = self.dispatcher.deadline()
        if plan.cascade is not None:
            return await self._cascade(plan, req, deadline)
        model, result, attempts, latency_ms = await self.dispatcher.chat(
            plan.candidates(),
            self.request_for(req, plan),
            deadline=deadline,
            request_id=plan.request_id,
            tokens=self.tokens_for(plan),
            held=True,
            seen=plan.breakers,
        )
        return result, self.outcome(
            plan, model, result.usage, result.text, latency_ms, attempts, result.expert_usage
        )

    async def _cascade(
        self, plan: Plan, req: ChatCompletionRequest, deadline: float
    ) -> tuple[ChatResult, Outcome]:
        """Two-step dispatch: the cheap model answers; a scorer decides whether to ask the strong one.

        The first step falls back to the strong model if the cheap one fails. An escalation that
        fails leaves the first answer standing. Cost and latency add up over both steps, which
        share the request's deadline.
        """
        cp = plan.cascade
        request = self.request_for(req, plan)
        rest = [m for m in plan.candidates() if m not in (cp.first, cp.escalate_to)]
        order = tried([cp.first, cp.escalate_to, *rest], plan.max_fallbacks)
        model, result, attempts, latency_ms = await self.dispatcher.chat(
            order,
            request,
            deadline=deadline,
            request_id=plan.request_id,
            tokens=self.tokens_for(plan),
            held=True,
            seen=plan.breakers,
        )
        first = self.outcome(
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
            model2, result2, attempts2, latency2 = await self.dispatcher.chat(
                [cp.escalate_to],
                request,
                deadline=deadline,
                request_id=plan.request_id,
                tokens=self.tokens_for(plan),
                held=True,
                seen=plan.breakers,
            )
        except RouterError:
            first.cascade = f"escalation_failed:{cp.first}"
            return result, first
        second = self.outcome(
            plan, model2, result2.usage, result2.text, latency2, attempts2, result2.expert_usage
        )
        second.spilled = first.spilled + second.spilled
        second.successes = first.successes + second.successes
        second.cost_usd += first.cost_usd
        second.latency_ms += first.latency_ms
        second.cascade = f"escalated:{cp.first}"
        return result2, second

    async def embed(
        self, plan: Plan, texts: list[str], dimensions: int | None
    ) -> tuple[EmbedResult, Outcome]:
        model, result, attempts, latency_ms = await self.dispatcher.embed(
            plan.candidates(),
            texts,
            dimensions,
            request_id=plan.request_id,
            tokens=plan.prompt_tokens,
            held=True,
            seen=plan.breakers,
        )
        usage = result.usage if result.usage.prompt_tokens else Usage(plan.prompt_tokens, 0)
        cost = self.specs[model].cost_usd(usage.prompt_tokens, 0)
        return result, Outcome(
            plan,
            model,
            usage,
            cost,
            latency_ms,
            list(attempts.fallbacks),
            spilled=attempts.spills(),
            successes=list(attempts.successes),
        )

    # ---- streams -------------------------------------------------------------------------------
    async def open_stream(self, plan: Plan, req: ChatCompletionRequest) -> StreamHandle:
        """Commit to the first candidate that yields content before the deadline."""
        opened = await self.dispatcher.open_stream(
            plan.candidates(),
            self.request_for(req, plan),
            request_id=plan.request_id,
            tokens=self.tokens_for(plan),
            seen=plan.breakers,
        )
        handle = StreamHandle(
            plan, opened.model, list(opened.attempts.fallbacks), spilled=opened.attempts.spills()
        )
        handle.live = LiveStream(self, handle, opened)
        handle.chunks = self.relay(handle.live)
        self.streams.add(handle.live)
        return handle

    def end(self, live: LiveStream) -> None:
        """The stream ended (once; synchronous): its outcome is what it produced (the final usage
        chunk needs it at once), and its model's capacity slot is free."""
        if live.ended.is_set():
            return
        live.ended.set()
        self.streams.discard(live)
        opened = live.opened
        latency_ms = (time.perf_counter() - opened.started) * 1000
        outcome = self.outcome(
            live.handle.plan,
            opened.model,
            live.usage,
            "".join(live.text),
            latency_ms,
            opened.attempts,
            live.expert_usage,
        )
        live.handle.outcome = outcome
        self.dispatcher.release(opened.attempts, outcome.usage.total_tokens)

    async def finished(self, live: LiveStream) -> Outcome:
        """Once the stream has ended: close the upstream (a dropped client stops the model) and
        record its model's health; the outcome, with its success held for the settlement."""
        await live.ended.wait()
        outcome = live.handle.outcome
        assert outcome is not None
        try:
            await aclose_quietly(live.opened.rest)
            await self.dispatcher.finish_stream(
                live.opened,
                live.error,
                cancelled=live.status == "client_closed",
                request_id=outcome.request_id,
                held=True,
            )
        except Exception:  # noqa: BLE001 - health bookkeeping must not keep the spend from settling
            log.exception("request %s: finishing the stream failed", outcome.request_id)
        outcome.successes = list(live.opened.attempts.successes)
        return outcome

    def end_all(self) -> None:
        """Shutdown: end the streams it cut (their accounting then runs)."""
        for live in list(self.streams):
            live.end()

    async def relay(self, live: LiveStream) -> AsyncIterator[ChatChunk]:
        """The stream's chunks; a stall longer than `dispatch.timeout_s` ends it with a timeout."""
        stall = self.config.dispatch.timeout_s
        try:
            for chunk in live.opened.head:
                live.take(chunk)
                yield chunk
            rest = live.opened.rest
            while True:
                try:
                    async with asyncio.timeout(stall):
                        chunk = await anext(rest, None)
                except TimeoutError:
                    raise BackendTimeout(f"the stream stalled for {stall:g} s") from None
                if chunk is None:
                    break
                live.take(chunk)
                yield chunk
            live.completed = True
        except BackendError as e:
            live.error = e
            raise
        finally:
            live.end()
