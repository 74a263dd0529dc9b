"""A scriptable OpenAI-compatible upstream: a real HTTP server on 127.0.0.1, for tests and benchmarks.

It stands in for paid providers. Every model name it is asked for exists; by default it answers
"<model>: <last user message>" with word-count usage. Tests script it per model:

    up = MockUpstream().start()
    up.script("gpt-big", Fail(500), Fail(429, retry_after=0.2))   # the next two calls fail, then normal
    up.behave("gpt-big", delay=0.3)                               # every call waits 0.3 s
    up.behave("gpt-big", break_stream_after=2)                    # streams die after 2 chunks
    up.behave("gpt-big", stall_after=2)                           # streams go silent after 2 chunks
    up.behave("gpt-big", chunk_delay=0.05)                        # each stream chunk waits 50 ms
    up.behave("gpt-big", prompt_usage="bytes")                    # a worst-case tokenizer: 1 token/byte
    up.calls("gpt-big")                                           # requests received, in order
    up.abandoned("gpt-big")                                       # streams the client left unfinished

Run alone (for benchmarks or the example config): `python -m tests.upstream --port 9000`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


@dataclass
class Fail:
    status: int = 500
    retry_after: float | None = None
    message: str = "scripted failure"


@dataclass
class Delay:
    seconds: float


@dataclass
class Behaviour:
    reply: str | None = None  # fixed answer; None = echo
    delay: float = 0.0
    break_stream_after: int | None = None  # drop the connection after N content chunks
    usage: bool = True  # report token usage
    fail_status: int | None = None  # every call fails with this status
    stall_after: int | None = None  # streams stop sending (but stay open) after N content chunks
    chunk_delay: float = 0.0  # seconds before each streamed content chunk
    prompt_usage: str = "words"  # words | bytes (a worst-case tokenizer: one token per UTF-8 byte)


def _text(message: dict[str, Any]) -> str:
    c = message.get("content") or ""
    if isinstance(c, list):
        c = " ".join(p.get("text", "") for p in c if isinstance(p, dict))
    return str(c)


def _words(messages: list[dict[str, Any]]) -> int:
    return sum(len(_text(m).split()) + 1 for m in messages)


def _bytes(messages: list[dict[str, Any]]) -> int:
    """One token per UTF-8 byte of text, plus 4 per message: what a worst-case tokenizer counts."""
    return sum(len(_text(m).encode()) + 4 for m in messages)


def _last_user(messages: list[dict[str, Any]]) -> str:
    return next((_text(m) for m in reversed(messages) if m.get("role") == "user"), "")


@dataclass
class MockUpstream:
    host: str = "127.0.0.1"
    port: int = 0
    api_key: str | None = None  # when set, requests must carry it as a Bearer token
    _scripts: dict[str, deque] = field(default_factory=lambda: defaultdict(deque))
    _behaviour: dict[str, Behaviour] = field(default_factory=lambda: defaultdict(Behaviour))
    _calls: dict[str, list[dict]] = field(default_factory=lambda: defaultdict(list))
    _times: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    _abandoned: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # ---- scripting -------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def script(self, model: str, *steps: Fail | Delay) -> MockUpstream:
        with self._lock:
            self._scripts[model].extend(steps)
        return self

    def behave(self, model: str, **kw: Any) -> MockUpstream:
        with self._lock:
            b = self._behaviour[model]
            for k, v in kw.items():
                setattr(b, k, v)
        return self

    def calls(self, model: str | None = None) -> list[dict]:
        with self._lock:
            if model is None:
                return [c for cs in self._calls.values() for c in cs]
            return list(self._calls[model])

    def abandoned(self, model: str) -> int:
        """Streams for `model` whose client went away before the end."""
        with self._lock:
            return self._abandoned[model]

    def call_times(self, model: str) -> list[float]:
        """time.monotonic() at which each request for `model` arrived."""
        with self._lock:
            return list(self._times[model])

    def reset(self) -> None:
        with self._lock:
            self._scripts.clear()
            self._behaviour.clear()
            self._calls.clear()
            self._times.clear()
            self._abandoned.clear()

    # ---- HTTP ------------------------------------------------------------------------------
    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
                Route("/health", lambda r: JSONResponse({"ok": True}), methods=["GET"]),
            ]
        )

    async def _models(self, request: Request) -> Response:
        with self._lock:
            names = sorted(set(self._behaviour) | set(self._calls))
        return JSONResponse({"object": "list", "data": [{"id": n, "object": "model"} for n in names]})

    def _error(self, status: int, message: str, retry_after: float | None = None) -> Response:
        headers = {"retry-after": f"{retry_after:g}"} if retry_after is not None else {}
        body = {"error": {"message": message, "type": "upstream_error", "param": None, "code": status}}
        return JSONResponse(body, status_code=status, headers=headers)

    async def _chat(self, request: Request) -> Response:
        if self.api_key and request.headers.get("authorization") != f"Bearer {self.api_key}":
            return self._error(401, "bad upstream key")
        body = await request.json()
        model = body.get("model", "")
        with self._lock:
            self._calls[model].append(body)
            self._times[model].append(time.monotonic())
            step = self._scripts[model].popleft() if self._scripts[model] else None
            b = Behaviour(**vars(self._behaviour[model]))
        if isinstance(step, Delay):
            await asyncio.sleep(step.seconds)
        elif isinstance(step, Fail):
            return self._error(step.status, step.message, step.retry_after)
        if b.fail_status:
            return self._error(b.fail_status, "configured failure")
        if b.delay:
            await asyncio.sleep(b.delay)
        messages = body.get("messages") or []
        text = b.reply if b.reply is not None else f"{model}: {_last_user(messages)}"
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
        words = text.split(" ")
        if max_tokens:
            words = words[:max_tokens]
        prompt_tokens = _bytes(messages) if b.prompt_usage == "bytes" else _words(messages)
        completion_tokens = len(words)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        rid, created = f"chatcmpl-mock{time.monotonic_ns()}", int(time.time())
        if not body.get("stream"):
            out = {
                "id": rid,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": " ".join(words)},
                        "finish_reason": "stop",
                    }
                ],
            }
            if b.usage:
                out["usage"] = usage
            return JSONResponse(out)

        include_usage = bool((body.get("stream_options") or {}).get("include_usage")) and b.usage

        async def events():
            def chunk(delta: dict, finish: str | None = None) -> bytes:
                c = {
                    "id": rid,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                }
                return f"data: {json.dumps(c)}\n\n".encode()

            finished = False
            try:
                yield chunk({"role": "assistant", "content": ""})
                for i, w in enumerate(words):
                    if b.break_stream_after is not None and i >= b.break_stream_after:
                        raise ConnectionError("scripted broken stream")
                    if b.stall_after is not None and i >= b.stall_after:
                        await asyncio.sleep(3600)
                    if b.chunk_delay:
                        await asyncio.sleep(b.chunk_delay)
                    yield chunk({"content": w if i == 0 else " " + w})
                yield chunk({}, "stop")
                if include_usage:
                    u = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model}
                    u |= {"choices": [], "usage": usage}
                    yield f"data: {json.dumps(u)}\n\n".encode()
                yield b"data: [DONE]\n\n"
                finished = True
            finally:
                if not finished:
                    with self._lock:
                        self._abandoned[model] += 1

        return StreamingResponse(events(), media_type="text/event-stream")

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self) -> MockUpstream:
        from tests.servers import ServerThread

        self._server = ServerThread(self.app(), self.host, self.port, lifespan="off").start()
        self.port = self._server.port
        return self

    def stop(self) -> None:
        self._server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description="Run the mock OpenAI-compatible upstream.")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9000)
    ap.add_argument("--delay", type=float, default=0.0, help="seconds every answer waits")
    args = ap.parse_args()
    up = MockUpstream(host=args.host, port=args.port)
    if args.delay:
        up._behaviour.default_factory = lambda: Behaviour(delay=args.delay)
    uvicorn.run(up.app(), host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
