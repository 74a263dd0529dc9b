"""Crafted 1 MB bodies cost the gateway time linear in their size and never hold its event loop
(issue 24): each shape of tests/crafted_bodies.py gets its answer (a routed 200 or a clear 4xx)
while a concurrent `/health` is served between them. CPU per MB: bench/body_shapes.py."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from router.constraints import Stripper, routing_text
from router.schemas import Message
from tests.conftest import make_config, priced_model
from tests.crafted_bodies import ASK, SHAPES

EXPECTED = {  # shape -> (status, error code)
    "repeated_open_tags": (200, None),
    "repeated_closed_tags": (200, None),
    "deep_nesting": (400, "json_too_deep"),
    "bracket_flood": (413, "request_too_complex"),
    "wide_nesting": (413, "request_too_complex"),
    "many_messages": (400, "too_many_messages"),
    "many_tools": (413, "request_too_complex"),
    "at_the_limits": (200, None),
}
JSON = {"content-type": "application/json"}


@pytest.fixture
def big_gateway(upstream, start_gateway):
    """Models whose context windows take a 1 MB prompt, so accepted shapes are routed and answered."""
    models = [
        priced_model(upstream.base_url, n, p, 2 * p, context_window=2_000_000, capabilities=["tools"])
        for n, p in (("cheap", 0.1), ("big", 10.0))
    ]
    return start_gateway(make_config(upstream.base_url, models=models))


async def _while_processing(
    url: str, path: str, body: bytes, rounds: int
) -> tuple[list[httpx.Response], int]:
    """Send `body` `rounds` times in a row; once the first answer is in, ask /health. Returns the
    answers and how many crafted answers had arrived when /health answered."""
    done = 0
    first = asyncio.Event()

    async def crafted() -> list[httpx.Response]:
        nonlocal done
        out = []
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            for _ in range(rounds):
                out.append(await c.post(path, content=body, headers=JSON))
                done += 1
                first.set()
        return out

    async def health() -> int:
        await first.wait()
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            r = await c.get("/health")
        assert r.status_code == 200 and r.json() == {"status": "ok"}
        return done

    answers, at = await asyncio.gather(crafted(), health())
    return answers, at


@pytest.mark.parametrize("shape", list(SHAPES))
def test_the_loop_keeps_serving_while_a_crafted_body_is_processed(big_gateway, upstream, shape):
    rounds = 8
    body = SHAPES[shape]()
    answers, at = asyncio.run(_while_processing(big_gateway.url, "/v1/chat/completions", body, rounds))
    assert at < rounds  # /health answered between the crafted requests, not after them all
    status, code = EXPECTED[shape]
    for r in answers:
        assert r.status_code == status, r.text[:300]
        if code is None:
            assert r.json()["choices"][0]["message"]["content"]
        else:
            err = r.json()["error"]
            assert err["code"] == code and err["type"] in ("invalid_request_error",)
    if status == 200:  # every accepted one reached the upstream once
        assert len(upstream.calls()) == rounds
    else:  # nothing refused was sent anywhere
        assert upstream.calls() == []


def test_routing_sees_the_ask_behind_a_megabyte_of_open_tags(big_gateway):
    for shape in ("repeated_open_tags", "repeated_closed_tags"):
        r = big_gateway.post("/v1/route", content=SHAPES[shape](), headers=JSON)
        assert r.status_code == 200, r.text[:300]
        text = r.json()["routing_text"]
        assert len(text) <= 2005 and text.endswith(ASK)
        if shape == "repeated_closed_tags":
            assert text == ASK  # every complete block stripped


def test_tools_and_messages_are_counted_at_the_edge(big_gateway, upstream):
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    r = big_gateway.post(
        "/v1/chat/completions",
        json={"model": "router", "messages": [{"role": "user", "content": ASK}], "tools": [tool] * 129},
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "too_many_tools"
    assert r.json()["error"]["param"] == "tools"
    many = [{"role": "user", "content": "hi"}] * 1025
    for path, body in [
        ("/v1/chat/completions", {"model": "router", "messages": many}),
        ("/v1/messages", {"model": "router", "max_tokens": 5, "messages": many}),
        ("/v1/responses", {"model": "router", "input": many}),
    ]:
        r = big_gateway.post(path, json=body)
        assert r.status_code == 400, (path, r.text[:200])
        assert "too many messages" in r.text
    # 2048 texts are fine on /v1/embeddings, whose `input` is not a conversation
    r = big_gateway.post("/v1/embeddings", json={"model": "nope", "input": ["a"] * 2000})
    assert r.status_code == 404
    assert upstream.calls() == []


def test_the_linear_strip_matches_the_regex_it_replaces():
    import random
    import re

    pattern = r"<r>.*?</r>"
    regex, linear = re.compile(pattern, re.DOTALL), Stripper([pattern])
    assert linear.tags == [("<r>", "</r>")] and not linear.regexes
    rng = random.Random(7)
    for _ in range(3000):
        text = "".join(
            rng.choice(["<r>", "</r>", "x", "<", "r>", "</", "\n", " "]) for _ in range(rng.randint(0, 14))
        )
        assert linear(text) == regex.sub("", text).strip(), text
    # any other pattern is a regex on a bounded text: the head and tail the routing text keeps
    custom = Stripper([r"\[ctx\][^\]]*\[/ctx\]"])
    assert custom.regexes and not custom.tags
    doc = "[ctx]a[/ctx] " + "w " * 50_000 + "[ctx]b[/ctx] the ask"
    assert routing_text([Message(role="user", content=doc)], strip=custom).endswith("the ask")
    assert "[ctx]" not in routing_text([Message(role="user", content=doc)], strip=custom)


@pytest.mark.parametrize(
    "path,make",
    [
        (
            "/v1/messages",
            lambda text: {
                "model": "router",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": text}],
            },
        ),
        ("/v1/responses", lambda text: {"model": "router", "input": text, "store": False}),
        ("/v1/route", lambda text: {"messages": [{"role": "user", "content": text}]}),
    ],
)
def test_repeated_open_tags_on_every_format(big_gateway, path, make):
    import json

    text = "<system-reminder>" * 58_000 + ASK
    body = json.dumps(make(text)).encode()
    answers, at = asyncio.run(_while_processing(big_gateway.url, path, body, 4))
    assert at < 4
    for r in answers:
        assert r.status_code == 200, r.text[:300]
    if path == "/v1/route":
        assert answers[0].json()["routing_text"].endswith(ASK)
