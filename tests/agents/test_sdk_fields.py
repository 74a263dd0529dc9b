"""The official SDKs with the fields agents send: what is translated, forwarded, dropped, refused.

One gateway over an OpenAI-format model and an Anthropic-format one (litellm's anthropic
provider), both on the scripted upstream; every assertion reads what the upstream received.
"""

from __future__ import annotations

import anthropic
import openai
import pytest

from tests.conftest import make_config
from tests.support import anthropic_format_model

MSG = [{"role": "user", "content": "name a river"}]
CLAUDE = "claude-sonnet-4-5"  # what the upstream sees of model "cl"


def pool(upstream) -> list[dict]:
    return [
        {
            "name": "oa",
            "backend": "openai",
            "params": {"model": "oa", "base_url": upstream.base_url, "timeout": 10},
            "capabilities": ["tools", "reasoning"],
            "context_window": 128_000,
            "max_output_tokens": 4096,
            "quality": {"default": 0.6},
        },
        {
            "name": "plain",
            "backend": "openai",
            "params": {"model": "plain", "base_url": upstream.base_url, "timeout": 10},
            "capabilities": ["tools"],
            "context_window": 128_000,
            "quality": {"default": 0.5},
        },
        anthropic_format_model(
            upstream,
            "cl",
            CLAUDE,  # a name litellm knows thinks (it refuses `thinking` for others)
            capabilities=["tools", "cache_control", "thinking"],
            context_window=200_000,
            quality={"default": 0.9},
        ),
    ]


@pytest.fixture
def gw(upstream, start_gateway):
    return start_gateway(make_config(upstream.base_url, models=pool(upstream)))


def oai(gw) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0, timeout=30)


def claude(gw) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key="unused", max_retries=0, timeout=30)


# ---- logprobs ------------------------------------------------------------------------------------
def test_chat_logprobs_round_trip_plain_and_streamed(gw, upstream):
    r = oai(gw).chat.completions.create(model="oa", messages=MSG, logprobs=True, top_logprobs=2)
    content = r.choices[0].logprobs.content
    assert [t.token for t in content] == r.choices[0].message.content.split(" ")
    assert content[0].logprob == -0.25 and len(content[0].top_logprobs) == 2
    assert upstream.calls("oa")[-1]["top_logprobs"] == 2
    stream = oai(gw).chat.completions.create(model="oa", messages=MSG, logprobs=True, stream=True)
    tokens = [
        t.token for c in stream if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content
    ]
    assert tokens == ["oa:", "name", "a", "river"]


def test_responses_top_logprobs_come_back_on_the_output_text(gw):
    r = oai(gw).responses.create(model="oa", input="name a river", top_logprobs=1)
    part = r.output[0].content[0]
    assert [t.token for t in part.logprobs] == part.text.split(" ")


# ---- thinking and effort -------------------------------------------------------------------------
def test_thinking_and_effort_become_a_reasoning_effort_for_models_that_reason(gw, upstream):
    c = claude(gw)
    c.messages.create(
        model="oa", max_tokens=64, messages=MSG, thinking={"type": "enabled", "budget_tokens": 2048}
    )
    assert upstream.calls("oa")[-1]["reasoning_effort"] == "low"
    c.messages.create(
        model="oa",
        max_tokens=64,
        messages=MSG,
        extra_body={"thinking": {"type": "adaptive"}, "output_config": {"effort": "max"}},
    )
    assert upstream.calls("oa")[-1]["reasoning_effort"] == "xhigh"
    # a model without the reasoning capability is not sent one (OpenAI refuses it there)
    r = c.messages.with_raw_response.create(
        model="plain", max_tokens=64, messages=MSG, thinking={"type": "enabled", "budget_tokens": 20000}
    )
    assert r.http_response.status_code == 200
    assert "reasoning_effort" not in upstream.calls("plain")[-1]
    assert all("thinking" not in call for call in upstream.calls())


def test_thinking_blocks_round_trip_to_an_anthropic_format_upstream(gw, upstream):
    from tests.upstream import SIGNATURE, THOUGHT

    tools = [{"name": "lookup", "description": "look up", "input_schema": {"type": "object"}}]
    thinking = {"type": "enabled", "budget_tokens": 1024}
    upstream.behave(CLAUDE, use_tools=True)
    upstream.behave("oa", use_tools=True)
    c = claude(gw)
    first = c.messages.create(model="cl", max_tokens=2048, messages=MSG, tools=tools, thinking=thinking)
    assert [b.type for b in first.content] == ["thinking", "tool_use"]
    assert first.content[0].thinking == THOUGHT and first.content[0].signature == SIGNATURE
    assert upstream.calls(CLAUDE)[-1]["thinking"] == thinking
    history = [
        *MSG,
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": first.content[1].id, "content": "Nile"}],
        },
    ]
    with c.messages.stream(
        model="cl", max_tokens=2048, messages=history, tools=tools, thinking=thinking
    ) as s:
        final = s.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text"] and final.content[0].signature == SIGNATURE
    sent = upstream.calls(CLAUDE)[-1]["messages"][1]["content"]
    assert {"type": "thinking", "thinking": THOUGHT, "signature": SIGNATURE} in sent  # sent back, signed
    # an OpenAI-format model gets neither the thinking blocks nor `thinking`, but an effort
    c.messages.create(model="oa", max_tokens=2048, messages=history, tools=tools, thinking=thinking)
    call = upstream.calls("oa")[-1]
    assert "thinking" not in call and "thinking_blocks" not in str(call["messages"])
    assert call["reasoning_effort"] == "low"


# ---- cache_control -------------------------------------------------------------------------------
def test_cache_control_reaches_an_anthropic_format_upstream_and_not_an_openai_one(gw, upstream):
    system = [
        {"type": "text", "text": "You are terse."},
        {"type": "text", "text": "Project rules: none.", "cache_control": {"type": "ephemeral"}},
    ]
    c = claude(gw)
    c.messages.create(model="cl", max_tokens=32, system=system, messages=MSG)
    sent = upstream.calls(CLAUDE)[-1]["system"]
    assert [b["text"] for b in sent] == ["You are terse.", "Project rules: none."]
    assert sent[1]["cache_control"] == {"type": "ephemeral"} and "cache_control" not in sent[0]
    c.messages.create(model="plain", max_tokens=32, system=system, messages=MSG)
    first = upstream.calls("plain")[-1]["messages"][0]
    assert first["role"] == "system" and "cache_control" not in str(first)


def test_cache_control_on_tools_and_tool_results_reaches_an_anthropic_format_upstream(gw, upstream):
    mark = {"type": "ephemeral"}
    tools = [
        {"name": "lookup", "description": "look up", "input_schema": {"type": "object"}},
        {"name": "read", "description": "read", "input_schema": {"type": "object"}, "cache_control": mark},
    ]
    history = [
        *MSG,
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {}}],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "Nile", "cache_control": mark}
            ],
        },
    ]
    c = claude(gw)
    c.messages.create(model="cl", max_tokens=32, messages=history, tools=tools)
    sent = upstream.calls(CLAUDE)[-1]
    assert [t.get("cache_control") for t in sent["tools"]] == [None, mark]
    result = sent["messages"][-1]["content"][0]
    assert result["type"] == "tool_result" and result["cache_control"] == mark
    # a model without the capability gets neither mark (the tools and the tool message as plain)
    c.messages.create(model="plain", max_tokens=32, messages=history, tools=tools)
    call = upstream.calls("plain")[-1]
    assert [t["function"]["name"] for t in call["tools"]] == ["lookup", "read"]
    assert call["messages"][-1] == {"role": "tool", "tool_call_id": "toolu_1", "content": "Nile"}
    assert "cache_control" not in str(call)


# ---- unknown fields: dropped and reported; forbidden fields: 400, nothing sent ------------------
def test_unknown_fields_are_dropped_and_reported_on_every_api(gw, upstream):
    raw = oai(gw).chat.completions.with_raw_response.create(
        model="oa", messages=MSG, extra_body={"next_year_field": 1, "metadata": {"k": "v"}}
    )
    assert raw.headers["x-moe-router-dropped-params"] == "next_year_field"
    raw = oai(gw).responses.with_raw_response.create(
        model="oa",
        input=[{"type": "message", "role": "user", "content": "hi", "passthrough": {"a": 1}}],
        extra_body={"client_metadata": {"x": "y"}},
    )
    assert raw.headers["x-moe-router-dropped-params"] == "input[0].passthrough"
    raw = claude(gw).messages.with_raw_response.create(
        model="oa",
        max_tokens=16,
        messages=MSG,
        tools=[{"type": "web_search_20250305", "name": "web_search"}],
        extra_body={"context_management": {"edits": []}, "brand_new": True},
    )
    assert raw.headers["x-moe-router-dropped-params"] == "brand_new,tools[0]"
    for call in upstream.calls("oa"):
        assert not {
            "next_year_field",
            "metadata",
            "client_metadata",
            "brand_new",
            "context_management",
        } & set(call)
        assert "passthrough" not in str(call["messages"]) and "tools" not in call


@pytest.mark.parametrize("field", ["api_base", "base_url", "api_key", "extra_headers"])
def test_forbidden_fields_are_400_with_nothing_sent_on_every_api(gw, upstream, field):
    with pytest.raises(openai.BadRequestError) as e:
        oai(gw).chat.completions.create(model="oa", messages=MSG, extra_body={field: "http://evil"})
    assert e.value.body["param"] == field and e.value.body["code"] == "forbidden_parameter"
    with pytest.raises(openai.BadRequestError):
        oai(gw).responses.create(model="oa", input=[{"role": "user", "content": "hi", field: "x"}])
    with pytest.raises(anthropic.BadRequestError) as e:
        claude(gw).messages.create(model="oa", max_tokens=8, messages=MSG, extra_body={field: "x"})
    assert (
        e.value.body["error"]["type"] == "invalid_request_error" and field in e.value.body["error"]["message"]
    )
    assert upstream.calls() == []


def test_unknown_fields_are_refused_under_params_reject(upstream, start_gateway):
    gw = start_gateway(make_config(upstream.base_url, models=pool(upstream), params={"unknown": "reject"}))
    with pytest.raises(openai.BadRequestError) as e:
        oai(gw).responses.create(model="oa", input=[{"role": "user", "content": "hi", "passthrough": 1}])
    assert e.value.body["param"] == "input[0].passthrough" and e.value.body["code"] == "unknown_parameter"
    assert upstream.calls() == []


async def test_the_output_cap_goes_where_the_server_reads_it(upstream):
    from adapters.base import ChatRequest
    from adapters.openai_compat import OpenAICompatAdapter

    msgs = [{"role": "user", "content": "hi"}]
    for field, sent in [(None, "max_tokens"), ("max_completion_tokens", "max_completion_tokens")]:
        a = OpenAICompatAdapter("oa", base_url=upstream.base_url, output_cap_field=field)
        await a.chat(ChatRequest(messages=msgs, max_tokens=7))
        await a.aclose()
        call = upstream.calls("oa")[-1]
        assert call[sent] == 7 and len({"max_tokens", "max_completion_tokens"} & set(call)) == 1
    # OpenAI's own API gets max_completion_tokens (its reasoning models refuse max_tokens)
    assert OpenAICompatAdapter("gpt-5-mini")._cap_field == "max_completion_tokens"


def test_namespace_and_custom_tools_map_back_and_replay_from_a_stored_response(gw, upstream):
    tools = [
        {
            "type": "namespace",
            "name": "files",
            "description": "file tools",
            "tools": [{"type": "function", "name": "read", "parameters": {"type": "object"}}],
        },
        {"type": "custom", "name": "exec", "description": "run code"},
        {"type": "web_search"},
    ]
    upstream.behave("oa", tool="files__read", tool_args={"path": "a.txt"})
    raw = oai(gw).responses.with_raw_response.create(model="oa", input="read a.txt", tools=tools)
    assert raw.headers["x-moe-router-dropped-params"] == "tools[2]"
    first = raw.parse()
    call = first.output[0]
    assert (call.type, call.name, call.namespace) == ("function_call", "read", "files")
    sent = upstream.calls("oa")[-1]["tools"]
    assert [t["function"]["name"] for t in sent] == ["files__read", "exec"]
    assert sent[1]["function"]["parameters"]["required"] == ["input"]
    output = {"type": "function_call_output", "call_id": call.call_id, "output": "hello"}
    again = oai(gw).responses.create(model="oa", input=[output], tools=tools, previous_response_id=first.id)
    assert again.output_text == "oa: the tool said hello"
    replayed = upstream.calls("oa")[-1]["messages"]
    assert replayed[1]["tool_calls"][0]["function"]["name"] == "files__read"  # the stored call, flat
    # a custom tool's call comes back as a custom_tool_call with its free-text input
    upstream.behave("oa", tool="exec", tool_args={"input": "print(1)"})
    r = oai(gw).responses.create(model="oa", input="run it", tools=tools)
    assert (r.output[0].type, r.output[0].name, r.output[0].input) == ("custom_tool_call", "exec", "print(1)")


def test_thinking_fits_the_output_cap_it_is_sent_with():
    from router.executor import thinking_within

    assert thinking_within({"type": "adaptive"}, 32000) == {"type": "enabled", "budget_tokens": 16000}
    assert thinking_within({"type": "enabled", "budget_tokens": 20000}, 8192) == {
        "type": "enabled",
        "budget_tokens": 8191,
    }
    assert thinking_within({"type": "enabled", "budget_tokens": 2048}, 32000)["budget_tokens"] == 2048
    assert thinking_within({"type": "adaptive"}, 1500) is None  # no room to think: not sent
