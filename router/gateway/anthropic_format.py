"""The Anthropic Messages API at the edge: its requests in, the engine's chat format through, its
responses and server-sent events out.

A Messages request becomes an internal (OpenAI-shaped) chat request, so it is routed among *all*
pool models like any other request; the answer comes back in Anthropic's shape, tool calls
included. What is translated, and what is not (docs/gateway.md, "Anthropic Messages"):

- `system` (string or text blocks) -> a system message; user `text` and `image` blocks -> user
  content parts; user `tool_result` blocks -> `tool` messages (images inside a tool result follow
  as a user message); assistant `text` and `tool_use` blocks -> content and `tool_calls`;
  `thinking` blocks in the history are dropped; `cache_control` marks are accepted and ignored.
- `tools` (custom tools: name, description, input_schema) -> function tools; `tool_choice`
  auto / any / tool / none -> auto / required / the named function / none, and
  `disable_parallel_tool_use` -> `parallel_tool_calls: false`; `stop_sequences` -> `stop` (4 at
  most); `metadata.user_id` -> `user`; `thinking` is accepted and not forwarded.
- Answers: text -> a `text` block, tool calls -> `tool_use` blocks; finish reasons stop / length /
  tool_calls / content_filter -> end_turn / max_tokens / tool_use / refusal.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from adapters import ChatChunk, ChatResult, Usage
from router.errors import BadRequest, RouterError
from router.executor import Outcome, StreamHandle
from router.gateway.json_response import dumps
from router.planner import external_id
from router.schemas import ChatCompletionRequest, RoutingControls


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CacheControl(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str = "ephemeral"


class TextBlock(_Strict):
    type: Literal["text"]
    text: str
    cache_control: CacheControl | None = None
    citations: list[dict[str, Any]] | None = None


class Base64Source(_Strict):
    type: Literal["base64"]
    media_type: Literal["image/jpeg", "image/png", "image/gif", "image/webp"]
    data: str = Field(min_length=1)


class URLSource(_Strict):
    type: Literal["url"]
    url: str = Field(min_length=1, pattern=r"^https://")


class ImageBlock(_Strict):
    type: Literal["image"]
    source: Annotated[Base64Source | URLSource, Field(discriminator="type")]
    cache_control: CacheControl | None = None


class ToolUseBlock(_Strict):
    type: Literal["tool_use"]
    id: str = Field(min_length=1, max_length=256)
    name: str = Field(min_length=1, max_length=256)
    input: dict[str, Any]
    cache_control: CacheControl | None = None


class ToolResultBlock(_Strict):
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1, max_length=256)
    content: str | list[Annotated[TextBlock | ImageBlock, Field(discriminator="type")]] | None = None
    is_error: bool | None = None
    cache_control: CacheControl | None = None


class ThinkingBlock(_Strict):
    type: Literal["thinking"]
    thinking: str
    signature: str | None = None


class RedactedThinkingBlock(_Strict):
    type: Literal["redacted_thinking"]
    data: str


Block = Annotated[
    TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock | RedactedThinkingBlock,
    Field(discriminator="type"),
]


class AnthropicMessage(_Strict):
    role: Literal["user", "assistant"]
    content: str | list[Block]


class AnthropicTool(_Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-]+$")
    description: str | None = None
    input_schema: dict[str, Any]
    type: Literal["custom"] | None = None
    cache_control: CacheControl | None = None


class AnthropicToolChoice(_Strict):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class Metadata(_Strict):
    user_id: str | None = Field(None, max_length=256)


class MessagesRequest(_Strict):
    """`POST /v1/messages`, Anthropic's shape; `routing` carries moe-router's routing controls."""

    model: str = Field(min_length=1, max_length=256)
    messages: list[AnthropicMessage] = Field(min_length=1)
    max_tokens: int = Field(ge=1)
    system: str | list[TextBlock] | None = None
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(None, ge=0, le=1)
    top_p: float | None = Field(None, ge=0, le=1)
    tools: list[AnthropicTool] | None = Field(None, max_length=128)
    tool_choice: AnthropicToolChoice | None = None
    metadata: Metadata | None = None
    stream: bool = False
    thinking: dict[str, Any] | None = None  # accepted, not forwarded
    routing: RoutingControls | None = None


class CountTokensRequest(MessagesRequest):
    """`POST /v1/messages/count_tokens`: a Messages body without `max_tokens`."""

    max_tokens: int = Field(1, ge=1)


# ---- request -> internal -------------------------------------------------------------------------
def _text_of(content: str | list[TextBlock]) -> str:
    return content if isinstance(content, str) else "\n".join(b.text for b in content)


def _image_part(block: ImageBlock) -> dict[str, Any]:
    src = block.source
    url = f"data:{src.media_type};base64,{src.data}" if isinstance(src, Base64Source) else src.url
    return {"type": "image_url", "image_url": {"url": url}}


def _user_turn(content: str | list[Any]) -> list[dict[str, Any]]:
    """One Anthropic user turn -> tool messages (its tool results) then a user message (the rest)."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for block in content:
        if isinstance(block, ToolResultBlock):
            inner = block.content
            if isinstance(inner, list):
                text = "\n".join(b.text for b in inner if isinstance(b, TextBlock))
                parts += [_image_part(b) for b in inner if isinstance(b, ImageBlock)]
            else:
                text = inner or ""
            if block.is_error:
                text = f"[tool error] {text}"
            out.append({"role": "tool", "tool_call_id": block.tool_use_id, "content": text})
        elif isinstance(block, TextBlock):
            parts.append({"type": "text", "text": block.text})
        elif isinstance(block, ImageBlock):
            parts.append(_image_part(block))
        elif isinstance(block, ToolUseBlock):
            raise BadRequest("tool_use blocks belong in assistant messages", param="messages")
    if parts:
        out.append({"role": "user", "content": parts})
    return out


def _assistant_turn(content: str | list[Any]) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    texts = [b.text for b in content if isinstance(b, TextBlock)]
    calls = [
        {"id": b.id, "type": "function", "function": {"name": b.name, "arguments": json.dumps(b.input)}}
        for b in content
        if isinstance(b, ToolUseBlock)
    ]
    if any(isinstance(b, ToolResultBlock | ImageBlock) for b in content):
        raise BadRequest("assistant messages hold text and tool_use blocks only", param="messages")
    msg: dict[str, Any] = {"role": "assistant", "content": "\n".join(texts) if texts else None}
    if calls:
        msg["tool_calls"] = calls
    if msg["content"] is None and not calls:
        msg["content"] = ""
    return msg


def to_chat(req: MessagesRequest) -> ChatCompletionRequest:
    messages: list[dict[str, Any]] = []
    if req.system:
        messages.append({"role": "system", "content": _text_of(req.system)})
    for m in req.messages:
        messages += _user_turn(m.content) if m.role == "user" else [_assistant_turn(m.content)]
    body: dict[str, Any] = {
        "model": req.model,
        "messages": messages,
        "max_tokens": req.max_tokens,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "stop": req.stop_sequences,
        "stream": req.stream,
        "routing": req.routing,
    }
    if req.stream:
        body["stream_options"] = {"include_usage": True}
    if req.tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {"name": t.name, "description": t.description, "parameters": t.input_schema},
            }
            for t in req.tools
        ]
    if req.tool_choice is not None:
        tc = req.tool_choice
        body["tool_choice"] = {
            "auto": "auto",
            "any": "required",
            "none": "none",
            "tool": {"type": "function", "function": {"name": tc.name or ""}},
        }[tc.type]
        if tc.disable_parallel_tool_use:
            body["parallel_tool_calls"] = False
    if req.metadata is not None and req.metadata.user_id:
        body["user"] = req.metadata.user_id
    try:
        return ChatCompletionRequest(**{k: v for k, v in body.items() if v is not None})
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ()))
        raise BadRequest(f"{where}: {first.get('msg')}", param=where or None) from None


# ---- internal -> response ------------------------------------------------------------------------
STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}


def stop_reason(finish: str | None) -> str:
    return STOP_REASONS.get(finish or "stop", "end_turn")


def usage_body(u: Usage) -> dict[str, int]:
    out = {"input_tokens": max(0, u.prompt_tokens - u.cached_tokens), "output_tokens": u.completion_tokens}
    if u.cached_tokens:
        out["cache_read_input_tokens"] = u.cached_tokens
    return out


def _tool_input(arguments: str) -> dict[str, Any]:
    try:
        value = json.loads(arguments or "{}")
    except ValueError:
        return {"arguments": arguments}
    return value if isinstance(value, dict) else {"value": value}


def message_body(result: ChatResult, o: Outcome) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if result.text:
        content.append({"type": "text", "text": result.text})
    for tc in result.message.get("tool_calls") or []:
        fn = tc.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": tc.get("id"),
                "name": fn.get("name"),
                "input": _tool_input(fn.get("arguments")),
            }
        )
    return {
        "id": external_id(o.request_id, "msg_"),
        "type": "message",
        "role": "assistant",
        "model": o.model,
        "content": content,
        "stop_reason": stop_reason(result.finish_reason),
        "stop_sequence": None,
        "usage": usage_body(o.usage),
    }


def count_body(req: ChatCompletionRequest) -> dict[str, int]:
    from router import constraints as C

    return {"input_tokens": C.prompt_tokens(req.messages)}


def event(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + dumps({"type": kind, **data}) + b"\n\n"


class MessagesStream:
    """Anthropic's streaming events: message_start, ping, per content block start/delta/stop,
    message_delta (stop reason, usage), message_stop; `error` when the upstream fails mid-stream."""

    def __init__(self) -> None:
        self.block = -1  # index of the open content block (-1: none)
        self.kind: str | None = None  # its type: text | tool_use
        self.tools: dict[int, int] = {}  # OpenAI tool-call index -> block index
        self.finish: str | None = None

    def opening(self, handle: StreamHandle) -> list[bytes]:
        message = {
            "id": external_id(handle.plan.request_id, "msg_"),
            "type": "message",
            "role": "assistant",
            "model": handle.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": handle.plan.prompt_tokens, "output_tokens": 0},
        }
        return [event("message_start", {"message": message}), event("ping", {})]

    def _close(self) -> list[bytes]:
        if self.block < 0 or self.kind is None:
            return []
        self.kind = None
        return [event("content_block_stop", {"index": self.block})]

    def _open(self, kind: str, block: dict[str, Any]) -> list[bytes]:
        out = self._close()
        self.block += 1
        self.kind = kind
        return [*out, event("content_block_start", {"index": self.block, "content_block": block})]

    def chunk(self, c: ChatChunk) -> list[bytes]:
        out: list[bytes] = []
        text = c.delta.get("content")
        if text:
            if self.kind != "text":
                out += self._open("text", {"type": "text", "text": ""})
            out.append(
                event(
                    "content_block_delta",
                    {"index": self.block, "delta": {"type": "text_delta", "text": text}},
                )
            )
        for tc in c.delta.get("tool_calls") or []:
            i = tc.get("index", 0)
            fn = tc.get("function") or {}
            if i not in self.tools:
                out += self._open(
                    "tool_use", {"type": "tool_use", "id": tc.get("id"), "name": fn.get("name"), "input": {}}
                )
                self.tools[i] = self.block
            if fn.get("arguments"):
                out.append(
                    event(
                        "content_block_delta",
                        {
                            "index": self.tools[i],
                            "delta": {"type": "input_json_delta", "partial_json": fn["arguments"]},
                        },
                    )
                )
        self.finish = c.finish_reason or self.finish
        return out

    def closing(self, handle: StreamHandle) -> list[bytes]:
        out = self._close()
        usage = handle.outcome.usage if handle.outcome is not None else Usage()
        delta = {"stop_reason": stop_reason(self.finish), "stop_sequence": None}
        out.append(
            event("message_delta", {"delta": delta, "usage": {"output_tokens": usage.completion_tokens}})
        )
        out.append(event("message_stop", {}))
        return out

    def failure(self, err: RouterError) -> list[bytes]:
        kind = "overloaded_error" if err.status == 503 else "api_error"
        return [event("error", {"error": {"type": kind, "message": err.message}})]
