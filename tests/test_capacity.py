"""Capacity-aware routing: a model at its `max_concurrency` / `tpm_limit` is skipped for the next
candidate (a spill), slots are counted at the real upstream, shared across replicas on Redis, and
always given back (errors, timeouts, dropped streams)."""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import redis as redis_sync
import yaml

from router.capacity import Capacity
from router.config import ModelSpec
from router.metrics import Metrics
from router.state import RedisStore
from router.state.capacity import Full, Lease, Limits, MemoryCapacity, RedisCapacity
from tests.conftest import make_config, pool
from tests.support import Replica, wait_for

ASK = {"model": "router", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 20}


def limited(base_url: str, **limits: dict) -> list[dict]:
    """The test pool with capacity limits per model: limited(url, cheap={"max_concurrency": 2})."""
    return [m | limits.get(m["name"], {}) for m in pool(base_url)]


def config(base_url: str, limits: dict, **sections):
    sections.setdefault("routing", {"default_policy": "cheapest"})  # ranks cheap, coder, big
    return make_config(base_url, models=limited(base_url, **limits), **sections)


def post_many(url: str, n: int, body: dict = ASK) -> list[httpx.Response]:
    with ThreadPoolExecutor(n) as ex:
        return list(
            ex.map(lambda _: httpx.post(url + "/v1/chat/completions", json=body, timeout=30), range(n))
        )


def spills(engine, model: str, reason: str) -> float:
    v = engine.metrics.registry.get_sample_value(
        "moe_router_spillover_total", {"model": model, "reason": reason}
    )
    return v or 0.0


def slots(engine) -> dict[str, int]:
    """In-flight slots the (in-memory) capacity state holds, per limited model."""
    return asyncio.run(engine.store.capacity.in_flight(list(engine.capacity.limits)))


def test_config_rejects_bad_limits(upstream):
    with pytest.raises(ValueError):
        config(upstream.base_url, {"cheap": {"max_concurrency": 0}})
    with pytest.raises(ValueError):
        config(upstream.base_url, {"cheap": {"tpm_limit": -5}})


def test_a_full_model_spills_to_the_next_candidate(upstream, start_gateway):
    upstream.behave("cheap", delay=0.6)
    gw = start_gateway(config(upstream.base_url, {"cheap": {"max_concurrency": 2}}))
    responses = post_many(gw.url, 8)
    assert [r.status_code for r in responses] == [200] * 8
    assert upstream.peak_in_flight("cheap") <= 2  # counted at the upstream itself
    on_cheap = [r for r in responses if r.headers["x-moe-router-model"] == "cheap"]
    spilled = [r for r in responses if r.headers["x-moe-router-model"] != "cheap"]
    assert 1 <= len(on_cheap) <= 2 and len(spilled) >= 6
    for r in spilled:
        assert r.headers["x-moe-router-model"] == "coder"  # the next-best candidate
        assert r.headers["x-moe-router-spilled"] == "cheap:concurrency"
        assert r.headers["x-moe-router-fallbacks"] == "cheap"  # still a plain list of models
    for r in on_cheap:
        assert "x-moe-router-spilled" not in r.headers
    assert spills(gw.engine, "cheap", "concurrency") == len(spilled)
    assert wait_for(lambda: slots(gw.engine) == {"cheap": 0})
    assert gw.engine.metrics.registry.get_sample_value("moe_router_in_flight", {"model": "cheap"}) == 0
    # with its slots free again the best model answers
    assert post_many(gw.url, 1)[0].headers["x-moe-router-model"] == "cheap"


def test_every_candidate_full_answers_429_capacity_exhausted(upstream, start_gateway):
    for m in ("cheap", "coder", "big"):
        upstream.behave(m, delay=0.8)
    one = {"max_concurrency": 1}
    gw = start_gateway(config(upstream.base_url, {"cheap": one, "coder": one, "big": one}))
    responses = post_many(gw.url, 5)
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    assert sorted(r.headers["x-moe-router-model"] for r in ok) == ["big", "cheap", "coder"]
    assert len(refused) == 2
    for r in refused:
        assert r.status_code == 429
        assert r.json()["error"]["code"] == "capacity_exhausted"
        assert int(r.headers["retry-after"]) >= 1
    assert wait_for(lambda: set(slots(gw.engine).values()) == {0})


def test_a_named_model_at_capacity_is_429_with_the_openai_client(upstream, start_gateway):
    upstream.behave("big", delay=0.8)
    gw = start_gateway(config(upstream.base_url, {"big": {"max_concurrency": 1}}))

    def ask(_):
        try:
            return gw.client.chat.completions.create(
                model="big", messages=[{"role": "user", "content": "hi"}], max_tokens=5
            )
        except openai.RateLimitError as e:
            return e

    with ThreadPoolExecutor(2) as ex:
        got = list(ex.map(ask, range(2)))
    errors = [g for g in got if isinstance(g, openai.RateLimitError)]
    assert len(errors) == 1 and errors[0].body["code"] == "capacity_exhausted"
    assert upstream.peak_in_flight("big") == 1


def test_slots_come_back_after_errors_timeouts_and_dropped_streams(upstream, start_gateway):
    upstream.behave("cheap", fail_status=500)
    gw = start_gateway(
        config(
            upstream.base_url,
            {"cheap": {"max_concurrency": 2}, "coder": {"max_concurrency": 2}},
            dispatch={"timeout_s": 1.0, "retries": 0},
        )
    )
    # errors: cheap fails, coder answers; cheap's slot is given back
    r = post_many(gw.url, 1)[0]
    assert r.status_code == 200 and r.headers["x-moe-router-model"] == "coder"
    assert wait_for(lambda: slots(gw.engine) == {"cheap": 0, "coder": 0})

    # timeouts: the deadline passes on cheap
    upstream.behave("cheap", fail_status=None, delay=3.0)
    r = httpx.post(gw.url + "/v1/chat/completions", json=ASK | {"model": "cheap"}, timeout=30)
    assert r.status_code == 504
    assert wait_for(lambda: slots(gw.engine)["cheap"] == 0)

    # a client that gives up on a plain request
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(gw.url + "/v1/chat/completions", json=ASK | {"model": "cheap"}, timeout=0.3)
    assert wait_for(lambda: slots(gw.engine)["cheap"] == 0)

    # a stream dropped mid-way, and a stream broken by the upstream
    upstream.behave("coder", chunk_delay=0.2, reply=" ".join(["w"] * 30))
    stream = gw.client.chat.completions.create(
        model="coder", messages=[{"role": "user", "content": "hi"}], stream=True, max_tokens=30
    )
    next(iter(stream))
    assert slots(gw.engine)["coder"] == 1  # held while the stream runs
    stream.close()
    assert wait_for(lambda: slots(gw.engine)["coder"] == 0)
    upstream.behave("coder", chunk_delay=0.0, break_stream_after=2)
    with pytest.raises(openai.APIError):
        for _ in gw.client.chat.completions.create(
            model="coder", messages=[{"role": "user", "content": "hi"}], stream=True, max_tokens=30
        ):
            pass
    assert wait_for(lambda: slots(gw.engine) == {"cheap": 0, "coder": 0})
    assert gw.engine.metrics.registry.get_sample_value("moe_router_in_flight", {"model": "coder"}) == 0


def test_a_stream_holds_its_slot_until_it_ends(upstream, start_gateway):
    upstream.behave("cheap", chunk_delay=0.1, reply=" ".join(["w"] * 10))
    gw = start_gateway(config(upstream.base_url, {"cheap": {"max_concurrency": 1}}))
    stream = gw.client.chat.completions.with_raw_response.create(**ASK, stream=True)
    assert stream.headers["x-moe-router-model"] == "cheap"
    route = gw.post("/v1/route", json=ASK).json()  # the dry run shows what dispatch would find
    assert route["capacity"]["cheap"] == {
        "max_concurrency": 1,
        "tpm_limit": None,
        "in_flight": 1,
        "full": True,
    }
    # while it streams, the next request spills (the header of a stream says so too)
    with httpx.stream("POST", gw.url + "/v1/chat/completions", json=ASK | {"stream": True}, timeout=30) as r2:
        assert r2.headers["x-moe-router-model"] == "coder"
        assert r2.headers["x-moe-router-spilled"] == "cheap:concurrency"
        r2.read()
    text = "".join(c.choices[0].delta.content or "" for c in stream.parse() if c.choices)
    assert text.split() == ["w"] * 10
    assert wait_for(lambda: slots(gw.engine)["cheap"] == 0)


def test_tpm_limit_spills_once_the_minutes_tokens_are_used(upstream, start_gateway):
    # a request is counted 7 prompt + 20 expected output tokens at dispatch (27), then its real
    # usage: the mock counts 2 prompt words and a 15-word answer (17)
    upstream.behave("cheap", reply=" ".join(["w"] * 15))
    gw = start_gateway(config(upstream.base_url, {"cheap": {"tpm_limit": 100, "expected_output_tokens": 20}}))
    models, spilled = [], []
    for _ in range(8):
        r = httpx.post(gw.url + "/v1/chat/completions", json=ASK, timeout=30)
        assert r.status_code == 200
        models.append(r.headers["x-moe-router-model"])
        spilled.append(r.headers.get("x-moe-router-spilled"))
    # 5 * 17 = 85 used; a sixth (85 + 27 > 100) spills. Without the correction at the end of each
    # request only 100 // 27 = 3 would have fitted.
    assert models == ["cheap"] * 5 + ["coder"] * 3
    assert spilled == [None] * 5 + ["cheap:tpm"] * 3
    assert spills(gw.engine, "cheap", "tpm") == 3
    assert len(upstream.calls("cheap")) == 5


# ---- Redis: shared across replicas, leases expire, outages ----------------------------------------


async def test_redis_leases_of_a_crashed_replica_expire(private_redis):
    r = redis_sync.Redis.from_url(private_redis.url)
    import redis.asyncio as aioredis

    client = aioredis.from_url(private_redis.url)
    cap = RedisCapacity(client, "t:cap:")
    two = Limits(max_concurrency=2)
    a = await cap.try_acquire("m", two, 10, ttl_s=0.5)
    b = await cap.try_acquire("m", two, 10, ttl_s=60)
    assert isinstance(a, Lease) and isinstance(b, Lease)
    full = await cap.try_acquire("m", two, 10, ttl_s=60)
    assert isinstance(full, Full) and full.reason == "concurrency"
    assert await cap.in_flight(["m"]) == {"m": 2}
    await asyncio.sleep(0.7)  # `a`'s holder never released nor renewed it
    c = await cap.try_acquire("m", two, 10, ttl_s=60)
    assert isinstance(c, Lease)
    await cap.renew([b, c], 0.5)
    await asyncio.sleep(0.7)  # renewed to a short TTL: both expire now
    assert await cap.in_flight(["m"]) == {"m": 0}
    d = await cap.try_acquire("m", two, 10, ttl_s=60)
    await cap.release(d, 10)
    await cap.release(d, 10)  # a second release changes nothing
    assert r.zcard("t:cap:m:slots") == 0
    # tokens: the minute's count is corrected by the real usage
    t = Limits(tpm=50)
    e = await cap.try_acquire("n", t, 40, ttl_s=60)
    assert isinstance(await cap.try_acquire("n", t, 40, ttl_s=60), Full)
    await cap.release(e, 5)
    assert isinstance(await cap.try_acquire("n", t, 40, ttl_s=60), Lease)
    await client.aclose()


async def test_outage_falls_back_to_a_per_replica_share(private_redis):
    s = RedisStore(private_redis.url, timeout_s=0.3, retry_every_s=0.1, capacity_outage_share=2)
    limits = Limits(max_concurrency=4)
    online = await s.capacity.try_acquire("m", limits, 1, 60)
    assert isinstance(online, Lease) and not online.offline
    private_redis.stop()
    await s.capacity.release(online, 1)  # queued for when Redis returns
    got = [await s.capacity.try_acquire("m", limits, 1, 60) for _ in range(3)]
    assert [isinstance(g, Lease) and g.offline for g in got[:2]] == [True, True]
    assert isinstance(got[2], Full)  # 4 slots / 2 replicas
    await s.capacity.release(got[0], 1)
    assert isinstance(await s.capacity.try_acquire("m", limits, 1, 60), Lease)
    await s.aclose()


@pytest.fixture
def two_replicas(tmp_path, upstream, private_redis):
    started: list[Replica] = []
    cfg = tmp_path / "gateway.yaml"
    body = {
        "models": limited(upstream.base_url, cheap={"max_concurrency": 3}),
        "routing": {"default_policy": "cheapest"},
        "dispatch": {"retries": 0},
        "outage": {"timeout_s": 5},
        "ledger": "none",
    }
    cfg.write_text(yaml.safe_dump(body))
    env = {**os.environ, "MOE_ROUTER_STATE": private_redis.url, "HF_HUB_OFFLINE": "1"}
    started = [Replica(cfg, env, tmp_path / f"replica-{i}.log") for i in range(2)]
    yield [r.wait_up() for r in started]
    for r in started:
        r.stop()


def test_two_replicas_share_a_models_slots_on_redis(two_replicas, upstream, private_redis):
    a, b = two_replicas
    upstream.behave("cheap", delay=0.8)
    with ThreadPoolExecutor(12) as ex:
        responses = list(
            ex.map(
                lambda i: httpx.post((a, b)[i % 2].url + "/v1/chat/completions", json=ASK, timeout=30),
                range(12),
            )
        )
    assert [r.status_code for r in responses] == [200] * 12
    assert upstream.peak_in_flight("cheap") <= 3  # not 3 per replica
    models = [r.headers["x-moe-router-model"] for r in responses]
    assert 1 <= models.count("cheap") <= 3
    assert all(
        r.headers["x-moe-router-spilled"] == "cheap:concurrency"
        for r in responses
        if r.headers["x-moe-router-model"] != "cheap"
    )
    r = redis_sync.Redis.from_url(private_redis.url)
    assert wait_for(lambda: r.zcard("moe:cap:cheap:slots") == 0)
    metrics = httpx.get(a.url + "/metrics", timeout=10).text + httpx.get(b.url + "/metrics", timeout=10).text
    counted = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith('moe_router_spillover_total{model="cheap",reason="concurrency"}')
    )
    assert counted == models.count("coder") + models.count("big")


async def test_a_request_cancelled_while_taking_a_slot_leaves_it_free():
    class SlowStore(MemoryCapacity):  # the real in-memory state; its answer is slow to come back
        async def try_acquire(self, *a, **kw):
            got = await super().try_acquire(*a, **kw)  # admitted (as a Redis script would have)
            await asyncio.sleep(0.2)
            return got

    state = SlowStore()
    spec = ModelSpec(name="m", backend="openai", max_concurrency=1)
    cap = Capacity({"m": spec}, state, Metrics(), ttl_s=60)
    taking = asyncio.create_task(cap.acquire("m", 1))
    await asyncio.sleep(0.05)
    taking.cancel()
    with pytest.raises(asyncio.CancelledError):
        await taking
    await asyncio.sleep(0.3)  # the store admitted it after the cancellation: given back at once
    assert await state.in_flight(["m"]) == {"m": 0}
    lease = await cap.acquire("m", 1)
    assert isinstance(lease, Lease)
    cap.release(lease)
    cap.release(lease)  # once only
    await cap.aclose()
    assert await state.in_flight(["m"]) == {"m": 0}
