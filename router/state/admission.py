"""The money path's two trips to shared state: one to admit a request, one to settle it.

`admit` checks, all or nothing, that the caller's key still exists, is not revoked and has not
changed since this replica read it; that the request fits the key's requests and tokens per
minute; and that every budget scope (key, team, global) can cover the request's most expensive
answer — then counts the request and reserves the amount in every scope and appends the ledger's
`reserve` event. On Redis that is one Lua script (`EVALSHA`, reloaded by redis-py when Redis
answers NOSCRIPT, e.g. after `SCRIPT FLUSH` or a restart): one round trip, atomic across replicas.

`settle` books what really happened, in one script too: the reservation settled to the real cost
(the whole cost in another epoch, see router.state.budgets), the tokens-per-minute count corrected,
the request record appended to the ledger and indexed for feedback, the answering models' health
(latency, breaker) updated; it answers the counters left, so the remaining budget needs no read.

Both carry the request's id and are applied once per id (a marker kept `APPLIED_TTL_S` under
`RedisBudgets.applied_key`): a second application answers "already applied" and changes nothing.
When a script's answer times out (Redis stalled: it may have run it), `RedisMoney` asks again with
the same id, for up to `replay_s`, instead of reporting an outage that would queue a second
application (docs/state.md "Exactly once").

`ComposedMoney` does the same through the separate components (keys, limits, budgets, log,
health): the in-memory store uses it, and so does a Redis store while Redis is unreachable (each
component then degrades its own way, router.state.degrade).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from router.state.budgets import TTL, BudgetScope, Reservation, to_micros
from router.state.faults import is_stall
from router.state.keys import MUTABLE, KeyRecord
from router.state.ratelimit import retry_after
from router.state.records import RequestRecord
from router.state.redis_health import SUCCESS_FN


@dataclass
class Admit:
    """What one request asks of shared state before it is dispatched."""

    key: KeyRecord | None  # checked: still there, not revoked, unchanged (None: anonymous/operator)
    fields: dict[str, str] | None  # the key's MUTABLE fields as this replica last read them (raw JSON)
    tokens: int  # counted against the key's tokens per minute
    scopes: Sequence[BudgetScope] = ()
    usd: float = 0.0  # reserved in every scope
    event: dict[str, Any] | None = None  # the ledger's `reserve` event (with a reservation)
    id: str = ""  # the request's: admitted once, whatever the number of tries

    @property
    def limited(self) -> bool:
        return self.key is not None and (self.key.rpm is not None or self.key.tpm is not None)


@dataclass
class Admitted:
    window: int | None  # the minute the tokens were counted in (None: the key has no limits)
    reservation: Reservation | None


@dataclass
class Refused:
    reason: str  # key (gone or revoked) | changed | rpm | tpm | budget
    retry_after_s: float = 0.0
    scope: BudgetScope | None = None  # budget: the first scope that cannot cover the request
    left: tuple[int, ...] = ()  # budget: micro-USD left in each scope
    record: KeyRecord | None = None  # changed: the key as it is now
    fields: dict[str, str] | None = None  # changed: its raw fields


@dataclass
class Settle:
    """What one request used, booked once."""

    reservation: Reservation | None
    scopes: Sequence[BudgetScope]  # of the reservation (the remaining budget is computed from them)
    actual_usd: float
    key_id: str | None = None
    window: int | None = None  # where the tokens were counted (None: not counted)
    token_delta: int = 0  # real tokens - counted tokens
    record: RequestRecord | None = None
    successes: list[tuple[str, float]] = field(default_factory=list)  # (model, latency_ms) answered
    id: str = ""  # the request's (its reservation's): settled once, whatever the number of tries

    def __post_init__(self) -> None:
        if not self.id and self.reservation is not None:
            self.id = self.reservation.id


def key_fields(rec: KeyRecord) -> dict[str, str]:
    """The MUTABLE fields as stored (JSON), to compare with Redis's copy."""
    return {f: json.dumps(getattr(rec, f)) for f in MUTABLE}


def left_of(scopes: Sequence[BudgetScope], counters: Sequence[int]) -> tuple[int, ...]:
    return tuple(to_micros(s.limit_usd) - int(c) for s, c in zip(scopes, counters, strict=True))


# KEYS[1]: the admission id's marker (RedisBudgets.applied_key). ARGV[1..5]: the parts present:
# key check (0|1), rate limits (0|1), budget buckets (n), reserve event (0|1), and the marker's TTL;
# then each present part's arguments, and its KEYS, in that order:
#   key:    KEYS key hash;  ARGV m, the m MUTABLE field names, their m expected raw values
#   rate:   KEYS requests this/last minute, tokens this/last minute;  ARGV rpm, tpm (-1: none), tokens, frac
#   budget: KEYS the n buckets, the epoch;  ARGV amount, n limits, n TTLs (0: none), a new epoch
#   event:  KEYS the ledger stream;  ARGV its max length, the event's JSON
# Returns {0, epoch, counters after reserving...} admitted, {1} key gone or revoked,
# {2, fields} key changed (its HGETALL), {3, 1|2, cur, prev} over rpm|tpm, {4, i, counters...}
# bucket i cannot cover the amount, {5, epoch, counters now...} this id was admitted before.
# Nothing is written unless every check passes; the marker is written with what it admits.
_ADMIT = """
local hk, hr, nb, he = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local k, a = 2, 6
if hr == 1 or nb > 0 then
  local mark = redis.call('GET', KEYS[1])
  if mark then
    local bk = 2 + hk + 4 * hr
    local out = {5, string.match(mark, '^reserved:(.*):%d+$') or ''}
    for i = 1, nb do out[2 + i] = tonumber(redis.call('GET', KEYS[bk + i - 1]) or '0') end
    return out
  end
end
if hk == 1 then
  local m = tonumber(ARGV[a])
  local names = {'id', 'revoked'}
  for i = 1, m do names[2 + i] = ARGV[a + i] end
  local f = redis.call('HMGET', KEYS[k], unpack(names))
  if not f[1] or f[2] == 'true' then return {1} end
  for i = 1, m do
    if (f[2 + i] or '') ~= ARGV[a + m + i] then return {2, redis.call('HGETALL', KEYS[k])} end
  end
  k, a = k + 1, a + 1 + 2 * m
end
local rk, tokens = k, 0
if hr == 1 then
  local rpm, tpm, frac = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 3])
  tokens = tonumber(ARGV[a + 2])
  local rc, rp = tonumber(redis.call('GET', KEYS[k]) or '0'), tonumber(redis.call('GET', KEYS[k + 1]) or '0')
  local tc, tp = tonumber(redis.call('GET', KEYS[k + 2]) or '0'), tonumber(redis.call('GET', KEYS[k + 3]) or '0')
  if rpm >= 0 and rp * (1 - frac) + rc + 1 > rpm then return {3, 1, tostring(rc), tostring(rp)} end
  if tpm >= 0 and tp * (1 - frac) + tc + tokens > tpm then return {3, 2, tostring(tc), tostring(tp)} end
  k, a = k + 4, a + 4
end
local bk, ba, epoch = k, a, ''
if nb > 0 then
  epoch = redis.call('GET', KEYS[k + nb])
  if not epoch then
    epoch = ARGV[a + 1 + 2 * nb]
    redis.call('SET', KEYS[k + nb], epoch)
  end
  local amount, cur, refused = tonumber(ARGV[a]), {}, 0
  for i = 1, nb do
    cur[i] = tonumber(redis.call('GET', KEYS[k + i - 1]) or '0')
    if refused == 0 and cur[i] + amount > tonumber(ARGV[a + i]) then refused = i end
  end
  if refused > 0 then return {4, refused, unpack(cur)} end
  k, a = k + nb + 1, a + 2 + 2 * nb
end
if hr == 1 then
  redis.call('INCR', KEYS[rk]); redis.call('EXPIRE', KEYS[rk], 150)
  redis.call('INCRBY', KEYS[rk + 2], tokens); redis.call('EXPIRE', KEYS[rk + 2], 150)
end
local out = {0, epoch}
for i = 1, nb do
  out[2 + i] = redis.call('INCRBY', KEYS[bk + i - 1], ARGV[ba])
  local ttl = tonumber(ARGV[ba + nb + i])
  if ttl > 0 and redis.call('TTL', KEYS[bk + i - 1]) < 0 then redis.call('EXPIRE', KEYS[bk + i - 1], ttl) end
end
if nb > 0 then
  redis.call('SET', KEYS[1], 'reserved:' .. epoch .. ':' .. ARGV[ba], 'EX', ARGV[5])
elseif hr == 1 then
  redis.call('SET', KEYS[1], 'admitted', 'EX', ARGV[5])
end
if he == 1 then
  redis.call('XADD', KEYS[k], 'MAXLEN', '~', ARGV[a], '*', 'kind', 'reserve', 'data', ARGV[a + 1])
end
return out
"""

# KEYS[1]: the settlement id's marker. ARGV[1..5]: the parts present: budget buckets (n), token
# correction (0|1), record (0|1), health successes (s), and the marker's TTL; then each present
# part's arguments, and its KEYS, in that order:
#   budget: KEYS the n buckets, the epoch;  ARGV reserved micros, actual micros, the reservation's epoch
#   tokens: KEYS the minute's token counter;  ARGV the correction
#   record: KEYS the ledger stream, the request's index key;  ARGV max length, the record's JSON, TTL
#   health: KEYS per success its hash, probe, latencies;  ARGV per success latency, alpha, window
# Returns {1, the buckets' counters after settling...}, or {0, the counters now...} when this id
# was settled before (then nothing is written). The record is appended to the stream only if its
# index key is new: one ledger entry per request id, whichever way it got there.
_SETTLE = (
    SUCCESS_FN
    + """
local nb, ht, hrec, ns = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local k, a, out = 2, 6, {1}
if redis.call('GET', KEYS[1]) == 'settled' then
  out[1] = 0
  for i = 1, nb do out[1 + i] = tonumber(redis.call('GET', KEYS[k + i - 1]) or '0') end
  return out
end
redis.call('SET', KEYS[1], 'settled', 'EX', ARGV[5])
if nb > 0 then
  local add = tonumber(ARGV[a + 1])
  if redis.call('GET', KEYS[k + nb]) == ARGV[a + 2] then add = add - tonumber(ARGV[a]) end
  for i = 1, nb do
    if add ~= 0 then out[1 + i] = redis.call('INCRBY', KEYS[k + i - 1], add)
    else out[1 + i] = tonumber(redis.call('GET', KEYS[k + i - 1]) or '0') end
  end
  k, a = k + nb + 1, a + 3
end
if ht == 1 then
  redis.call('INCRBY', KEYS[k], ARGV[a]); redis.call('EXPIRE', KEYS[k], 150)
  k, a = k + 1, a + 1
end
if hrec == 1 then
  if redis.call('SET', KEYS[k + 1], ARGV[a + 1], 'NX', 'EX', ARGV[a + 2]) then
    redis.call('XADD', KEYS[k], 'MAXLEN', '~', ARGV[a], '*', 'kind', 'request', 'data', ARGV[a + 1])
  end
  k, a = k + 2, a + 3
end
for i = 1, ns do
  success(KEYS[k], KEYS[k + 1], KEYS[k + 2], ARGV[a], ARGV[a + 1], ARGV[a + 2])
  k, a = k + 3, a + 3
end
return out
"""
)

REPLAY_S = 3.0


class RedisMoney:
    """Admission and settlement as one Lua script each, over the Redis components' keys.

    `replay_s`: how long a script whose answer timed out (or that Redis refused as busy) is asked
    again with the same id before the failure is reported as an outage."""

    def __init__(self, redis, keys, limits, budgets, log, health, replay_s: float = REPLAY_S, metrics=None):
        self.redis = redis
        self.keys, self.limits, self.budgets, self.log, self.health = keys, limits, budgets, log, health
        self.replay_s = replay_s
        self.metrics = metrics
        self.replays = 0  # scripts asked again after a stall (for tests and metrics)
        self._admit = redis.register_script(_ADMIT)
        self._settle = redis.register_script(_SETTLE)

    async def _once(self, op: str, script, keys: list[str], args: list[Any]):
        """Run an id-carrying script; on a stall ask again with the same id (the marker makes a
        second run a no-op, so whichever of the two Redis runs first is the one that counts)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.replay_s
        while True:
            try:
                return await script(keys=keys, args=args)
            except Exception as e:
                if not is_stall(e) or loop.time() >= deadline:
                    raise
                self.replays += 1
                if self.metrics is not None:
                    self.metrics.state_replays.labels(op).inc()

    async def admit(self, a: Admit) -> Admitted | Refused:
        keys: list[str] = [self.budgets.applied_key(a.id)]
        args: list[Any] = [
            int(a.key is not None),
            int(a.limited),
            len(a.scopes),
            int(bool(a.scopes) and a.event is not None),
            self.budgets.applied_ttl_s,
        ]
        if a.key is not None:
            fields = a.fields or key_fields(a.key)
            keys.append(self.keys.key_of(a.key.id))
            args += [len(MUTABLE), *MUTABLE, *(fields.get(f, "") for f in MUTABLE)]
        w, frac = self.limits.window()
        if a.limited:
            keys += self.limits.counter_keys(a.key.id, w)
            rpm, tpm = a.key.rpm, a.key.tpm
            args += [-1 if rpm is None else rpm, -1 if tpm is None else tpm, a.tokens, frac]
        amount = to_micros(a.usd)
        buckets = [s.bucket() for s in a.scopes]
        if a.scopes:
            keys += [*self.budgets.bucket_keys(buckets), self.budgets.epoch_key]
            args += [
                amount,
                *(to_micros(s.limit_usd) for s in a.scopes),
                *(TTL[s.window] for s in a.scopes),
                uuid.uuid4().hex,
            ]
            if a.event is not None:
                keys.append(self.log.stream_key)
                args += [self.log.max_entries, json.dumps(a.event)]
        res = await self._once("admission", self._admit, keys, args)
        kind = int(res[0])
        if kind in (0, 5):
            reservation = None
            if a.scopes:
                epoch = res[1].decode() if isinstance(res[1], bytes) else str(res[1])
                left = left_of(a.scopes, res[2:])
                reservation = Reservation(tuple(buckets), amount, epoch=epoch, left=left, id=a.id)
            return Admitted(w if a.limited else None, reservation)
        if kind == 1:
            return Refused("key")
        if kind == 2:
            raw = res[1]
            fields = {raw[i].decode(): raw[i + 1].decode() for i in range(0, len(raw), 2)}
            return Refused("changed", record=KeyRecord.from_fields(fields), fields=fields)
        if kind == 3:
            which, cur, prev = int(res[1]), float(res[2]), float(res[3])
            limit, need = (a.key.rpm, 1) if which == 1 else (a.key.tpm, a.tokens)
            return Refused("rpm" if which == 1 else "tpm", retry_after(cur, prev, frac, need, limit))
        return Refused("budget", scope=a.scopes[int(res[1]) - 1], left=left_of(a.scopes, res[2:]))

    async def settle(self, s: Settle) -> tuple[int, ...]:
        r = s.reservation
        keys: list[str] = [self.budgets.applied_key(s.id)]
        w, _ = self.limits.window()
        tokens = s.window is not None and s.token_delta != 0 and s.window >= w - 1
        nb = len(r.buckets) if r is not None else 0
        args: list[Any] = [
            nb,
            int(tokens),
            int(s.record is not None),
            len(s.successes),
            self.budgets.applied_ttl_s,
        ]
        if r is not None:
            keys += [*self.budgets.bucket_keys(r.buckets), self.budgets.epoch_key]
            args += [r.micros, to_micros(s.actual_usd), r.epoch or ""]
        if tokens:
            keys.append(self.limits.counter_keys(s.key_id, s.window)[2])
            args.append(s.token_delta)
        if s.record is not None:
            data = json.dumps(s.record.to_dict())
            keys += [self.log.stream_key, self.log.record_key(s.record.id)]
            args += [self.log.max_entries, data, self.log.request_ttl_s]
        for model, latency_ms in s.successes:
            keys += self.health.keys_of(model)
            args += [latency_ms, self.health.ewma_alpha, self.health.window]
        _, *counters = await self._once("settlement", self._settle, keys, args)
        return left_of(s.scopes, counters) if r is not None and len(s.scopes) == nb else ()


class ComposedMoney:
    """Admission and settlement through the separate components (in order, each atomic alone)."""

    def __init__(self, keys, limits, budgets, log, health):
        self.keys, self.limits, self.budgets, self.log, self.health = keys, limits, budgets, log, health

    async def admit(self, a: Admit) -> Admitted | Refused:
        if a.key is not None:
            rec = await self.keys.get(a.key.id)
            if rec is None or rec.revoked:
                return Refused("key")
            if key_fields(rec) != key_fields(a.key):
                return Refused("changed", record=rec, fields=key_fields(rec))
        reservation = None
        if a.scopes:  # first: a reservation can be given back exactly, a counted request cannot
            got = await self.budgets.reserve(a.scopes, a.usd, a.id)
            if isinstance(got, BudgetScope):
                spent = await self.budgets.spent(a.scopes)
                left = tuple(to_micros(s.limit_usd - x) for s, x in zip(a.scopes, spent, strict=True))
                return Refused("budget", scope=got, left=left)
            reservation = got
        window = None
        if a.limited:
            d = await self.limits.hit(a.key.id, a.key.rpm, a.key.tpm, a.tokens)
            if not d.allowed:
                if reservation is not None:
                    await self.budgets.settle(reservation, 0.0)
                return Refused(d.limit, d.retry_after_s)
            window = d.window
        if reservation is not None and a.event is not None:
            await self.log.record_event("reserve", a.event)
        return Admitted(window, reservation)

    async def settle(self, s: Settle) -> tuple[int, ...]:
        if s.reservation is not None:
            await self.budgets.settle(s.reservation, s.actual_usd)
        if s.window is not None and s.token_delta:
            await self.limits.adjust_tokens(s.key_id, s.token_delta, s.window)
        if s.record is not None:
            await self.log.record_request(s.record)
        for model, latency_ms in s.successes:
            await self.health.record_success(model, latency_ms)
        if s.reservation is None or not s.scopes:
            return ()
        spent = await self.budgets.spent(s.scopes)
        return tuple(to_micros(x.limit_usd - y) for x, y in zip(s.scopes, spent, strict=True))
