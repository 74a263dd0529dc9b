"""The gateway probed as an attacker and as a careless client would: one test per attack.

Each of these failed on the gateway before the trust boundary was drawn (docs/security.md).
"""

from __future__ import annotations

import asyncio
import json
import socket
import time

import httpx
import numpy as np
import openai
import pytest
import redis as redis_sync
from fastapi import Request

from router.gateway import create_app
from router.state import RedisStore
from router.state.budgets import BudgetScope
from router.state.degrade import is_outage
from router.state.keys import new_key
from tests.conftest import make_config
from tests.servers import ServerThread
from tests.upstream import Fail, MockUpstream

MSG = [{"role": "user", "content": "Write a Python function that reverses a string."}]


@pytest.fixture
def attacker():
    """A server the attacker controls: it must never be called."""
    up = MockUpstream().start()
    yield up
    up.stop()


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def put_key(redis_url: str, name: str, **kw) -> tuple[str, str]:
    raw, rec = new_key(name, **kw)
    s = RedisStore(redis_url)
    await s.keys.put(rec)
    await s.aclose()
    return raw, rec.id


# ---- the trust boundary ------------------------------------------------------------------------
DESTINATION_PROBES = ["api_base", "base_url", "api_key", "extra_headers", "headers", "custom_llm_provider"]


def test_a_body_cannot_send_the_provider_key_elsewhere(upstream, attacker, start_gateway):
    models = [
        {
            "name": "lite",
            "backend": "litellm",
            "params": {
                "model": "openai/lite",
                "api_base": upstream.base_url,
                "api_key": "sk-operator-secret",
                "timeout": 5,
            },
        },
        {"name": "direct", "backend": "openai", "params": {"model": "direct", "base_url": upstream.base_url}},
    ]
    gw = start_gateway(make_config(upstream.base_url, models=models))
    for field in DESTINATION_PROBES:
        value = {"authorization": "Bearer x"} if "headers" in field else attacker.base_url
        for path, body in [
            ("/v1/chat/completions", {"model": "lite", "messages": MSG}),
            ("/v1/chat/completions", {"model": "router", "messages": MSG, "stream": True}),
            ("/v1/completions", {"model": "direct", "prompt": "hi"}),
            ("/v1/route", {"messages": MSG}),
        ]:
            r = gw.post(path, json={**body, field: value})
            assert r.status_code == 400, (field, path, r.text)
            err = r.json()["error"]
            assert err["code"] == "forbidden_parameter" and err["param"] == field
    # a nested attempt is refused too
    r = gw.post("/v1/chat/completions", json={"model": "lite", "messages": [{**MSG[0], "api_base": "x"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages.0.api_base"
    assert attacker.calls() == [] and upstream.calls() == []  # nothing was sent anywhere
    # the legitimate request still works, with the operator's key, to the operator's server
    assert gw.client.chat.completions.create(model="lite", messages=MSG).choices[0].message.content


def test_unknown_fields_are_refused_and_operator_allowed_ones_reach_only_their_models(
    upstream, start_gateway
):
    cfg = make_config(upstream.base_url)
    cfg.models[0].allow_params = ["top_k"]  # "cheap" accepts top_k
    cfg.models[1].params["params"] = {"seed": 7}  # "coder" pins its seed
    gw = start_gateway(cfg)
    r = gw.post("/v1/chat/completions", json={"model": "big", "messages": MSG, "top_k": 3})
    assert r.status_code == 400, r.text  # big does not accept it
    r = gw.post("/v1/chat/completions", json={"model": "router", "messages": MSG, "frobnicate": 1})
    assert r.status_code == 400 and r.json()["error"]["code"] == "unknown_parameter"
    r = gw.post("/v1/route", json={"model": "router:strongest", "messages": MSG, "top_k": 3}).json()
    assert r["model"] == "cheap"  # the only model that takes the parameter
    assert any(e["reason"] == "params" for c in r["excluded"] for e in c["excluded"])
    assert (
        gw.post("/v1/chat/completions", json={"model": "cheap", "messages": MSG, "top_k": 3}).status_code
        == 200
    )
    assert upstream.calls("cheap")[-1]["top_k"] == 3
    # configured parameters win over the request's
    gw.post("/v1/chat/completions", json={"model": "coder", "messages": MSG, "seed": 1})
    assert upstream.calls("coder")[-1]["seed"] == 7


def test_a_config_cannot_allow_destination_fields(upstream):
    from router.config import ConfigError

    models = [
        {
            "name": "m",
            "backend": "openai",
            "params": {"model": "m", "base_url": upstream.base_url},
            "allow_params": ["api_base"],
        }
    ]
    with pytest.raises(ConfigError, match="allow_params"):
        make_config(upstream.base_url, models=models)


def test_auth_fails_closed_for_every_route_but_the_public_ones(upstream, encoder, redis_url):
    from router.engine import Engine

    cfg = make_config(
        upstream.base_url, state=redis_url, auth={"require_keys": True, "master_key": "mk-operator"}
    )
    app = create_app(engine=Engine(cfg, encoder=encoder))

    @app.get("/v1/added-later")
    async def added_later(request: Request):
        return {"caller": request.state.caller.scope}

    server = ServerThread(app).start()
    try:
        key, key_id = asyncio.run(put_key(redis_url, "alice"))
        url = server.url
        for path in ("/health", "/ready"):
            assert httpx.get(url + path).status_code in (200, 503)
        for path in ("/v1/added-later", "/v1/models", "/metrics", "/docs", "/openapi.json", "/v1/nowhere"):
            r = httpx.get(url + path)
            assert r.status_code == 401, path
            assert r.json()["error"]["type"] == "authentication_error"
        assert httpx.get(url + "/v1/added-later", headers=bearer(key)).json() == {"caller": key_id}
        assert httpx.get(url + "/v1/nowhere", headers=bearer(key)).status_code == 404
        # operator routes take the master key only
        assert httpx.get(url + "/metrics", headers=bearer(key)).status_code == 403
        assert httpx.get(url + "/metrics", headers=bearer("mk-operator")).status_code == 200
        assert httpx.get(url + "/v1/added-later", headers=bearer("mk-operator")).json() == {"caller": "admin"}
    finally:
        server.stop()


# ---- feedback ------------------------------------------------------------------------------------
def test_feedback_belongs_to_the_requester(upstream, start_gateway, redis_url):
    gw = start_gateway(make_config(upstream.base_url, state=redis_url))
    alice, _ = asyncio.run(put_key(redis_url, "alice"))
    mallory, _ = asyncio.run(put_key(redis_url, "mallory"))
    resp = gw.post("/v1/chat/completions", json={"model": "router", "messages": MSG}, headers=bearer(alice))
    rid = resp.json()["id"]
    assert rid.startswith("chatcmpl-") and len(rid) == len("chatcmpl-") + 32  # 128 random bits
    unknown = gw.post(
        "/v1/feedback", json={"id": "chatcmpl-" + "0" * 32, "rating": 1.0}, headers=bearer(mallory)
    )
    for who in (bearer(mallory), {}):  # another key, or anonymous (keys are optional here)
        r = gw.post("/v1/feedback", json={"id": rid, "rating": 0.0}, headers=who)
        assert r.status_code == 404
        assert r.json()["error"]["message"].replace(rid, "X") == unknown.json()["error"]["message"].replace(
            "chatcmpl-" + "0" * 32, "X"
        )  # indistinguishable from an id that does not exist
    r = gw.post("/v1/feedback", json={"id": rid, "rating": 1.0, "source": "judge"}, headers=bearer(alice))
    assert r.status_code == 422 and r.json()["error"]["param"] == "source"
    assert gw.post("/v1/feedback", json={"id": rid, "rating": 0.9}, headers=bearer(alice)).status_code == 200


def test_a_second_rating_replaces_the_first_in_the_shared_bandit(upstream, start_gateway, redis_url):
    from policies.bandit import ThompsonPolicy

    cfg = make_config(upstream.base_url, state=redis_url)
    a, b = start_gateway(cfg), start_gateway(cfg)
    key, _ = asyncio.run(put_key(redis_url, "rater"))
    resp = a.post(
        "/v1/chat/completions", json={"model": "router:thompson", "messages": MSG}, headers=bearer(key)
    )
    rid, model = resp.json()["id"], resp.json()["model"]
    for gw, rating in ((a, 1.0), (b, 0.0), (a, 0.0), (b, 0.25)):  # the same caller changes its mind
        assert (
            gw.post("/v1/feedback", json={"id": rid, "rating": rating}, headers=bearer(key)).status_code
            == 200
        )
    # a replica that starts now reads the shared stream: exactly one observation, the last rating
    policy, rec = asyncio.run(_fresh_bandit(redis_url, cfg, rid))
    assert policy.n_.sum() == pytest.approx(1.0)
    expected = ThompsonPolicy().fit([m.info() for m in cfg.models])
    expected.update(model, np.asarray(rec.learn["x"], dtype=float), 0.25 - rec.learn["prior"][model])
    assert np.allclose(policy.b_, expected.b_, atol=1e-9) and np.allclose(policy.A_, expected.A_, atol=1e-9)


async def _fresh_bandit(redis_url, cfg, rid):
    from policies.bandit import ThompsonPolicy

    s = RedisStore(redis_url)
    try:
        policy = ThompsonPolicy().fit([m.info() for m in cfg.models])
        await s.bandits.refresh("thompson", policy, force=True)
        return policy, await s.log.get_request(rid)
    finally:
        await s.aclose()


def test_feedback_is_rate_limited_per_caller(upstream, start_gateway):
    gw = start_gateway(make_config(upstream.base_url, feedback={"rpm": 3}))
    rid = gw.client.chat.completions.create(model="router", messages=MSG).id
    codes = [gw.post("/v1/feedback", json={"id": rid, "rating": 0.5}).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]


# ---- the money path ------------------------------------------------------------------------------
def test_a_dropped_stream_is_cancelled_charged_for_what_was_produced_and_logged(
    upstream, start_gateway, redis_url
):
    gw = start_gateway(make_config(upstream.base_url, state=redis_url))
    key, key_id = asyncio.run(put_key(redis_url, "streamer", budget_usd=10.0))
    upstream.behave("big", reply=" ".join(f"w{i}" for i in range(400)), chunk_delay=0.02)
    body = {"model": "big", "messages": MSG, "stream": True, "max_tokens": 400}
    with (
        httpx.Client(base_url=gw.url, timeout=30) as c,
        c.stream("POST", "/v1/chat/completions", json=body, headers=bearer(key)) as r,
    ):
        rid = r.headers["x-moe-router-request-id"]
        lines = r.iter_lines()
        for _ in range(10):  # read a few chunks, then go away
            next(lines)
    admin = redis_sync.Redis.from_url(redis_url)
    deadline = time.monotonic() + 10
    while (raw := admin.get(f"moe:req:{rid}")) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert raw is not None, "no ledger record for the dropped stream"
    rec = json.loads(raw)
    assert rec["status"] == "client_closed" and rec["model"] == "big"
    assert 0 < rec["completion_tokens"] < 400 and rec["cost_usd"] > 0
    assert rec["cost_usd"] < rec["reserved_usd"]
    spent = asyncio.run(_spent(redis_url, key_id))
    assert spent == pytest.approx(rec["cost_usd"], abs=1e-6)  # the rest of the reservation went back
    for _ in range(100):  # the upstream saw its client leave: generation stopped
        if upstream.abandoned("big") == 1:
            break
        time.sleep(0.05)
    assert upstream.abandoned("big") == 1


async def _spent(redis_url: str, key_id: str) -> float:
    s = RedisStore(redis_url)
    try:
        return (await s.budgets.spent([BudgetScope(f"key:{key_id}", 10.0, "monthly")]))[0]
    finally:
        await s.aclose()


def test_a_crafted_request_on_two_replicas_never_spends_past_the_budget(upstream, start_gateway, redis_url):
    """No max_tokens, a long answer, and text whose real token count is 4x the chars/4 estimate."""
    # a generous Redis timeout: a slow moment on a loaded machine must not look like an outage
    cfg = make_config(upstream.base_url, state=redis_url, outage={"timeout_s": 5})
    a, b = start_gateway(cfg), start_gateway(cfg)
    key, key_id = asyncio.run(put_key(redis_url, "crafty", budget_usd=0.2))
    upstream.behave("big", reply="w " * 5000, prompt_usage="bytes")
    crafted = {"model": "big", "messages": [{"role": "user", "content": "漢字" * 150}]}

    async def flood() -> list[int]:
        async with httpx.AsyncClient(timeout=30) as c:
            rs = await asyncio.gather(
                *(
                    c.post(gw.url + "/v1/chat/completions", json=crafted, headers=bearer(key))
                    for gw in (a, b) * 20
                )
            )
        return [r.status_code for r in rs]

    codes = asyncio.run(flood())
    assert codes.count(200) >= 1 and set(codes) <= {200, 429}
    assert asyncio.run(_spent(redis_url, key_id)) <= 0.2 + 1e-9
    ledger = redis_sync.Redis.from_url(redis_url)
    records = [json.loads(ledger.get(k)) for k in ledger.keys("moe:req:*")]
    costs = [r["cost_usd"] for r in records if r["status"] == "ok"]
    assert len(costs) == codes.count(200) and sum(costs) <= 0.2 + 1e-9
    assert all(r["cost_usd"] == 0 for r in records if r["status"] != "ok")  # refused: nothing spent
    assert all(c["max_tokens"] <= 1024 for c in upstream.calls("big"))  # the cap went upstream


def test_an_outage_spends_at_most_the_replicas_allowance(redis_server):
    from tests.redis_server import RedisServer

    srv = RedisServer().start()

    async def run():
        s = RedisStore(srv.url, timeout_s=0.3, retry_every_s=0.1, budgets="allowance", allowance=0.1)
        scope = [BudgetScope("key:z", 0.5, "daily")]
        r = await s.budgets.reserve(scope, 0.1)  # online: 0.4 left, remembered
        await s.budgets.settle(r, 0.1)
        srv.stop()
        offline = await s.budgets.reserve(scope, 0.03)  # the outage allowance: 10% of 0.4
        assert offline.offline
        from router.state import StateUnavailable

        with pytest.raises(StateUnavailable):
            await s.budgets.reserve(scope, 0.03)  # 0.01 left of the allowance
        await s.budgets.settle(offline, 0.01)  # 0.02 of the reservation unused: back in the allowance
        again = await s.budgets.reserve(scope, 0.025)
        with pytest.raises(StateUnavailable):
            await s.budgets.reserve([BudgetScope("key:never-seen", 100.0, "daily")], 0.001)
        await s.budgets.settle(again, 0.02)
        srv.start()
        await asyncio.sleep(0.15)
        assert await s.ping()
        for _ in range(50):
            if not s.degraded:
                break
            await asyncio.sleep(0.05)
        # the restarted test server is empty: what is there is exactly the outage's spend
        assert await s.budgets.spent(scope) == pytest.approx([0.03])
        await s.aclose()

    try:
        asyncio.run(run())
    finally:
        srv.stop()


# ---- errors ----------------------------------------------------------------------------------------
SECRET = "upstream trace at http://10.1.2.3:8000/internal/v1 token=abc123"


def test_error_bodies_carry_no_upstream_text(upstream, start_gateway):
    gw = start_gateway(make_config(upstream.base_url, dispatch={"retries": 0, "max_fallbacks": 0}))
    for status in (500, 503, 400, 401):
        upstream.script("big", Fail(status, message=SECRET))
        r = gw.post("/v1/chat/completions", json={"model": "big", "messages": MSG})
        assert r.status_code >= 400
        text = r.text
        assert "10.1.2.3" not in text and "abc123" not in text and "trace" not in text, text
        assert "big" in r.json()["error"]["message"] and r.json()["error"]["code"]
    upstream.behave("big", break_stream_after=2)
    with gw.client.chat.completions.with_streaming_response.create(
        model="big", messages=MSG, stream=True
    ) as resp:
        body = "".join(resp.iter_lines())
    assert (
        "failed mid-stream" in body and "scripted broken stream" not in body and "ConnectionError" not in body
    )


def test_nan_infinity_and_lone_surrogates_are_400_and_keep_the_connection(gateway):
    with httpx.Client(base_url=gateway.url, timeout=30) as c:
        for raw in (
            b'{"model": "router", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
            b'{"model": "router", "messages": [{"role": "user", "content": "hi"}], "top_p": Infinity}',
            b'{"model": "router", "messages": [{"role": "user", "content": "hi"}], "routing": {"max_cost_usd": -Infinity}}',
            b'{"model": "router", "messages": [{"role": "user", "content": "hi \\ud800"}]}',
        ):
            for path in ("/v1/chat/completions", "/v1/route"):
                r = c.post(path, content=raw, headers={"content-type": "application/json"})
                assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json", (raw, r.text)
        # the named-model decision is JSON (its predicted quality is null, not NaN)
        r = c.post("/v1/route", json={"model": "big", "messages": MSG})
        assert r.status_code == 200 and r.json()["candidates"][0]["predicted_quality"] is None
        assert c.get("/health").status_code == 200  # same connection, still alive


def test_content_parts_are_validated(gateway, upstream):
    bad_messages = [
        [{"role": "user", "content": [{"type": "video", "url": "x"}]}],
        [{"role": "user", "content": [{"type": "text", "text": "hi", "api_base": "x"}]}],
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://10.0.0.1/a.png"}}]}],
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}],
        [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "https://x/a.png"}}]}],
        [{"role": "tool", "content": "result"}],  # no tool_call_id
        [{"role": "user", "content": [{"type": "text"}]}],
    ]
    for messages in bad_messages:
        r = gateway.post("/v1/chat/completions", json={"model": "router", "messages": messages})
        assert r.status_code in (400, 422), (messages, r.text)
        assert r.json()["error"]["type"] == "invalid_request_error"
    assert upstream.calls() == []
    ok = [{"role": "user", "content": [{"type": "text", "text": "describe"}]}]
    assert gateway.post("/v1/chat/completions", json={"model": "cheap", "messages": ok}).status_code == 200


def test_requests_that_fail_everywhere_do_not_open_breakers(upstream, start_gateway):
    gw = start_gateway(make_config(upstream.base_url, dispatch={"retries": 0}))
    for m in ("cheap", "coder", "big"):
        upstream.behave(m, fail_status=500)
    for _ in range(5):  # more than failure_threshold (3) requests that fail on every candidate
        assert gw.post("/v1/chat/completions", json={"model": "router", "messages": MSG}).status_code == 502
    for m in ("cheap", "coder", "big"):
        upstream.behave(m, fail_status=None)
    route = gw.post("/v1/route", json={"messages": MSG}).json()
    assert not any(e["reason"] == "circuit_open" for c in route["excluded"] for e in c["excluded"])
    # a model that fails while another answers the same request is the model's fault: it counts
    upstream.script("cheap", Fail(500), Fail(500), Fail(500))
    for _ in range(3):
        r = gw.post("/v1/chat/completions", json={"model": "router:cheapest", "messages": MSG})
        assert r.status_code == 200 and r.headers["x-moe-router-fallbacks"] == "cheap"
    route = gw.post("/v1/route", json={"model": "router:cheapest", "messages": MSG}).json()
    assert any(e["reason"] == "circuit_open" for c in route["excluded"] for e in c["excluded"])
    assert 'moe_router_breaker_open{model="cheap"} 1.0' in gw.get("/metrics").text


def test_one_deadline_bounds_fallbacks_and_stream_stalls(upstream, start_gateway):
    gw = start_gateway(make_config(upstream.base_url, dispatch={"timeout_s": 1.0, "retries": 2}))
    upstream.behave("big", delay=30)  # never answers in time
    r = httpx.post(
        gw.url + "/v1/chat/completions", json={"model": "router:strongest", "messages": MSG}, timeout=20
    )
    assert r.status_code == 504
    # the deadline was spent on the first candidate: no retries and no fallbacks were started after it
    assert len(upstream.calls("big")) == 1 and upstream.calls("coder") == [] and upstream.calls("cheap") == []
    upstream.behave("big", delay=0, stall_after=2)  # streams go silent after two words
    c = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0, timeout=20)
    with pytest.raises(openai.APIError) as e:
        for _ in c.chat.completions.create(model="big", messages=MSG, stream=True):
            pass
    assert "upstream_timeout" in str(e.value)


def test_request_bodies_have_a_read_timeout(upstream, start_gateway):
    gw = start_gateway(make_config(upstream.base_url, server={"body_timeout_s": 0.5}))
    with socket.create_connection((gw.server.host, gw.server.port), timeout=10) as s:
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"model":'
        )
        reply = s.recv(4096).decode()
    assert reply.startswith("HTTP/1.1 408") and "request_timeout" in reply


# ---- bad input stays with its sender -------------------------------------------------------------
def test_one_poisoned_prompt_among_thirty_fails_alone(gateway):
    poisoned = b'{"model": "router", "messages": [{"role": "user", "content": "hi \\ud800"}]}'

    async def burst():
        async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as c:
            normal = [
                c.post(
                    "/v1/chat/completions",
                    json={"model": "router", "messages": [{"role": "user", "content": f"q{i}"}]},
                )
                for i in range(30)
            ]
            bad = c.post(
                "/v1/chat/completions", content=poisoned, headers={"content-type": "application/json"}
            )
            return await asyncio.gather(bad, *normal)

    bad, *normal = asyncio.run(burst())
    assert bad.status_code == 400
    assert [r.status_code for r in normal] == [200] * 30


async def test_the_embedding_batch_isolates_a_failing_prompt(encoder):
    from router.embed_batcher import EmbedBatcher

    batcher = EmbedBatcher(encoder)
    texts = [f"normal prompt number {i}" for i in range(30)]
    results = await asyncio.gather(
        *(batcher.encode(t) for t in texts[:15]),
        batcher.encode("hi \ud800"),
        *(batcher.encode(t) for t in texts[15:]),
        return_exceptions=True,
    )
    await batcher.aclose()
    failed = [i for i, r in enumerate(results) if isinstance(r, BaseException)]
    assert failed == [15]
    assert all(r.shape == (1, encoder.dim) for i, r in enumerate(results) if i != 15)


# ---- state ----------------------------------------------------------------------------------------
def test_a_redis_script_error_is_a_500_not_an_outage(upstream, start_gateway, redis_url):
    gw = start_gateway(make_config(upstream.base_url, state=redis_url, outage={"budgets": "open"}))
    key, key_id = asyncio.run(put_key(redis_url, "broken", budget_usd=1.0))
    bucket = BudgetScope(f"key:{key_id}", 1.0, "monthly").bucket()
    redis_sync.Redis.from_url(redis_url).set(f"moe:budget:{bucket}", "not-a-number")
    r = gw.post("/v1/chat/completions", json={"model": "router", "messages": MSG}, headers=bearer(key))
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
    assert "not-a-number" not in r.text
    assert upstream.calls() == []  # budgets were not silently switched off
    assert gw.get("/ready", headers=bearer(key)).json()["status"] == "ok"  # not an outage
    assert "moe_router_state_faults_total" in gw.get("/metrics", headers=bearer(key)).text


def test_a_closed_transport_is_an_outage_and_a_script_error_is_not():
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import ResponseError

    assert is_outage(
        RuntimeError("unable to perform operation on <TCPTransport closed=True>; the handler is closed")
    )
    assert is_outage(RedisConnectionError("reset")) and is_outage(ConnectionResetError())
    assert not is_outage(ResponseError("ERR value is not an integer or out of range"))
    assert not is_outage(RuntimeError("something else"))


@pytest.mark.parametrize("name", ["", "a b", "bad\nname", "wild*", "x" * 65, "-lead"])
def test_key_names_are_validated(name):
    with pytest.raises(ValueError, match="invalid key name"):
        new_key(name)


def test_anonymous_callers_get_no_shared_cache_unless_the_operator_opts_in(upstream, start_gateway):
    cache = {"default": True, "exact": {"enabled": True}}
    private = start_gateway(make_config(upstream.base_url, cache=cache))
    body = {"model": "cheap", "messages": [{"role": "user", "content": "my secret question"}]}
    for _ in range(2):
        r = private.post("/v1/chat/completions", json=body)
        assert "x-moe-router-cache" not in r.headers
    shared = start_gateway(make_config(upstream.base_url, cache=cache | {"shared_anonymous": True}))
    shared.post("/v1/chat/completions", json=body)
    assert shared.post("/v1/chat/completions", json=body).headers["x-moe-router-cache"] == "exact"


@pytest.mark.parametrize(
    ("mode", "check"),
    [
        ("none", lambda p: p == ""),
        ("hash", lambda p: p.startswith("sha256:") and "secret" not in p),
        ("truncated", lambda p: p == "my secret is 1234"[:10]),
        ("full", lambda p: p == "my secret is 1234"),
    ],
)
def test_prompt_logging_follows_config(upstream, start_gateway, redis_url, mode, check):
    gw = start_gateway(
        make_config(upstream.base_url, state=redis_url, log={"prompts": mode, "prompt_chars": 10})
    )
    rid = gw.client.chat.completions.create(
        model="cheap", messages=[{"role": "user", "content": "my secret is 1234"}]
    ).id
    r = redis_sync.Redis.from_url(redis_url)
    rec = json.loads(r.get(f"moe:req:{rid}"))
    assert check(rec["prompt"]), rec["prompt"]
    ledger = b"".join(v for _, f in r.xrange("moe:ledger") for v in f.values())
    assert (b"1234" in ledger) == (mode == "full")
