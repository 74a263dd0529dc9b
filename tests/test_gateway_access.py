"""Keys, rate limits, budgets, caches and shared health through the gateway, on two replicas sharing Redis."""

from __future__ import annotations

import openai
import pytest

from router.state import RedisStore
from router.state.budgets import BudgetScope
from router.state.keys import new_key
from tests.conftest import make_config

MSG = [{"role": "user", "content": "Write a Python function that reverses a string."}]


@pytest.fixture
def replicas(upstream, start_gateway, redis_url):
    """Factory: n gateways over the mock pool, sharing one Redis."""

    def make(n: int = 2, **sections):
        cfg = make_config(upstream.base_url, state=redis_url, **sections)
        return [start_gateway(cfg) for _ in range(n)]  # each builds its own RedisStore from cfg

    return make


@pytest.fixture
async def admin(redis_url):
    s = RedisStore(redis_url)
    yield s
    await s.aclose()


async def add_key(admin, name, **kw) -> str:
    raw, rec = new_key(name, **kw)
    await admin.keys.put(rec)
    return raw


def client(gw, key):
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=30)


async def test_keys_required_on_every_replica(replicas, admin):
    a, b = replicas(auth={"require_keys": True})
    key = await add_key(admin, "alice")
    for gw in (a, b):
        r = gw.post("/v1/chat/completions", json={"model": "router", "messages": MSG})
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        with pytest.raises(openai.AuthenticationError):
            client(gw, "sk-mr-000000000000-wrong").chat.completions.create(model="router", messages=MSG)
        assert client(gw, key).chat.completions.create(model="router", messages=MSG).choices
        # other header styles work too
        assert gw.post("/v1/route", json={"messages": MSG}, headers={"x-api-key": key}).status_code == 200
    await admin.keys.revoke("alice")
    for gw in (a, b):
        with pytest.raises(openai.AuthenticationError):
            client(gw, key).chat.completions.create(model="router", messages=MSG)


async def test_key_sees_only_its_models(replicas, admin):
    (gw,) = replicas(1)
    key = await add_key(admin, "limited", models=["cheap", "coder"])
    raw = client(gw, key).chat.completions.with_raw_response.create(model="router:strongest", messages=MSG)
    assert raw.headers["x-moe-router-model"] == "coder"
    with pytest.raises(openai.PermissionDeniedError):
        client(gw, key).chat.completions.create(model="big", messages=MSG)


async def test_rate_limit_is_shared_by_replicas(replicas, admin):
    a, b = replicas()
    key = await add_key(admin, "slow", rpm=2)
    client(a, key).chat.completions.create(model="router", messages=MSG)
    client(b, key).chat.completions.create(model="router", messages=MSG)
    with pytest.raises(openai.RateLimitError) as e:
        client(a, key).chat.completions.create(model="router", messages=MSG)
    assert e.value.body["code"] == "rate_limit_exceeded"
    assert int(e.value.response.headers["retry-after"]) >= 1


async def test_budget_steers_to_cheaper_models_then_refuses(replicas, admin, upstream):
    a, b = replicas()
    upstream.behave("coder", reply=" ".join(["word"] * 95))  # ~$0.0002 a call: two fit in the budget
    key = await add_key(admin, "frugal", budget_usd=0.0005, budget_window="daily")
    spent = 0.0
    picks = []
    for gw in (a, b, a, b):
        raw = client(gw, key).chat.completions.with_raw_response.create(
            model="router:strongest", messages=MSG, max_tokens=100
        )
        picks.append(raw.headers["x-moe-router-model"])
        spent += float(raw.headers["x-moe-router-cost-usd"])
        assert float(raw.headers["x-moe-router-budget-remaining-usd"]) == pytest.approx(
            0.0005 - spent,
            abs=4e-6,  # budgets count whole micro-dollars
        )
    # big may cost $0.0032 for 100 tokens: never affordable; coder while its $0.00022 worst case fits
    # (spent after two calls: ~$0.0004), then cheap
    assert picks == ["coder", "coder", "cheap", "cheap"]
    rec = await admin.keys.find("frugal")
    (stored,) = await admin.budgets.spent([BudgetScope(f"key:{rec.id}", 0.0005, "daily")])
    assert stored == pytest.approx(spent, abs=1e-6)  # settled to the real cost, across replicas
    with pytest.raises(openai.RateLimitError) as e:
        for _ in range(50):
            client(a, key).chat.completions.create(model="router:strongest", messages=MSG, max_tokens=2000)
    assert e.value.body["code"] == "budget_exceeded" and e.value.body["type"] == "insufficient_quota"


async def test_global_and_team_budgets(replicas, admin):
    (gw,) = replicas(1, budgets={"teams": {"research": {"usd": 0.000001, "window": "daily"}}})
    key = await add_key(admin, "researcher", team="research")
    with pytest.raises(openai.RateLimitError) as e:
        client(gw, key).chat.completions.create(model="router", messages=MSG)
    assert "budget" in e.value.body["message"]
    other = await add_key(admin, "someone-else")
    assert client(gw, other).chat.completions.create(model="router", messages=MSG).choices


async def test_exact_cache_is_opt_in_and_per_key(replicas, admin, upstream):
    a, b = replicas(cache={"exact": {"enabled": True}})
    k1, k2 = await add_key(admin, "k1"), await add_key(admin, "k2")
    body = dict(model="router:cheapest", messages=MSG)
    client(a, k1).chat.completions.create(**body)
    client(a, k1).chat.completions.create(**body)
    assert len(upstream.calls("cheap")) == 2  # not asked for: no caching
    first = client(a, k1).chat.completions.with_raw_response.create(
        **body, extra_body={"routing": {"cache": True}}
    )
    again = client(b, k1).chat.completions.with_raw_response.create(
        **body, extra_body={"routing": {"cache": True}}
    )
    assert "x-moe-router-cache" not in first.headers
    assert (
        again.headers["x-moe-router-cache"] == "exact" and float(again.headers["x-moe-router-cost-usd"]) == 0
    )
    assert again.parse().choices[0].message.content == first.parse().choices[0].message.content
    assert len(upstream.calls("cheap")) == 3
    other = client(b, k2).chat.completions.with_raw_response.create(
        **body, extra_body={"routing": {"cache": True}}
    )
    assert "x-moe-router-cache" not in other.headers  # another key never sees k1's answers
    # a cached answer streams too
    with client(a, k1).chat.completions.with_streaming_response.create(
        **body, stream=True, extra_body={"routing": {"cache": True}}
    ) as resp:
        assert resp.headers["x-moe-router-cache"] == "exact"
        text = "".join(c.choices[0].delta.content or "" for c in resp.parse() if c.choices)
    assert text == first.parse().choices[0].message.content


async def test_semantic_cache_matches_paraphrases(replicas, admin, upstream):
    (gw,) = replicas(1, cache={"default": True, "semantic": {"enabled": True, "threshold": 0.85}})
    key = await add_key(admin, "sem")
    c = client(gw, key)
    c.chat.completions.create(
        model="router:cheapest", messages=[{"role": "user", "content": "What is the capital of France?"}]
    )
    hit = c.chat.completions.with_raw_response.create(
        model="router:cheapest", messages=[{"role": "user", "content": "what's the capital city of France"}]
    )
    assert hit.headers["x-moe-router-cache"] == "semantic"
    assert float(hit.headers["x-moe-router-cache-similarity"]) >= 0.85
    miss = c.chat.completions.with_raw_response.create(
        model="router:cheapest", messages=[{"role": "user", "content": "How do I bake sourdough bread?"}]
    )
    assert "x-moe-router-cache" not in miss.headers
    assert len(upstream.calls("cheap")) == 2


async def test_circuit_opened_by_one_replica_is_seen_by_the_other(replicas, upstream):
    a, b = replicas(breaker={"failure_threshold": 2, "reset_after_s": 60}, dispatch={"retries": 0})
    upstream.behave("big", fail_status=500)
    for _ in range(2):
        a.client.chat.completions.create(model="router:strongest", messages=MSG)
    route = b.post("/v1/route", json={"model": "router:strongest", "messages": MSG}).json()
    assert any(
        c["model"] == "big" and c["excluded"][0]["reason"] == "circuit_open" for c in route["excluded"]
    )
    raw = b.client.chat.completions.with_raw_response.create(model="router:strongest", messages=MSG)
    assert raw.headers["x-moe-router-model"] != "big"
    assert len(upstream.calls("big")) == 2  # b never tried it


async def test_ledger_records_every_request_with_its_key(replicas, admin):
    a, b = replicas()
    key = await add_key(admin, "ledgered", budget_usd=1)
    ids = [client(gw, key).chat.completions.create(model="router", messages=MSG).id for gw in (a, b)]
    events = [e async for e in admin.log.iter_events()]
    reqs = [e for e in events if e["kind"] == "request"]
    assert [r["id"] for r in reqs] == ids
    assert all(
        r["key"] == "ledgered" and r["cost_usd"] > 0 and r["reserved_usd"] >= r["cost_usd"] for r in reqs
    )
    assert [e["id"] for e in events if e["kind"] == "reserve"] == ids
    # feedback sent to either replica reaches the shared log (from the key that made the request)
    auth = {"authorization": f"Bearer {key}"}
    assert b.post("/v1/feedback", json={"id": ids[0], "rating": 0.5}, headers=auth).status_code == 200
    assert [f.request_id async for f in admin.log.iter_feedback()] == [ids[0]]
