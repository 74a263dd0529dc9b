"""Ratings of answers: who may give them, the automatic judge, and what online policies learn.

- Ownership: a request is rated by the caller that made it (same API key; the operator's master
  key may rate any). Any other caller gets the same 404 as for an id that does not exist, so ids
  reveal nothing. Ids are unguessable (`planner.new_request_id`).
- One rating per (request, rater): a second rating replaces the first, and the bandit that learnt
  the first takes it back out before learning the new one — ratings are never added up.
- Ratings are rate-limited per caller (`feedback.rpm`): they train the policy every replica routes with.
- `judge` ratings come only from the gateway's own judge (config `judge`), never from a client.
"""

from __future__ import annotations

import asyncio
import logging

import numpy as np

from adapters import ChatRequest, Usage
from router import constraints as C
from router import judge, records
from router.access import Access, Caller
from router.account import Account
from router.config import ModelSpec, RouterConfig
from router.dispatch import Dispatcher
from router.errors import NotFound
from router.executor import Outcome
from router.metrics import Metrics
from router.planner import internal_id
from router.policy_set import PolicySet
from router.state import FeedbackRecord, RequestRecord, Store

log = logging.getLogger("moe_router.feedback")


class Feedback:
    def __init__(
        self,
        config: RouterConfig,
        store: Store,
        policies: PolicySet,
        access: Access,
        account: Account,
        dispatcher: Dispatcher,
        metrics: Metrics,
    ):
        self.config = config
        self.specs: dict[str, ModelSpec] = {m.name: m for m in config.models}
        self.store = store
        self.policies = policies
        self.access = access
        self.account = account
        self.dispatcher = dispatcher
        self.metrics = metrics
        self._judging: set[asyncio.Task] = set()
        self._rng = np.random.default_rng()

    async def rate(
        self, caller: Caller, request_id: str, rating: float, comment: str | None = None
    ) -> FeedbackRecord:
        """A caller's rating of one of its own requests (404 for anything else)."""
        await self.access.admit_feedback(caller)
        request_id = internal_id(request_id)
        rec = await self.store.log.get_request(request_id)
        if rec is None or not (caller.admin or rec.owner == caller.scope):
            raise NotFound(
                f"no response with id {request_id!r} is known", param="id", code="response_not_found"
            )
        fb = FeedbackRecord(
            request_id, rating, source="user", model=rec.model, comment=comment, rater=caller.scope
        )
        await self._record(rec, fb)
        return fb

    async def _record(self, rec: RequestRecord, fb: FeedbackRecord) -> None:
        previous = await self.store.log.rate(fb)
        self.metrics.feedback.labels(rec.model or "none", fb.source).inc()
        await self._learn(rec, fb.rating, previous.rating if previous is not None else None)

    async def _learn(self, rec: RequestRecord, rating: float, replaced: float | None) -> None:
        """Feed a rating to the online policy that routed the request (shared through the store);
        a replaced rating is taken back out first."""
        policy = self.policies.get(rec.policy) if rec.policy else None
        if policy is None or not policy.online or rec.model not in policy.models_ or not rec.learn:
            return
        x = np.asarray(rec.learn["x"], dtype=float)
        prior = float(rec.learn["prior"][rec.model])
        if replaced is not None:
            await self.store.bandits.record(rec.policy, policy, rec.model, x, replaced - prior, sign=-1.0)
        await self.store.bandits.record(rec.policy, policy, rec.model, x, rating - prior)
        self.metrics.policy_updates.labels(rec.policy, rec.model).inc()

    # ---- automatic judge -----------------------------------------------------------------------
    def judge_later(self, o: Outcome, reference: str | None, answer: str, record: RequestRecord) -> None:
        """Rate a routed answer in the background (config `judge`); the rating is feedback."""
        j = self.config.judge
        if j.mode == "off" or not o.plan.routed or (j.mode != "llm" and reference is None):
            return
        if j.sample_rate < 1.0 and self._rng.random() >= j.sample_rate:
            return
        task = asyncio.create_task(self._judge(o, answer, reference, record))
        self._judging.add(task)
        task.add_done_callback(self._judging.discard)

    async def _judge(self, o: Outcome, answer: str, reference: str | None, record: RequestRecord) -> None:
        mode = self.config.judge.mode
        try:
            if mode == "exact":
                rating = judge.exact(answer, reference or "")
            elif mode == "contains":
                rating = judge.contains(answer, reference or "")
            else:
                rating = await self._llm_grade(o, answer)
            if rating is not None:
                fb = FeedbackRecord(o.request_id, rating, source="judge", model=o.model, rater="judge")
                await self._record(record, fb)
        except Exception as e:  # noqa: BLE001 - a judge failure must never surface to a client
            self.metrics.judge_failures.labels(mode).inc()
            log.warning("judging %s failed: %s", o.request_id, getattr(e, "message", type(e).__name__))

    async def _llm_grade(self, o: Outcome, answer: str) -> float | None:
        name = self.config.judge.model
        ask = ChatRequest(
            messages=[{"role": "user", "content": judge.judge_prompt(o.plan.prompt, answer)}],
            max_tokens=8,
            temperature=0.0,
        )
        model, result, _, latency_ms = await self.dispatcher.chat(
            [name], lambda _: ask, request_id=f"judge-{o.request_id}"
        )
        usage = result.usage or Usage(
            C.estimate_tokens(ask.messages[0]["content"]), C.estimate_tokens(result.text)
        )
        # the judge's own spend goes to the ledger like any call, under its own id
        cost = self.specs[model].info().cost_usd(usage.prompt_tokens, usage.completion_tokens)
        await self.account.book(records.judged(o.request_id, model, usage, cost, latency_ms))
        grade = judge.parse_grade(result.text)
        if grade is None:
            self.metrics.judge_failures.labels("llm_unparsable").inc()
        return grade

    async def aclose(self, timeout_s: float) -> None:
        if self._judging:  # ratings in flight are feedback: let them land
            await asyncio.wait(set(self._judging), timeout=timeout_s)
