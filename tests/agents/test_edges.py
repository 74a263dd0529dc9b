"""What agents' own fallbacks read: Anthropic's error shapes and wording, the refused WebSocket on
/v1/responses, and the body size an agent's long session needs."""

from __future__ import annotations

import socket

import httpx
import pytest

from tests.conftest import make_config, priced_model

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


def session_body(mb: float) -> dict:
    """A long agent session's shape: many turns of tool output, about `mb` MiB in all."""
    turn = "a line of a file the agent read\n" * 1000  # ~32 KB
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": turn} for i in range(int(mb * 32))]
    return {"model": "big", "messages": [*turns, {"role": "user", "content": "now fix it"}]}


def test_an_agent_sized_body_passes_the_default_limit_and_a_larger_one_is_413(upstream, start_gateway):
    """Over the old 1 MiB default, under the 16 MiB one: parsed off the event loop (over 1 MiB) and
    sent upstream whole. Over 16 MiB: a 413 in OpenAI's error shape, nothing sent."""
    model = priced_model(upstream.base_url, "big", 3.0, 15.0, context_window=1_000_000)
    gateway = start_gateway(make_config(upstream.base_url, models=[model]))
    body = session_body(3)
    r = httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    assert upstream.calls("big")[-1]["messages"] == body["messages"]
    too_deep = {
        **body,
        "metadata": {
            "x": [
                [
                    [
                        [
                            [
                                [
                                    [
                                        [
                                            [
                                                [
                                                    [
                                                        [
                                                            [
                                                                [
                                                                    [
                                                                        [
                                                                            [
                                                                                [
                                                                                    [
                                                                                        [
                                                                                            [
                                                                                                [
                                                                                                    [
                                                                                                        [
                                                                                                            [
                                                                                                                [
                                                                                                                    [
                                                                                                                        [
                                                                                                                            [
                                                                                                                                [
                                                                                                                                    [
                                                                                                                                        [
                                                                                                                                            [
                                                                                                                                                [
                                                                                                                                                    [
                                                                                                                                                        [
                                                                                                                                                            [
                                                                                                                                                                [
                                                                                                                                                                    [
                                                                                                                                                                        [
                                                                                                                                                                            [
                                                                                                                                                                                [
                                                                                                                                                                                    [
                                                                                                                                                                                        [
                                                                                                                                                                                            [
                                                                                                                                                                                                [
                                                                                                                                                                                                    [
                                                                                                                                                                                                        [
                                                                                                                                                                                                            [
                                                                                                                                                                                                                [
                                                                                                                                                                                                                    [
                                                                                                                                                                                                                        [
                                                                                                                                                                                                                            [
                                                                                                                                                                                                                                [
                                                                                                                                                                                                                                    [
                                                                                                                                                                                                                                        [
                                                                                                                                                                                                                                            [
                                                                                                                                                                                                                                                [
                                                                                                                                                                                                                                                    [
                                                                                                                                                                                                                                                        [
                                                                                                                                                                                                                                                            [
                                                                                                                                                                                                                                                                [
                                                                                                                                                                                                                                                                    [
                                                                                                                                                                                                                                                                        [
                                                                                                                                                                                                                                                                            [
                                                                                                                                                                                                                                                                                [
                                                                                                                                                                                                                                                                                    1
                                                                                                                                                                                                                                                                                ]
                                                                                                                                                                                                                                                                            ]
                                                                                                                                                                                                                                                                        ]
                                                                                                                                                                                                                                                                    ]
                                                                                                                                                                                                                                                                ]
                                                                                                                                                                                                                                                            ]
                                                                                                                                                                                                                                                        ]
                                                                                                                                                                                                                                                    ]
                                                                                                                                                                                                                                                ]
                                                                                                                                                                                                                                            ]
                                                                                                                                                                                                                                        ]
                                                                                                                                                                                                                                    ]
                                                                                                                                                                                                                                ]
                                                                                                                                                                                                                            ]
                                                                                                                                                                                                                        ]
                                                                                                                                                                                                                    ]
                                                                                                                                                                                                                ]
                                                                                                                                                                                                            ]
                                                                                                                                                                                                        ]
                                                                                                                                                                                                    ]
                                                                                                                                                                                                ]
                                                                                                                                                                                            ]
                                                                                                                                                                                        ]
                                                                                                                                                                                    ]
                                                                                                                                                                                ]
                                                                                                                                                                            ]
                                                                                                                                                                        ]
                                                                                                                                                                    ]
                                                                                                                                                                ]
                                                                                                                                                            ]
                                                                                                                                                        ]
                                                                                                                                                    ]
                                                                                                                                                ]
                                                                                                                                            ]
                                                                                                                                        ]
                                                                                                                                    ]
                                                                                                                                ]
                                                                                                                            ]
                                                                                                                        ]
                                                                                                                    ]
                                                                                                                ]
                                                                                                            ]
                                                                                                        ]
                                                                                                    ]
                                                                                                ]
                                                                                            ]
                                                                                        ]
                                                                                    ]
                                                                                ]
                                                                            ]
                                                                        ]
                                                                    ]
                                                                ]
                                                            ]
                                                        ]
                                                    ]
                                                ]
                                            ]
                                        ]
                                    ]
                                ]
                            ]
                        ]
                    ]
                ]
            ]
        },
    }
    r = httpx.post(gateway.url + "/v1/chat/completions", json=too_deep, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["code"] == "json_too_deep"  # refused from the thread
    r = httpx.post(gateway.url + "/v1/chat/completions", json=session_body(16.5), timeout=60)
    assert r.status_code == 413
    error = r.json()["error"]
    assert (
        error["code"] == "request_too_large"
        and error["message"] == f"request body exceeds {16 * 2**20} bytes"
    )
    assert len(upstream.calls()) == 1
