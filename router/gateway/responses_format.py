"""The OpenAI Responses API at the edge (the Codex CLI, newer `openai` SDK code).

A Responses request becomes an internal chat request, so it is routed, budgeted and logged like
any other; the answer comes back as a Response object (or its streaming events). Translated:

- `instructions` -> a system message (not carried over by `previous_response_id`, as in OpenAI's
  API); `input` as a string or items: messages (`input_text`, `input_image`, `output_text`,
  `refusal` parts), `function_call` and `function_call_output` items; `reasoning` items are
  dropped.
- function `tools`, `tool_choice`, `parallel_tool_calls`, `max_output_tokens`, `temperature`,
  `top_p`, `text.format` (-> `response_format`), `reasoning.effort`, `user`.
- `previous_response_id`: the stored conversation of an earlier response of the same caller
  (`store: true`, the default; config `responses`), shared by replicas on Redis.
- `prompt_cache_key` doubles as the conversation id for model affinity when no
  `x-moe-router-session` header is sent. `include`, `truncation: disabled`, `metadata`,
  `safety_identifier` and `text.verbosity` are accepted and not forwarded.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError

from adapters import ChatChunk, ChatResult, Usage
from router.errors import BadRequest, RouterError
from router.executor import Outcome, StreamHandle
from router.gateway.json_response import dumps
from router.planner import external_id
from router.schemas import ChatCompletionRequest, RoutingControls


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputText(_Strict):
    type: Literal["input_text"]
    text: str


class InputImage(_Strict):
    type: Literal["input_image"]
    image_url: str = Field(min_length=1)
    detail: Literal["auto", "low", "high"] | None = None


class OutputText(_Strict):
    type: Literal["output_text"]
    text: str
    annotations: list[Any] | None = None
    logprobs: list[Any] | None = None


class Refusal(_Strict):
    type: Literal["refusal"]
    refusal: str


Part = Annotated[InputText | InputImage | OutputText | Refusal, Field(discriminator="type")]


class MessageItem(_Strict):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[Part]
    id: str | None = None
    status: str | None = None


class FunctionCallItem(_Strict):
    type: Literal["function_call"]
    call_id: str = Field(min_length=1, max_length=256)
    name: str = Field(min_length=1, max_length=256)
    arguments: str
    id: str | None = None
    status: str | None = None


class FunctionCallOutputItem(_Strict):
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1, max_length=256)
    output: str | list[InputText]
    id: str | None = None
    status: str | None = None


class ReasoningItem(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["reasoning"]


def _item_kind(v: Any) -> str:
    return (v.get("type") if isinstance(v, dict) else getattr(v, "type", None)) or "message"


Item = Annotated[
    Annotated[MessageItem, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")]
    | Annotated[ReasoningItem, Tag("reasoning")],
    Discriminator(_item_kind),
]


class FunctionTool(_Strict):
    type: Literal["function"]
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionChoice(_Strict):
    type: Literal["function"]
    name: str = Field(min_length=1, max_length=64)


class Format(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(None, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class TextConfig(_Strict):
    format: Format | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ReasoningConfig(_Strict):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    summary: str | None = None
    generate_summary: str | None = None


class ResponsesRequest(_Strict):
    model: str = Field(min_length=1, max_length=256)
    input: str | list[Item]
    instructions: str | None = None
    tools: list[FunctionTool] | None = Field(None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | FunctionChoice | None = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    stream: bool = False
    store: bool = True
    previous_response_id: str | None = Field(None, max_length=128)
    text: TextConfig | None = None
    reasoning: ReasoningConfig | None = None
    user: str | None = Field(None, max_length=256)
    # accepted, not forwarded
    metadata: dict[str, str] | None = Field(None, max_length=16)
    include: list[str] | None = None
    truncation: Literal["disabled", "auto"] | None = None
    prompt_cache_key: str | None = Field(None, max_length=256)
    safety_identifier: str | None = Field(None, max_length=256)
    routing: RoutingControls | None = None


# ---- request -> internal -------------------------------------------------------------------------
def _parts(content: str | list[Any], role: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    out: list[dict[str, Any]] = []
    for p in content:
        if isinstance(p, InputText | OutputText):
            out.append({"type": "text", "text": p.text})
        elif isinstance(p, InputImage):
            if role != "user":
                raise BadRequest("input_image parts belong in user messages", param="input")
            out.append({"type": "image_url", "image_url": {"url": p.image_url}})
    return out


def _messages(items: list[Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for it in items:
        if isinstance(it, MessageItem):
            if it.role == "assistant":
                text = (
                    it.content
                    if isinstance(it.content, str)
                    else "".join(p.text for p in it.content if isinstance(p, OutputText | InputText))
                )
                refusal = (
                    None
                    if isinstance(it.content, str)
                    else next((p.refusal for p in it.content if isinstance(p, Refusal)), None)
                )
                msg: dict[str, Any] = {"role": "assistant", "content": text}
                if refusal is not None:
                    msg["refusal"] = refusal
                out.append(msg)
            else:
                out.append({"role": it.role, "content": _parts(it.content, it.role)})
        elif isinstance(it, FunctionCallItem):
            call = {
                "id": it.call_id,
                "type": "function",
                "function": {"name": it.name, "arguments": it.arguments},
            }
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif isinstance(it, FunctionCallOutputItem):
            output = it.output if isinstance(it.output, str) else "".join(p.text for p in it.output)
            out.append({"role": "tool", "tool_call_id": it.call_id, "content": output})
        # reasoning items: nothing to forward
    return out


def to_chat(req: ResponsesRequest, prior: list[dict[str, Any]]) -> tuple[ChatCompletionRequest, list[dict]]:
    """(the internal chat request, the conversation to store for a later `previous_response_id`)."""
    turns = [{"role": "user", "content": req.input}] if isinstance(req.input, str) else _messages(req.input)
    conversation = [*prior, *turns]
    messages = ([{"role": "system", "content": req.instructions}] if req.instructions else []) + conversation
    body: dict[str, Any] = {
        "model": req.model,
        "messages": messages,
        "max_tokens": req.max_output_tokens,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "stream": req.stream,
        "parallel_tool_calls": req.parallel_tool_calls,
        "user": req.user,
        "routing": req.routing,
    }
    if req.stream:
        body["stream_options"] = {"include_usage": True}
    if req.tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    k: v
                    for k, v in {
                        "name": t.name,
                        "description": t.description,
                        "parameters": t.parameters,
                        "strict": t.strict,
                    }.items()
                    if v is not None
                },
            }
            for t in req.tools
        ]
    if req.tool_choice is not None:
        tc = req.tool_choice
        body["tool_choice"] = (
            tc if isinstance(tc, str) else {"type": "function", "function": {"name": tc.name}}
        )
    fmt = req.text.format if req.text is not None else None
    if fmt is not None and fmt.type != "text":
        rf: dict[str, Any] = {"type": fmt.type}
        if fmt.type == "json_schema":
            rf["json_schema"] = {
                k: v
                for k, v in {
                    "name": fmt.name or "output",
                    "schema": fmt.schema_,
                    "strict": fmt.strict,
                }.items()
                if v is not None
            }
        body["response_format"] = rf
    if req.reasoning is not None and req.reasoning.effort:
        body["reasoning_effort"] = req.reasoning.effort
    try:
        chat = ChatCompletionRequest(**{k: v for k, v in body.items() if v is not None})
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ()))
        raise BadRequest(f"{where}: {first.get('msg')}", param=where or None) from None
    return chat, conversation


# ---- internal -> response ------------------------------------------------------------------------
def _usage(u: Usage) -> dict[str, Any]:
    return {
        "input_tokens": u.prompt_tokens,
        "input_tokens_details": {"cached_tokens": u.cached_tokens},
        "output_tokens": u.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": u.total_tokens,
    }


class Output:
    """What the model answered, as Response output items (built whole, or chunk by chunk)."""

    def __init__(self, response_id: str):
        self.base = response_id.removeprefix("resp_")
        self.text: list[str] = []
        self.calls: dict[int, dict[str, Any]] = {}  # OpenAI tool-call index -> function_call item
        self.finish: str | None = None

    @property
    def message_id(self) -> str:
        return f"msg_{self.base}"

    def message_item(self, status: str = "completed") -> dict[str, Any]:
        part = {"type": "output_text", "text": "".join(self.text), "annotations": [], "logprobs": []}
        return {
            "type": "message",
            "id": self.message_id,
            "status": status,
            "role": "assistant",
            "content": [part] if status == "completed" else [],
        }

    def items(self) -> list[dict[str, Any]]:
        out = [self.message_item()] if self.text or not self.calls else []
        return out + [dict(c, status="completed") for c in self.calls.values()]

    def add_calls(self, tool_calls: list[dict[str, Any]]) -> list[tuple[dict[str, Any], str, bool]]:
        """Fold tool-call deltas in: (item, arguments delta, newly opened) per delta."""
        changes = []
        for tc in tool_calls:
            i = tc.get("index", len(self.calls))
            fn = tc.get("function") or {}
            new = i not in self.calls
            if new:
                self.calls[i] = {
                    "type": "function_call",
                    "id": f"fc_{self.base}_{i}",
                    "call_id": tc.get("id") or f"call_{self.base}_{i}",
                    "name": fn.get("name") or "",
                    "arguments": "",
                    "status": "in_progress",
                }
            item = self.calls[i]
            delta = fn.get("arguments") or ""
            item["arguments"] += delta
            changes.append((item, delta, new))
        return changes

    def assistant_message(self) -> dict[str, Any]:
        """The answer as an internal chat message (what a later `previous_response_id` replays)."""
        msg: dict[str, Any] = {"role": "assistant", "content": "".join(self.text) or None}
        if self.calls:
            msg["tool_calls"] = [
                {
                    "id": c["call_id"],
                    "type": "function",
                    "function": {"name": c["name"], "arguments": c["arguments"]},
                }
                for c in self.calls.values()
            ]
        if msg["content"] is None and not self.calls:
            msg["content"] = ""
        return msg


def response_body(
    req: ResponsesRequest,
    response_id: str,
    model: str,
    output: list[dict[str, Any]],
    usage: Usage | None,
    status: str,
    finish: str | None = None,
) -> dict[str, Any]:
    incomplete = status == "completed" and finish == "length"
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "status": "incomplete" if incomplete else status,
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "error": None,
        "model": model,
        "output": output,
        "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens,
        "parallel_tool_calls": req.parallel_tool_calls if req.parallel_tool_calls is not None else True,
        "previous_response_id": req.previous_response_id,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "tool_choice": req.tool_choice.model_dump()
        if isinstance(req.tool_choice, BaseModel)
        else req.tool_choice or "auto",
        "tools": [t.model_dump(exclude_none=True) for t in req.tools or []],
        "text": {"format": {"type": "text"}},
        "truncation": "disabled",
        "store": req.store,
        "metadata": req.metadata or {},
        "usage": _usage(usage) if usage is not None else None,
    }


class ResponseAnswer:
    """A Response object, or its streaming events (`respond`'s format)."""

    def __init__(self, req: ResponsesRequest):
        self.req = req

    def body(self, result: ChatResult, outcome: Outcome) -> dict[str, Any]:
        rid = outcome_id(outcome)
        out = answer_output(result, rid)
        return response_body(
            self.req, rid, outcome.model, out.items(), outcome.usage, "completed", out.finish
        )

    def stream(self) -> ResponsesStream:
        return ResponsesStream(self.req)


def answer_output(result: ChatResult, response_id: str) -> Output:
    out = Output(response_id)
    if result.text:
        out.text.append(result.text)
    out.add_calls([{**tc, "index": i} for i, tc in enumerate(result.message.get("tool_calls") or [])])
    out.finish = result.finish_reason
    return out


def event(kind: str, data: dict[str, Any], seq: int) -> bytes:
    body = {"type": kind, "sequence_number": seq, **data}
    return b"event: " + kind.encode() + b"\ndata: " + dumps(body) + b"\n\n"


class ResponsesStream:
    """Responses streaming events: response.created / in_progress, output items (message text
    deltas, function-call argument deltas), and response.completed — or response.failed."""

    def __init__(self, req: ResponsesRequest):
        self.req = req
        self.seq = 0
        self.text_open = False
        self.final: dict[str, Any] | None = None  # the completed Response, once `closing` made it

    def _ev(self, kind: str, data: dict[str, Any]) -> bytes:
        b = event(kind, data, self.seq)
        self.seq += 1
        return b

    def opening(self, handle: StreamHandle) -> list[bytes]:
        self.rid = external_id(handle.plan.request_id, "resp_")
        self.model = handle.model
        self.out = Output(self.rid)
        shell = response_body(self.req, self.rid, self.model, [], None, "in_progress")
        return [
            self._ev("response.created", {"response": shell}),
            self._ev("response.in_progress", {"response": shell}),
        ]

    def _close_text(self) -> list[bytes]:
        if not self.text_open:
            return []
        self.text_open = False
        text = "".join(self.out.text)
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        common = {"item_id": self.out.message_id, "output_index": 0, "content_index": 0}
        return [
            self._ev("response.output_text.done", {**common, "text": text, "logprobs": []}),
            self._ev("response.content_part.done", {**common, "part": part}),
            self._ev("response.output_item.done", {"output_index": 0, "item": self.out.message_item()}),
        ]

    def chunk(self, c: ChatChunk) -> list[bytes]:
        out: list[bytes] = []
        text = c.delta.get("content")
        if text:
            if not self.text_open and not self.out.text:
                self.text_open = True
                out.append(
                    self._ev(
                        "response.output_item.added",
                        {"output_index": 0, "item": self.out.message_item("in_progress")},
                    )
                )
                part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
                out.append(
                    self._ev(
                        "response.content_part.added",
                        {"item_id": self.out.message_id, "output_index": 0, "content_index": 0, "part": part},
                    )
                )
            self.out.text.append(text)
            out.append(
                self._ev(
                    "response.output_text.delta",
                    {
                        "item_id": self.out.message_id,
                        "output_index": 0,
                        "content_index": 0,
                        "delta": text,
                        "logprobs": [],
                    },
                )
            )
        if c.delta.get("tool_calls"):
            out += self._close_text()
            for item, delta, new in self.out.add_calls(c.delta["tool_calls"]):
                index = self._index(item)
                if new:
                    out.append(
                        self._ev("response.output_item.added", {"output_index": index, "item": dict(item)})
                    )
                if delta:
                    out.append(
                        self._ev(
                            "response.function_call_arguments.delta",
                            {"item_id": item["id"], "output_index": index, "delta": delta},
                        )
                    )
        self.out.finish = c.finish_reason or self.out.finish
        return out

    def _index(self, item: dict[str, Any]) -> int:
        offset = 1 if self.out.text else 0
        return offset + list(self.out.calls.values()).index(item)

    def closing(self, handle: StreamHandle) -> list[bytes]:
        out = self._close_text()
        for item in self.out.calls.values():
            index = self._index(item)
            out.append(
                self._ev(
                    "response.function_call_arguments.done",
                    {"item_id": item["id"], "output_index": index, "arguments": item["arguments"]},
                )
            )
            out.append(
                self._ev(
                    "response.output_item.done",
                    {"output_index": index, "item": dict(item, status="completed")},
                )
            )
        usage = handle.outcome.usage if handle.outcome is not None else None
        self.final = response_body(
            self.req, self.rid, self.model, self.out.items(), usage, "completed", self.out.finish
        )
        out.append(self._ev("response.completed", {"response": self.final}))
        return out

    def failure(self, err: RouterError) -> list[bytes]:
        failed = response_body(self.req, self.rid, self.model, self.out.items(), None, "failed")
        failed["error"] = {"code": err.code or "server_error", "message": err.message}
        return [self._ev("response.failed", {"response": failed})]


def outcome_id(o: Outcome) -> str:
    return external_id(o.request_id, "resp_")


# ---- stored responses -----------------------------------------------------------------------------
# A stored entry (router.conversations) is {"input": the internal messages its request added,
# "response": its Response object}; the conversation replays each entry's input and answer.
def stored_entry(turns: list[dict[str, Any]], response: dict[str, Any]) -> dict[str, Any]:
    return {"input": turns, "response": response}


def replay(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation of a chain of stored entries (oldest first), as internal messages."""
    out: list[dict[str, Any]] = []
    for e in entries:
        out += e["input"]
        out.append(_answer_message(e["response"]["output"]))
    return out


def _answer_message(output: list[dict[str, Any]]) -> dict[str, Any]:
    """A Response's output items as the internal assistant message a later turn replays."""
    out = Output("")
    for item in output:
        if item.get("type") == "message":
            out.text += [p.get("text", "") for p in item.get("content", []) if p.get("type") == "output_text"]
        elif item.get("type") == "function_call":
            out.calls[len(out.calls)] = item
    return out.assistant_message()


def input_items(entries: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """The items a response was made from, oldest first (as OpenAI's `input_items` lists them:
    earlier turns' inputs and outputs, then its own input). `entries`: (response id, entry)."""
    items: list[dict[str, Any]] = []
    for n, (rid, e) in enumerate(entries):
        base = rid.removeprefix("resp_")
        for i, m in enumerate(e["input"]):
            items += _as_items(m, f"{base}_{i}")
        if n < len(entries) - 1:
            items += e["response"]["output"]
    return items


def _as_items(m: dict[str, Any], iid: str) -> list[dict[str, Any]]:
    role, content = m["role"], m.get("content")
    if role == "tool":
        return [
            {
                "type": "function_call_output",
                "id": f"fco_{iid}",
                "call_id": m.get("tool_call_id"),
                "output": content,
                "status": "completed",
            }
        ]
    kind = "output_text" if role == "assistant" else "input_text"
    parts: list[dict[str, Any]] = []
    for p in [{"type": "text", "text": content}] if isinstance(content, str) else content or []:
        if p.get("type") == "text":
            parts.append({"type": kind, "text": p["text"]})
        elif p.get("type") == "image_url":
            parts.append({"type": "input_image", "image_url": p["image_url"]["url"], "detail": "auto"})
    items = []
    if parts or not m.get("tool_calls"):
        items.append(
            {"type": "message", "id": f"msg_{iid}", "role": role, "status": "completed", "content": parts}
        )
    for j, tc in enumerate(m.get("tool_calls") or []):
        fn = tc["function"]
        items.append(
            {
                "type": "function_call",
                "id": f"fc_{iid}_{j}",
                "call_id": tc["id"],
                "name": fn["name"],
                "arguments": fn["arguments"],
                "status": "completed",
            }
        )
    return items


def item_page(
    items: list[dict[str, Any]], order: str, after: str | None, before: str | None, limit: int
) -> dict[str, Any]:
    """One page of a list of items, as OpenAI's cursor pagination answers it."""
    items = items[::-1] if order == "desc" else list(items)
    ids = [i.get("id") for i in items]
    if after is not None and after in ids:
        items = items[ids.index(after) + 1 :]
    if before is not None:
        ids = [i.get("id") for i in items]
        if before in ids:
            items = items[: ids.index(before)]
    page = items[:limit]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0].get("id") if page else None,
        "last_id": page[-1].get("id") if page else None,
        "has_more": len(items) > limit,
    }
