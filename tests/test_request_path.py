"""The engine's request path (issue 22 items 1 and 3): parameters are checked once per request,
a model's success reaches its health through the request's settlement on every path (plain,
streamed, embeddings), and every API format answers the same headers — a streamed cache hit says
so in each. Real gateway, real HTTP upstream, official clients."""

from __future__ import annotations

import asyncio
import time

import anthropic
import httpx
import openai

from router.planner import Planner
from tests.conftest import make_config, priced_model

MSG = [{"role": "user", "content": "Name a river in France."}]


def test_check_runs_once_per_request(gateway, monkeypatch):
    calls = []
    real = Planner.check

    def counted(self, req):
        calls.append(req.model)
        return real(self, req)

    monkeypatch.setattr(Planner, "check", counted)
    gateway.client.chat.completions.create(model="router", messages=MSG)
    assert calls == ["router"]
    list(gateway.client.chat.completions.create(model="cheap", messages=MSG, stream=True))
    assert calls == ["router", "cheap"]


def test_successes_reach_the_models_health_through_the_settlement(gateway):
    health = gateway.engine.store.health  # in memory: readable from the test's thread

    def samples(model: str) -> int:
        return asyncio.run(health.snapshot([model]))[model].samples

    before = samples("coder")
    gateway.client.chat.completions.create(model="coder", messages=MSG)
    assert samples("coder") == before + 1
    list(gateway.client.chat.completions.create(model="coder", messages=MSG, stream=True))
    for _ in range(200):  # the stream's accounting runs after its last byte
        if samples("coder") == before + 2:
            break
        time.sleep(0.01)
    assert samples("coder") == before + 2


def test_a_streamed_cache_hit_says_so_in_every_format(upstream, start_gateway):
    models = [priced_model(upstream.base_url, "cheap", 0.1, 0.2, capabilities=["tools"])]
    gw = start_gateway(
        make_config(
            upstream.base_url,
            models=models,
            cache={"default": True, "shared_anonymous": True, "exact": {"enabled": True}},
        )
    )
    o = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0, timeout=30)
    a = anthropic.Anthropic(base_url=gw.url, api_key="x", max_retries=0, timeout=30)
    o.chat.completions.create(model="cheap", messages=MSG)  # fills the cache
    calls = len(upstream.calls("cheap"))
    with o.chat.completions.with_streaming_response.create(model="cheap", messages=MSG, stream=True) as r:
        assert r.headers["x-moe-router-cache"] == "exact"
    a.messages.create(model="cheap", max_tokens=64, messages=MSG)  # the messages request's own entry
    with a.messages.with_streaming_response.create(
        model="cheap", max_tokens=64, messages=MSG, stream=True
    ) as r:
        assert r.headers["x-moe-router-cache"] == "exact"
    body = {"model": "cheap", "input": MSG[0]["content"]}
    with httpx.stream("POST", gw.url + "/v1/responses", json=body | {"stream": True}, timeout=30) as r:
        assert r.headers["x-moe-router-cache"] == "exact"
        assert b"response.completed" in r.read()
    # messages asks for its own max_tokens (its own cache entry); the Responses request is the chat's
    assert len(upstream.calls("cheap")) == calls + 1


def test_the_engine_offers_what_the_routes_are_typed_against(gateway):
    from router.gateway.engine_client import EngineClient

    names = [n for n in vars(EngineClient) if not n.startswith("_")] + list(EngineClient.__annotations__)
    assert [n for n in names if not hasattr(gateway.engine, n)] == []
