"""Retries, Retry-After, fallbacks, circuit breakers and streams that break, over real sockets."""

from __future__ import annotations

import time

import openai
import pytest

from tests.conftest import make_config
from tests.promtext import sample
from tests.upstream import Delay, Fail

MSG = [{"role": "user", "content": "Write a haiku about routers."}]


def hdr(raw, name):
    return raw.headers[f"x-moe-router-{name}"]


def test_retryable_failure_is_retried_on_the_same_model(gateway, upstream):
    upstream.script("big", Fail(500))
    raw = gateway.client.chat.completions.with_raw_response.create(model="router:strongest", messages=MSG)
    assert hdr(raw, "model") == "big" and hdr(raw, "fallbacks") == "none"
    assert len(upstream.calls("big")) == 2
    assert sample(gateway.get("/metrics").text, "moe_router_retries_total", model="big") == 1.0


def test_retry_after_is_honoured(gateway, upstream):
    upstream.script("big", Fail(429, retry_after=0.4))
    raw = gateway.client.chat.completions.with_raw_response.create(model="router:strongest", messages=MSG)
    assert hdr(raw, "model") == "big"
    t = upstream.call_times("big")
    assert len(t) == 2 and t[1] - t[0] >= 0.4


def test_retry_after_beyond_cap_falls_back_at_once(upstream, start_gateway):
    gw = start_gateway(make_config(upstream.base_url, dispatch={"max_retry_after_s": 1.0}))
    upstream.script("big", Fail(429, retry_after=60))
    raw = gw.client.chat.completions.with_raw_response.create(model="router:strongest", messages=MSG)
    assert hdr(raw, "fallbacks") == "big" and hdr(raw, "model") != "big"
    assert len(upstream.calls("big")) == 1


def test_failed_model_falls_back_to_next_best(gateway, upstream):
    upstream.behave("big", fail_status=503)
    route = gateway.post("/v1/route", json={"model": "router:strongest", "messages": MSG}).json()
    second = route["candidates"][1]["model"]
    raw = gateway.client.chat.completions.with_raw_response.create(model="router:strongest", messages=MSG)
    assert hdr(raw, "model") == second
    assert hdr(raw, "fallbacks") == "big"
    assert raw.parse().choices[0].message.content.startswith(second)
    text = gateway.get("/metrics").text
    assert sample(text, "moe_router_fallbacks_total", model="big", reason="BackendUnavailable") == 1.0


def test_all_candidates_failing_is_a_clear_5xx(gateway, upstream):
    for m in ("cheap", "coder", "big"):
        upstream.behave(m, fail_status=500)
    with pytest.raises(openai.InternalServerError) as e:
        gateway.client.chat.completions.create(model="router", messages=MSG)
    assert e.value.status_code == 502
    assert e.value.body["code"] == "upstream_error"
    assert "all candidate models failed" in e.value.body["message"]


def test_upstream_timeouts_are_504(upstream, start_gateway):
    gw = start_gateway(
        make_config(upstream.base_url, dispatch={"timeout_s": 0.3, "retries": 0, "max_fallbacks": 0})
    )
    upstream.behave("big", delay=2)
    with pytest.raises(openai.APIStatusError) as e:
        gw.client.chat.completions.create(model="big", messages=MSG)
    assert e.value.status_code == 504


def test_unreachable_upstream_is_503(start_gateway, upstream):
    from tests.servers import free_port

    cfg = make_config(f"http://127.0.0.1:{free_port()}/v1", dispatch={"retries": 0})
    gw = start_gateway(cfg)
    with pytest.raises(openai.APIStatusError) as e:
        gw.client.chat.completions.create(model="big", messages=MSG)
    assert e.value.status_code == 503


def test_circuit_breaker_opens_then_probes_and_closes(upstream, start_gateway):
    cfg = make_config(
        upstream.base_url, dispatch={"retries": 0}, breaker={"failure_threshold": 2, "reset_after_s": 0.5}
    )
    gw = start_gateway(cfg)
    upstream.behave("big", fail_status=500)
    for _ in range(2):
        raw = gw.client.chat.completions.with_raw_response.create(model="router:strongest", messages=MSG)
        assert hdr(raw, "fallbacks") == "big"
    assert len(upstream.calls("big")) == 2
    # open: big is excluded from routing and receives nothing
    route = gw.post("/v1/route", json={"model": "router:strongest", "messages": MSG}).json()
    assert any(
        c["model"] == "big" and c["excluded"][0]["reason"] == "circuit_open" for c in route["excluded"]
    )
    raw = gw.client.chat.completions.with_raw_response.create(model="router:strongest", messages=MSG)
    assert hdr(raw, "model") != "big" and len(upstream.calls("big")) == 2
    with pytest.raises(openai.InternalServerError) as e:
        gw.client.chat.completions.create(model="big", messages=MSG)
    assert e.value.status_code == 503
    # half-open after reset_after_s: one probe goes through; success closes the circuit
    time.sleep(0.6)
    upstream.behave("big", fail_status=None)
    raw = gw.client.chat.completions.with_raw_response.create(model="router:strongest", messages=MSG)
    assert hdr(raw, "model") == "big"
    raw = gw.client.chat.completions.with_raw_response.create(model="router:strongest", messages=MSG)
    assert hdr(raw, "model") == "big"


def test_stream_falls_back_before_first_token(gateway, upstream):
    upstream.behave("big", break_stream_after=0)
    with gateway.client.chat.completions.with_streaming_response.create(
        model="router:strongest", messages=MSG, stream=True
    ) as resp:
        model = resp.headers["x-moe-router-model"]
        assert model != "big" and resp.headers["x-moe-router-fallbacks"] == "big"
        text = "".join(c.choices[0].delta.content or "" for c in resp.parse() if c.choices)
    assert text.startswith(model)


def test_stream_error_after_first_token_ends_with_error_event(gateway, upstream):
    upstream.behave("big", break_stream_after=2)
    got = []
    with pytest.raises(openai.APIError) as e:
        for chunk in gateway.client.chat.completions.create(
            model="router:strongest", messages=MSG, stream=True
        ):
            got.append(chunk.choices[0].delta.content or "")
    assert "".join(got).startswith("big: Write")
    assert "mid-stream" in str(e.value)
    assert len(upstream.calls()) == 1  # no fallback after the first token


def test_slow_first_attempt_then_success(gateway, upstream):
    upstream.script("cheap", Delay(0.05))
    r = gateway.client.chat.completions.create(model="cheap", messages=MSG)
    assert r.choices[0].message.content.startswith("cheap")
