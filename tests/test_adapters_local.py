"""The in-process transformers backend: a tiny random MoE built here, and the real SmolLM2 GGUF."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from adapters import ChatRequest, build_adapter
from adapters.errors import BackendNotConfigured, BackendRejected
from adapters.local_transformers import DEFAULT_MAX_OUTPUT_TOKENS, resolve_path
from tests.tiny_moe import LAYERS, NUM_EXPERTS

ASK = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "name a colour"}]
LONG = 400  # many seconds of generation for the tiny model, and within its 512 positions


def on_forward(adapter) -> tuple[threading.Event, list[int]]:
    """An event set by the model's first forward pass (generation has really started), and a list
    that grows by one per forward pass (one per generated token)."""
    started, steps = threading.Event(), []

    def hook(*_: Any) -> None:  # returns None: the model's output is left as it is
        steps.append(1)
        started.set()

    adapter.model.register_forward_hook(hook)
    return started, steps


async def after_worker(adapter, fn=lambda: None):
    """Runs `fn` on the adapter's one worker thread, i.e. after every job queued before it."""
    return await asyncio.get_running_loop().run_in_executor(adapter._executor, fn)


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


async def test_a_timeout_stops_generation_at_the_next_token(moe):
    started, _ = on_forward(moe)

    async def expire_once_generating(cm: asyncio.Timeout) -> None:
        assert await asyncio.to_thread(started.wait, 60)
        cm.reschedule(asyncio.get_running_loop().time())  # the dispatcher's timeout fires now

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(None) as cm:
            expire = asyncio.create_task(expire_once_generating(cm))
            await moe.chat(ChatRequest(ASK, max_tokens=LONG))
    await expire
    # the worker stopped early instead of running on to LONG tokens while everyone else waited
    stopped_at = await after_worker(moe, lambda: moe.last_generated_tokens)
    assert stopped_at is not None and stopped_at < LONG
    r = await moe.chat(ChatRequest(ASK, max_tokens=3))
    assert r.usage.completion_tokens == 3 and r.finish_reason == "length"
    assert moe.last_generated_tokens == 3


async def test_a_cancelled_chat_frees_the_worker_and_a_job_given_up_in_the_queue_never_runs(moe):
    started, steps = on_forward(moe)
    first = asyncio.create_task(moe.chat(ChatRequest(ASK, max_tokens=LONG)))
    assert await asyncio.to_thread(started.wait, 60)
    queued = moe.stream(ChatRequest(ASK, max_tokens=LONG))
    assert (await anext(queued)).delta == {"role": "assistant"}  # its job waits behind `first`
    await queued.aclose()  # its client disconnects before the worker gets to it
    first.cancel()  # and the first client disconnects mid-generation
    with pytest.raises(asyncio.CancelledError):
        await first
    # both jobs have left the worker: the queued one returned without generating a single token
    assert await after_worker(moe, lambda: moe.last_generated_tokens) == 0
    assert len(steps) < LONG  # and the cancelled one stopped early
    r = await moe.chat(ChatRequest(ASK, max_tokens=3))
    assert r.usage.completion_tokens == 3 and moe.last_generated_tokens == 3


async def test_max_output_tokens_caps_what_a_request_asks_for(tiny_moe_dir):
    a = build_adapter(
        "transformers", {"path": str(tiny_moe_dir), "max_new_tokens": 4, "max_output_tokens": 10}
    )
    await a.start()
    try:
        # a random model may draw its end-of-sequence token at any step: never stop on it here, so
        # only max_tokens and the cap decide how long an answer is
        a.model.generation_config.eos_token_id = None
        r = await a.chat(ChatRequest(ASK, max_tokens=3000))
        assert r.usage.completion_tokens == 10 and r.finish_reason == "length"
        assert a.last_generated_tokens == 10
        chunks = [c async for c in a.stream(ChatRequest(ASK, max_tokens=3000))]
        assert chunks[-1].usage.completion_tokens == 10 and chunks[-1].finish_reason == "length"
        r = await a.chat(ChatRequest(ASK, max_tokens=7))  # below the cap: honoured
        assert r.usage.completion_tokens == 7
        r = await a.chat(ChatRequest(ASK))  # no max_tokens: max_new_tokens
        assert r.usage.completion_tokens == 4
    finally:
        await a.aclose()


async def test_max_output_tokens_has_a_default_cap(moe):
    assert moe.max_output_tokens is None
    assert moe._max_new(ChatRequest(ASK, max_tokens=10**9)) == DEFAULT_MAX_OUTPUT_TOKENS == 4096
    assert moe._max_new(ChatRequest(ASK)) == 8  # the fixture's max_new_tokens


async def test_missing_weights_or_package_is_not_configured(tmp_path):
    a = build_adapter("transformers", {"path": str(tmp_path / "nothing")})
    with pytest.raises(BackendNotConfigured):
        await a.start()
    assert not await a.health()
    with pytest.raises(BackendNotConfigured, match="not installed"):
        resolve_path("pkg:no_such_package_here")


def test_a_chat_model_and_an_embedding_model_warm_up_side_by_side_in_a_fresh_process(tiny_moe_dir):
    """Warm-up starts every local model at once; in a fresh interpreter two threads importing from
    transformers at once used to fail ("cannot import name 'AutoModelForCausalLM'")."""
    import subprocess
    import sys

    script = f"""
import asyncio
from adapters import build_adapter

async def main():
    chat = build_adapter("transformers", {{"path": {str(tiny_moe_dir)!r}, "max_new_tokens": 4}})
    emb = build_adapter("sentence-transformers", {{}})
    await asyncio.gather(chat.start(), emb.start())
    assert await chat.health() and await emb.health()
    print("both loaded")

asyncio.run(main())
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "both loaded" in out.stdout, out.stderr[-2000:]
