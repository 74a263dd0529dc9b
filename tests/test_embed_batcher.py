"""Concurrent prompts are embedded together, and each gets its own vector back."""

from __future__ import annotations

import asyncio

import numpy as np

from router.embed_batcher import EmbedBatcher


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
