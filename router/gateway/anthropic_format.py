"""The Anthropic Messages API at the edge: its requests in, the engine's chat format through, its
responses and server-sent events out.

A Messages request becomes an internal (OpenAI-shaped) chat request, so it is routed among *all*
pool models like any other request; the answer comes back in Anthropic's shape, tool calls
included. What is translated, accepted and dropped (docs/gateway.md, "Anthropic Messages"):

- `system` (string or text blocks) and `system` messages anywhere in `messages` (Claude Code sends
  them mid-conversation) -> system messages in place; user `text`, `image` and `document` (text
  sources) blocks -> user content parts; user `tool_result` blocks -> `tool` messages (images
  inside a tool result follow as a user message); assistant `text` and `tool_use` blocks ->
  content and `tool_calls`; `thinking` blocks -> `thinking_blocks` (for `thinking` models only).
- `tools` (custom tools) -> function tools; server tools (`web_search_*`, `bash_*`, ... : a `type`
  other than `custom`) are dropped and reported, no backend here runs them; `tool_choice` auto /
  any / tool / none -> auto / required / the named function / none, `disable_parallel_tool_use` ->
  `parallel_tool_calls: false`; `stop_sequences` -> `stop`; `metadata.user_id` -> `user`.
- `thinking` (enabled with a budget, adaptive) and `output_config.effort` -> `reasoning_effort`,
  sent to models with the `reasoning` capability; `thinking` itself goes to models with the
  `thinking` capability (an Anthropic model through litellm), and their thinking blocks round-trip:
  answered as `thinking` blocks, sent back from the history with their signatures.
- `cache_control` marks on system and user text blocks, tool definitions and `tool_result` blocks
  reach models with the `cache_control` capability as they were sent (an Anthropic model through
  litellm turns them back into Anthropic's blocks); other models get none.
- Accepted, not forwarded: `context_management`, `service_tier`, `top_k`, `container`, citations. Any other field is dropped and reported (`router.params`).
- Answers: text -> a `text` block, tool calls -> `tool_use` blocks; finish reasons stop / length /
  tool_calls / content_filter -> end_turn / max_tokens / tool_use / refusal.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from adapters import ChatChunk, ChatResult, Usage
from router import constraints as C
from router.errors import BadRequest, RouterError
from router.executor import Outcome, StreamHandle
from router.gateway.chat_request import chat_request, function_tool
from router.gateway.json_response import dumps
from router.planner import external_id
from router.schemas import ChatCompletionRequest, RoutingControls


class _Known(BaseModel):
    """Fields Anthropic defines are typed; others wait in `model_extra` for `router.params.screen`."""

    model_config = ConfigDict(extra="allow")


class CacheControl(_Known):
    type: str = "ephemeral"
    ttl: str | None = None


class TextBlock(_Known):
    type: Literal["text"]
    text: str
    cache_control: CacheControl | None = None
    citations: list[dict[str, Any]] | None = None


class Base64Source(_Known):
    type: Literal["base64"]
    media_type: str = Field(min_length=1, max_length=128)
    data: str = Field(min_length=1)


class URLSource(_Known):
    type: Literal["url"]
    url: str = Field(min_length=1, pattern=r"^https://")


class TextSource(_Known):
    type: Literal["text"]
    media_type: str | None = None
    data: str


class ContentSource(_Known):
    type: Literal["content"]
    content: str | list[TextBlock]


IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")


class ImageBlock(_Known):
    type: Literal["image"]
    source: Annotated[Base64Source | URLSource, Field(discriminator="type")]
    cache_control: CacheControl | None = None


class DocumentBlock(_Known):
    type: Literal["document"]
    source: Annotated[Base64Source | URLSource | TextSource | ContentSource, Field(discriminator="type")]
    title: str | None = None
    context: str | None = None
    citations: dict[str, Any] | None = None
    cache_control: CacheControl | None = None


class ToolUseBlock(_Known):
    type: Literal["tool_use"]
    id: str = Field(min_length=1, max_length=256)
    name: str = Field(min_length=1, max_length=256)
    input: dict[str, Any]
    cache_control: CacheControl | None = None


class ToolResultBlock(_Known):
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1, max_length=256)
    content: (
        str | list[Annotated[TextBlock | ImageBlock | DocumentBlock, Field(discriminator="type")]] | None
    ) = None
    is_error: bool | None = None
    cache_control: CacheControl | None = None


class ThinkingBlock(_Known):
    type: Literal["thinking"]
    thinking: str
    signature: str | None = None


class RedactedThinkingBlock(_Known):
    type: Literal["redacted_thinking"]
    data: str


class OtherBlock(_Known):
    """A block type this gateway does not translate (server tool calls and results, ...): dropped."""

    OPAQUE: ClassVar[bool] = True
    type: str


KNOWN_BLOCKS = ("text", "image", "document", "tool_use", "tool_result", "thinking", "redacted_thinking")


def _block_kind(v: Any) -> str:
    kind = v.get("type") if isinstance(v, dict) else getattr(v, "type", None)
    return kind if kind in KNOWN_BLOCKS else "other"


Block = Annotated[
    Annotated[TextBlock, Tag("text")]
    | Annotated[ImageBlock, Tag("image")]
    | Annotated[DocumentBlock, Tag("document")]
    | Annotated[ToolUseBlock, Tag("tool_use")]
    | Annotated[ToolResultBlock, Tag("tool_result")]
    | Annotated[ThinkingBlock, Tag("thinking")]
    | Annotated[RedactedThinkingBlock, Tag("redacted_thinking")]
    | Annotated[OtherBlock, Tag("other")],
    Discriminator(_block_kind),
]


class AnthropicMessage(_Known):
    role: Literal["user", "assistant", "system"]
    content: str | list[Block]


class AnthropicTool(_Known):
    """A custom tool (name, description, input_schema) or a server tool (`type` names it)."""

    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    type: str | None = None
    cache_control: CacheControl | None = None

    @property
    def custom(self) -> bool:
        return self.type in (None, "custom")


class AnthropicToolChoice(_Known):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class Metadata(_Known):
    user_id: str | None = Field(None, max_length=256)


class Thinking(_Known):
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: int | None = Field(None, ge=0)


class OutputConfig(_Known):
    effort: Literal["low", "medium", "high", "max"] | None = None
    format: dict[str, Any] | None = None


class MessagesRequest(_Known):
    """`POST /v1/messages`, Anthropic's shape; `routing` carries moe-router's routing controls."""

    model: str = Field(min_length=1, max_length=256)
    messages: list[AnthropicMessage] = Field(min_length=1)
    max_tokens: int = Field(ge=1)
    system: str | list[TextBlock] | None = None
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(None, ge=0, le=1)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=0)
    tools: list[AnthropicTool] | None = Field(None, max_length=256)
    tool_choice: AnthropicToolChoice | None = None
    metadata: Metadata | None = None
    stream: bool = False
    thinking: Thinking | None = None
    output_config: OutputConfig | None = None
    # accepted, not forwarded
    context_management: dict[str, Any] | None = None
    service_tier: str | None = Field(None, max_length=64)
    container: str | dict[str, Any] | None = None
    routing: RoutingControls | None = None


class CountTokensRequest(MessagesRequest):
    """`POST /v1/messages/count_tokens`: a Messages body without `max_tokens`."""

    max_tokens: int = Field(1, ge=1)


# ---- request -> internal -------------------------------------------------------------------------
def _text_of(content: str | list[TextBlock]) -> str:
    return content if isinstance(content, str) else "\n".join(b.text for b in content)


def _image_part(block: ImageBlock) -> dict[str, Any]:
    src = block.source
    if isinstance(src, Base64Source) and src.media_type not in IMAGE_TYPES:
        raise BadRequest(f"image media_type must be one of {', '.join(IMAGE_TYPES)}", param="messages")
    url = f"data:{src.media_type};base64,{src.data}" if isinstance(src, Base64Source) else src.url
    return {"type": "image_url", "image_url": {"url": url}}


def _document_text(block: DocumentBlock) -> str:
    """A document as text: text and content sources as they are; a PDF or URL source (no backend
    here reads them) as a note saying so, so the model knows something was attached."""
    src = block.source
    title = f" {block.title}" if block.title else ""
    if isinstance(src, TextSource):
        body = src.data
    elif isinstance(src, ContentSource):
        body = _text_of(src.content)
    else:
        body = "(a PDF or URL document: not readable through this gateway)"
    context = f"\n{block.context}" if block.context else ""
    return f"[document{title}]{context}\n{body}"


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
                texts = [
                    b.text if isinstance(b, TextBlock) else _document_text(b)
                    for b in inner
                    if isinstance(b, TextBlock | DocumentBlock)
                ]
                text = "\n".join(texts)
                parts += [_image_part(b) for b in inner if isinstance(b, ImageBlock)]
            else:
                text = inner or ""
            if block.is_error:
                text = f"[tool error] {text}"
            tool = {"role": "tool", "tool_call_id": block.tool_use_id, "content": text}
            if (mark := _result_mark(block)) is not None:
                tool["cache_control"] = mark
            out.append(tool)
        elif isinstance(block, TextBlock):
            parts.append(_text_part(block))
        elif isinstance(block, ImageBlock):
            parts.append(_image_part(block))
        elif isinstance(block, DocumentBlock):
            parts.append({"type": "text", "text": _document_text(block)})
        elif isinstance(block, ToolUseBlock):
            raise BadRequest("tool_use blocks belong in assistant messages", param="messages")
    if parts:
        out.append({"role": "user", "content": parts})
    return out


def _result_mark(block: ToolResultBlock) -> dict[str, Any] | None:
    """A tool result's cache mark: its own, else the last one inside it (its content is sent as one
    text, so a mark inside moves to the result's end: the same prefix when it was on the last
    block, a longer one otherwise)."""
    marks = (
        [b.cache_control for b in block.content if b.cache_control is not None]
        if isinstance(block.content, list)
        else []
    )
    mark = block.cache_control or (marks[-1] if marks else None)
    return None if mark is None else mark.model_dump(exclude_none=True)


def _assistant_turn(content: str | list[Any]) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    texts = [b.text for b in content if isinstance(b, TextBlock)]
    calls = [
        {"id": b.id, "type": "function", "function": {"name": b.name, "arguments": json.dumps(b.input)}}
        for b in content
        if isinstance(b, ToolUseBlock)
    ]
    if any(isinstance(b, ToolResultBlock | ImageBlock | DocumentBlock) for b in content):
        raise BadRequest("assistant messages hold text and tool_use blocks only", param="messages")
    msg: dict[str, Any] = {"role": "assistant", "content": "\n".join(texts) if texts else None}
    if calls:
        msg["tool_calls"] = calls
    thinking = [
        b.model_dump(include={"type", "thinking", "signature", "data"}, exclude_none=True)
        for b in content
        if isinstance(b, ThinkingBlock | RedactedThinkingBlock)
    ]
    if thinking:
        msg["thinking_blocks"] = thinking
    if msg["content"] is None and not calls:
        msg["content"] = ""
    return msg


def _text_part(block: TextBlock) -> dict[str, Any]:
    part: dict[str, Any] = {"type": "text", "text": block.text}
    if block.cache_control is not None:
        part["cache_control"] = block.cache_control.model_dump(exclude_none=True)
    return part


def _system_turn(content: str | list[Any]) -> list[dict[str, Any]]:
    """System text as one message; blocks stay blocks when one carries a cache mark (models with
    the `cache_control` capability get them as they were sent; others get the plain text)."""
    if isinstance(content, str):
        return [{"role": "system", "content": content}] if content else []
    blocks = [b for b in content if isinstance(b, TextBlock)]
    if any(b.cache_control is not None for b in blocks):
        return [{"role": "system", "content": [_text_part(b) for b in blocks]}]
    text = "\n".join(b.text for b in blocks)
    return [{"role": "system", "content": text}] if text else []


def _tool(t: AnthropicTool) -> dict[str, Any]:
    """A custom tool as a function tool; its cache mark beside it, where litellm reads it."""
    tool = function_tool(t.name, t.description, t.input_schema or {"type": "object"})
    if t.cache_control is not None:
        tool["cache_control"] = t.cache_control.model_dump(exclude_none=True)
    return tool


# Anthropic's output_config.effort and thinking budgets on OpenAI's reasoning_effort scale
EFFORTS = {"low": "low", "medium": "medium", "high": "high", "max": "xhigh"}


def reasoning_effort(req: MessagesRequest) -> str | None:
    """`output_config.effort` when given; else from `thinking`: adaptive -> medium, a budget ->
    low (< 4,096 tokens), medium (< 16,384) or high; disabled or absent -> none asked."""
    if req.output_config is not None and req.output_config.effort:
        return EFFORTS[req.output_config.effort]
    t = req.thinking
    if t is None or t.type == "disabled":
        return None
    if t.type == "adaptive" or t.budget_tokens is None:
        return "medium"
    return "low" if t.budget_tokens < 4096 else "medium" if t.budget_tokens < 16384 else "high"


def server_tools(req: MessagesRequest) -> list[str]:
    """The client paths of the server tools in `tools` (no backend here runs them: dropped)."""
    return [f"tools[{i}]" for i, t in enumerate(req.tools or []) if not t.custom]


def to_chat(req: MessagesRequest) -> ChatCompletionRequest:
    messages: list[dict[str, Any]] = []
    if req.system:
        messages += _system_turn(req.system)
    for m in req.messages:
        if m.role == "user":
            messages += _user_turn(m.content)
        elif m.role == "assistant":
            messages.append(_assistant_turn(m.content))
        else:
            messages += _system_turn(m.content)
    tools = [_tool(t) for t in req.tools or [] if t.custom]
    body: dict[str, Any] = {
        "model": req.model,
        "messages": messages,
        "max_tokens": req.max_tokens,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "stop": req.stop_sequences,
        "stream": req.stream,
        "routing": req.routing,
        "tools": tools or None,
        "reasoning_effort": reasoning_effort(req),
        "thinking": req.thinking.model_dump(exclude_none=True)
        if req.thinking is not None and req.thinking.type != "disabled"
        else None,
    }
    tc = req.tool_choice
    if tc is not None and tools:
        body["tool_choice"] = {
            "auto": "auto",
            "any": "required",
            "none": "none",
            "tool": {"type": "function", "function": {"name": tc.name or ""}},
        }[tc.type]
        if tc.disable_parallel_tool_use:
            body["parallel_tool_calls"] = False
    if req.metadata is not None and req.metadata.user_id:
        body["user"] = req.metadata.user_id[:256]
    return chat_request(body, {"stop": "stop_sequences"})


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


THINKING_KEYS = {"thinking": ("thinking", "signature"), "redacted_thinking": ("data",)}


def thinking_blocks(blocks: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """An answer's thinking blocks (litellm's `thinking_blocks`) as Anthropic content blocks."""
    out = []
    for b in blocks or []:
        kind = b.get("type") if b.get("type") in THINKING_KEYS else "thinking"
        out.append({"type": kind, **{k: b.get(k) or "" for k in THINKING_KEYS[kind]}})
    return out


def message_body(result: ChatResult, o: Outcome) -> dict[str, Any]:
    content: list[dict[str, Any]] = thinking_blocks(result.message.get("thinking_blocks"))
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
    """The routing estimate: messages, tools and images (what the planner checks windows with)."""
    return {"input_tokens": C.request_tokens(req)}


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
        for tb in c.delta.get("thinking_blocks") or []:
            if self.kind != "thinking":
                out += self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""})
            for key, kind in (("thinking", "thinking_delta"), ("signature", "signature_delta")):
                if tb.get(key):
                    delta = {"type": kind, key: tb[key]}
                    out.append(event("content_block_delta", {"index": self.block, "delta": delta}))
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
