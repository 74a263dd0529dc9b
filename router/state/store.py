"""The state a gateway keeps, as one bundle: in-process (`MemoryStore`) or shared (`RedisStore`).

Both expose the same components, so the engine never knows which it has:
`keys`, `budgets`, `limits` (rate limits), `log` (ledger, request index, feedback), `cache`
(exact + semantic), `health` (latency + circuit breakers), `bandits` (online policies' state) and
`sessions` (conversation affinity), `responses` (stored Responses-API responses, as chains), `capacity` (models'
in-flight slots and tokens per minute) and `money` (a request's admission and settlement, each one
round trip on Redis: router.state.admission).
"""

from __future__ import annotations

from dataclasses import dataclass

from router.health import MemoryHealth, ModelHealth
from router.metrics import Metrics
from router.state.admission import REPLAY_S, ComposedMoney, RedisMoney
from router.state.bandit import BanditState, MemoryBanditState, RedisBanditState
from router.state.budgets import APPLIED_TTL_S, Budgets, MemoryBudgets, RedisBudgets
from router.state.cache import MemoryCache, RedisCache, ResponseCache
from router.state.capacity import CapacityState, MemoryCapacity, RedisCapacity
from router.state.degrade import (
    Outage,
    ResilientBudgets,
    ResilientCache,
    ResilientCapacity,
    ResilientHealth,
    ResilientKeys,
    ResilientLimiter,
    ResilientLog,
    ResilientMoney,
    ResilientSessions,
)
from router.state.keys import KeyStore, MemoryKeys, RedisKeys
from router.state.log import MemoryLog, RedisLog, RequestLog
from router.state.ratelimit import MemoryRateLimiter, RateLimiter, RedisRateLimiter
from router.state.responses import MemoryResponses, RedisResponses, ResilientResponses, StoredResponses
from router.state.sessions import MemorySessions, RedisSessions, Sessions


@dataclass
class HealthOptions:
    failure_threshold: int = 5
    reset_after_s: float = 30.0
    ewma_alpha: float = 0.2
    window: int = 200

    def memory(self) -> MemoryHealth:
        return MemoryHealth(self.failure_threshold, self.reset_after_s, self.ewma_alpha, self.window)


class Store:
    keys: KeyStore
    budgets: Budgets
    limits: RateLimiter
    log: RequestLog
    cache: ResponseCache
    health: ModelHealth
    bandits: BanditState
    sessions: Sessions
    responses: StoredResponses
    capacity: CapacityState
    money: ComposedMoney | ResilientMoney
    kind = "memory"

    @property
    def degraded(self) -> bool:
        return False

    async def ping(self) -> bool:
        return True

    async def aclose(self) -> None:
        pass


class MemoryStore(Store):
    def __init__(self, health: HealthOptions | None = None):
        self.keys = MemoryKeys()
        self.budgets = MemoryBudgets()
        self.limits = MemoryRateLimiter()
        self.log = MemoryLog()
        self.cache = MemoryCache()
        self.health = (health or HealthOptions()).memory()
        self.bandits = MemoryBanditState()
        self.sessions = MemorySessions()
        self.responses = MemoryResponses()
        self.capacity = MemoryCapacity()
        self.money = ComposedMoney(self.keys, self.limits, self.budgets, self.log, self.health)


class RedisStore(Store):
    kind = "redis"

    def __init__(
        self,
        url: str,
        health: HealthOptions | None = None,
        *,
        metrics: Metrics | None = None,
        timeout_s: float = 0.5,
        budgets: str = "allowance",  # outage behaviour of budgets: allowance | open | closed
        allowance: float = 0.1,
        retry_every_s: float = 2.0,
        spill_path: str | None = None,
        prefix: str = "moe:",
        max_entries: int = 1_000_000,
        request_ttl_s: int = 7 * 86400,
        capacity_outage_share: int = 1,  # replicas each model's capacity is divided among in an outage
        replay_s: float = REPLAY_S,  # a money script whose answer timed out is asked again this long
        applied_ttl_s: int = APPLIED_TTL_S,  # how long an admission's / settlement's id is remembered
    ):
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import ConnectionError as RedisConnectionError

        health = health or HealthOptions()
        self.url = url
        self.prefix = prefix
        # One immediate retry on a fresh connection: a pooled connection goes stale when Redis
        # restarts. Timeouts are not retried: the outage logic decides what a slow Redis means.
        self.redis = aioredis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )
        self.outage = Outage(metrics, retry_every_s)
        r, o = self.redis, self.outage
        keys, limits = RedisKeys(r, prefix), RedisRateLimiter(r, prefix + "rate:")
        budgets_ = RedisBudgets(r, prefix + "budget:", applied_ttl_s)
        log_ = RedisLog(r, prefix, max_entries, request_ttl_s)
        self.keys = ResilientKeys(keys, o)
        self.budgets = ResilientBudgets(budgets_, o, budgets, allowance)
        self.limits = ResilientLimiter(limits, o)
        self.log = ResilientLog(log_, o, spill_path=spill_path)
        self.cache = ResilientCache(RedisCache(r, prefix + "cache:"), o)
        from router.state.redis_health import RedisHealth

        shared = RedisHealth(
            r, health.failure_threshold, health.reset_after_s, health.ewma_alpha, health.window, prefix=prefix
        )
        self.health = ResilientHealth(shared, health.memory(), o)
        self.money = ResilientMoney(
            RedisMoney(r, keys, limits, budgets_, log_, shared, replay_s, metrics),
            ComposedMoney(self.keys, self.limits, self.budgets, self.log, self.health),
            o,
            self.keys,
            self.budgets,
            self.log,
        )
        self.bandits = RedisBanditState(r, o, prefix + "bandit:")
        self.sessions = ResilientSessions(RedisSessions(r, prefix + "sess:"), o)
        self.responses = ResilientResponses(RedisResponses(r, prefix), o)
        self.capacity = ResilientCapacity(RedisCapacity(r, prefix + "cap:"), o, capacity_outage_share)

    @property
    def degraded(self) -> bool:
        return self.outage.degraded

    async def ping(self) -> bool:
        async def up():
            return bool(await self.redis.ping())

        async def down():
            return False

        return await self.outage.call("ping", up, down)

    async def aclose(self) -> None:
        await self.redis.aclose()
