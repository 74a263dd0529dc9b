"""Request -> plan: which model answers, the fallback order, and what the answer may cost.

The planner calls no model and moves no money: it reads model health and the caller's remaining
budget, asks the policy for predictions, and applies the one decision rule
(`policies.decision.decide`). What it returns is everything the account (reservation) and the
executor (dispatch) need: the ranked candidates, each one's output cap, and the most each may cost.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from policies.base import Policy, PromptBatch
from policies.capabilities import CascadeRouter, OnlineRouter, implements
from policies.decision import BUDGET, REQUEST, SERVICE, Decision, Exclusion, decide
from router import constraints as C
from router import tracing
from router.access import Access, Caller
from router.account import RequestHealth, Seen
from router.aliases import Aliases, label
from router.config import ModelSpec, RouterConfig
from router.dispatch import tried
from router.embed_batcher import EmbedBatcher
from router.errors import (
    BadRequest,
    BudgetExceeded,
    ConstraintsUnsatisfiable,
    ContextTooLong,
    Forbidden,
    ForbiddenParameter,
    NotFound,
    RouterError,
    ServiceUnavailable,
    UnknownParameter,
)
from router.metrics import Metrics
from router.params import ParamError, models_allowing, screen
from router.policy_set import PolicySet
from router.schemas import ChatCompletionRequest
from router.state import StateUnavailable
from router.state.bandit import BanditState
from router.state.sessions import Sessions

if TYPE_CHECKING:
    from policies.cascade import CascadePlan

log = logging.getLogger("moe_router.planner")


def new_request_id() -> str:
    """Response ids are unguessable (128 random bits): knowing one is what lets a caller rate it."""
    return f"chatcmpl-{secrets.token_hex(16)}"


# One request id, shown with each API's own prefix: chatcmpl- (chat), cmpl- (completions), msg_
# (Anthropic messages), resp_ (responses), embd- (embeddings); feedback accepts any of them.
ID_PREFIXES = ("chatcmpl-", "cmpl-", "msg_", "resp_", "embd-")


def external_id(request_id: str, prefix: str) -> str:
    return prefix + request_id.removeprefix("chatcmpl-")


def internal_id(any_id: str) -> str:
    for p in ID_PREFIXES:
        if any_id.startswith(p):
            return "chatcmpl-" + any_id[len(p) :]
    return any_id


@dataclass
class Plan:
    """A routing decision for one request, before dispatch."""

    request_id: str
    decision: Decision
    prompt: str  # the routing text (in memory only; the log keeps what `log.prompts` says)
    prompt_tokens: int  # estimate (predictions, context windows)
    routed: bool  # False when the caller named a model
    cascade: CascadePlan | None = None  # when the policy asks for a two-step dispatch
    propensity: float | None = None  # probability the policy gave its chosen model (1.0 if deterministic)
    output_caps: dict[str, int] = field(default_factory=dict)  # per candidate: max_tokens sent upstream
    max_costs: dict[str, float] = field(default_factory=dict)  # per candidate: the most it may cost
    learn: dict[str, Any] | None = None  # online policies: what a rating of this request teaches them
    max_fallbacks: int = 2
    conversation: str | None = None  # affinity key: the conversation this request continues
    affinity: str | None = None  # kept | switched | new (routed requests with affinity on)
    asked_output: int | None = None  # the request's max_tokens (a model's output cap may be lower)
    alias: str | None = None  # the vendor model name asked for, when it was routed as an alias
    breakers: Seen | None = None  # the breakers this plan saw closed (its dispatch's first go-aheads)

    @property
    def policy(self) -> str | None:
        return self.decision.policy if self.routed else None

    def candidates(self) -> list[str]:
        """The models dispatch may try, in order (the chosen one, then its fallbacks)."""
        return tried([c.model for c in self.decision.ranked], self.max_fallbacks)

    def reservation_usd(self) -> float:
        """Enough for the dearest model this request may end up on, or both steps of a cascade."""
        need = max(self.max_costs[m] for m in self.candidates())
        if self.cascade is not None:
            need = max(need, self.max_costs[self.cascade.first] + self.max_costs[self.cascade.escalate_to])
        return need


@dataclass(frozen=True)
class Checked:
    """A request `Planner.check` let through: `accepting`, the models that take its extra
    parameters (None: it has none, every model does)."""

    accepting: set[str] | None


class Planner:
    def __init__(
        self,
        config: RouterConfig,
        policies: PolicySet,
        embedder: EmbedBatcher,
        health: RequestHealth,
        access: Access,
        bandits: BanditState,
        sessions: Sessions,
        metrics: Metrics,
        unavailable: Mapping[str, str],
    ):
        self.config = config
        self.specs: dict[str, ModelSpec] = {m.name: m for m in config.chat_models()}
        self.embedders: dict[str, ModelSpec] = {m.name: m for m in config.models if m.kind == "embedding"}
        self.policies = policies
        self.embedder = embedder
        self.health = health
        self.access = access
        self.bandits = bandits
        self.metrics = metrics
        self.unavailable = unavailable
        self.sessions = sessions
        self.margin = config.routing.affinity.margin
        self._allow = {m.name: frozenset(m.allow_params) for m in self.specs.values()}
        self._strip = C.compile_strip(config.routing.strip_patterns)
        self.aliases = Aliases(config.model_aliases)
        self._allowed = frozenset(p for params in self._allow.values() for p in params)

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
        if model in self.embedders:
            raise BadRequest(
                f"{model!r} is an embedding model: use it with /v1/embeddings",
                param="model",
                code="wrong_model_kind",
            )
        if model not in self.specs:
            raise NotFound(
                f"the model {model!r} does not exist; use 'router' or one of: {', '.join(self.specs)}",
                param="model",
            )
        return None, model

    def check(self, req: ChatCompletionRequest) -> Checked:
        """Refuse what no backend may receive (400, nothing sent anywhere); the models that accept
        the request's extra parameters."""
        if len(req.messages) > self.config.server.max_messages:
            raise BadRequest(f"too many messages (max {self.config.server.max_messages})", param="messages")
        try:
            if not req._screened:  # an in-process caller (router.sdk): the edge did not screen it
                dropped = screen(req, allowed=self._allowed, reject=self.config.params.unknown == "reject")
                if dropped:
                    log.info("dropped unknown parameters %s", ", ".join(dropped))
            return Checked(models_allowing(req.extra_params(), self._allow))
        except ParamError as e:
            cls = ForbiddenParameter if e.forbidden else UnknownParameter
            raise cls(str(e), param=e.name) from None

    async def plan_embedding(self, model: str, texts: list[str], caller: Caller) -> Plan:
        """The one model an embeddings request names, checked like a named chat model (availability,
        circuit, key permissions, budget), with the most the request may cost."""
        spec = self.embedders.get(model)
        if spec is None:
            if model in self.specs or model == "router" or model.startswith("router:"):
                raise BadRequest(
                    f"{model!r} does not embed; embedding models: {', '.join(self.embedders) or 'none configured'}",
                    param="model",
                    code="wrong_model_kind",
                )
            raise NotFound(f"the embedding model {model!r} does not exist", param="model")
        status, seen = await self.health.view([model])
        longest = max(C.estimate_tokens(t) for t in texts)
        blocked = C.exclusions(
            [spec],
            unavailable=self.unavailable,
            status=status,
            prompt_tokens=longest,
            output_tokens=None,
            capabilities=set(),
            key_models=caller.models,
        )
        # upper bound: one token per UTF-8 byte (see constraints.prompt_bytes)
        bound = sum(len(t.encode("utf-8", "replace")) for t in texts)
        max_costs = {model: spec.cost_usd(bound, 0)}
        await self._budget_exclusions(caller, max_costs, blocked)
        tokens = sum(C.estimate_tokens(t) for t in texts)
        cost = [spec.cost_usd(tokens, 0)]
        latency = [status[model].ewma_ms or spec.latency_ms]
        plan = Plan(
            new_request_id(), Decision("", 0.0, [], []), "", tokens, routed=False, max_costs=max_costs
        )
        plan.output_caps = {model: 0}
        plan.breakers = seen
        plan.decision = decide([model], [None], cost, latency, blocked=blocked, policy="")
        if not plan.decision.ranked:
            raise _named_model_error(plan.decision)
        return plan

    async def _budget_exclusions(
        self, caller: Caller, max_costs: dict[str, float], blocked: dict[str, list[Exclusion]]
    ) -> None:
        """Exclude the models whose most expensive answer the caller's remaining budget cannot cover."""
        room = await self.access.room(caller)
        if room is None:
            return
        for n, need in max_costs.items():
            if need > room:
                blocked[n].append(
                    Exclusion(
                        "budget",
                        f"{n} may cost up to ${need:.6g}; ${max(room, 0):.6g} of budget left",
                        BUDGET,
                    )
                )

    async def features(self, policy: Policy, text: str, tokens: int) -> PromptBatch:
        batch = PromptBatch([text], prompt_tokens=np.array([tokens]))
        if policy.needs_embeddings:
            batch.embeddings = await self.embedder.encode(text)
        return batch

    async def plan(
        self,
        req: ChatCompletionRequest,
        caller: Caller | None = None,
        session: str | None = None,
        checked: Checked | None = None,
    ) -> Plan:
        """Choose (and rank fallbacks) without calling any model. Raises a RouterError when nothing fits.

        `session`: the client's conversation id (`x-moe-router-session`), for affinity; `checked`:
        what `check` said of `req`, if the caller asked it already."""
        caller = caller or Caller()
        t0 = time.perf_counter()
        alias = None
        if (
            req.model not in self.specs
            and req.model != "router"
            and not req.model.startswith("router:")
            and req.model not in self.embedders
        ):
            alias = self.aliases.match(req.model)
        policy, name = self.resolve(alias.model if alias is not None else req.model)
        accepting = (checked or self.check(req)).accepting
        text = C.routing_text(req.messages, strip=self._strip)
        tokens = C.request_tokens(req)
        bound, images = C.prompt_bytes(req), C.image_count(req.messages)
        out_tokens = req.output_limit()
        names = [name] if policy is None else list(self.specs)
        status, seen = await self.health.view(names)
        blocked = C.exclusions(
            [self.specs[n] for n in names],
            unavailable=self.unavailable,
            status=status,
            prompt_tokens=tokens,
            output_tokens=out_tokens,
            capabilities=C.required_capabilities(req) if policy is not None else set(),
            key_models=caller.models,
        )
        if accepting is not None:
            for n in names:
                if n not in accepting:
                    extra = ", ".join(sorted(req.extra_params()))
                    blocked[n].append(Exclusion("params", f"{n} does not accept the parameter(s) {extra}"))
        caps = {
            n: C.output_cap(self.specs[n], self.access.output_cap(self.specs[n], out_tokens), tokens)
            for n in names
        }
        max_costs = {n: self.access.max_cost(self.specs[n], bound, images, out_tokens) for n in names}
        await self._budget_exclusions(caller, max_costs, blocked)
        cost = [self._predicted_cost(self.specs[n], tokens, out_tokens) for n in names]
        latency = [status[n].ewma_ms or self.specs[n].latency_ms for n in names]
        plan = Plan(
            new_request_id(),
            Decision("", 0.0, [], []),
            text,
            tokens,
            routed=policy is not None,
            output_caps=caps,
            max_costs=max_costs,
            max_fallbacks=self.config.dispatch.max_fallbacks,
            asked_output=out_tokens,
            alias=label(req.model, alias) if alias is not None else None,
            breakers=seen,
        )
        if policy is None:
            plan.decision = decide(names, [None], cost, latency, blocked=blocked, policy="")
            if not plan.decision.ranked:
                raise _named_model_error(plan.decision)
            if plan.alias is not None:  # the ledger keeps this decision for it (records.py)
                plan.decision.notes["alias"] = plan.alias
            return plan

        online = implements(policy, OnlineRouter)
        if online:
            await self.bandits.refresh(name, policy)
        with tracing.span("embed"):
            batch = await self.features(policy, text, tokens)
        with tracing.span("score"):
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
            if alias is not None and self.aliases.cost_weight(alias) is not None:
                weight = self.aliases.cost_weight(alias)
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
            if hasattr(policy, "sources"):  # irt: where each model's predicted quality comes from
                decision.sources = policy.sources()
        if not decision.ranked:
            kind, message, param = decision.failure()
            if kind == REQUEST:
                raise ConstraintsUnsatisfiable(message, param=param)
            if kind == BUDGET:
                raise BudgetExceeded(message)
            raise ServiceUnavailable(message)
        plan.decision = decision
        if plan.alias is not None:
            decision.notes["alias"] = plan.alias
        plan.propensity = 1.0
        if online:
            plan.propensity = self._explore(policy, batch, decision)
            plan.learn = _what_feedback_teaches(policy, batch)
        plan.cascade = self._cascade_plan(policy, batch, decision)
        if self.config.routing.affinity.enabled:
            await self._keep_conversation(plan, req, caller, session)
        self.metrics.decision_latency.labels(name).observe(time.perf_counter() - t0)
        self.metrics.choices.labels(name, decision.chosen.model).inc()
        return plan

    async def _keep_conversation(
        self, plan: Plan, req: ChatCompletionRequest, caller: Caller, session: str | None
    ) -> None:
        """Conversation affinity: keep the model this conversation is on unless switching gains more
        than `routing.affinity.margin` in decision score, or the model is no longer eligible. A
        switch for cost alone must also save more than the prompt cache it gives up (the decision
        record's `notes.cache` says what was weighed)."""
        plan.conversation = conversation_key(req, caller, session)
        pinned = None
        # a request without an earlier answer in it starts a conversation (unless the client names one)
        if session or any(m.role == "assistant" for m in req.messages):
            try:
                pinned = await self.sessions.get("aff:" + plan.conversation)
            except StateUnavailable:
                pinned = None
        decision = plan.decision
        if pinned is None:
            plan.affinity = "new"
        else:
            kept = next((c for c in decision.ranked if c.model == pinned["model"]), None)
            best = decision.chosen
            cheaper_only = False
            if kept is not None and kept is not best:
                # leaving the model gives up its prompt cache: a switch made to save money must
                # save more than the cached prefix would have (priced at the model's cached rate)
                lost = self.specs[kept.model].cache_value_usd(plan.prompt_tokens)
                saving = (kept.cost_usd or 0.0) - lost - (best.cost_usd or 0.0)
                decision.notes["cache"] = {
                    "on": kept.model,
                    "lost_cache_usd": round(lost, 8),
                    "switch_saving_usd": round(saving, 8),
                }
                # a switch for cost alone (no better predicted quality) that the lost cache eats
                cheaper_only = (best.quality or 0.0) <= (kept.quality or 0.0) and saving <= 0
            if kept is not None and (
                kept is best or cheaper_only or (best.score or 0.0) - (kept.score or 0.0) <= self.margin
            ):
                if kept is not best:
                    decision.ranked.remove(kept)
                    decision.ranked.insert(0, kept)
                    plan.propensity = None  # not the policy's draw any more
                plan.affinity = "kept"
            else:
                plan.affinity = "switched"
        self.metrics.affinity.labels(plan.affinity).inc()

    async def remember(self, plan: Plan, model: str) -> None:
        """The conversation now runs on `model` (after it answered)."""
        if plan.conversation is not None:
            await self.sessions.put(
                "aff:" + plan.conversation, {"model": model}, self.config.routing.affinity.ttl_s
            )

    @staticmethod
    def _explore(policy: OnlineRouter, batch: PromptBatch, decision: Decision) -> float:
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
    def _cascade_plan(policy: Policy, batch: PromptBatch, decision: Decision) -> CascadePlan | None:
        """A cascade policy's two-step plan, when both of its models are allowed for this request.
        An agreement plan (two cheap models) is evaluated offline only: it routes in one step."""
        if not implements(policy, CascadeRouter):
            return None
        cp = policy.cascade_plan(batch)[0]
        allowed = {c.model for c in decision.ranked}
        single = cp.second is None and cp.first != cp.escalate_to
        return cp if single and {cp.first, cp.escalate_to} <= allowed else None

    @staticmethod
    def _predicted_cost(spec: ModelSpec, prompt_tokens: int, out_tokens: int | None) -> float:
        expected = min(out_tokens, spec.expected_output_tokens) if out_tokens else spec.expected_output_tokens
        return spec.cost_usd(prompt_tokens, expected)


def conversation_key(req: ChatCompletionRequest, caller: Caller, session: str | None) -> str:
    """The client's session id, else a hash of the system prompt and the first user turn (what
    every later request of the same conversation repeats); scoped to the caller either way."""
    if session:
        ident = "s:" + session
    else:
        system = [m.text() for m in req.messages if m.role in ("system", "developer")]
        first = next((m.text() for m in req.messages if m.role == "user"), "")
        ident = "h:" + json.dumps([system, first])
    digest = hashlib.sha256(ident.encode("utf-8", "replace")).hexdigest()[:32]
    return f"{caller.scope}:{digest}"


def _what_feedback_teaches(policy: OnlineRouter, batch: PromptBatch) -> dict[str, Any]:
    """The context vector and per-model prior quality of this prompt: with them a rating is
    learned (and a replaced rating taken back) without the prompt. float32 keeps it small."""
    x = policy.contexts(batch)[0].astype(np.float32)
    prior = policy.prior_quality(batch)[0]
    return {
        "x": [float(v) for v in x],
        "prior": {m: float(q) for m, q in zip(policy.models_, prior, strict=True)},
    }


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
