"""Browsers cannot spend (issue 24): another site's page, a rebound hostname, a text/plain body.

Requests are sent as a browser sends them (its `Origin` and `Sec-Fetch-*` headers) to a real
gateway on a free port; the upstream must see none of the refused ones."""

from __future__ import annotations

import socket

import httpx
import pytest

from router.gateway.browsers import BrowserGuard, hostname
from tests.conftest import make_config

MSG = [{"role": "user", "content": "Write a Python function that reverses a string."}]
BODY = {"model": "cheap", "messages": MSG, "max_tokens": 5}
SPENDING = [
    ("/v1/chat/completions", BODY),
    ("/v1/completions", {"model": "cheap", "prompt": "hi", "max_tokens": 5}),
    ("/v1/messages", {"model": "cheap", "messages": MSG, "max_tokens": 5}),
    ("/v1/responses", {"model": "cheap", "input": "hi"}),
    ("/v1/route", {"messages": MSG}),
]


def cross_site(origin: str = "https://evil.example", **extra: str) -> dict[str, str]:
    """What Chrome sends with `fetch(gateway, {mode: "no-cors", ...})` from `origin`'s page."""
    return {"origin": origin, "sec-fetch-site": "cross-site", "sec-fetch-mode": "no-cors", **extra}


def test_another_sites_page_cannot_spend_on_any_route(gateway, upstream):
    import json

    for path, body in SPENDING:
        for headers in (
            cross_site(**{"content-type": "text/plain"}),  # the repro: no preflight needed
            cross_site(**{"content-type": "application/json"}),
            {"origin": "https://evil.example", "content-type": "text/plain"},  # no Sec-Fetch-* (old browsers)
            {"origin": "null", "content-type": "text/plain"},  # sandboxed iframes, file:// pages
            {"sec-fetch-site": "same-site", "origin": "https://app.localhost"},
        ):
            r = gateway.post(path, content=json.dumps(body), headers=headers)
            assert r.status_code == 403, (path, headers, r.text)
            err = r.json()["error"]  # in the route's own format: Anthropic's on /v1/messages
            assert err["type"] == "permission_error" and "cross-site" in err["message"]
            assert err.get("code", "cross_site_request") == "cross_site_request"
    assert upstream.calls() == []


def test_same_origin_pages_need_a_json_body_and_non_browsers_do_not(gateway, upstream):
    import json

    raw = json.dumps(BODY)
    host = gateway.url.split("//")[1]
    # the gateway's own page (the console's origin): JSON passes, text/plain does not
    same = {"origin": gateway.url, "sec-fetch-site": "same-origin", "sec-fetch-mode": "cors"}
    r = gateway.post("/v1/chat/completions", content=raw, headers={**same, "content-type": "text/plain"})
    assert r.status_code == 415 and r.json()["error"]["code"] == "json_content_type_required"
    r = gateway.post(
        "/v1/chat/completions", content=raw, headers={**same, "content-type": "application/json"}
    )
    assert r.status_code == 200, r.text
    # an Origin equal to the Host, without Sec-Fetch-Site (older browsers), is same-origin too
    r = gateway.post("/v1/chat/completions", json=BODY, headers={"origin": f"http://{host}"})
    assert r.status_code == 200, r.text
    # `curl -d` sends a form type and no browser headers: still read as JSON
    r = gateway.post(
        "/v1/chat/completions", content=raw, headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
    r = gateway.post("/v1/chat/completions", content=raw)  # no content type at all
    assert r.status_code == 200
    # a browser's plain navigation (GET) and the public routes are not refused
    assert gateway.get("/health", headers=cross_site()).status_code == 200
    assert len(upstream.calls()) == 4


def test_the_operator_can_allow_origins_with_cors(upstream, start_gateway):
    allowed = "https://app.example.com"
    gw = start_gateway(make_config(upstream.base_url, server={"cors_origins": [allowed]}))
    # the browser's preflight for a JSON POST gets the CORS answer, without credentials
    pre = httpx.options(
        gw.url + "/v1/chat/completions",
        headers={
            "origin": allowed,
            "access-control-request-method": "POST",
            "access-control-request-headers": "content-type, authorization",
        },
    )
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == allowed
    r = gw.post("/v1/chat/completions", json=BODY, headers=cross_site(allowed, **{"sec-fetch-mode": "cors"}))
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == allowed
    # other origins stay refused, and an allowed one still needs a JSON body
    r = gw.post("/v1/chat/completions", json=BODY, headers=cross_site())
    assert r.status_code == 403
    r = gw.post(
        "/v1/chat/completions", content=b"{}", headers=cross_site(allowed, **{"content-type": "text/plain"})
    )
    assert r.status_code == 415
    assert len(upstream.calls()) == 1


def _raw_request(url: str, host: str, path: str = "/v1/models") -> tuple[int, bytes]:
    """A request with a chosen Host header, as a rebound page's browser sends it."""
    hostport = url.split("//")[1]
    name, port = hostport.rsplit(":", 1)
    with socket.create_connection((name, int(port)), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1]


def test_a_loopback_gateway_refuses_rebound_hostnames(upstream, start_gateway):
    import json

    gw = start_gateway(make_config(upstream.base_url, server={"allowed_hosts": ["gateway.internal"]}))
    port = gw.url.rsplit(":", 1)[1]
    for host in (f"attacker.example:{port}", "attacker.example", f"127.0.0.1.nip.io:{port}", ""):
        status, body = _raw_request(gw.url, host)
        assert status == 421, (host, body)
        assert json.loads(body)["error"]["code"] == "host_not_allowed"
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", "LOCALHOST", f"gateway.internal:{port}"):
        status, body = _raw_request(gw.url, host)
        assert status == 200, (host, body)


def test_a_non_loopback_bind_does_not_check_host():
    guard = BrowserGuard(bind_host="0.0.0.0")
    assert guard.refusal("GET", {b"host": b"api.example.com"}) is None
    loop = BrowserGuard(bind_host="::1")
    assert loop.refusal("GET", {b"host": b"[::1]:8080"}) is None
    assert loop.refusal("GET", {b"host": b"evil.example:8080"}).status == 421


@pytest.mark.parametrize(
    "host,name",
    [(b"[::1]:8080", "::1"), (b"LocalHost:80", "localhost"), (b"127.0.0.1", "127.0.0.1"), (b"a.b", "a.b")],
)
def test_host_names(host, name):
    assert hostname(host) == name
