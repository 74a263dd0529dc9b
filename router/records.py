"""The ledger's record of a request, built in one place from what happened: an answer (plain,
streamed or from a cache), a failure before any answer, or a call the gateway made for itself
(the judge)."""

from __future__ import annotations

import asyncio

from adapters import Usage
from router.account import Ticket
from router.errors import RouterError
from router.executor import Outcome
from router.planner import Plan
from router.state import RequestRecord


def answered(o: Outcome, ticket: Ticket, status: str = "ok", error: str | None = None) -> RequestRecord:
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
        decision=_decision(plan),
        learn=plan.learn,
    )


def failed(plan: Plan, ticket: Ticket, err: BaseException) -> RequestRecord:
    """A request that ended before any model answered it."""
    if isinstance(err, RouterError):
        status, message = "error", err.message
    elif isinstance(err, asyncio.CancelledError):
        status, message = "client_closed", "the request was cancelled before an answer"
    else:
        status, message = "error", f"internal error ({type(err).__name__})"
    return RequestRecord(
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
        decision=_decision(plan),
    )


def _decision(plan: Plan) -> dict | None:
    """What the ledger keeps of the decision: a routed request's ranking; for a named model, only
    when a vendor name was aliased to it (`notes.alias` says which name was asked for)."""
    return plan.decision.compact() if plan.routed or plan.alias is not None else None


def judged(request_id: str, model: str, usage: Usage, cost_usd: float, latency_ms: float) -> RequestRecord:
    """The judge's own call (its spend goes to the ledger under its own id)."""
    return RequestRecord(
        id=f"judge-{request_id}",
        model=model,
        policy=None,
        prompt=f"[judge] {request_id}",
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cost_usd=cost_usd,
        latency_ms=latency_ms,
        key="judge",
        owner="judge",
    )
