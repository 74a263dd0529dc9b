"""One set of tests for both state implementations: in-process and real Redis."""

from __future__ import annotations

import asyncio
import uuid

import numpy as np
import pytest
import redis.asyncio as aioredis

from router.health import CLOSED, HALF_OPEN, OPEN
from router.state import FeedbackRecord, HealthOptions, MemoryStore, RedisStore, RequestRecord
from router.state.budgets import BudgetScope, Reservation
from router.state.keys import new_key, parse_key
from router.state.ratelimit import MemoryRateLimiter, RedisRateLimiter

REDIS_URL = "redis://127.0.0.1:6379/0"


class Clock:
    def __init__(self, t: float = 1_700_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def prefix():
    return f"test:{uuid.uuid4().hex[:8]}:"


@pytest.fixture(params=["memory", "redis"])
async def store(request, prefix):
    if request.param == "memory":
        s = MemoryStore(HealthOptions(failure_threshold=2, reset_after_s=60))
        yield s
        return
    s = RedisStore(REDIS_URL, HealthOptions(failure_threshold=2, reset_after_s=60), prefix=prefix)
    yield s
    keys = [k async for k in s.redis.scan_iter(match=prefix + "*")]
    if keys:
        await s.redis.delete(*keys)
    await s.aclose()


async def test_keys_roundtrip_and_revoke(store):
    raw, rec = new_key("alice", budget_usd=5, rpm=10, models=["cheap"])
    await store.keys.put(rec)
    key_id, secret = parse_key(raw)
    got = await store.keys.get(key_id)
    assert got.name == "alice" and got.budget_usd == 5 and got.rpm == 10 and got.models == ["cheap"]
    assert got.verify(secret) and not got.verify(secret + "x")
    assert (await store.keys.find("alice")).id == key_id
    with pytest.raises(ValueError, match="already exists"):
        await store.keys.put(new_key("alice")[1])
    assert [k.name for k in await store.keys.all()] == ["alice"]
    assert (await store.keys.revoke("alice")).revoked
    assert not (await store.keys.get(key_id)).verify(secret)
    assert await store.keys.revoke("alice") is None
    await store.keys.put(new_key("alice")[1])  # the name is free again


async def test_raw_key_is_never_stored(prefix):
    s = RedisStore(REDIS_URL, prefix=prefix)
    raw, rec = new_key("bob")
    await s.keys.put(rec)
    secret = parse_key(raw)[1].encode()
    found = []
    async for k in s.redis.scan_iter(match=prefix + "*"):
        t = (await s.redis.type(k)).decode()
        vals = (
            [await s.redis.get(k)]
            if t == "string"
            else list((await s.redis.hgetall(k)).values())
            if t == "hash"
            else []
        )
        found += [k for v in vals if v and secret in v]
    await s.redis.delete(*[k async for k in s.redis.scan_iter(match=prefix + "*")])
    await s.aclose()
    assert found == []


async def test_budget_reserve_settle_and_refuse(store):
    scopes = [BudgetScope("key:a", 1.0, "daily"), BudgetScope("global", 10.0, "monthly")]
    r = await store.budgets.reserve(scopes, 0.6)
    assert isinstance(r, Reservation) and r.usd == pytest.approx(0.6)
    refused = await store.budgets.reserve(scopes, 0.5)
    assert refused == scopes[0]  # the key's budget is the one that refuses
    await store.budgets.settle(r, 0.25)  # the answer cost less than reserved
    assert await store.budgets.spent(scopes) == pytest.approx([0.25, 0.25])
    assert isinstance(await store.budgets.reserve(scopes, 0.7), Reservation)
    assert await store.budgets.spent(scopes) == pytest.approx([0.95, 0.95])


async def test_budget_reservations_are_atomic_under_concurrency(store):
    scopes = [BudgetScope("key:c", 1.0, "total")]
    results = await asyncio.gather(*(store.budgets.reserve(scopes, 0.1) for _ in range(50)))
    assert sum(isinstance(r, Reservation) for r in results) == 10
    assert await store.budgets.spent(scopes) == pytest.approx([1.0])


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_rate_limit_sliding_window(kind, prefix):
    clock = Clock(1_699_999_980.0 + 40)  # 40 s into a minute (1_699_999_980 is a multiple of 60)
    r = aioredis.from_url(REDIS_URL)
    lim = MemoryRateLimiter(clock) if kind == "memory" else RedisRateLimiter(r, prefix, clock)
    try:
        assert [(await lim.hit("k", 3, None, 0)).allowed for _ in range(4)] == [True, True, True, False]
        d = await lim.hit("k", 3, None, 0)
        assert d.limit == "rpm" and d.retry_after_s >= 1
        clock.t += 30  # next minute, 10 s in: the previous minute still weighs 5/6 * 3 = 2.5
        assert (await lim.hit("k", 3, None, 0)).allowed is False
        clock.t += 15  # 25 s in: weighs 1.75 -> one more fits
        assert (await lim.hit("k", 3, None, 0)).allowed is True
        # tokens: 100 per minute, corrected after the fact
        first = await lim.hit("t", None, 100, 80)
        assert first.allowed
        assert (await lim.hit("t", None, 100, 30)).limit == "tpm"
        await lim.adjust_tokens("t", -60, first.window)  # the first request really used 20
        assert (await lim.hit("t", None, 100, 30)).allowed
    finally:
        keys = [k async for k in r.scan_iter(match=prefix + "*")]
        if keys:
            await r.delete(*keys)
        await r.aclose()


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_a_token_correction_goes_to_the_minute_that_was_charged(kind, prefix):
    clock = Clock(1_699_999_980.0 + 59)  # one second before the minute ends
    r = aioredis.from_url(REDIS_URL)
    lim = MemoryRateLimiter(clock) if kind == "memory" else RedisRateLimiter(r, prefix, clock)
    try:
        d = await lim.hit("t", None, 1000, 900)  # admitted with 900 tokens estimated ...
        clock.t += 2  # ... answered in the next minute, having used 100
        await lim.adjust_tokens("t", -800, d.window)
        # the new minute was not credited 800 tokens: it sees only the previous one's 100, weighted
        assert (await lim.hit("t", None, 1000, 960)).limit == "tpm"
        assert (await lim.hit("t", None, 1000, 890)).allowed
        if kind == "redis":  # every rate key expires
            for k in [k async for k in r.scan_iter(match=prefix + "*")]:
                assert await r.ttl(k) > 0
    finally:
        keys = [k async for k in r.scan_iter(match=prefix + "*")]
        if keys:
            await r.delete(*keys)
        await r.aclose()


async def test_log_records_and_feedback(store):
    rec = RequestRecord(id="r1", model="m", policy="p", prompt="hi", cost_usd=0.01, key="alice")
    await store.log.record_event("reserve", {"id": "r1", "usd": 0.02})
    await store.log.record_request(rec)
    assert (await store.log.get_request("r1")).cost_usd == 0.01
    assert await store.log.get_request("nope") is None
    await store.log.record_feedback(FeedbackRecord("r1", 0.9, model="m"))
    assert [r.id async for r in store.log.iter_requests()] == ["r1"]
    assert [f.rating async for f in store.log.iter_feedback()] == [0.9]
    assert [e["kind"] async for e in store.log.iter_events()] == ["reserve", "request"]


async def test_exact_and_semantic_cache(store):
    await store.cache.put("k1", {"model": "m", "message": {"content": "x"}}, ttl_s=60)
    assert (await store.cache.get("k1"))["model"] == "m"
    assert await store.cache.get("k2") is None
    rng = np.random.default_rng(0)
    v = rng.normal(size=384).astype(np.float32)
    v /= np.linalg.norm(v)
    near = v + 0.005 * rng.normal(size=384).astype(np.float32)  # cosine ~0.995
    near /= np.linalg.norm(near)
    far = rng.normal(size=384).astype(np.float32)
    far /= np.linalg.norm(far)
    await store.cache.add("scopeA", v, {"model": "m", "n": 1}, ttl_s=60, max_entries=8)
    hit = await store.cache.similar("scopeA", near, 0.95, ttl_s=60)
    assert hit["n"] == 1 and hit["similarity"] > 0.95
    assert await store.cache.similar("scopeA", far, 0.95, ttl_s=60) is None
    assert await store.cache.similar("scopeB", near, 0.95, ttl_s=60) is None  # scopes are isolated


async def test_semantic_cache_keeps_only_recent_entries(store):
    vecs = np.eye(384, dtype=np.float32)[:5]
    for i, v in enumerate(vecs):
        await store.cache.add("s", v, {"i": i}, ttl_s=60, max_entries=3)
    assert await store.cache.similar("s", vecs[0], 0.99, ttl_s=60) is None
    assert (await store.cache.similar("s", vecs[4], 0.99, ttl_s=60))["i"] == 4


async def test_shared_breaker_and_latency(store):
    h = store.health
    await h.record_success("m", 100)
    await h.record_success("m", 300)
    s = (await h.snapshot(["m"]))["m"]
    assert s.ewma_ms == pytest.approx(0.2 * 300 + 0.8 * 100) and s.samples == 2
    await h.record_failure("m")
    assert (await h.snapshot(["m"]))["m"].breaker == CLOSED
    await h.record_failure("m")
    assert (await h.snapshot(["m"]))["m"].breaker == OPEN
    assert not await h.acquire("m")


async def test_plans_see_another_replicas_breaker_within_the_snapshot_ttl_and_their_own_at_once(prefix):
    from router.account import RequestHealth
    from router.state.redis_health import RedisHealth

    r1, r2 = aioredis.from_url(REDIS_URL), aioredis.from_url(REDIS_URL)
    here = RequestHealth(RedisHealth(r1, failure_threshold=1, reset_after_s=60, prefix=prefix), ttl_s=0.3)
    other = RedisHealth(r2, failure_threshold=1, reset_after_s=60, prefix=prefix)
    try:
        assert (await here.snapshot(["m", "n"]))["m"].breaker == CLOSED
        await other.record_failure("m")  # another replica opens m's breaker
        assert (await here.snapshot(["m", "n"]))["m"].breaker == CLOSED  # this replica's snapshot
        await asyncio.sleep(0.3)
        assert (await here.snapshot(["m", "n"]))["m"].breaker == OPEN  # seen once it is older
        assert (await here.snapshot(["m", "n"]))["n"].breaker == CLOSED
        await here.record_failure("n")  # a failure here drops the snapshot: seen at once
        assert (await here.snapshot(["m", "n"]))["n"].breaker == OPEN
    finally:
        await r1.delete(*[k async for k in r1.scan_iter(match=prefix + "*")])
        await r1.aclose()
        await r2.aclose()


async def test_redis_breaker_is_shared_between_replicas(prefix):
    clock = Clock()
    from router.state.redis_health import RedisHealth

    r1, r2 = aioredis.from_url(REDIS_URL), aioredis.from_url(REDIS_URL)
    a = RedisHealth(r1, failure_threshold=2, reset_after_s=10, prefix=prefix, clock=clock)
    b = RedisHealth(r2, failure_threshold=2, reset_after_s=10, prefix=prefix, clock=clock)
    try:
        await a.record_failure("m")
        await b.record_failure("m")  # failures from two replicas add up
        assert (await a.snapshot(["m"]))["m"].breaker == OPEN
        assert not await b.acquire("m")
        clock.t += 10
        assert (await b.snapshot(["m"]))["m"].breaker == HALF_OPEN
        assert await b.acquire("m")  # b wins the probe ...
        assert not await a.acquire("m")  # ... so a may not send
        await b.record_success("m", 42)
        assert await a.acquire("m") and (await a.snapshot(["m"]))["m"].breaker == CLOSED
    finally:
        await r1.delete(*[k async for k in r1.scan_iter(match=prefix + "*")])
        await r1.aclose()
        await r2.aclose()
