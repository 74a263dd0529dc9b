"""The in-process SDK runs the same engine as the gateway."""

from __future__ import annotations

import asyncio

import pytest

from router import Router
from router.errors import ConstraintsUnsatisfiable
from tests.conftest import make_config

CODE = "Write a Python function that merges two sorted lists and add unit tests."


@pytest.fixture
def sdk(upstream, encoder):
    r = Router(make_config(upstream.base_url), encoder=encoder)
    yield r
    r.close()


def test_route_without_calling(sdk, upstream):
    d = sdk.route(CODE)
    assert d.chosen.model == "coder" and d.policy == "category"
    assert sdk.route(CODE, policy="cheapest").chosen.model == "cheap"
    assert sdk.route(CODE, policy="strongest", excluded_models=["big"]).chosen.model == "coder"
    assert upstream.calls() == []


def test_chat_and_feedback(sdk, upstream):
    r = sdk.chat(CODE, max_tokens=50)
    assert r.model == "coder" and r.content == f"coder: {CODE}"
    assert r.cost_usd > 0 and r.usage.completion_tokens > 0 and r.policy == "category"
    assert r.decision.chosen.model == "coder"
    sdk.feedback(r.id, 1.0)
    direct = sdk.chat([{"role": "user", "content": "hi"}], model="big")
    assert direct.model == "big" and direct.policy is None and direct.decision is None


def test_constraint_errors_raise(sdk):
    with pytest.raises(ConstraintsUnsatisfiable, match="max_cost_usd"):
        sdk.chat(CODE, routing={"max_cost_usd": 1e-12})


def test_async_and_streaming(sdk):
    async def run():
        r = await sdk.achat("Say hi", model="router:cheapest")
        parts = [p async for p in sdk.astream("one two three", model="router:cheapest")]
        return r, parts

    r, parts = asyncio.run(run())
    assert r.model == "cheap"
    assert "".join(parts) == "cheap: one two three" and len(parts) > 1
    assert "".join(sdk.stream("a b", model="cheap")) == "cheap: a b"


def test_a_stream_left_early_is_settled_at_once(sdk):
    import time

    words = sdk.stream("one two three four five six", model="cheap")
    assert next(words)
    words.close()  # the caller stops reading: the stream ends and is settled now, not at GC
    log = sdk.engine.store.log
    for _ in range(100):
        records = list(log._requests.values())
        if records:
            break
        time.sleep(0.02)
    (rec,) = records
    assert rec.status == "client_closed" and rec.model == "cheap" and rec.completion_tokens >= 1
