"""A scriptable upstream: a real HTTP server on 127.0.0.1, for tests and benchmarks.

It stands in for paid providers and speaks both wire formats: OpenAI chat completions
(`/v1/chat/completions`, `/v1/embeddings`) and Anthropic messages (`/v1/messages`). Every model
name it is asked for exists; by default it answers "<model>: <last user message>" with word-count
usage. Tests script it per model:

    up = MockUpstream().start()
    up.script("gpt-big", Fail(500), Fail(429, retry_after=0.2))   # the next two calls fail, then normal
    up.behave("gpt-big", delay=0.3)                               # every call waits 0.3 s
    up.behave("gpt-big", break_stream_after=2)                    # streams die after 2 chunks
    up.behave("gpt-big", stall_after=2)                           # streams go silent after 2 chunks
    up.behave("gpt-big", chunk_delay=0.05)                        # each stream chunk waits 50 ms
    up.behave("gpt-big", prompt_usage="bytes")                    # a worst-case tokenizer: 1 token/byte
    up.calls("gpt-big")                                           # requests received, in order
    up.abandoned("gpt-big")                                       # streams the client left unfinished
    up.behave("gpt-big", use_tools=True)                          # call the first tool, then answer
    up.behave("gpt-big", tool="Bash", tool_args={"command": "ls"}) # call that tool (if offered), then answer
    up.behave("gpt-big", cached_tokens=40)                        # report provider prompt-cache reads
    up.peak_in_flight("gpt-big")                                  # most requests it held at once

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
    use_tools: bool = False  # with tools in the request: call the first one, then answer its result
    cached_tokens: int = 0  # report this many prompt tokens as read from the provider's prompt cache
    tool: str | None = None  # with this tool offered: call it with `tool_args`, then answer its result
    tool_args: dict[str, Any] | None = None


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


def _blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    c = message.get("content")
    return [x for x in c if isinstance(x, dict)] if isinstance(c, list) else []


def _block_text(content: Any) -> str:
    """The text of an Anthropic content value: a string, or text (and tool_result) blocks."""
    if isinstance(content, str):
        return content
    parts = []
    for blk in content or []:
        if blk.get("type") == "text":
            parts.append(blk.get("text", ""))
        elif blk.get("type") == "tool_result":
            parts.append(_block_text(blk.get("content")))
    return " ".join(parts)


THOUGHT = "Let me think about it."  # the mock's thinking, when a request enables it
SIGNATURE = "sig-mock-0001"


def _logprob(token: str, top: int) -> dict[str, Any]:
    """A made-up but well-formed logprob entry: -0.25 per token, `top` alternatives."""
    alts = [{"token": token, "logprob": -0.25, "bytes": list(token.encode())}]
    alts += [{"token": f"{token}~{i}", "logprob": -2.0 - i, "bytes": None} for i in range(1, top)]
    return {"token": token, "logprob": -0.25, "bytes": list(token.encode()), "top_logprobs": alts[:top]}


def _vector(text: str, dim: int = 8) -> list[float]:
    """A deterministic unit vector per text."""
    import hashlib
    import math

    h = hashlib.sha256(text.encode()).digest()
    v = [b - 127.5 for b in h[:dim]]
    n = math.sqrt(sum(x * x for x in v)) or 1.0
    return [x / n for x in v]


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
    _in_flight: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    _peak: dict[str, int] = field(default_factory=lambda: defaultdict(int))
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

    def in_flight(self, model: str) -> int:
        """Requests for `model` being answered right now (a stream until its last byte)."""
        with self._lock:
            return self._in_flight[model]

    def peak_in_flight(self, model: str) -> int:
        """The most requests for `model` this server was answering at the same time."""
        with self._lock:
            return self._peak[model]

    def _enter(self, model: str) -> None:
        with self._lock:
            self._in_flight[model] += 1
            self._peak[model] = max(self._peak[model], self._in_flight[model])

    def _leave(self, model: str) -> None:
        with self._lock:
            self._in_flight[model] -= 1

    def _counted(self, handler):
        """`handler` with its requests counted in flight until the response (or stream) ends."""

        async def run(request: Request) -> Response:
            try:
                model = str((await request.json()).get("model", ""))
            except ValueError:
                return await handler(request)
            self._enter(model)
            try:
                response = await handler(request)
            except BaseException:
                self._leave(model)
                raise
            if not isinstance(response, StreamingResponse):
                self._leave(model)
                return response
            inner = response.body_iterator

            async def body():
                try:
                    async for part in inner:
                        yield part
                finally:
                    self._leave(model)

            response.body_iterator = body()
            return response

        return run

    def reset(self) -> None:
        with self._lock:
            self._in_flight.clear()
            self._peak.clear()
            self._scripts.clear()
            self._behaviour.clear()
            self._calls.clear()
            self._times.clear()
            self._abandoned.clear()

    # ---- HTTP ------------------------------------------------------------------------------
    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/chat/completions", self._counted(self._chat), methods=["POST"]),
                Route("/v1/messages", self._counted(self._messages), methods=["POST"]),
                Route("/v1/embeddings", self._embeddings, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
                Route("/health", lambda r: JSONResponse({"ok": True}), methods=["GET"]),
            ]
        )

    async def _models(self, request: Request) -> Response:
        with self._lock:
            names = sorted(set(self._behaviour) | set(self._calls))
        return JSONResponse({"object": "list", "data": [{"id": n, "object": "model"} for n in names]})

    def _error(
        self, status: int, message: str, retry_after: float | None = None, anthropic: bool = False
    ) -> Response:
        headers = {"retry-after": f"{retry_after:g}"} if retry_after is not None else {}
        if anthropic:
            body = {"type": "error", "error": {"type": "api_error", "message": message}}
        else:
            body = {"error": {"message": message, "type": "upstream_error", "param": None, "code": status}}
        return JSONResponse(body, status_code=status, headers=headers)

    async def _receive(self, request: Request, anthropic: bool) -> tuple[dict, str, Behaviour] | Response:
        """The common part of every call: auth, recording, scripted failures and delays."""
        if self.api_key:
            sent = request.headers.get("x-api-key") if anthropic else request.headers.get("authorization")
            if sent != (self.api_key if anthropic else f"Bearer {self.api_key}"):
                return self._error(401, "bad upstream key", anthropic=anthropic)
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
            return self._error(step.status, step.message, step.retry_after, anthropic)
        if b.fail_status:
            return self._error(b.fail_status, "configured failure", anthropic=anthropic)
        if b.delay:
            await asyncio.sleep(b.delay)
        return body, model, b

    def _words_out(
        self, body: dict, model: str, b: Behaviour, last_user: str, tool_said: str | None
    ) -> list[str]:
        if tool_said is not None:
            text = f"{model}: the tool said {tool_said}"
        else:
            text = b.reply if b.reply is not None else f"{model}: {last_user}"
        words = text.split(" ")
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
        return words[:max_tokens] if max_tokens else words

    async def _paced(
        self, model: str, b: Behaviour, pieces: list[bytes], head: list[bytes], tail: list[bytes]
    ):
        """Stream `head`, then each piece (the scripted breaks, stalls and delays apply), then `tail`."""
        finished = False
        try:
            for h in head:
                yield h
            for i, piece in enumerate(pieces):
                if b.break_stream_after is not None and i >= b.break_stream_after:
                    raise ConnectionError("scripted broken stream")
                if b.stall_after is not None and i >= b.stall_after:
                    await asyncio.sleep(3600)
                if b.chunk_delay:
                    await asyncio.sleep(b.chunk_delay)
                yield piece
            for t in tail:
                yield t
            finished = True
        finally:
            if not finished:
                with self._lock:
                    self._abandoned[model] += 1

    # ---- OpenAI chat completions ------------------------------------------------------------
    async def _chat(self, request: Request) -> Response:
        got = await self._receive(request, anthropic=False)
        if isinstance(got, Response):
            return got
        body, model, b = got
        messages = body.get("messages") or []
        # the tool results after the last assistant turn (agents may add a user turn after them)
        since = next(
            (i for i in range(len(messages) - 1, -1, -1) if messages[i].get("role") == "assistant"), -1
        )
        results = [_text(m) for m in messages[since + 1 :] if m.get("role") == "tool"]
        tool_said = results[-1] if results else None
        call = None
        offered = [t.get("function", {}).get("name") for t in body.get("tools") or []]
        if b.tool in offered and tool_said is None:
            call = {
                "id": f"call_{time.monotonic_ns()}",
                "name": b.tool,
                "arguments": json.dumps(b.tool_args or {}),
            }
        elif b.use_tools and body.get("tools") and tool_said is None:
            fn = body["tools"][0]["function"]["name"]
            call = {
                "id": f"call_{time.monotonic_ns()}",
                "name": fn,
                "arguments": json.dumps({"query": _last_user(messages)}),
            }
        words = [] if call else self._words_out(body, model, b, _last_user(messages), tool_said)
        prompt_tokens = _bytes(messages) if b.prompt_usage == "bytes" else _words(messages)
        completion_tokens = len(words) if not call else len(call["arguments"].split())
        usage: dict[str, Any] = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        if b.cached_tokens:
            usage["prompt_tokens_details"] = {"cached_tokens": min(b.cached_tokens, prompt_tokens)}
        rid, created = f"chatcmpl-mock{time.monotonic_ns()}", int(time.time())
        finish = "tool_calls" if call else "stop"
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": None if call else " ".join(words)}
            if call:
                message["tool_calls"] = [
                    {
                        "id": call["id"],
                        "type": "function",
                        "function": {"name": call["name"], "arguments": call["arguments"]},
                    }
                ]
            choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": finish}
            if body.get("logprobs") and not call:
                choice["logprobs"] = {"content": [_logprob(w, body.get("top_logprobs") or 0) for w in words]}
            out = {
                "id": rid,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [choice],
            }
            if b.usage:
                out["usage"] = usage
            return JSONResponse(out)

        include_usage = bool((body.get("stream_options") or {}).get("include_usage")) and b.usage

        def chunk(delta: dict, finish_reason: str | None = None) -> bytes:
            choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish_reason}
            if body.get("logprobs") and delta.get("content"):
                choice["logprobs"] = {
                    "content": [_logprob(delta["content"].strip(), body.get("top_logprobs") or 0)]
                }
            c = {
                "id": rid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [choice],
            }
            return f"data: {json.dumps(c)}\n\n".encode()

        if call:
            half = len(call["arguments"]) // 2
            pieces = [
                chunk(
                    {
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": call["id"],
                                "type": "function",
                                "function": {"name": call["name"], "arguments": ""},
                            }
                        ]
                    }
                ),
                chunk({"tool_calls": [{"index": 0, "function": {"arguments": call["arguments"][:half]}}]}),
                chunk({"tool_calls": [{"index": 0, "function": {"arguments": call["arguments"][half:]}}]}),
            ]
        else:
            pieces = [chunk({"content": w if i == 0 else " " + w}) for i, w in enumerate(words)]
        tail = [chunk({}, finish)]
        if include_usage:
            u = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model}
            u |= {"choices": [], "usage": usage}
            tail.append(f"data: {json.dumps(u)}\n\n".encode())
        tail.append(b"data: [DONE]\n\n")
        head = [chunk({"role": "assistant", "content": ""})]
        return StreamingResponse(self._paced(model, b, pieces, head, tail), media_type="text/event-stream")

    # ---- Anthropic messages -----------------------------------------------------------------
    async def _messages(self, request: Request) -> Response:
        got = await self._receive(request, anthropic=True)
        if isinstance(got, Response):
            return got
        body, model, b = got
        messages = body.get("messages") or []
        results = (
            [blk for blk in _blocks(messages[-1]) if blk.get("type") == "tool_result"] if messages else []
        )
        tool_said = _block_text(results[-1].get("content")) if results else None
        last_user = next(
            (_block_text(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), ""
        )
        call = None
        offered = [t.get("name") for t in body.get("tools") or []]
        if b.tool in offered and tool_said is None:
            call = {"id": f"toolu_{time.monotonic_ns()}", "name": b.tool, "input": dict(b.tool_args or {})}
        elif b.use_tools and body.get("tools") and tool_said is None:
            call = {
                "id": f"toolu_{time.monotonic_ns()}",
                "name": body["tools"][0]["name"],
                "input": {"query": last_user},
            }
        words = [] if call else self._words_out(body, model, b, last_user, tool_said)
        flat = [{"content": _block_text(m.get("content"))} for m in messages]
        if body.get("system"):
            flat.append({"content": _block_text(body["system"])})
        input_tokens = _bytes(flat) if b.prompt_usage == "bytes" else _words(flat)
        output_tokens = len(words) if not call else len(json.dumps(call["input"]).split())
        usage: dict[str, Any] = {"input_tokens": input_tokens, "output_tokens": output_tokens}
        if b.cached_tokens:
            usage["cache_read_input_tokens"] = b.cached_tokens
        mid = f"msg_mock{time.monotonic_ns()}"
        stop = "tool_use" if call else "end_turn"
        content = [{"type": "tool_use", **call}] if call else [{"type": "text", "text": " ".join(words)}]
        # extended thinking asked: a thinking block first (what Anthropic's API answers)
        think = (body.get("thinking") or {}).get("type") in ("enabled", "adaptive")
        if think:
            content.insert(0, {"type": "thinking", "thinking": THOUGHT, "signature": SIGNATURE})
        bi = 1 if think else 0  # the index of the answer's block in a stream
        if not body.get("stream"):
            out = {
                "id": mid,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": content,
                "stop_reason": stop,
                "stop_sequence": None,
                "usage": usage,
            }
            return JSONResponse(out)

        def event(kind: str, data: dict) -> bytes:
            return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()

        start = {
            "id": mid,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {**usage, "output_tokens": 0},
        }
        head = [event("message_start", {"message": start})]
        if think:
            block = {"type": "thinking", "thinking": "", "signature": ""}
            head += [
                event("content_block_start", {"index": 0, "content_block": block}),
                event(
                    "content_block_delta",
                    {"index": 0, "delta": {"type": "thinking_delta", "thinking": THOUGHT}},
                ),
                event(
                    "content_block_delta",
                    {"index": 0, "delta": {"type": "signature_delta", "signature": SIGNATURE}},
                ),
                event("content_block_stop", {"index": 0}),
            ]
        if call:
            head.append(
                event(
                    "content_block_start",
                    {
                        "index": bi,
                        "content_block": {
                            "type": "tool_use",
                            "id": call["id"],
                            "name": call["name"],
                            "input": {},
                        },
                    },
                )
            )
            raw = json.dumps(call["input"])
            pieces = [
                event(
                    "content_block_delta",
                    {
                        "index": bi,
                        "delta": {"type": "input_json_delta", "partial_json": raw[: len(raw) // 2]},
                    },
                ),
                event(
                    "content_block_delta",
                    {
                        "index": bi,
                        "delta": {"type": "input_json_delta", "partial_json": raw[len(raw) // 2 :]},
                    },
                ),
            ]
        else:
            head.append(
                event("content_block_start", {"index": bi, "content_block": {"type": "text", "text": ""}})
            )
            pieces = [
                event(
                    "content_block_delta",
                    {"index": bi, "delta": {"type": "text_delta", "text": w if n == 0 else " " + w}},
                )
                for n, w in enumerate(words)
            ]
        tail = [
            event("content_block_stop", {"index": bi}),
            event(
                "message_delta",
                {
                    "delta": {"stop_reason": stop, "stop_sequence": None},
                    "usage": {"output_tokens": output_tokens},
                },
            ),
            event("message_stop", {}),
        ]
        return StreamingResponse(self._paced(model, b, pieces, head, tail), media_type="text/event-stream")

    # ---- embeddings -------------------------------------------------------------------------
    async def _embeddings(self, request: Request) -> Response:
        got = await self._receive(request, anthropic=False)
        if isinstance(got, Response):
            return got
        body, model, _ = got
        inputs = body.get("input")
        texts = [inputs] if isinstance(inputs, str) else list(inputs or [])
        data = [{"object": "embedding", "index": i, "embedding": _vector(t)} for i, t in enumerate(texts)]
        tokens = sum(len(t.split()) for t in texts)
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

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
