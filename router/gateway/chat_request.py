"""The internal chat request every API's translator ends with (Anthropic Messages, Responses).

A translator maps its API's fields onto OpenAI chat names; what they share is here: function tools,
the streamed-usage option, dropping the fields left unset, and a validation failure answered as a
400 naming the client's field rather than the internal one."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from router.errors import BadRequest
from router.schemas import ChatCompletionRequest


def function_tool(name: str, description: str | None, parameters: dict[str, Any] | None, **more: Any) -> dict:
    fn = {"name": name, "description": description, "parameters": parameters, **more}
    return {"type": "function", "function": {k: v for k, v in fn.items() if v is not None}}


def chat_request(body: dict[str, Any], where: dict[str, str] | None = None) -> ChatCompletionRequest:
    """`body` (OpenAI chat names; None values are left out) as a validated internal request.
    `where`: the client's name for an internal field, for error messages (`max_tokens` ->
    `max_output_tokens`)."""
    if body.get("stream"):
        body["stream_options"] = {"include_usage": True}
    try:
        req = ChatCompletionRequest(**{k: v for k, v in body.items() if v is not None})
    except ValidationError as e:
        first = e.errors()[0]
        loc = [str(x) for x in first.get("loc", ())]
        field = (where or {}).get(loc[0], loc[0]) if loc else None
        raise BadRequest(f"{field or 'body'}: {first.get('msg')}", param=field) from None
    req._screened = True  # built from the translator's known fields only
    return req
