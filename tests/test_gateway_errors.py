"""Every client mistake gets an OpenAI-format error with the right status; no traceback ever leaks."""

from __future__ import annotations

import json

import openai
import pytest

from tests.conftest import make_config
from tests.promtext import sample

MSG = [{"role": "user", "content": "hello"}]


def assert_openai_error(r, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"] and "Traceback" not in err["message"]
    if code is not None:
        assert err["code"] == code
    return err


def test_malformed_json_is_400(gateway):
    r = gateway.post(
        "/v1/chat/completions",
        content=b'{"model": "router", "messages": [',
        headers={"content-type": "application/json"},
    )
    err = assert_openai_error(r, 400, "invalid_json")
    assert err["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "router"}, "messages"),
        ({"model": "router", "messages": []}, "messages"),
        ({"model": "router", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"model": "router", "messages": MSG, "temperature": 5}, "temperature"),
        ({"model": "router", "messages": MSG, "max_tokens": 0}, "max_tokens"),
        ({"model": "router", "messages": MSG, "n": 2}, "n"),
        ({"model": "router", "messages": MSG, "routing": {"cost_weight": 2}}, "routing.cost_weight"),
        ({"messages": MSG}, "model"),
    ],
)
def test_schema_errors_are_422_naming_the_field(gateway, body, param):
    err = assert_openai_error(gateway.post("/v1/chat/completions", json=body), 422, "invalid_request_schema")
    assert err["param"] == param


def test_a_typo_in_the_routing_controls_is_400_naming_it(gateway):
    body = {"model": "router", "messages": MSG, "routing": {"max_cost": 1}}
    err = assert_openai_error(gateway.post("/v1/chat/completions", json=body), 400, "unknown_parameter")
    assert err["param"] == "routing.max_cost"


def test_unknown_fields_are_dropped_and_named_in_a_header(gateway):
    body = {"model": "router", "messages": [{"role": "user", "content": "x", "colour": 1}], "temprature": 0.5}
    r = gateway.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    assert r.headers["x-moe-router-dropped-params"] == "temprature,messages[0].colour"


def test_unknown_model_is_404(gateway):
    err = assert_openai_error(
        gateway.post("/v1/chat/completions", json={"model": "llama-9", "messages": MSG}), 404
    )
    assert err["code"] == "model_not_found" and err["param"] == "model"
    with pytest.raises(openai.NotFoundError):
        gateway.client.chat.completions.create(model="router:nope", messages=MSG)


def test_unknown_path_and_method_are_openai_errors(gateway):
    assert_openai_error(gateway.get("/v1/nothing-here"), 404)
    assert_openai_error(gateway.get("/v1/chat/completions"), 405)


def test_oversized_body_is_413(upstream, start_gateway):
    gw = start_gateway(make_config(upstream.base_url, server={"max_body_bytes": 2000}))
    big = {"model": "router", "messages": [{"role": "user", "content": "x" * 5000}]}
    assert_openai_error(gw.post("/v1/chat/completions", json=big), 413, "request_too_large")

    def chunks():  # no Content-Length: the limit applies while reading
        data = json.dumps(big).encode()
        for i in range(0, len(data), 500):
            yield data[i : i + 500]

    assert_openai_error(gw.post("/v1/chat/completions", content=chunks()), 413, "request_too_large")
    # below the limit is fine
    assert gw.post("/v1/chat/completions", json={"model": "router", "messages": MSG}).status_code == 200


def test_upstream_rejection_is_surfaced_as_400(gateway, upstream):
    upstream.behave("big", fail_status=400)
    err = assert_openai_error(
        gateway.post("/v1/chat/completions", json={"model": "big", "messages": MSG}), 400
    )
    assert err["code"] == "upstream_rejected"


def test_errors_are_counted(gateway):
    gateway.post("/v1/chat/completions", json={"model": "llama-9", "messages": MSG})
    text = gateway.get("/metrics").text
    assert (
        sample(text, "moe_router_errors_total", type="invalid_request_error", code="model_not_found") == 1.0
    )
