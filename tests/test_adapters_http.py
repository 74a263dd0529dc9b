"""HTTP adapters against the mock OpenAI-compatible upstream over a real socket."""

from __future__ import annotations

import pytest

from adapters import ChatRequest, build_adapter
from adapters.errors import (
    BackendError,
    BackendNotConfigured,
    BackendRateLimited,
    BackendRejected,
    BackendTimeout,
    BackendUnavailable,
)
from adapters.openai_compat import retry_after_seconds
from tests.servers import free_port
from tests.upstream import Fail, MockUpstream

HELLO = [{"role": "user", "content": "hello there"}]


@pytest.fixture
async def oai(upstream: MockUpstream):
    a = build_adapter("openai", {"model": "m1", "base_url": upstream.base_url, "timeout": 5})
    await a.start()
    yield a
    await a.aclose()


async def collect(adapter, request):
    return [c async for c in adapter.stream(request)]


async def test_openai_chat_returns_message_usage_and_passes_fields_through(oai, upstream):
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    r = await oai.chat(ChatRequest(HELLO, max_tokens=7, temperature=0.3, stop=["\n"], extra={"tools": tools}))
    assert r.text == "m1: hello there"
    assert r.finish_reason == "stop"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (3, 3)
    sent = upstream.calls("m1")[0]
    assert sent["max_tokens"] == 7 and sent["temperature"] == 0.3 and sent["stop"] == ["\n"]
    assert sent["tools"] == tools and "stream" not in sent


async def test_openai_stream_yields_deltas_then_usage(oai, upstream):
    chunks = await collect(oai, ChatRequest(HELLO))
    text = "".join(c.delta.get("content") or "" for c in chunks)
    assert text == "m1: hello there"
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
    assert upstream.calls("m1")[0]["stream_options"] == {"include_usage": True}


async def test_openai_maps_statuses_to_failure_classes(oai, upstream):
    upstream.script("m1", Fail(429, retry_after=1.5), Fail(500), Fail(503), Fail(400), Fail(404))
    with pytest.raises(BackendRateLimited) as e:
        await oai.chat(ChatRequest(HELLO))
    assert e.value.retry_after == 1.5 and e.value.retryable
    with pytest.raises(BackendError) as e:
        await oai.chat(ChatRequest(HELLO))
    assert type(e.value) is BackendError and e.value.upstream_status == 500 and e.value.retryable
    with pytest.raises(BackendUnavailable):
        await oai.chat(ChatRequest(HELLO))
    for _ in range(2):
        with pytest.raises(BackendRejected) as e:
            await oai.chat(ChatRequest(HELLO))
        assert not e.value.retryable and "scripted failure" in e.value.message


async def test_openai_stream_error_status_raises_before_any_chunk(oai, upstream):
    upstream.script("m1", Fail(429, retry_after=2))
    with pytest.raises(BackendRateLimited) as e:
        await collect(oai, ChatRequest(HELLO))
    assert e.value.retry_after == 2


async def test_openai_broken_stream_raises_after_partial_content(oai, upstream):
    upstream.behave("m1", reply="one two three four five", break_stream_after=2)
    got: list[str] = []
    with pytest.raises(BackendUnavailable):
        async for c in oai.stream(ChatRequest(HELLO)):
            got.append(c.delta.get("content") or "")
    assert "".join(got) == "one two"


async def test_openai_timeout_and_refused_connection():
    up = MockUpstream().start()
    try:
        up.behave("slow", delay=2)
        a = build_adapter("openai", {"model": "slow", "base_url": up.base_url, "timeout": 0.3})
        with pytest.raises(BackendTimeout):
            await a.chat(ChatRequest(HELLO))
        assert await a.health()
        await a.aclose()
    finally:
        up.stop()
    dead = build_adapter("openai", {"model": "x", "base_url": f"http://127.0.0.1:{free_port()}/v1"})
    with pytest.raises(BackendUnavailable):
        await dead.chat(ChatRequest(HELLO))
    assert not await dead.health()
    await dead.aclose()


async def test_openai_sends_key_and_bad_key_is_not_configured():
    up = MockUpstream(api_key="sk-upstream").start()
    try:
        good = build_adapter("openai", {"model": "k", "base_url": up.base_url, "api_key": "sk-upstream"})
        assert (await good.chat(ChatRequest(HELLO))).text == "k: hello there"
        bad = build_adapter("openai", {"model": "k", "base_url": up.base_url, "api_key": "wrong"})
        with pytest.raises(BackendNotConfigured) as e:
            await bad.chat(ChatRequest(HELLO))
        assert "wrong" not in e.value.message
        await good.aclose()
        await bad.aclose()
    finally:
        up.stop()


def test_retry_after_parses_seconds_and_http_dates():
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past


def test_unknown_backend_and_missing_model_are_clear_errors():
    with pytest.raises(ValueError, match="unknown backend 'grpc'"):
        build_adapter("grpc", {})
    with pytest.raises(TypeError):
        build_adapter("openai", {"base_url": "http://x"})


# ---- litellm: a real litellm call path against the same mock, as an OpenAI-compatible provider ----
@pytest.fixture
def lite(upstream: MockUpstream):
    return build_adapter(
        "litellm", {"model": "openai/m2", "api_base": upstream.base_url, "api_key": "sk-x", "timeout": 5}
    )


async def test_litellm_chat_and_stream(lite, upstream):
    r = await lite.chat(ChatRequest(HELLO, max_tokens=5))
    assert r.text == "m2: hello there" and r.usage.completion_tokens == 3
    assert upstream.calls("m2")[0]["max_tokens"] == 5
    chunks = await collect(lite, ChatRequest(HELLO))
    assert "".join(c.delta.get("content") or "" for c in chunks) == "m2: hello there"
    assert any(c.usage and c.usage.completion_tokens == 3 for c in chunks)


async def test_litellm_maps_errors(lite, upstream):
    upstream.script("m2", Fail(429), Fail(400))
    with pytest.raises(BackendRateLimited):
        await lite.chat(ChatRequest(HELLO))
    with pytest.raises(BackendRejected):
        await lite.chat(ChatRequest(HELLO))
    assert len(upstream.calls("m2")) == 2  # litellm's own retries are off: the dispatcher owns them
