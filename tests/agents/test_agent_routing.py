"""Routing that fits agents: vendor model names, output caps, estimates with tools, the session
key from the agents' own headers, and the prompt cache a model switch gives up."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import make_config, priced_model

MSG = [{"role": "user", "content": "hello there"}]


def models(upstream, cached: float | None = 0.1) -> list[dict]:
    extra = {} if cached is None else {"cached_input_price_per_1m": cached}
    return [
        priced_model(
            upstream.base_url,
            "cheap",
            1.0,
            2.0,
            quality={"default": 0.5},
            context_window=200_000,
            max_output_tokens=4096,
            capabilities=["tools"],
        ),
        priced_model(
            upstream.base_url,
            "pricey",
            10.0,
            30.0,
            quality={"default": 0.9},
            context_window=200_000,
            max_output_tokens=32_000,
            capabilities=["tools"],
            **extra,
        ),
    ]


@pytest.fixture
def gw(upstream, start_gateway):
    return start_gateway(make_config(upstream.base_url, models=models(upstream)))


def post(gw, path: str, body: dict, **headers: str) -> httpx.Response:
    r = gw.post(path, json=body, headers=headers)
    assert r.status_code == 200, r.text
    return r


@pytest.mark.parametrize(
    ("name", "tier", "model"),
    [
        ("claude-haiku-4-5", "cheap", "cheap"),
        ("claude-opus-4-8", "quality", "pricey"),
        ("gpt-5-nano", "cheap", "cheap"),
    ],
)
def test_vendor_model_names_route_with_their_tier(gw, name, tier, model):
    r = post(gw, "/v1/chat/completions", {"model": name, "messages": MSG})
    assert r.headers["x-moe-router-alias"] == f"{name}=router({tier})"
    assert r.headers["x-moe-router-routed"] == "true" and r.headers["x-moe-router-model"] == model
    record = gw.engine.store.log._requests[r.headers["x-moe-router-request-id"]]
    assert record.decision["notes"]["alias"] == f"{name}=router({tier})"


def test_model_aliases_are_configurable_and_other_names_stay_404(upstream, start_gateway):
    aliases = [{"pattern": "my-team-*", "model": "pricey"}]
    gw = start_gateway(make_config(upstream.base_url, models=models(upstream), model_aliases=aliases))
    r = post(gw, "/v1/chat/completions", {"model": "my-team-default", "messages": MSG})
    assert r.headers["x-moe-router-model"] == "pricey" and r.headers["x-moe-router-routed"] == "false"
    # a pool model reached by an alias: the answer and the ledger say which name was asked for
    assert r.headers["x-moe-router-alias"] == "my-team-default=pricey"
    record = gw.engine.store.log._requests[r.headers["x-moe-router-request-id"]]
    assert record.model == "pricey" and record.policy is None
    assert record.decision["notes"]["alias"] == "my-team-default=pricey"
    assert [c["model"] for c in record.decision["ranked"]] == ["pricey"]
    # a pool model asked for by its own name keeps no decision
    r = post(gw, "/v1/chat/completions", {"model": "pricey", "messages": MSG})
    assert "x-moe-router-alias" not in r.headers
    assert gw.engine.store.log._requests[r.headers["x-moe-router-request-id"]].decision is None
    # the defaults are replaced: a claude name is not a pool model any more
    assert (
        gw.post("/v1/chat/completions", json={"model": "claude-opus-4-8", "messages": MSG}).status_code == 404
    )


def test_max_tokens_above_a_models_limit_is_capped_and_reported(gw, upstream):
    r = post(gw, "/v1/chat/completions", {"model": "cheap", "messages": MSG, "max_tokens": 32000})
    assert r.headers["x-moe-router-max-tokens-capped"] == "32000->4096"
    assert upstream.calls("cheap")[-1]["max_tokens"] == 4096


def test_estimates_and_count_tokens_include_tools_and_system_blocks(gw):
    tool = {
        "name": "read_file",
        "description": "Read a file. " * 200,
        "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}},
    }
    body = {"model": "router", "messages": MSG}
    bare = post(gw, "/v1/messages/count_tokens", body).json()["input_tokens"]
    with_tools = post(gw, "/v1/messages/count_tokens", {**body, "tools": [tool]}).json()["input_tokens"]
    system = [{"type": "text", "text": "word " * 400, "cache_control": {"type": "ephemeral"}}]
    with_system = post(gw, "/v1/messages/count_tokens", {**body, "system": system}).json()["input_tokens"]
    assert with_tools - bare > 600  # 2,600 characters of description
    assert with_system - bare >= 500


def test_claude_codes_session_header_keys_the_conversation(gw):
    body = {"model": "router", "max_tokens": 16, "messages": MSG}
    first = post(gw, "/v1/messages", body, **{"x-claude-code-session-id": "cc-1"})
    again = post(gw, "/v1/messages", body, **{"x-claude-code-session-id": "cc-1"})
    other = post(gw, "/v1/messages", body, **{"x-claude-code-session-id": "cc-2"})
    assert first.headers["x-moe-router-affinity"] == "new"
    assert again.headers["x-moe-router-affinity"] == "kept"
    assert other.headers["x-moe-router-affinity"] == "new"


def long_turns() -> list[dict]:
    return [
        {"role": "user", "content": "context " * 20_000},
        {"role": "assistant", "content": "Read it."},
        {"role": "user", "content": "Summarise it."},
    ]


@pytest.mark.parametrize(("cached", "affinity"), [(0.1, "kept"), (None, "switched")])
def test_a_switch_for_cost_must_beat_the_prompt_cache_it_gives_up(upstream, start_gateway, cached, affinity):
    gw = start_gateway(make_config(upstream.base_url, models=models(upstream, cached)))
    turns = long_turns()
    first = {"model": "router", "messages": turns[:1], "routing": {"allowed_models": ["pricey"]}}
    assert (
        post(gw, "/v1/chat/completions", first, **{"x-moe-router-session": "s"}).headers["x-moe-router-model"]
        == "pricey"
    )
    later = {"model": "router", "messages": turns, "routing": {"cost_weight": 1.0}}
    r = post(gw, "/v1/chat/completions", later, **{"x-moe-router-session": "s"})
    assert r.headers["x-moe-router-affinity"] == affinity
    assert r.headers["x-moe-router-model"] == ("pricey" if affinity == "kept" else "cheap")
    notes = gw.engine.store.log._requests[r.headers["x-moe-router-request-id"]].decision["notes"]["cache"]
    assert notes["on"] == "pricey"
    assert (notes["lost_cache_usd"] > 0) == (cached is not None)


def test_cached_prompt_tokens_are_priced_at_the_cached_rate(gw, upstream):
    upstream.behave("pricey", cached_tokens=2)
    r = post(gw, "/v1/chat/completions", {"model": "pricey", "messages": MSG})
    usage = r.json()["usage"]
    fresh = usage["prompt_tokens"] - 2
    expected = (fresh * 10.0 + 2 * 0.1 + usage["completion_tokens"] * 30.0) / 1e6
    assert float(r.headers["x-moe-router-cost-usd"]) == pytest.approx(expected)
