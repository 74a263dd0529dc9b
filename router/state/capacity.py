"""Model capacity: in-flight slots and tokens per minute per model, shared by every replica.

A model's `max_concurrency` bounds the requests in flight on it across all replicas; its
`tpm_limit` bounds the tokens it is sent per minute (prompt + expected output counted when a
request is dispatched, corrected to the real usage when it ends). `try_acquire` admits a request
(a `Lease`) or says why not (`Full`); `release` gives the slot back, once per lease.

On Redis a model's slots are a sorted set of lease ids scored by their expiry (Redis's clock): the
admitting script first drops expired leases, so a replica that crashed holding slots gives them
back after the lease TTL; a replica renews the leases it still holds (`renew`). Tokens use the same
sliding-window counter as the per-key rate limits (router.state.ratelimit).
"""

from __future__ import annotations

import math
import secrets
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Protocol

from router.state.ratelimit import check, minute_window, retry_after


@dataclass(frozen=True)
class Limits:
    max_concurrency: int | None = None
    tpm: int | None = None

    def scaled(self, share: int) -> Limits:
        """Each of `share` replicas' part of these limits (rounded up: a model is never shut out)."""
        return Limits(
            None if self.max_concurrency is None else math.ceil(self.max_concurrency / share),
            None if self.tpm is None else math.ceil(self.tpm / share),
        )


@dataclass(eq=False)
class Lease:
    """One request's slot on a model and the tokens counted for it."""

    model: str
    id: str
    tokens: int
    window: int  # the minute its tokens were counted in (corrected there)
    offline: bool = False  # taken from the per-replica fallback during a Redis outage


@dataclass
class Full:
    reason: str  # "concurrency" | "tpm"
    retry_after_s: float = 1.0


class CapacityState(Protocol):
    async def try_acquire(self, model: str, limits: Limits, tokens: int, ttl_s: float) -> Lease | Full: ...

    async def release(self, lease: Lease, actual_tokens: int | None) -> None:
        """Free the slot; `actual_tokens` (None: keep the estimate) corrects the minute's count."""

    async def renew(self, leases: list[Lease], ttl_s: float) -> None:
        """Push the expiry of leases still in use `ttl_s` into the future."""

    async def in_flight(self, models: list[str]) -> dict[str, int]: ...


def _lease_id() -> str:
    return secrets.token_hex(8)


class MemoryCapacity:
    """One process's capacity (also the per-replica fallback during a Redis outage). Leases do
    not expire: the process that holds them is the one that releases them."""

    def __init__(self, clock=time.time):
        self._clock = clock
        self._slots: dict[str, set[str]] = defaultdict(set)
        self._tokens: dict[tuple[str, int], float] = {}

    async def try_acquire(self, model: str, limits: Limits, tokens: int, ttl_s: float) -> Lease | Full:
        slots = self._slots[model]
        if limits.max_concurrency is not None and len(slots) >= limits.max_concurrency:
            return Full("concurrency")
        w, frac = minute_window(self._clock())
        t = self._tokens
        d = check(0, 0, t.get((model, w), 0), t.get((model, w - 1), 0), frac, None, limits.tpm, tokens)
        if not d.allowed:
            return Full("tpm", d.retry_after_s)
        lease = Lease(model, _lease_id(), tokens, w)
        slots.add(lease.id)
        t[(model, w)] = t.get((model, w), 0) + tokens
        for k in [k for k in t if k[1] < w - 1]:
            del t[k]
        return lease

    async def release(self, lease: Lease, actual_tokens: int | None) -> None:
        self._slots[lease.model].discard(lease.id)
        w, _ = minute_window(self._clock())
        if actual_tokens is not None and lease.window >= w - 1:
            key = (lease.model, lease.window)
            self._tokens[key] = self._tokens.get(key, 0) + actual_tokens - lease.tokens

    async def renew(self, leases: list[Lease], ttl_s: float) -> None:
        return None

    async def in_flight(self, models: list[str]) -> dict[str, int]:
        return {m: len(self._slots.get(m, ())) for m in models}


# KEYS: slots zset, tokens this minute, tokens last minute.
# ARGV: max (-1 none), tpm (-1 none), tokens, frac, lease id, ttl seconds.
# Returns {0} admitted, {1} no free slot, {2, cur, prev} over tpm (counts for Retry-After).
_ACQUIRE = """
local max, tpm, tokens, frac = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if max >= 0 and redis.call('ZCARD', KEYS[1]) >= max then return {1} end
local tc, tp = tonumber(redis.call('GET', KEYS[2]) or '0'), tonumber(redis.call('GET', KEYS[3]) or '0')
if tpm >= 0 and tp * (1 - frac) + tc + tokens > tpm then return {2, tostring(tc), tostring(tp)} end
local ttl = tonumber(ARGV[6])
redis.call('ZADD', KEYS[1], now + ttl, ARGV[5])
redis.call('EXPIRE', KEYS[1], math.ceil(ttl) + 1)
if tokens ~= 0 then redis.call('INCRBY', KEYS[2], tokens); redis.call('EXPIRE', KEYS[2], 150) end
return {0}
"""

# KEYS: the slots zset of each lease. ARGV: ttl, then the lease ids (same order). Only leases
# still present are renewed (XX): one dropped as expired stays dropped.
_RENEW = """
local t = redis.call('TIME')
local at = tonumber(t[1]) + tonumber(t[2]) / 1e6 + tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, 'XX', at, ARGV[i + 1])
  redis.call('EXPIRE', key, math.ceil(tonumber(ARGV[1])) + 1)
end
return 0
"""

# KEYS: slots zset. Live leases (expiry after Redis's now).
_COUNT = """
local t = redis.call('TIME')
return redis.call('ZCOUNT', KEYS[1], '(' .. (tonumber(t[1]) + tonumber(t[2]) / 1e6), '+inf')
"""


class RedisCapacity:
    def __init__(self, redis, prefix: str = "moe:cap:", clock=time.time):
        self.redis = redis
        self.prefix = prefix
        self._clock = clock
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)
        self._count = redis.register_script(_COUNT)

    def _slots(self, model: str) -> str:
        return f"{self.prefix}{model}:slots"

    def _tokens(self, model: str, w: int) -> str:
        return f"{self.prefix}{model}:t:{w}"

    async def try_acquire(self, model: str, limits: Limits, tokens: int, ttl_s: float) -> Lease | Full:
        w, frac = minute_window(self._clock())
        lease_id = _lease_id()
        res = await self._acquire(
            keys=[self._slots(model), self._tokens(model, w), self._tokens(model, w - 1)],
            args=[
                -1 if limits.max_concurrency is None else limits.max_concurrency,
                -1 if limits.tpm is None else limits.tpm,
                tokens,
                frac,
                lease_id,
                ttl_s,
            ],
        )
        kind = int(res[0])
        if kind == 0:
            return Lease(model, lease_id, tokens, w)
        if kind == 1:
            return Full("concurrency")
        cur, prev = float(res[1]), float(res[2])
        return Full("tpm", math.ceil(retry_after(cur, prev, frac, tokens, limits.tpm)))

    async def release(self, lease: Lease, actual_tokens: int | None) -> None:
        w, _ = minute_window(self._clock())
        delta = 0 if actual_tokens is None else actual_tokens - lease.tokens
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(self._slots(lease.model), lease.id)
            if delta and lease.window >= w - 1:  # a minute no longer counted is left alone
                key = self._tokens(lease.model, lease.window)
                pipe.incrby(key, delta)
                pipe.expire(key, 150)
            await pipe.execute()

    async def renew(self, leases: list[Lease], ttl_s: float) -> None:
        if leases:
            await self._renew(
                keys=[self._slots(x.model) for x in leases], args=[ttl_s, *(x.id for x in leases)]
            )

    async def in_flight(self, models: list[str]) -> dict[str, int]:
        return {m: int(await self._count(keys=[self._slots(m)])) for m in models}
