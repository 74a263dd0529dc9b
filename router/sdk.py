"""Python SDK: the gateway's engine in-process, without HTTP.

    from router import Router
    r = Router()                                   # embedded default config
    r.route("Write a Python quicksort").model      # the decision alone
    resp = r.chat("What is the capital of France?", max_tokens=20)
    resp.content, resp.model, resp.cost_usd

The engine lives on a private event loop in a background thread, so the sync methods work
anywhere and the async ones (`achat`, `astream`, `aroute`) can be awaited from any loop.

`Router()` warms up before it returns: the routing encoder and every local model are loaded then,
not inside the first request's dispatch deadline (loading SmolLM2 on a busy CPU can take most of
it). A load that takes more than a few seconds says so on stderr, in two lines; the libraries'
own progress bars and advisories stay quiet. `Router(warmup=False)` returns at once and loads each
local model on its first request; `router.warmup()` loads them when you choose.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters import BackendError, ChatResult, Usage
from policies.decision import Decision
from router.config import RouterConfig, load_config
from router.engine import Engine, Outcome
from router.quiet import quiet_libraries
from router.schemas import ChatCompletionRequest, RoutingControls

Messages = str | Sequence[dict[str, Any]]
log = logging.getLogger("moe_router.sdk")
PROGRESS_AFTER_S = 3.0  # a warm-up that takes longer says what it is loading, and when it is done


@dataclass
class RouterResponse:
    id: str
    model: str
    content: str
    message: dict[str, Any]
    finish_reason: str | None
    usage: Usage
    cost_usd: float
    latency_ms: float
    policy: str | None
    fallbacks: list[str] = field(default_factory=list)
    decision: Decision | None = None
    expert_usage: dict[str, list[int]] | None = None

    @classmethod
    def build(cls, result: ChatResult, o: Outcome) -> RouterResponse:
        return cls(
            id=o.request_id,
            model=o.model,
            content=result.text,
            message={"role": "assistant", **result.message},
            finish_reason=result.finish_reason,
            usage=o.usage,
            cost_usd=o.cost_usd,
            latency_ms=o.latency_ms,
            policy=o.plan.policy,
            fallbacks=o.fallbacks,
            decision=o.plan.decision if o.plan.routed else None,
            expert_usage=o.expert_usage,
        )


def _request(messages: Messages, model: str, routing: dict | None, **kw: Any) -> ChatCompletionRequest:
    msgs = [{"role": "user", "content": messages}] if isinstance(messages, str) else list(messages)
    return ChatCompletionRequest(
        model=model, messages=msgs, routing=RoutingControls(**routing) if routing else None, **kw
    )


class Router:
    def __init__(
        self,
        config: RouterConfig | str | Path | None = None,
        *,
        warmup: bool = True,
        quiet: bool = True,
        **engine_kw: Any,
    ):
        """`warmup`: load the encoder and local models now (see the module docstring); `quiet`:
        silence the model libraries' progress bars and advisories (before they are imported)."""
        if quiet:
            quiet_libraries()
        if not isinstance(config, RouterConfig):
            config = load_config(config)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="moe-router-sdk", daemon=True)
        self._thread.start()
        self.engine: Engine = self._run(self._make(config, engine_kw))
        if warmup:
            self.warmup()

    def warmup(self, progress: bool = True) -> dict[str, str]:
        """Load the routing encoder and every local model now; returns the local models that
        failed to load, with why (they stay unavailable until a request retries the load). With
        `progress`, a load longer than `PROGRESS_AFTER_S` is announced on stderr and timed."""
        local = [n for n in self.engine.adapters if self.engine.specs[n].local]
        loading = asyncio.run_coroutine_threadsafe(self._warm(local), self._loop)
        started = time.monotonic()
        try:
            return loading.result(timeout=PROGRESS_AFTER_S if progress else None)
        except TimeoutError:
            what = ", ".join(local) or "the routing encoder"
            print(f"moe-router: loading {what} ...", file=sys.stderr, flush=True)
            failed = loading.result()
            took = time.monotonic() - started
            print(f"moe-router: ready ({what} loaded in {took:.1f} s)", file=sys.stderr, flush=True)
            return failed

    async def _warm(self, local: list[str]) -> dict[str, str]:
        await self.engine.wait_started()
        failed: dict[str, str] = {}

        async def load(name: str) -> None:
            try:
                await self.engine.adapters[name].start()  # the load already under way, if any
            except BackendError as e:
                failed[name] = e.message
                if not self.engine.warmup:  # with warm-up on, the engine's start said so already
                    log.warning("model %s failed to load: %s", name, e.message)

        await asyncio.gather(*(load(n) for n in local))
        return failed

    @classmethod
    def from_config(cls, path: str | Path | None = None, **engine_kw: Any) -> Router:
        return cls(path, **engine_kw)

    @staticmethod
    async def _make(config: RouterConfig, kw: dict) -> Engine:
        engine = Engine(config, **kw)
        await engine.start()
        return engine

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    async def _arun(self, coro):
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    # ---- routing -------------------------------------------------------------------------------
    async def _route(self, messages: Messages, policy: str | None, routing: dict | None) -> Decision:
        model = f"router:{policy}" if policy else "router"
        return (await self.engine.plan(_request(messages, model, routing))).decision

    def route(self, messages: Messages, *, policy: str | None = None, **routing: Any) -> Decision:
        """Rank the candidates for a prompt without calling any model."""
        return self._run(self._route(messages, policy, routing or None))

    async def aroute(self, messages: Messages, *, policy: str | None = None, **routing: Any) -> Decision:
        return await self._arun(self._route(messages, policy, routing or None))

    # ---- answering -----------------------------------------------------------------------------
    async def _chat(self, messages: Messages, model: str, routing: dict | None, kw: dict) -> RouterResponse:
        result, outcome = await self.engine.chat(_request(messages, model, routing, **kw))
        return RouterResponse.build(result, outcome)

    def chat(
        self, messages: Messages, *, model: str = "router", routing: dict | None = None, **kw: Any
    ) -> RouterResponse:
        """Answer through the router. `model`: "router", "router:<policy>" or a configured model."""
        return self._run(self._chat(messages, model, routing, kw))

    async def achat(
        self, messages: Messages, *, model: str = "router", routing: dict | None = None, **kw: Any
    ) -> RouterResponse:
        return await self._arun(self._chat(messages, model, routing, kw))

    async def astream(
        self, messages: Messages, *, model: str = "router", routing: dict | None = None, **kw: Any
    ) -> AsyncIterator[str]:
        """Yield the answer's text as it is generated."""
        handle = await self._arun(self.engine.stream(_request(messages, model, routing, stream=True, **kw)))
        it = handle.chunks.__aiter__()
        try:
            while (chunk := await self._arun(anext(it, None))) is not None:
                if chunk.delta.get("content"):
                    yield chunk.delta["content"]
        finally:  # a caller that stops early ends (and settles) the stream at once
            self._loop.call_soon_threadsafe(handle.finish)

    def stream(
        self, messages: Messages, *, model: str = "router", routing: dict | None = None, **kw: Any
    ) -> Iterator[str]:
        handle = self._run(self.engine.stream(_request(messages, model, routing, stream=True, **kw)))
        it = handle.chunks.__aiter__()
        try:
            while (chunk := self._run(anext(it, None))) is not None:
                if chunk.delta.get("content"):
                    yield chunk.delta["content"]
        finally:  # a caller that stops early ends (and settles) the stream at once
            self._loop.call_soon_threadsafe(handle.finish)

    def feedback(self, response_id: str, rating: float, comment: str | None = None) -> None:
        """Rate an answer this Router gave (a second rating replaces the first)."""
        self._run(self.engine.feedback(None, response_id, rating, comment))

    # ---- lifecycle -----------------------------------------------------------------------------
    def close(self) -> None:
        if self._loop.is_running():
            self._run(self.engine.aclose())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)

    def __enter__(self) -> Router:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
