"""Dynamic batching of prompt embeddings across concurrent requests.

Encoding 32 prompts in one forward pass costs far less than 32 passes of one; passes run on a
worker thread. A prompt the encoder has cached is answered at once from its cache, never queued
behind a running pass, and an encoder cheap enough for the event loop (`inline`: the static one,
~0.2 ms for a 200-character prompt) encodes there, skipping the thread hand-off. The batcher adds no
wait at low load: a prompt that arrives while the encoder is idle is encoded at once, alone; the
prompts that arrive while that pass runs are encoded together in the next one.

`window_ms` (config `encoder.batch_window_ms`, default 0) holds a pass that would start with fewer
than `max_batch` prompts for up to that long, to gather more. Measured with the ONNX encoder
(bench/encoder.py, docs/benchmarks.md) it only adds latency: off by default.

A failure stays with the prompt that caused it: when a batch fails, each of its prompts is encoded
again alone, so only the one the encoder cannot take gets the error.
"""

from __future__ import annotations

import asyncio

import numpy as np

from policies.encoders import PromptEncoder

# an inline encoder (the static one) runs on the event loop for prompts up to this long; longer
# ones go to the worker thread like any other, so the loop is never held for long: tokenizing is
# ~0.7 us a character (static encoder, one prompt: 0.2 ms at 200 characters, 1.6 ms at 2,000,
# 6 ms at 8,192), and past ~1,000 the thread hand-off (~0.1-0.2 ms) is the smaller cost
INLINE_MAX_CHARS = 1024


class EmbedBatcher:
    def __init__(self, encoder: PromptEncoder, max_batch: int = 64, window_ms: float = 0.0):
        self.encoder = encoder
        self.max_batch = max_batch
        self.window_s = window_ms / 1000
        self._queue: asyncio.Queue[tuple[str, asyncio.Future]] | None = None
        self._worker: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def encode(self, text: str) -> np.ndarray:
        """The (1, dim) embedding of `text`."""
        cached = getattr(self.encoder, "cached", None)
        vector = cached(text) if cached is not None else None
        if vector is not None:  # a cache hit costs a lookup, not a trip through the worker thread
            return vector[None].copy()  # the caller's own: the cache keeps its vector intact
        if getattr(self.encoder, "inline", False) and len(text) <= INLINE_MAX_CHARS:
            return self.encoder.encode([text])
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._worker is None or self._worker.done():
            self._loop, self._queue = loop, asyncio.Queue()
            self._worker = loop.create_task(self._run(self._queue))
        fut: asyncio.Future = loop.create_future()
        self._queue.put_nowait((text, fut))
        return await fut

    async def _run(self, queue: asyncio.Queue) -> None:
        while True:
            items = [await queue.get()]
            if self.window_s > 0:
                deadline = asyncio.get_running_loop().time() + self.window_s
                while len(items) < self.max_batch:
                    left = deadline - asyncio.get_running_loop().time()
                    if left <= 0:
                        break
                    try:
                        items.append(await asyncio.wait_for(queue.get(), left))
                    except TimeoutError:
                        break
            while len(items) < self.max_batch and not queue.empty():
                items.append(queue.get_nowait())
            live = [(t, f) for t, f in items if not f.cancelled()]
            if not live:
                continue
            try:
                vectors = await asyncio.to_thread(self.encoder.encode, [t for t, _ in live])
            except Exception as e:  # noqa: BLE001 - isolate the failing prompt (below)
                if len(live) == 1:
                    _resolve(live[0][1], error=e)
                    continue
                for t, f in live:  # one bad prompt must not fail its neighbours
                    try:
                        vector = await asyncio.to_thread(self.encoder.encode, [t])
                    except Exception as alone:  # noqa: BLE001 - this prompt's own failure
                        _resolve(f, error=alone)
                    else:
                        _resolve(f, vector[:1])
                continue
            for i, (_, f) in enumerate(live):
                _resolve(f, vectors[i : i + 1])

    async def aclose(self) -> None:
        if self._worker is not None and not self._worker.done():
            self._worker.cancel()


def _resolve(
    fut: asyncio.Future, value: np.ndarray | None = None, error: BaseException | None = None
) -> None:
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(value)
