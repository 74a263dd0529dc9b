"""Concurrent prompts are embedded together, and each gets its own vector back."""

from __future__ import annotations

import asyncio
import threading

import numpy as np

from router.embed_batcher import INLINE_MAX_CHARS, EmbedBatcher


class CountingEncoder:
    """Wraps the real encoder and records the size of each batch it is given."""

    def __init__(self, encoder):
        self.encoder, self.batches = encoder, []

    def encode(self, texts):
        self.batches.append(len(texts))
        return self.encoder.encode(texts)


async def test_concurrent_prompts_share_passes_and_get_their_own_vectors(encoder):
    counting = CountingEncoder(encoder)
    batcher = EmbedBatcher(counting, max_batch=64)
    await batcher.encode("a lone prompt")
    assert counting.batches == [1]  # alone, it did not wait for company
    texts = [f"question number {i} about sorting lists" for i in range(20)]
    vectors = await asyncio.gather(*(batcher.encode(t) for t in texts))
    assert sum(counting.batches) == 21 and len(counting.batches) < 10  # concurrent ones were batched
    for t, v in zip(texts, vectors, strict=True):
        assert v.shape == (1, encoder.encode([t]).shape[1])
        np.testing.assert_allclose(v[0], encoder.encode([t])[0], atol=1e-5)
    await batcher.aclose()


async def test_an_encoder_failure_reaches_every_waiting_request(encoder):
    class Broken:
        def encode(self, texts):
            raise RuntimeError("encoder exploded")

    batcher = EmbedBatcher(Broken())
    results = await asyncio.gather(*(batcher.encode("x") for _ in range(3)), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    (again,) = await asyncio.gather(batcher.encode("y"), return_exceptions=True)
    assert isinstance(again, RuntimeError)  # the batcher survives a failure and keeps serving
    await batcher.aclose()


class GatedEncoder:
    """A real encoder behind a gate: `encode` waits until the test opens it, and records the thread
    it ran on."""

    def __init__(self, encoder, inline: bool = False):
        self.encoder, self.inline = encoder, inline
        self.gate, self.threads = threading.Event(), []

    def cached(self, text):
        return self.encoder.cached(text)

    def encode(self, texts):
        self.threads.append(threading.get_ident())
        assert self.gate.wait(10), "the test never opened the gate"
        return self.encoder.encode(texts)


async def test_a_cached_prompt_is_answered_while_a_pass_is_still_running(encoder):
    gated = GatedEncoder(encoder)
    gated.gate.set()
    batcher = EmbedBatcher(gated)
    first = await batcher.encode("how do I reverse a linked list?")
    gated.gate.clear()  # the next pass blocks until the gate opens
    slow = asyncio.ensure_future(batcher.encode("a prompt nobody has sent before, 8731"))
    await asyncio.sleep(0.05)
    assert not slow.done() and len(gated.threads) == 2  # the worker is busy with it
    again = await asyncio.wait_for(batcher.encode("how do I reverse a linked list?"), 1)
    np.testing.assert_array_equal(again, first)  # from the cache, not queued behind the pass
    again[0, 0] += 1.0  # the caller's copy: the cache keeps its vector
    np.testing.assert_array_equal(encoder.cached("how do I reverse a linked list?"), first[0])
    gated.gate.set()
    assert (await slow).shape == first.shape
    await batcher.aclose()


async def test_an_inline_encoder_runs_on_the_event_loop_unless_the_prompt_is_long(encoder):
    gated = GatedEncoder(encoder, inline=True)
    gated.gate.set()
    batcher = EmbedBatcher(gated)
    short = await batcher.encode("route me, 4411")
    assert gated.threads == [threading.get_ident()]  # no hand-off to the worker thread
    long = await batcher.encode("word " * (INLINE_MAX_CHARS // 5 + 1))
    assert gated.threads[1] != threading.get_ident()  # a long prompt must not stall the loop
    assert short.shape == long.shape == (1, encoder.dim)
    await batcher.aclose()
