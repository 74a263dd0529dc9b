"""A Redis outage degrades, never crashes; spend and records are reconciled when it returns."""

from __future__ import annotations

import asyncio

import openai
import pytest

from router.state import RedisStore, RequestRecord, StateUnavailable
from router.state.budgets import BudgetScope
from router.state.keys import new_key, parse_key
from tests.conftest import make_config
from tests.redis_server import RedisServer


def store_for(srv: RedisServer, budgets: str = "open") -> RedisStore:
    return RedisStore(srv.url, timeout_s=0.3, retry_every_s=0.1, budgets=budgets)


async def recovered(s: RedisStore) -> None:
    """Wait until the store, with Redis back, has written what it buffered."""
    await asyncio.sleep(0.15)
    assert await s.ping() is True
    for _ in range(50):
        if not s.degraded:
            break
        await asyncio.sleep(0.05)


async def test_outage_degrades_each_concern_then_reconciles(private_redis, tmp_path):
    s = store_for(private_redis)
    raw, rec = new_key("known")
    await s.keys.put(rec)
    key_id = parse_key(raw)[0]
    assert (await s.keys.get(key_id)).name == "known"
    scope = [BudgetScope("key:x", 10.0, "daily")]

    private_redis.stop()
    assert await s.ping() is False and s.degraded
    assert (await s.keys.get(key_id)).name == "known"  # last known good
    with pytest.raises(StateUnavailable):
        await s.keys.get("ffffffffffff")  # never seen: cannot be verified
    r = await s.budgets.reserve(scope, 0.5)
    assert r.offline
    await s.budgets.settle(r, 0.3)
    await s.log.record_request(RequestRecord(id="during", model="m", policy=None, prompt="p", cost_usd=0.3))
    assert (await s.log.get_request("during")).cost_usd == 0.3  # served from the buffer
    assert (await s.limits.hit("k", 1, None, 0)).allowed and not (await s.limits.hit("k", 1, None, 0)).allowed
    assert await s.cache.get("anything") is None
    await s.health.record_failure("m")
    assert "m" in await s.health.snapshot(["m"])

    private_redis.start()  # back (empty: this test server keeps nothing on disk)
    await recovered(s)
    assert not s.degraded
    assert await s.budgets.spent(scope) == pytest.approx([0.3])  # the spend made during the outage
    assert [r.id async for r in s.log.iter_requests()] == ["during"]
    await s.aclose()


async def test_fail_closed_refuses_budgeted_work(private_redis):
    s = store_for(private_redis, budgets="closed")
    private_redis.stop()
    with pytest.raises(StateUnavailable):
        await s.budgets.reserve([BudgetScope("key:x", 1.0)], 0.1)
    await s.aclose()


async def test_gateway_keeps_serving_through_an_outage(private_redis, upstream, start_gateway):
    cfg = make_config(upstream.base_url, state=private_redis.url, auth={"require_keys": True})
    gw = start_gateway(cfg, store=RedisStore(private_redis.url, timeout_s=0.3, retry_every_s=0.1))
    admin = store_for(private_redis)
    raw, rec = new_key("ops", budget_usd=1.0)
    await admin.keys.put(rec)
    c = openai.OpenAI(base_url=gw.url + "/v1", api_key=raw, max_retries=0, timeout=30)
    msgs = [{"role": "user", "content": "hello"}]
    first = c.chat.completions.create(model="router", messages=msgs)

    private_redis.stop()
    during = c.chat.completions.with_raw_response.create(model="router", messages=msgs)
    assert during.status_code == 200
    ready = gw.get("/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "degraded"
    rate = {"json": {"id": during.parse().id, "rating": 1.0}, "headers": {"authorization": f"Bearer {raw}"}}
    fb = gw.post("/v1/feedback", **rate)
    # the rating it would replace is only known to Redis: refused, to be sent again, never lost
    assert fb.status_code == 503 and fb.json()["error"]["code"] == "state_unavailable"
    unknown = openai.OpenAI(base_url=gw.url + "/v1", api_key=new_key("x")[0], max_retries=0)
    with pytest.raises(openai.InternalServerError) as e:
        unknown.chat.completions.create(model="router", messages=msgs)
    assert e.value.status_code == 503 and e.value.body["code"] == "state_unavailable"
    assert "moe_router_state_errors_total" in gw.get("/metrics", headers=rate["headers"]).text

    private_redis.start()
    await asyncio.sleep(0.2)
    await admin.keys.put(rec)  # the test server came back empty; a production Redis keeps its keys
    c.chat.completions.create(model="router", messages=msgs)  # first call after the outage reconciles
    for _ in range(50):
        ids = [r.id async for r in admin.log.iter_requests()]
        if during.parse().id in ids:
            break
        await asyncio.sleep(0.05)
    assert during.parse().id in ids and first.id not in ids  # the restarted server lost only pre-outage data
    assert gw.post("/v1/feedback", **rate).status_code == 200  # the client's retry lands
    assert [f.request_id async for f in admin.log.iter_feedback()] == [during.parse().id]
    assert gw.get("/ready").json()["status"] == "ok"
    await admin.aclose()


async def test_spend_in_flight_across_an_empty_restart_is_booked_in_full(private_redis):
    s = store_for(private_redis)
    scope = [BudgetScope("key:y", 10.0, "daily")]
    kept = await s.budgets.reserve(scope, 0.5)  # Redis keeps its data: the delta is settled
    await s.budgets.settle(kept, 0.2)
    assert await s.budgets.spent(scope) == pytest.approx([0.2])
    in_flight = await s.budgets.reserve(scope, 0.5)
    private_redis.stop()
    await s.budgets.settle(in_flight, 0.3)  # the answer ends while Redis is down: queued
    private_redis.start()  # back empty: the 0.5 reservation (and the 0.2) went with it
    await recovered(s)
    # the request's real cost is booked in full, not as 0.3 - 0.5 on an empty counter
    assert await s.budgets.spent(scope) == pytest.approx([0.3])
    late = await s.budgets.reserve(scope, 1.0)
    private_redis.client().flushdb()  # a restart between reserve and settle, without an outage seen
    await s.budgets.settle(late, 0.4)
    assert await s.budgets.spent(scope) == pytest.approx([0.4])
    await s.aclose()
