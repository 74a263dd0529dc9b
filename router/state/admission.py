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

`ComposedMoney` does the same through the separate components (keys, limits, budgets, log,
health): the in-memory store uses it, and so does a Redis store while Redis is unreachable (each
component then degrades its own way, router.state.degrade).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from router.state.budgets import TTL, BudgetScope, Reservation, to_micros
from router.state.keys import MUTABLE, KeyRecord
from router.state.ratelimit import _retry_after, _window
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


def key_fields(rec: KeyRecord) -> dict[str, str]:
    """The MUTABLE fields as stored (JSON), to compare with Redis's copy."""
    return {f: json.dumps(getattr(rec, f)) for f in MUTABLE}


def left_of(scopes: Sequence[BudgetScope], counters: Sequence[int]) -> tuple[int, ...]:
    return tuple(to_micros(s.limit_usd) - int(c) for s, c in zip(scopes, counters, strict=True))


# ARGV[1..4]: the parts present: key check (0|1), rate limits (0|1), budget buckets (n), reserve
# event (0|1); then each present part's arguments, and its KEYS, in that order:
#   key:    KEYS key hash;  ARGV m, the m MUTABLE field names, their m expected raw values
#   rate:   KEYS requests this/last minute, tokens this/last minute;  ARGV rpm, tpm (-1: none), tokens, frac
#   budget: KEYS the n buckets, the epoch;  ARGV amount, n limits, n TTLs (0: none), a new epoch
#   event:  KEYS the ledger stream;  ARGV its max length, the event's JSON
# Returns {0, epoch, counters after reserving...} admitted, {1} key gone or revoked,
# {2, fields} key changed (its HGETALL), {3, 1|2, cur, prev} over rpm|tpm, {4, i, counters...}
# bucket i cannot cover the amount. Nothing is written unless every check passes.
_ADMIT = """
local hk, hr, nb, he = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local k, a = 1, 5
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
if he == 1 then
  redis.call('XADD', KEYS[k], 'MAXLEN', '~', ARGV[a], '*', 'kind', 'reserve', 'data', ARGV[a + 1])
end
return out
"""

# ARGV[1..4]: the parts present: budget buckets (n), token correction (0|1), record (0|1), health
# successes (s); then each present part's arguments, and its KEYS, in that order:
#   budget: KEYS the n buckets, the epoch;  ARGV reserved micros, actual micros, the reservation's epoch
#   tokens: KEYS the minute's token counter;  ARGV the correction
#   record: KEYS the ledger stream, the request's index key;  ARGV max length, the record's JSON, TTL
#   health: KEYS per success its hash, probe, latencies;  ARGV per success latency, alpha, window
# Returns the buckets' counters after settling.
_SETTLE = (
    SUCCESS_FN
    + """
local nb, ht, hrec, ns = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local k, a, out = 1, 5, {}
if nb > 0 then
  local add = tonumber(ARGV[a + 1])
  if redis.call('GET', KEYS[k + nb]) == ARGV[a + 2] then add = add - tonumber(ARGV[a]) end
  for i = 1, nb do
    if add ~= 0 then out[i] = redis.call('INCRBY', KEYS[k + i - 1], add)
    else out[i] = tonumber(redis.call('GET', KEYS[k + i - 1]) or '0') end
  end
  k, a = k + nb + 1, a + 3
end
if ht == 1 then
  redis.call('INCRBY', KEYS[k], ARGV[a]); redis.call('EXPIRE', KEYS[k], 150)
  k, a = k + 1, a + 1
end
if hrec == 1 then
  redis.call('XADD', KEYS[k], 'MAXLEN', '~', ARGV[a], '*', 'kind', 'request', 'data', ARGV[a + 1])
  redis.call('SET', KEYS[k + 1], ARGV[a + 1], 'EX', ARGV[a + 2])
  k, a = k + 2, a + 3
end
for i = 1, ns do
  success(KEYS[k], KEYS[k + 1], KEYS[k + 2], ARGV[a], ARGV[a + 1], ARGV[a + 2])
  k, a = k + 3, a + 3
end
return out
"""
)


class RedisMoney:
    """Admission and settlement as one Lua script each, over the Redis components' keys."""

    def __init__(self, redis, keys, limits, budgets, log, health):
        self.redis = redis
        self.keys, self.limits, self.budgets, self.log, self.health = keys, limits, budgets, log, health
        self._admit = redis.register_script(_ADMIT)
        self._settle = redis.register_script(_SETTLE)

    async def admit(self, a: Admit) -> Admitted | Refused:
        keys: list[str] = []
        args: list[Any] = [
            int(a.key is not None),
            int(a.limited),
            len(a.scopes),
            int(bool(a.scopes) and a.event is not None),
        ]
        if a.key is not None:
            fields = a.fields or key_fields(a.key)
            keys.append(f"{self.keys.p}key:{a.key.id}")
            args += [len(MUTABLE), *MUTABLE, *(fields.get(f, "") for f in MUTABLE)]
        w, frac = _window(self.limits._clock())
        if a.limited:
            keys += self.limits._keys(a.key.id, w)
            rpm, tpm = a.key.rpm, a.key.tpm
            args += [-1 if rpm is None else rpm, -1 if tpm is None else tpm, a.tokens, frac]
        amount = to_micros(a.usd)
        buckets = [s.bucket() for s in a.scopes]
        if a.scopes:
            keys += [self.budgets.prefix + b for b in buckets] + [self.budgets.epoch_key]
            args += [
                amount,
                *(to_micros(s.limit_usd) for s in a.scopes),
                *(TTL[s.window] for s in a.scopes),
                uuid.uuid4().hex,
            ]
            if a.event is not None:
                keys.append(f"{self.log.p}ledger")
                args += [self.log.max_entries, json.dumps(a.event)]
        res = await self._admit(keys=keys, args=args)
        kind = int(res[0])
        if kind == 0:
            reservation = None
            if a.scopes:
                epoch = res[1].decode() if isinstance(res[1], bytes) else str(res[1])
                left = left_of(a.scopes, res[2:])
                reservation = Reservation(tuple(buckets), amount, epoch=epoch, left=left)
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
            return Refused("rpm" if which == 1 else "tpm", _retry_after(cur, prev, frac, need, limit))
        return Refused("budget", scope=a.scopes[int(res[1]) - 1], left=left_of(a.scopes, res[2:]))

    async def settle(self, s: Settle) -> tuple[int, ...]:
        r = s.reservation
        keys: list[str] = []
        w, _ = _window(self.limits._clock())
        tokens = s.window is not None and s.token_delta != 0 and s.window >= w - 1
        nb = len(r.buckets) if r is not None else 0
        args: list[Any] = [nb, int(tokens), int(s.record is not None), len(s.successes)]
        if r is not None:
            keys += [self.budgets.prefix + b for b in r.buckets] + [self.budgets.epoch_key]
            args += [r.micros, to_micros(s.actual_usd), r.epoch or ""]
        if tokens:
            keys.append(self.limits._keys(s.key_id, s.window)[2])
            args.append(s.token_delta)
        if s.record is not None:
            data = json.dumps(s.record.to_dict())
            keys += [f"{self.log.p}ledger", f"{self.log.p}req:{s.record.id}"]
            args += [self.log.max_entries, data, self.log.request_ttl_s]
        for model, latency_ms in s.successes:
            keys += self.health._keys(model)
            args += [latency_ms, self.health.ewma_alpha, self.health.window]
        counters = await self._settle(keys=keys, args=args)
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
            got = await self.budgets.reserve(a.scopes, a.usd)
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
