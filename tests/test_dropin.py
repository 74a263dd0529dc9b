"""Drop-in for every client: the official `anthropic` SDK and the `openai` SDK's Responses API and
embeddings against the gateway, routed to OpenAI-format and Anthropic-format upstreams (the mock
speaks both); agent routing text; conversation affinity across replicas on Redis."""

from __future__ import annotations

import asyncio
import json

import anthropic
import httpx
import openai
import pytest
import redis as redis_sync

from router.state import RedisStore
from router.state.keys import new_key
from tests.conftest import make_config
from tests.promtext import sample

TOOLS_A = [
    {
        "name": "lookup",
        "description": "look something up",
        "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}},
    }
]
TOOLS_R = [
    {
        "type": "function",
        "name": "lookup",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
    }
]


def pool(upstream) -> list[dict]:
    """An OpenAI-format model, an Anthropic-format one (litellm's anthropic provider), embedders."""
    return [
        {
            "name": "oa",
            "backend": "openai",
            "params": {"model": "oa", "base_url": upstream.base_url},
            "input_price_per_1m": 1.0,
            "output_price_per_1m": 2.0,
            "quality": {"default": 0.6},
            "capabilities": ["tools"],
        },
        {
            "name": "cl",
            "backend": "litellm",
            "params": {
                "model": "anthropic/cl",
                "api_base": f"http://127.0.0.1:{upstream.port}/v1/messages",
                "api_key": "sk-ant-test",
                "timeout": 10,
            },
            "input_price_per_1m": 3.0,
            "output_price_per_1m": 15.0,
            "quality": {"default": 0.9},
            "capabilities": ["tools"],
        },
        {
            "name": "emb",
            "kind": "embedding",
            "backend": "openai",
            "params": {"model": "emb", "base_url": upstream.base_url},
            "input_price_per_1m": 0.02,
        },
        {"name": "minilm", "kind": "embedding", "backend": "sentence-transformers"},
    ]


@pytest.fixture
def gw(upstream, start_gateway):
    return start_gateway(make_config(upstream.base_url, models=pool(upstream)))


def claude(gw, key: str = "unused") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0, timeout=30)


def oai(gw, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=30)


# ---- Anthropic Messages ----------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["oa", "cl", "router"])
def test_anthropic_sdk_plain_and_streamed_on_either_upstream_format(gw, upstream, model):
    m = claude(gw).messages.create(
        model=model, max_tokens=32, messages=[{"role": "user", "content": "Name a river"}]
    )
    answered = m.model
    assert m.role == "assistant" and m.content[0].text == f"{answered}: Name a river"
    assert m.stop_reason == "end_turn" and m.usage.output_tokens == 4
    assert m.id.startswith("msg_")
    with claude(gw).messages.stream(
        model=model, max_tokens=32, messages=[{"role": "user", "content": "one two three"}]
    ) as s:
        parts = list(s.text_stream)
        final = s.get_final_message()
    assert "".join(parts) == f"{final.model}: one two three" and len(parts) >= 2
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 4
    # the upstream was spoken to in its own format
    assert upstream.calls(answered)[-1]["messages"][-1]["content"] in (
        "one two three",
        [{"type": "text", "text": "one two three"}],
    )


@pytest.mark.parametrize("model", ["oa", "cl"])
def test_anthropic_tool_use_round_trip(gw, upstream, model):
    upstream.behave(model, use_tools=True)
    c = claude(gw)
    ask = [{"role": "user", "content": "find rivers"}]
    m = c.messages.create(model=model, max_tokens=64, tools=TOOLS_A, messages=ask)
    (use,) = [b for b in m.content if b.type == "tool_use"]
    assert m.stop_reason == "tool_use" and use.name == "lookup" and use.input == {"query": "find rivers"}
    follow = [
        *ask,
        {"role": "assistant", "content": m.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "the Nile"}]},
    ]
    m2 = c.messages.create(model=model, max_tokens=64, tools=TOOLS_A, messages=follow)
    assert m2.content[0].text == f"{model}: the tool said the Nile"
    with c.messages.stream(model=model, max_tokens=64, tools=TOOLS_A, messages=ask) as s:
        final = s.get_final_message()
    assert final.stop_reason == "tool_use"
    assert [(b.type, b.name, b.input) for b in final.content] == [
        ("tool_use", "lookup", {"query": "find rivers"})
    ]


def test_anthropic_bad_bodies_get_anthropic_errors(gw, upstream, start_gateway):
    def post(body, **kw):
        return httpx.post(gw.url + "/v1/messages", json=body, timeout=30, **kw)

    cases = [
        ({"model": "oa", "messages": [{"role": "user", "content": "hi"}]}, 400),  # no max_tokens
        (
            {
                "model": "oa",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "hi"}],
                "api_base": "x",
            },
            400,
        ),
        ({"model": "oa", "max_tokens": 5, "messages": [{"role": "robot", "content": "hi"}]}, 400),
        ({"model": "nope", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}, 404),
        ({"model": "emb", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}, 400),
    ]
    for body, status in cases:
        r = post(body)
        assert r.status_code == status, (body, r.text)
        err = r.json()
        assert err["type"] == "error" and set(err["error"]) == {"type", "message"}
    assert post(cases[1][0]).json()["error"]["type"] == "invalid_request_error"
    assert upstream.calls() == []
    with pytest.raises(anthropic.BadRequestError) as e:
        claude(gw).messages.create(
            model="oa", max_tokens=5, messages=[{"role": "user", "content": "x"}], extra_body={"headers": {}}
        )
    assert "headers" in e.value.body["error"]["message"] and upstream.calls() == []
    locked = start_gateway(make_config(upstream.base_url, models=pool(upstream), auth={"require_keys": True}))
    with pytest.raises(anthropic.AuthenticationError) as e:
        claude(locked).messages.create(model="oa", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert e.value.body["error"]["type"] == "authentication_error"


def test_count_tokens_and_feedback_on_a_message_id(gw):
    c = claude(gw)
    n = c.messages.count_tokens(model="router", messages=[{"role": "user", "content": "a few words here"}])
    assert n.input_tokens > 0
    m = c.messages.create(model="oa", max_tokens=16, messages=[{"role": "user", "content": "hi"}])
    r = gw.post("/v1/feedback", json={"id": m.id, "rating": 1.0})
    assert r.status_code == 200 and r.json()["model"] == "oa"


# ---- OpenAI Responses -------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["oa", "cl", "router"])
def test_responses_plain_and_streamed(gw, model):
    o = oai(gw)
    r = o.responses.create(model=model, input="Name a river in France.")
    assert r.output_text == f"{r.model}: Name a river in France." and r.status == "completed"
    assert r.id.startswith("resp_") and r.usage.output_tokens == 6
    events = list(o.responses.create(model=model, input="Count to three.", stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == events[-1].response.output_text and deltas.endswith("Count to three.")
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_responses_function_call_round_trip_and_previous_response(gw, upstream):
    upstream.behave("oa", use_tools=True)
    o = oai(gw)
    r = o.responses.create(model="oa", input="find x", tools=TOOLS_R, instructions="Be brief.")
    (call,) = [i for i in r.output if i.type == "function_call"]
    assert call.name == "lookup" and json.loads(call.arguments) == {"query": "find x"}
    r2 = o.responses.create(
        model="oa",
        previous_response_id=r.id,
        tools=TOOLS_R,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "the Seine"}],
    )
    assert r2.output_text == "oa: the tool said the Seine"
    sent = upstream.calls("oa")[-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"]  # instructions are not carried over
    assert sent[1]["tool_calls"][0]["id"] == call.call_id
    streamed = list(o.responses.create(model="oa", input="find y", tools=TOOLS_R, stream=True))
    done = streamed[-1].response
    assert [i.type for i in done.output] == ["function_call"] and json.loads(done.output[0].arguments) == {
        "query": "find y"
    }
    with pytest.raises(openai.NotFoundError):
        o.responses.create(model="oa", input="x", previous_response_id="resp_" + "0" * 32)
    with pytest.raises(openai.BadRequestError):
        o.responses.create(model="oa", input="x", extra_body={"api_key": "sk-elsewhere"})


def test_previous_responses_are_shared_by_replicas_and_private_to_their_key(
    upstream, start_gateway, redis_url
):
    cfg = make_config(upstream.base_url, models=pool(upstream), state=redis_url)
    a, b = start_gateway(cfg), start_gateway(cfg)
    keys = []
    for name in ("alice", "bob"):
        raw, rec = new_key(name)
        asyncio.run(_put(redis_url, rec))
        keys.append(raw)
    alice, bob = keys
    r = oai(a, alice).responses.create(model="oa", input="remember the number 42")
    r2 = oai(b, alice).responses.create(model="oa", input="what was it?", previous_response_id=r.id)
    assert r2.output_text == "oa: what was it?"
    assert "remember the number 42" in json.dumps(upstream.calls("oa")[-1]["messages"])
    with pytest.raises(openai.NotFoundError):
        oai(b, bob).responses.create(model="oa", input="and?", previous_response_id=r.id)
    r3 = oai(a, alice).responses.create(model="oa", input="forget it", store=False)
    with pytest.raises(openai.NotFoundError):
        oai(a, alice).responses.create(model="oa", input="?", previous_response_id=r3.id)


async def _put(redis_url, rec):
    s = RedisStore(redis_url)
    await s.keys.put(rec)
    await s.aclose()


# ---- embeddings -------------------------------------------------------------------------------------
def test_embeddings_through_the_openai_sdk_with_budget_and_ledger(upstream, start_gateway, redis_url):
    cfg = make_config(upstream.base_url, models=pool(upstream), state=redis_url)
    gw = start_gateway(cfg)
    raw, rec = new_key("embedder", budget_usd=1.0)
    asyncio.run(_put(redis_url, rec))
    o = oai(gw, raw)
    e = o.embeddings.create(model="emb", input=["a river", "a mountain"])  # the SDK asks for base64
    assert len(e.data) == 2 and len(e.data[0].embedding) == 8 and e.usage.prompt_tokens == 4
    assert e.data[0].embedding != e.data[1].embedding
    local = o.embeddings.create(model="minilm", input="hello world")
    assert len(local.data[0].embedding) == 384
    floats = gw.post(
        "/v1/embeddings",
        json={"model": "minilm", "input": "hello world"},
        headers={"authorization": f"Bearer {raw}"},
    )
    assert floats.json()["data"][0]["embedding"] == pytest.approx(local.data[0].embedding, abs=1e-6)
    ledger = redis_sync.Redis.from_url(redis_url)
    recs = [json.loads(ledger.get(k)) for k in ledger.keys("moe:req:*")]
    emb = [x for x in recs if x["model"] == "emb"]
    assert len(emb) == 1 and emb[0]["cost_usd"] == pytest.approx(4 * 0.02 / 1e6) and emb[0]["owner"] == rec.id
    for bad, status in ((("oa", "x")), 400), ((("router", "x")), 400), ((("nope", "x")), 404):
        r = gw.post(
            "/v1/embeddings",
            json={"model": bad[0], "input": bad[1]},
            headers={"authorization": f"Bearer {raw}"},
        )
        assert r.status_code == status, r.text
    r = gw.post(
        "/v1/embeddings", json={"model": "emb", "input": []}, headers={"authorization": f"Bearer {raw}"}
    )
    assert r.status_code == 422


# ---- agents: routing text and affinity ---------------------------------------------------------------
def test_routing_text_is_the_latest_human_ask(gw):
    agent_turns = [
        {"role": "system", "content": "You are a coding agent."},
        {"role": "user", "content": "Refactor the parser to use a state machine."},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "read", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "def parse(): ..."},
        {"role": "user", "content": "<system-reminder>Todo list is empty.</system-reminder>"},
    ]
    r = gw.post("/v1/route", json={"messages": agent_turns}).json()
    assert r["routing_text"] == "Refactor the parser to use a state machine."
    only_tools = [agent_turns[0], agent_turns[2], agent_turns[3]]
    r = gw.post("/v1/route", json={"messages": only_tools}).json()
    assert r["routing_text"].startswith("You are a coding agent.") and "def parse()" in r["routing_text"]
    # the same through the Anthropic format: tool_result blocks are not the ask
    body = {
        "model": "router",
        "max_tokens": 16,
        "system": "You are a coding agent.",
        "messages": [
            {"role": "user", "content": "Explain this stack trace."},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "read", "input": {}}]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": "Traceback ..."},
                    {"type": "text", "text": "<system-reminder>be concise</system-reminder>"},
                ],
            },
        ],
    }
    r = httpx.post(gw.url + "/v1/messages", json=body, timeout=30)
    assert r.status_code == 200
    assert (
        gw.engine.store.log._requests[r.headers["x-moe-router-request-id"]].prompt
        == "Explain this stack trace."
    )


def test_a_conversation_keeps_its_model_across_replicas_unless_switching_gains_enough(
    upstream, start_gateway, redis_url
):
    def replicas(margin: float):
        cfg = make_config(
            upstream.base_url,
            state=redis_url,
            routing={"default_policy": "strongest", "affinity": {"margin": margin}},
        )
        return start_gateway(cfg), start_gateway(cfg)

    first = [{"role": "user", "content": "Plan a trip to Rome."}]
    later = [
        *first,
        {"role": "assistant", "content": "Sure."},
        {"role": "user", "content": "And the hotels?"},
    ]

    def ask(gw, messages, routing=None, session=None):
        headers = {"x-moe-router-session": session} if session else {}
        body = {"model": "router", "messages": messages, **({"routing": routing} if routing else {})}
        r = gw.post("/v1/chat/completions", json=body, headers=headers)
        assert r.status_code == 200, r.text
        return r.headers["x-moe-router-model"], r.headers["x-moe-router-affinity"]

    a, b = replicas(margin=0.5)  # a big margin: stay
    assert ask(a, first, {"allowed_models": ["coder"], "cost_weight": 0.0}) == ("coder", "new")
    assert ask(b, later, {"cost_weight": 0.0}) == ("coder", "kept")  # big would score 0.3 higher
    assert ask(b, later, {"cost_weight": 0.0, "excluded_models": ["coder"]}) == ("big", "switched")
    c, d = replicas(margin=0.05)  # a small margin: the gain is worth the switch
    assert ask(c, first, {"allowed_models": ["coder"], "cost_weight": 0.0}, session="s-1") == ("coder", "new")
    assert ask(d, later, {"cost_weight": 0.0}, session="s-1") == ("big", "switched")
    assert ask(c, later, {"cost_weight": 0.0}, session="s-1") == ("big", "kept")
    text = c.get("/metrics").text
    assert sample(text, "moe_router_affinity_total", outcome="kept") == 1.0


def test_provider_prompt_cache_reads_are_reported(gw, upstream):
    upstream.behave("oa", cached_tokens=3)
    upstream.behave("cl", cached_tokens=2)
    r = oai(gw).chat.completions.create(model="oa", messages=[{"role": "user", "content": "a b c d"}])
    assert r.usage.prompt_tokens_details.cached_tokens == 3
    m = claude(gw).messages.create(
        model="cl", max_tokens=8, messages=[{"role": "user", "content": "a b c d"}]
    )
    assert m.usage.cache_read_input_tokens == 2
    text = gw.get("/metrics").text
    assert sample(text, "moe_router_cached_prompt_tokens_total", model="oa") == 3.0
    assert sample(text, "moe_router_cached_prompt_tokens_total", model="cl") == 2.0
