"""Keep serving through a Redis outage, and put things right when it returns.

Every Redis operation runs through `Outage.call(op, primary, fallback)`. The first failure marks
Redis down for `retry_every_s` (requests stop paying a timeout each) and counts it; while down,
each concern degrades its own way:

- keys: keys seen before keep working (last known good); unknown keys get 503
- budgets: `allowance` (default) lets each replica spend a share of each budget's last known
  remaining amount, then answers 503; `open` reserves nothing and queues the spend; `closed`
  answers 503
- rate limits: a per-replica in-memory limiter takes over
- ledger, request log, feedback: buffered in memory (spilled to a JSONL file past a cap)
- model health: a per-replica in-memory breaker/latency tracker takes over
- model capacity: a per-replica counter takes over, allowing each replica `1/outage_share` of
  every model's `max_concurrency` and `tpm_limit`; slots held on Redis are given back when it returns
- caches: miss

On the first successful operation after an outage the queued spend is added to the budget
counters and the buffered records are written, in order: nothing is dropped.

Only an unreachable Redis is an outage: connection errors, timeouts, a closed transport, a replica
that is read-only or still loading. Any other error from Redis (a script error, a wrong type, out
of memory) is a fault, not an outage: it raises `StateFault` (500 at the gateway), is logged and
counted, and never switches budgets to their outage behaviour.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from redis.exceptions import RedisError

from router.health import MemoryHealth
from router.metrics import Metrics
from router.state.admission import Admit, Admitted, Refused, Settle
from router.state.budgets import Budgets, BudgetScope, Reservation, to_micros
from router.state.capacity import Full, Lease, Limits, MemoryCapacity
from router.state.faults import is_outage
from router.state.keys import KeyRecord
from router.state.ratelimit import MemoryRateLimiter, RateDecision
from router.state.records import FeedbackRecord, RequestRecord

log = logging.getLogger("moe_router.state")
T = TypeVar("T")


class StateUnavailable(Exception):
    """Shared state is unreachable and this operation has no safe local answer."""


class StateFault(Exception):
    """Redis answered with an error (not an outage): a bug or a misconfiguration to look at."""


class Outage:
    def __init__(self, metrics: Metrics | None, retry_every_s: float = 2.0, clock=time.monotonic):
        self.metrics = metrics
        self.retry_every_s = retry_every_s
        self._clock = clock
        self._down_until = 0.0
        self._was_down = False
        self._recover_hooks: list[Callable[[], Awaitable[None]]] = []
        self._recovering: asyncio.Task | None = None

    @property
    def degraded(self) -> bool:
        return self._was_down

    def on_recover(self, hook: Callable[[], Awaitable[None]]) -> None:
        self._recover_hooks.append(hook)

    async def call(
        self, op: str, primary: Callable[[], Awaitable[T]], fallback: Callable[[], Awaitable[T]]
    ) -> T:
        if self._clock() < self._down_until:
            return await fallback()
        try:
            result = await primary()
        except Exception as e:
            if not is_outage(e):
                if isinstance(e, RedisError):
                    if self.metrics is not None:
                        self.metrics.state_faults.labels(op).inc()
                    log.error("shared state error in %s: %s: %s", op, type(e).__name__, e)
                    raise StateFault(f"shared state error in {op}") from e
                raise
            if self.metrics is not None:
                self.metrics.state_errors.labels(op).inc()
            if not self._was_down:
                log.warning("shared state unreachable (%s: %s); degrading", op, type(e).__name__)
            self._was_down = True
            self._down_until = self._clock() + self.retry_every_s
            return await fallback()
        if self._was_down and (self._recovering is None or self._recovering.done()):
            self._recovering = asyncio.ensure_future(self._recover())
        return result

    async def _recover(self) -> None:
        try:
            for hook in self._recover_hooks:
                await hook()
        except Exception as e:  # noqa: BLE001 - a failed reconciliation is retried, never lost
            report = log.warning if is_outage(e) else log.error
            report("reconciling after the outage failed (%s: %s); will retry", type(e).__name__, e)
            self._down_until = self._clock() + self.retry_every_s
            return
        self._was_down = False
        log.warning("shared state reachable again; buffered spend and records written")


async def _raise(message: str):
    raise StateUnavailable(message)


class ResilientKeys:
    def __init__(self, primary, outage: Outage):
        self.primary, self.outage = primary, outage
        self._known: dict[str, KeyRecord] = {}

    async def get(self, key_id: str) -> KeyRecord | None:
        async def fresh():
            rec = await self.primary.get(key_id)
            if rec is None:
                self._known.pop(key_id, None)
            else:
                self._known[key_id] = rec
            return rec

        async def known():
            if key_id in self._known:
                return self._known[key_id]
            raise StateUnavailable("API keys cannot be checked right now (shared state unreachable)")

        return await self.outage.call("keys.get", fresh, known)

    def know(self, rec: KeyRecord) -> None:
        """`rec` as Redis just answered it (by the admission script): the outage's last known good."""
        self._known[rec.id] = rec

    def forget(self, key_id: str) -> None:
        """Redis just said the key is gone or revoked: not to be served from memory in an outage."""
        self._known.pop(key_id, None)

    async def put(self, rec: KeyRecord) -> None:
        await self.outage.call(
            "keys.put",
            lambda: self.primary.put(rec),
            lambda: _raise("shared state unreachable: cannot store the key"),
        )

    async def find(self, name: str) -> KeyRecord | None:
        return await self.outage.call(
            "keys.find", lambda: self.primary.find(name), lambda: _raise("shared state unreachable")
        )

    async def all(self) -> list[KeyRecord]:
        return await self.outage.call(
            "keys.all", self.primary.all, lambda: _raise("shared state unreachable")
        )

    async def revoke(self, name: str) -> KeyRecord | None:
        return await self.outage.call(
            "keys.revoke", lambda: self.primary.revoke(name), lambda: _raise("shared state unreachable")
        )

    async def update(self, name: str, changes: dict) -> KeyRecord | None:
        return await self.outage.call(
            "keys.update",
            lambda: self.primary.update(name, changes),
            lambda: _raise("shared state unreachable"),
        )


@dataclass
class Owed:
    """A budget write waiting for Redis: a settlement (`actual_usd`), or (None) the voiding of an
    admission whose answer was lost (it may have reserved in Redis: router.state.budgets)."""

    reservation: Reservation
    actual_usd: float | None


class ResilientBudgets:
    """Budgets through an outage (config `outage.budgets`):

    - `allowance`: a replica remembers each budget bucket's remaining amount from its last
      successful Redis call; during an outage it may reserve at most `allowance` times that amount
      per bucket (a bucket it has never seen gets nothing), then answers 503;
    - `open`: reserve nothing, serve, and add the spend when Redis returns;
    - `closed`: 503 for every request with a budget.
    Spend made during the outage is added to the counters when Redis returns, each settlement
    under its id, so one that Redis had already applied (its answer was lost) is not applied again."""

    def __init__(self, primary: Budgets, outage: Outage, mode: str = "allowance", allowance: float = 0.1):
        self.primary, self.outage, self.mode, self.allowance = primary, outage, mode, allowance
        # writes to make once Redis is back, in order (with their reservations: see state.budgets on epochs)
        self._owed: deque[Owed] = deque()
        self._known_left: dict[str, int] = {}  # bucket -> micro-USD left at the last successful call
        self._offline_left: dict[str, int] | None = None  # this outage's allowance per bucket
        outage.on_recover(self.flush)

    @property
    def backlog(self) -> int:
        """Budget writes waiting for Redis."""
        return len(self._owed)

    def remember(self, scopes: Sequence[BudgetScope], left: Sequence[int]) -> None:
        """What Redis said is left in each scope (the base of an outage's allowance)."""
        for s, x in zip(scopes, left, strict=True):
            self._known_left[s.bucket()] = x

    def void_later(self, id: str, scopes: Sequence[BudgetScope], usd: float) -> None:
        """Admission `id` may have reserved in Redis without this replica learning it: give that
        back when Redis returns (before this id's own settlement, which is queued after it)."""
        buckets = tuple(s.bucket() for s in scopes)
        self._owed.append(Owed(Reservation(buckets, to_micros(usd), id=id), None))

    def _allowance(self) -> dict[str, int]:
        if self._offline_left is None:
            self._offline_left = {b: int(self.allowance * max(0, x)) for b, x in self._known_left.items()}
        return self._offline_left

    async def reserve(
        self, scopes: Sequence[BudgetScope], usd: float, id: str = ""
    ) -> Reservation | BudgetScope:
        amount = to_micros(usd)

        async def online():
            got = await self.primary.reserve(scopes, usd, id)
            if isinstance(got, Reservation) and got.left:
                self.remember(scopes, got.left)
            return got

        async def offline():
            buckets = tuple(s.bucket() for s in scopes)
            if self.mode == "closed":
                raise StateUnavailable("budgets cannot be checked right now (shared state unreachable)")
            if self.mode == "allowance":
                left = self._allowance()
                if any(left.get(b, 0) < amount for b in buckets):
                    raise StateUnavailable(
                        "budgets cannot be checked right now (shared state unreachable) and this "
                        "replica's outage allowance cannot cover the request"
                    )
                for b in buckets:
                    left[b] -= amount
            return Reservation(buckets, amount, offline=True, id=id)

        return await self.outage.call("budgets.reserve", online, offline)

    async def settle(self, reservation: Reservation, actual_usd: float) -> None:
        if reservation.offline:  # nothing was reserved in Redis: the whole cost is owed
            if self._offline_left is not None:  # give back what was reserved but not spent
                for b in reservation.buckets:
                    if b in self._offline_left:
                        self._offline_left[b] += reservation.micros - to_micros(actual_usd)
            self._owed.append(Owed(reservation, actual_usd))
            return

        async def queue():  # the settlement may or may not have run: its id decides on replay
            self._owed.append(Owed(reservation, actual_usd))

        await self.outage.call("budgets.settle", lambda: self.primary.settle(reservation, actual_usd), queue)

    async def spent(self, scopes: Sequence[BudgetScope]) -> list[float]:
        async def online():
            got = await self.primary.spent(scopes)
            self.remember(scopes, [to_micros(s.limit_usd - x) for s, x in zip(scopes, got, strict=True)])
            return got

        async def unknown():
            if self.mode == "closed":
                raise StateUnavailable("budgets cannot be checked right now (shared state unreachable)")
            if self.mode == "open":
                return [0.0] * len(scopes)
            left = self._allowance()
            return [s.limit_usd - left.get(s.bucket(), 0) / 1e6 for s in scopes]

        return await self.outage.call("budgets.spent", online, unknown)

    async def flush(self) -> None:
        while self._owed:
            o = self._owed[0]
            if o.actual_usd is None:
                await self.primary.void(o.reservation.id, o.reservation.buckets)
            else:
                await self.primary.settle(o.reservation, o.actual_usd)
            self._owed.popleft()
        self._offline_left = None


class ResilientMoney:
    """Admission and settlement (router.state.admission) through an outage: one script each while
    Redis answers (asked again with the same id while Redis stalls); while it does not, the
    components' own outage behaviour above (`local`, the same steps through the resilient
    components, which queue what they write under the same ids). A settlement also goes the
    components' way while the outage's spend or records still wait to be written, so they reach
    Redis in order."""

    def __init__(self, primary, local, outage: Outage, keys: ResilientKeys, budgets, log):
        self.primary, self.local, self.outage = primary, local, outage
        self.keys, self.budgets, self.log = keys, budgets, log

    async def admit(self, a: Admit) -> Admitted | Refused:
        asked = False

        async def online():
            nonlocal asked
            asked = True
            got = await self.primary.admit(a)
            if isinstance(got, Admitted):
                if got.reservation is not None:
                    self.budgets.remember(a.scopes, got.reservation.left)
            elif got.reason == "budget":
                self.budgets.remember(a.scopes, got.left)
            elif got.reason == "key":
                self.keys.forget(a.key.id)
            elif got.reason == "changed":
                self.keys.know(got.record)
            return got

        async def offline():
            if asked and a.scopes:  # sent, answer lost: it may have reserved in Redis
                self.budgets.void_later(a.id, a.scopes, a.usd)
            return await self.local.admit(a)

        return await self.outage.call("admission", online, offline)

    async def settle(self, s: Settle) -> tuple[int, ...]:
        r = s.reservation
        if (r is not None and r.offline) or self.budgets.backlog or self.log.backlog:
            return await self.local.settle(s)
        return await self.outage.call(
            "settlement", lambda: self.primary.settle(s), lambda: self.local.settle(s)
        )


class ResilientLimiter:
    def __init__(self, primary, outage: Outage):
        self.primary, self.outage = primary, outage
        self.local = MemoryRateLimiter()

    async def hit(self, key_id: str, rpm: int | None, tpm: int | None, tokens: int) -> RateDecision:
        return await self.outage.call(
            "limits.hit",
            lambda: self.primary.hit(key_id, rpm, tpm, tokens),
            lambda: self.local.hit(key_id, rpm, tpm, tokens),
        )

    async def adjust_tokens(self, key_id: str, delta: int, window: int) -> None:
        await self.outage.call(
            "limits.adjust",
            lambda: self.primary.adjust_tokens(key_id, delta, window),
            lambda: self.local.adjust_tokens(key_id, delta, window),
        )


class ResilientLog:
    """Buffers writes while Redis is down; past `max_buffer` entries they go to a spill file."""

    def __init__(self, primary, outage: Outage, max_buffer: int = 100_000, spill_path: str | None = None):
        self.primary, self.outage = primary, outage
        self.max_buffer = max_buffer
        self.spill_path = Path(
            spill_path or Path.home() / ".cache" / "moe-router" / f"spill-{os.getpid()}.jsonl"
        )
        self._buffer: deque[tuple[str, Any]] = deque()
        outage.on_recover(self.flush)

    @property
    def backlog(self) -> int:
        """Writes waiting for Redis in memory (the spill file's come after them)."""
        return len(self._buffer)

    def _keep(self, kind: str, item: Any) -> None:
        if len(self._buffer) < self.max_buffer:
            self._buffer.append((kind, item))
            return
        self.spill_path.parent.mkdir(parents=True, exist_ok=True)
        data = item.to_dict() if hasattr(item, "to_dict") else item
        with self.spill_path.open("a") as f:
            f.write(json.dumps({"kind": kind, "data": data}) + "\n")

    async def _write(self, kind: str, item: Any) -> None:
        if kind == "request":
            await self.primary.record_request(item)
        elif kind == "feedback":
            await self.primary.record_feedback(item)
        else:
            await self.primary.record_event(kind, item)

    async def _through(self, op: str, kind: str, item: Any) -> None:
        if self._buffer:  # keep order: while anything is buffered, new writes queue behind it
            self._keep(kind, item)
            return

        async def buffer():
            self._keep(kind, item)

        await self.outage.call(op, lambda: self._write(kind, item), buffer)

    async def record_request(self, record: RequestRecord) -> None:
        await self._through("log.request", "request", record)

    async def record_event(self, kind: str, data: dict[str, Any]) -> None:
        await self._through("log.event", kind, data)

    async def record_feedback(self, feedback: FeedbackRecord) -> None:
        await self._through("log.feedback", "feedback", feedback)

    async def rate(self, feedback: FeedbackRecord) -> FeedbackRecord | None:
        # the rating it replaces is only known to Redis: without it the old rating could not be
        # taken back out of what learns from it, so a rating waits for Redis (503: retry)
        async def unknown():
            raise StateUnavailable(
                "ratings cannot be recorded right now (shared state unreachable); retry shortly"
            )

        if self._buffer:
            return await unknown()
        return await self.outage.call("log.rate", lambda: self.primary.rate(feedback), unknown)

    async def get_request(self, request_id: str) -> RequestRecord | None:
        for kind, item in reversed(self._buffer):
            if kind == "request" and item.id == request_id:
                return item

        async def unknown():
            raise StateUnavailable("the request log is unreachable right now; retry shortly")

        return await self.outage.call("log.get", lambda: self.primary.get_request(request_id), unknown)

    async def flush(self) -> None:
        while self._buffer:
            kind, item = self._buffer[0]
            await self._write(kind, item)
            self._buffer.popleft()
        if self.spill_path.exists():
            lines = self.spill_path.read_text().splitlines()
            for line in lines:
                e = json.loads(line)
                kind, data = e["kind"], e["data"]
                item = (
                    RequestRecord.from_dict(data)
                    if kind == "request"
                    else FeedbackRecord.from_dict(data)
                    if (kind == "feedback")
                    else data
                )
                await self._write(kind, item)
            self.spill_path.unlink()

    def iter_requests(self) -> AsyncIterator[RequestRecord]:
        return self.primary.iter_requests()

    def iter_feedback(self) -> AsyncIterator[FeedbackRecord]:
        return self.primary.iter_feedback()

    def iter_events(self) -> AsyncIterator[dict[str, Any]]:
        return self.primary.iter_events()


async def _none(*_: Any) -> None:
    return None


class ResilientCache:
    def __init__(self, primary, outage: Outage):
        self.primary, self.outage = primary, outage

    async def get(self, key: str):
        return await self.outage.call("cache.get", lambda: self.primary.get(key), _none)

    async def put(self, key: str, value: dict, ttl_s: float) -> None:
        await self.outage.call("cache.put", lambda: self.primary.put(key, value, ttl_s), _none)

    async def similar(self, scope, vec, threshold, ttl_s):
        return await self.outage.call(
            "cache.similar", lambda: self.primary.similar(scope, vec, threshold, ttl_s), _none
        )

    async def add(self, scope, vec, value, ttl_s, max_entries) -> None:
        await self.outage.call(
            "cache.add", lambda: self.primary.add(scope, vec, value, ttl_s, max_entries), _none
        )


class ResilientHealth:
    def __init__(self, primary, local: MemoryHealth, outage: Outage):
        self.primary, self.local, self.outage = primary, local, outage

    async def snapshot(self, models):
        return await self.outage.call(
            "health.snapshot", lambda: self.primary.snapshot(models), lambda: self.local.snapshot(models)
        )

    async def acquire(self, model: str) -> bool:
        return await self.outage.call(
            "health.acquire", lambda: self.primary.acquire(model), lambda: self.local.acquire(model)
        )

    async def record_success(self, model: str, latency_ms: float) -> None:
        await self.outage.call(
            "health.success",
            lambda: self.primary.record_success(model, latency_ms),
            lambda: self.local.record_success(model, latency_ms),
        )

    async def record_failure(self, model: str) -> None:
        await self.outage.call(
            "health.failure",
            lambda: self.primary.record_failure(model),
            lambda: self.local.record_failure(model),
        )

    async def release(self, model: str) -> None:
        await self.outage.call(
            "health.release", lambda: self.primary.release(model), lambda: self.local.release(model)
        )


class ResilientSessions:
    """Conversation state through an outage: reads say so (StateUnavailable), writes are skipped
    (affinity then falls back to plain routing; a stored response cannot be found meanwhile)."""

    def __init__(self, primary, outage: Outage):
        self.primary, self.outage = primary, outage

    async def get(self, key: str):
        async def unknown():
            raise StateUnavailable("conversation state is unreachable right now; retry shortly")

        return await self.outage.call("sessions.get", lambda: self.primary.get(key), unknown)

    async def put(self, key: str, value: dict, ttl_s: float) -> None:
        await self.outage.call("sessions.put", lambda: self.primary.put(key, value, ttl_s), _none)


class ResilientCapacity:
    """Model capacity through an outage: a per-replica counter admits each replica's share
    (`outage_share`: the number of replicas to divide each limit among; 1 = the full limit on every
    replica). Leases taken on Redis and released during the outage are given back when it returns
    (until then they hold their slot at most until their lease expires)."""

    def __init__(self, primary, outage: Outage, outage_share: int = 1):
        self.primary, self.outage, self.share = primary, outage, outage_share
        self.local = MemoryCapacity()
        self._unreleased: list[tuple[Lease, int | None]] = []
        outage.on_recover(self.flush)

    async def try_acquire(self, model: str, limits: Limits, tokens: int, ttl_s: float) -> Lease | Full:
        async def offline():
            got = await self.local.try_acquire(model, limits.scaled(self.share), tokens, ttl_s)
            if isinstance(got, Lease):
                got.offline = True
            return got

        return await self.outage.call(
            "capacity.acquire", lambda: self.primary.try_acquire(model, limits, tokens, ttl_s), offline
        )

    async def release(self, lease: Lease, actual_tokens: int | None) -> None:
        if lease.offline:
            await self.local.release(lease, actual_tokens)
            return

        async def later():
            self._unreleased.append((lease, actual_tokens))

        await self.outage.call("capacity.release", lambda: self.primary.release(lease, actual_tokens), later)

    async def renew(self, leases: list[Lease], ttl_s: float) -> None:
        online = [x for x in leases if not x.offline]
        await self.outage.call("capacity.renew", lambda: self.primary.renew(online, ttl_s), _none)

    async def in_flight(self, models: list[str]) -> dict[str, int]:
        return await self.outage.call(
            "capacity.in_flight", lambda: self.primary.in_flight(models), lambda: self.local.in_flight(models)
        )

    async def flush(self) -> None:
        while self._unreleased:
            await self.primary.release(*self._unreleased[0])
            self._unreleased.pop(0)
