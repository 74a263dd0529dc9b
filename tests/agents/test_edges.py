"""What agents' own fallbacks read: Anthropic's error shapes and wording, and the refused
WebSocket on /v1/responses."""

from __future__ import annotations

import socket

import httpx
import pytest

from tests.conftest import make_config

MSG = [{"role": "user", "content": "hi"}]


def anthropic_error(r: httpx.Response, status: int, kind: str) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"}
    assert body["error"]["type"] == kind
    return body["error"]["message"]


def test_anthropic_errors_use_anthropics_types_and_wording(upstream, start_gateway):
    gw = start_gateway(make_config(upstream.base_url))
    url = gw.url + "/v1/messages?beta=true"
    long = [{"role": "user", "content": "word " * 5000}]  # ~6,250 tokens; cheap's window is 4,096
    r = httpx.post(
        url, json={"model": "cheap", "max_tokens": 8, "messages": long}, headers={"anthropic-beta": "x"}
    )
    assert anthropic_error(r, 400, "invalid_request_error").startswith("prompt is too long: ")
    r = httpx.post(url, json={"model": "llama-9", "max_tokens": 8, "messages": MSG})
    assert anthropic_error(r, 404, "not_found_error").startswith("model: ")
    r = httpx.post(url, json={"model": "cheap", "messages": MSG})  # no max_tokens
    assert "max_tokens" in anthropic_error(r, 400, "invalid_request_error")
    locked = start_gateway(make_config(upstream.base_url, auth={"require_keys": True}))
    r = httpx.post(
        locked.url + "/v1/messages",
        json={"model": "cheap", "max_tokens": 8, "messages": MSG},
        headers={"x-api-key": "sk-wrong"},
    )
    assert anthropic_error(r, 401, "authentication_error").startswith("invalid x-api-key")
    assert upstream.calls() == []


@pytest.mark.parametrize("path", ["/v1/responses"])
def test_the_responses_websocket_is_refused_at_once_with_426(gateway, path):
    host, port = gateway.url.removeprefix("http://").split(":")
    handshake = (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(handshake.encode())
        head = s.recv(4096).decode()
    assert head.startswith("HTTP/1.1 426"), head
    assert "websocket_not_supported" in head or "application/json" in head
