"""Spend budgets per key, team and globally, in daily / monthly / total windows.

Before dispatch the engine *reserves* the request's predicted maximum cost in every scope that
applies; the reservation fails as a whole if any scope would go over its limit (atomic: one Lua
script on Redis). After the answer it *settles* the reservation to the real cost (or refunds it
on failure). Amounts are integer micro-dollars so concurrent increments never drift.

On Redis a reservation also carries the store's *epoch*, a token kept in Redis beside the
counters. Settling adds `actual - reserved` while the epoch is the same, and the whole `actual`
when it is not: a Redis that restarted empty lost the reservation with the counters, so a delta
would under-count the spend of every request in flight across the restart.

Every reservation and settlement carries an id (the request's) and is applied once: the script
keeps a marker per id (`applied_key`, kept `APPLIED_TTL_S`) and answers "already applied" to a
second application. A timeout leaves the outcome unknown (Redis may have run the script and only
the answer was lost), so the caller asks again with the same id instead of applying it twice
(router.state.admission, docs/state.md "Exactly once").
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

MICROS = 1_000_000
TTL = {"daily": 3 * 86400, "monthly": 40 * 86400, "total": 0}
APPLIED_TTL_S = 86400  # how long an id's marker outlives its application (longer than any replay)


def to_micros(usd: float) -> int:
    return int(round(usd * MICROS))


@dataclass(frozen=True)
class BudgetScope:
    id: str  # key:<id> | team:<name> | global
    limit_usd: float
    window: str = "monthly"  # daily | monthly | total

    def bucket(self, now: float | None = None) -> str:
        t = time.gmtime(now if now is not None else time.time())
        period = {"daily": time.strftime("%Y-%m-%d", t), "monthly": time.strftime("%Y-%m", t), "total": "all"}
        return f"{self.id}:{period[self.window]}"


@dataclass
class Reservation:
    buckets: tuple[str, ...]
    micros: int
    offline: bool = False  # made while shared state was unreachable (fail-open): nothing was reserved
    epoch: str | None = None  # the Redis data it was reserved in (see the module docstring)
    left: tuple[int, ...] = ()  # micro-USD left in each bucket once reserved (an outage's allowance)
    id: str = ""  # the request's: its admission and settlement are each applied once per id

    @property
    def usd(self) -> float:
        return self.micros / MICROS


class Budgets(Protocol):
    async def reserve(
        self, scopes: Sequence[BudgetScope], usd: float, id: str = ""
    ) -> Reservation | BudgetScope:
        """A reservation, or the first scope that cannot afford `usd`."""

    async def settle(self, reservation: Reservation, actual_usd: float) -> None: ...

    async def spent(self, scopes: Sequence[BudgetScope]) -> list[float]:
        """USD spent (including outstanding reservations) in each scope's current window."""


async def remaining(budgets: Budgets, scopes: Sequence[BudgetScope]) -> float | None:
    """The smallest amount still affordable across `scopes` (None when unlimited)."""
    if not scopes:
        return None
    spent = await budgets.spent(scopes)
    return min(s.limit_usd - x for s, x in zip(scopes, spent, strict=True))


class MemoryBudgets:
    def __init__(self) -> None:
        self._spent: dict[str, int] = {}

    async def reserve(
        self, scopes: Sequence[BudgetScope], usd: float, id: str = ""
    ) -> Reservation | BudgetScope:
        amount = to_micros(usd)
        buckets = [s.bucket() for s in scopes]
        for s, b in zip(scopes, buckets, strict=True):
            if self._spent.get(b, 0) + amount > to_micros(s.limit_usd):
                return s
        for b in buckets:
            self._spent[b] = self._spent.get(b, 0) + amount
        left = tuple(to_micros(s.limit_usd) - self._spent[b] for s, b in zip(scopes, buckets, strict=True))
        return Reservation(tuple(buckets), amount, left=left, id=id)

    async def settle(self, reservation: Reservation, actual_usd: float) -> None:
        delta = to_micros(actual_usd) - reservation.micros
        for b in reservation.buckets:
            self._spent[b] = self._spent.get(b, 0) + delta

    async def spent(self, scopes: Sequence[BudgetScope]) -> list[float]:
        return [self._spent.get(s.bucket(), 0) / MICROS for s in scopes]


# KEYS: bucket keys, the epoch key, the id's marker. ARGV[1]: amount; ARGV[1+i]: limit of KEYS[i];
# ARGV[1+n+i]: ttl of KEYS[i] (0 = none); ARGV[2+2n]: a new epoch token, used if there is none;
# ARGV[3+2n]: the marker's TTL. Returns {0, epoch, counters...} when reserved in every bucket (the
# counters after reserving; also when the id was already reserved), else {the 1-based index of the
# first bucket that refused, epoch}.
_RESERVE = """
local n = #KEYS - 2
local epoch = redis.call('GET', KEYS[n + 1])
if not epoch then
  epoch = ARGV[2 + 2 * n]
  redis.call('SET', KEYS[n + 1], epoch)
end
local out = {0, epoch}
if redis.call('EXISTS', KEYS[n + 2]) == 1 then
  for i = 1, n do out[2 + i] = tonumber(redis.call('GET', KEYS[i]) or '0') end
  return out
end
local amount = tonumber(ARGV[1])
for i = 1, n do
  local cur = tonumber(redis.call('GET', KEYS[i]) or '0')
  if cur + amount > tonumber(ARGV[1 + i]) then return {i, epoch} end
end
for i = 1, n do
  out[2 + i] = redis.call('INCRBY', KEYS[i], amount)
  local ttl = tonumber(ARGV[1 + n + i])
  if ttl > 0 and redis.call('TTL', KEYS[i]) < 0 then redis.call('EXPIRE', KEYS[i], ttl) end
end
redis.call('SET', KEYS[n + 2], 'reserved:' .. epoch .. ':' .. ARGV[1], 'EX', ARGV[3 + 2 * n])
return out
"""

# KEYS: bucket keys, the epoch key, the id's marker. ARGV: reserved micros, actual micros, the
# reservation's epoch, the marker's TTL. Returns the amount added, or false when already settled.
_SETTLE = """
local n = #KEYS - 2
if redis.call('GET', KEYS[n + 2]) == 'settled' then return false end
local add = tonumber(ARGV[2])
if redis.call('GET', KEYS[n + 1]) == ARGV[3] then add = add - tonumber(ARGV[1]) end
if add ~= 0 then
  for i = 1, n do redis.call('INCRBY', KEYS[i], add) end
end
redis.call('SET', KEYS[n + 2], 'settled', 'EX', ARGV[4])
return add
"""

# KEYS: bucket keys, the epoch key, the id's marker. ARGV: the marker's TTL. An admission whose
# answer never came (it may or may not have run): give back what it reserved, if it did, and mark
# the id `voided`, so the admission, should it still arrive, applies nothing (the id's settlement
# still applies once). Returns micros given back.
_VOID = """
local n = #KEYS - 2
local mark = redis.call('GET', KEYS[n + 2])
if mark == 'settled' or mark == 'voided' then return 0 end
redis.call('SET', KEYS[n + 2], 'voided', 'EX', ARGV[1])
if not mark or string.sub(mark, 1, 9) ~= 'reserved:' then return 0 end
local epoch, amount = string.match(mark, '^reserved:(.*):(%d+)$')
if redis.call('GET', KEYS[n + 1]) ~= epoch then return 0 end
for i = 1, n do redis.call('INCRBY', KEYS[i], -tonumber(amount)) end
return tonumber(amount)
"""


class RedisBudgets:
    """Key layout: `<prefix><bucket>` the counters, `<prefix>epoch`, `<prefix>applied:<id>` the
    id's marker: `reserved:<epoch>:<micros>` (or `admitted`, without a budget) once admitted,
    `voided` once an admission whose answer was lost is given back, `settled` once settled."""

    def __init__(self, redis, prefix: str = "moe:budget:", applied_ttl_s: int = APPLIED_TTL_S):
        self.redis = redis
        self.prefix = prefix
        self.applied_ttl_s = applied_ttl_s
        self._reserve = redis.register_script(_RESERVE)
        self._settle = redis.register_script(_SETTLE)
        self._void = redis.register_script(_VOID)
        self.epoch_key = prefix + "epoch"

    def bucket_keys(self, buckets: Sequence[str]) -> list[str]:
        return [self.prefix + b for b in buckets]

    def applied_key(self, id: str) -> str:
        """The marker that makes applying `id` twice a no-op (an empty id gets a fresh one: once)."""
        return f"{self.prefix}applied:{id or uuid.uuid4().hex}"

    async def reserve(
        self, scopes: Sequence[BudgetScope], usd: float, id: str = ""
    ) -> Reservation | BudgetScope:
        amount = to_micros(usd)
        buckets = [s.bucket() for s in scopes]
        args = [
            amount,
            *(to_micros(s.limit_usd) for s in scopes),
            *(TTL[s.window] for s in scopes),
            uuid.uuid4().hex,
            self.applied_ttl_s,
        ]
        keys = [*self.bucket_keys(buckets), self.epoch_key, self.applied_key(id)]
        refused, epoch, *counters = await self._reserve(keys=keys, args=args)
        if int(refused):
            return scopes[int(refused) - 1]
        left = tuple(to_micros(s.limit_usd) - int(c) for s, c in zip(scopes, counters, strict=True))
        return Reservation(tuple(buckets), amount, epoch=epoch.decode(), left=left, id=id)

    async def settle(self, reservation: Reservation, actual_usd: float) -> bool:
        """Settle once per reservation id; False when it was already settled."""
        keys = [*self.bucket_keys(reservation.buckets), self.epoch_key, self.applied_key(reservation.id)]
        args = [reservation.micros, to_micros(actual_usd), reservation.epoch or "", self.applied_ttl_s]
        return await self._settle(keys=keys, args=args) is not None

    async def void(self, id: str, buckets: Sequence[str]) -> int:
        """Undo the admission `id` if it ran (its answer was lost) and close the id; micros given back."""
        keys = [*self.bucket_keys(buckets), self.epoch_key, self.applied_key(id)]
        return int(await self._void(keys=keys, args=[self.applied_ttl_s]))

    async def spent(self, scopes: Sequence[BudgetScope]) -> list[float]:
        if not scopes:
            return []
        vals = await self.redis.mget(self.bucket_keys([s.bucket() for s in scopes]))
        return [int(v or 0) / MICROS for v in vals]
