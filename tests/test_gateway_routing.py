"""Routing through the gateway with the official openai client, against a real mock upstream."""

from __future__ import annotations

import openai
import pytest

from tests.conftest import make_config
from tests.promtext import sample

CODE = "Write a Python function that merges two sorted lists and add unit tests."
CHAT = "Hi there! How are you doing today?"


def headers_of(raw) -> dict[str, str]:
    return {k.lower(): v for k, v in raw.headers.items() if k.lower().startswith("x-moe-router-")}


def test_routed_answer_has_routing_headers(gateway, upstream):
    raw = gateway.client.chat.completions.with_raw_response.create(
        model="router", messages=[{"role": "user", "content": CHAT}], max_tokens=50
    )
    resp = raw.parse()
    h = headers_of(raw)
    assert h["x-moe-router-policy"] == "irt"  # the default: category priors until calibrated
    assert h["x-moe-router-routed"] == "true"
    chosen = h["x-moe-router-model"]
    assert resp.model == chosen
    assert resp.choices[0].message.content == f"{chosen}: {CHAT}"
    assert resp.id == h["x-moe-router-request-id"]
    assert 0 <= float(h["x-moe-router-predicted-quality"]) <= 1
    assert h["x-moe-router-fallbacks"] == "none"
    # cost comes from the upstream's real token counts and the price table
    spec = gateway.engine.specs[chosen]
    u = resp.usage
    expected = (
        u.prompt_tokens * spec.input_price_per_1m + u.completion_tokens * spec.output_price_per_1m
    ) / 1e6
    assert float(h["x-moe-router-cost-usd"]) == pytest.approx(expected, rel=1e-5)
    assert len(upstream.calls(chosen)) == 1


def test_category_policy_routes_by_content(gateway):
    code = gateway.client.chat.completions.with_raw_response.create(
        model="router", messages=[{"role": "user", "content": CODE}]
    )
    chat = gateway.client.chat.completions.with_raw_response.create(
        model="router", messages=[{"role": "user", "content": CHAT}]
    )
    assert headers_of(code)["x-moe-router-model"] == "coder"
    assert headers_of(chat)["x-moe-router-model"] == "cheap"


@pytest.mark.parametrize(("policy", "model"), [("cheapest", "cheap"), ("strongest", "big")])
def test_policy_selected_by_model_name(gateway, policy, model):
    raw = gateway.client.chat.completions.with_raw_response.create(
        model=f"router:{policy}", messages=[{"role": "user", "content": CODE}]
    )
    assert headers_of(raw)["x-moe-router-model"] == model
    assert headers_of(raw)["x-moe-router-policy"] == policy


def test_cost_weight_moves_choice_toward_cheaper(gateway):
    msgs = [{"role": "user", "content": CODE}]
    picks = [
        headers_of(
            gateway.client.chat.completions.with_raw_response.create(
                model="router:strongest", messages=msgs, extra_body={"routing": {"cost_weight": w}}
            )
        )["x-moe-router-model"]
        for w in (0.0, 1.0)
    ]
    assert picks == ["big", "cheap"]


def test_concrete_model_bypasses_routing(gateway, upstream):
    raw = gateway.client.chat.completions.with_raw_response.create(
        model="big", messages=[{"role": "user", "content": CHAT}]
    )
    h = headers_of(raw)
    assert h["x-moe-router-model"] == "big"
    assert h["x-moe-router-routed"] == "false"
    assert h["x-moe-router-policy"] == "none"
    assert len(upstream.calls("big")) == 1


def test_constraints_filter_candidates(gateway):
    msgs = [{"role": "user", "content": CODE}]

    def pick(**routing):
        raw = gateway.client.chat.completions.with_raw_response.create(
            model="router:strongest", messages=msgs, max_tokens=100, extra_body={"routing": routing}
        )
        return headers_of(raw)["x-moe-router-model"]

    assert pick() == "big"
    assert pick(excluded_models=["big"]) == "coder"
    assert pick(allowed_models=["cheap", "coder"]) == "coder"
    # big costs ~$0.003 for this request, coder ~$0.0002
    assert pick(max_cost_usd=0.001) == "coder"
    assert pick(min_quality=0.55, max_cost_usd=0.001) == "coder"


def test_impossible_constraints_are_a_400_naming_the_constraint(gateway):
    with pytest.raises(openai.BadRequestError) as e:
        gateway.client.chat.completions.create(
            model="router",
            messages=[{"role": "user", "content": CODE}],
            extra_body={"routing": {"max_cost_usd": 1e-9}},
        )
    err = e.value.body
    assert err["code"] == "constraints_unsatisfiable"
    assert err["param"] == "routing.max_cost_usd"
    assert "max_cost_usd" in err["message"]

    with pytest.raises(openai.BadRequestError) as e:
        gateway.client.chat.completions.create(
            model="router",
            messages=[{"role": "user", "content": CODE}],
            extra_body={"routing": {"min_quality": 0.99}},
        )
    assert e.value.body["param"] == "routing.min_quality"


def test_context_window_filters_small_models(gateway):
    long_prompt = "word " * 5000  # ~6,250 estimated tokens: too long for cheap (4,096)
    raw = gateway.client.chat.completions.with_raw_response.create(
        model="router:cheapest", messages=[{"role": "user", "content": long_prompt}], max_tokens=10
    )
    assert headers_of(raw)["x-moe-router-model"] == "coder"
    with pytest.raises(openai.BadRequestError) as e:
        gateway.client.chat.completions.create(
            model="cheap", messages=[{"role": "user", "content": long_prompt}], max_tokens=10
        )
    assert e.value.body["code"] == "context_length_exceeded"


def test_capabilities_filter_candidates(upstream, start_gateway):
    cfg = make_config(upstream.base_url)
    cfg.models[2].capabilities = ["tools"]
    gw = start_gateway(cfg)
    tools = [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
    ]
    raw = gw.client.chat.completions.with_raw_response.create(
        model="router:cheapest", messages=[{"role": "user", "content": CHAT}], tools=tools
    )
    assert headers_of(raw)["x-moe-router-model"] == "big"
    assert upstream.calls("big")[0]["tools"] == tools  # passed through to the backend


def test_route_endpoint_ranks_without_calling(gateway, upstream):
    r = gateway.post(
        "/v1/route",
        json={"messages": [{"role": "user", "content": CODE}], "routing": {"excluded_models": ["cheap"]}},
    )
    assert r.status_code == 200
    d = r.json()
    assert d["policy"] == "irt"
    assert d["model"] == d["candidates"][0]["model"]
    ranked = [c["model"] for c in d["candidates"]]
    assert set(ranked) == {"coder", "big"}
    scores = [c["score"] for c in d["candidates"]]
    assert scores == sorted(scores, reverse=True)
    excluded = {c["model"]: [x["reason"] for x in c["excluded"]] for c in d["excluded"]}
    assert excluded == {"cheap": ["excluded_models"], "keyless": ["unavailable"]}
    for c in d["candidates"]:
        assert c["predicted_cost_usd"] > 0 and 0 <= c["predicted_quality"] <= 1
    assert upstream.calls() == []


def test_models_endpoint_lists_pool_and_policies(gateway):
    models = {m.id: m for m in gateway.client.models.list().data}
    assert {"router", "router:category", "router:cheapest", "cheap", "coder", "big", "keyless"} <= set(models)
    assert models["keyless"].model_extra["available"] is False
    assert "MOE_TEST_NEVER_SET_KEY" in models["keyless"].model_extra["unavailable_reason"]
    assert models["big"].model_extra["available"] is True


def test_unavailable_model_requested_by_name_is_503(gateway):
    with pytest.raises(openai.InternalServerError) as e:
        gateway.client.chat.completions.create(model="keyless", messages=[{"role": "user", "content": CHAT}])
    assert e.value.status_code == 503
    assert "MOE_TEST_NEVER_SET_KEY" in e.value.body["message"]


def test_measured_latency_feeds_routing(gateway, upstream):
    upstream.behave("big", delay=0.3)
    for _ in range(2):
        gateway.client.chat.completions.create(model="big", messages=[{"role": "user", "content": CHAT}])
    d = gateway.post(
        "/v1/route", json={"model": "router:strongest", "messages": [{"role": "user", "content": CHAT}]}
    )
    big = next(c for c in d.json()["candidates"] if c["model"] == "big")
    assert big["predicted_latency_ms"] >= 300
    d = gateway.post(
        "/v1/route",
        json={
            "model": "router:strongest",
            "messages": [{"role": "user", "content": CHAT}],
            "routing": {"max_latency_ms": 250},
        },
    ).json()
    assert d["model"] != "big"
    assert any(c["model"] == "big" and c["excluded"][0]["reason"] == "max_latency_ms" for c in d["excluded"])


def test_streaming_answer(gateway):
    with gateway.client.chat.completions.with_streaming_response.create(
        model="router:strongest",
        messages=[{"role": "user", "content": "one two three four"}],
        stream=True,
        stream_options={"include_usage": True},
    ) as resp:
        assert resp.headers["x-moe-router-model"] == "big"
        chunks = list(resp.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "big: one two three four"
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 4
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
    assert all(c.model == "big" for c in chunks)


def test_legacy_completions(gateway):
    r = gateway.client.completions.create(model="router:cheapest", prompt="Say hi", max_tokens=5)
    assert r.object == "text_completion"
    assert r.choices[0].text == "cheap: Say hi"
    assert r.model == "cheap"


def test_feedback_is_stored_and_counted(gateway):
    resp = gateway.client.chat.completions.create(
        model="router", messages=[{"role": "user", "content": CHAT}]
    )
    r = gateway.post("/v1/feedback", json={"id": resp.id, "rating": 0.8, "comment": "good"})
    assert r.status_code == 200 and r.json()["model"] == resp.model
    assert gateway.post("/v1/feedback", json={"id": "chatcmpl-nope", "rating": 1}).status_code == 404
    assert gateway.post("/v1/feedback", json={"id": resp.id, "rating": 1.5}).status_code == 422
    metrics = gateway.get("/metrics").text
    assert sample(metrics, "moe_router_feedback_total", model=resp.model, source="user") == 1.0


def test_metrics_count_choices_tokens_and_cost(gateway):
    resp = gateway.client.chat.completions.create(
        model="router:cheapest", messages=[{"role": "user", "content": CHAT}]
    )
    text = gateway.get("/metrics").text
    assert sample(text, "moe_router_routed_total", policy="cheapest", model="cheap") == 1.0
    completion = sample(text, "moe_router_tokens_total", kind="completion", model="cheap")
    assert completion == resp.usage.completion_tokens
    assert sample(text, "moe_router_cost_usd_total", model="cheap") > 0
    assert sample(text, "moe_router_requests_total", endpoint="/v1/chat/completions", status="200") == 1.0
    assert "moe_router_decision_seconds_bucket" in text


def test_health_and_ready(gateway):
    assert gateway.get("/health").json() == {"status": "ok"}
    r = gateway.get("/ready")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["models"]["big"] is True and "keyless" in body["unavailable"]
