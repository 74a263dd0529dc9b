"""Which request parameters may reach a backend: the trust boundary of a request body.

Three kinds of field, in every API the gateway speaks (OpenAI chat, Responses, Anthropic Messages):

- *forbidden*: a field that could choose the destination, credentials or headers of a backend
  (`DESTINATION_FIELDS`, at any depth of the body) is a 400 naming it, and nothing is sent anywhere;
- *known*: the fields each API defines, typed in `router.schemas` and the format translators, are
  translated to what a backend takes (docs/gateway.md lists, per API, what is translated, what is
  accepted and not forwarded, and what is refused), plus what an operator allows per model
  (`allow_params` in config);
- *unknown*: anything else is dropped, never forwarded, and reported (`screen` returns the client's
  paths: the gateway sends them back in `x-moe-router-dropped-params`, logs them with the request id
  and counts them). Config `params.unknown: reject` refuses them with a 400 instead.

Adapters merge the request's parameters *under* the configured ones, so configuration always wins.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any

from pydantic import BaseModel

# The OpenAI parameters a backend receives as they are.
FORWARDED = (
    "seed",
    "frequency_penalty",
    "presence_penalty",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "reasoning_effort",
    "thinking",
    "user",
)

# Every parameter `ChatCompletionRequest` types: those the router acts on itself (the output cap
# and sampling options go to the backend through `ChatRequest`), plus the forwarded ones.
OPENAI_PARAMS = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "n",
        "stream",
        "stream_options",
        "stop",
        *FORWARDED,
    }
)

# Fields that would choose a destination, credentials, headers or the client library's behaviour
# (LiteLLM, OpenAI SDK and provider-specific names). Never accepted from a client, and an operator
# cannot allow them either: configure them on the model instead.
DESTINATION_FIELDS = frozenset(
    {
        "api_base",
        "base_url",
        "api_key",
        "api_version",
        "api_type",
        "azure_ad_token",
        "azure_ad_token_provider",
        "azure_endpoint",
        "deployment_id",
        "custom_llm_provider",
        "extra_headers",
        "extra_query",
        "extra_body",
        "headers",
        "default_headers",
        "organization",
        "project",
        "http_client",
        "client",
        "timeout",
        "num_retries",
        "max_retries",
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "aws_region_name",
        "aws_profile_name",
        "aws_role_name",
        "aws_web_identity_token",
        "aws_bedrock_runtime_endpoint",
        "vertex_project",
        "vertex_location",
        "vertex_credentials",
        "vertex_ai_project",
        "vertex_ai_location",
        "watsonx_project",
        "region_name",
        "endpoint",
        "url",
        "proxy",
        "callbacks",
        "success_callback",
        "failure_callback",
        "logger_fn",
        "litellm_params",
        "litellm_logging_obj",
        "model_list",
        "fallbacks",
        "mock_response",
        "input_cost_per_token",
        "output_cost_per_token",
    }
)


class ParamError(ValueError):
    """A body field that may not reach any backend (`forbidden`: it would choose a destination)."""

    def __init__(self, name: str, forbidden: bool):
        self.name, self.forbidden = name, forbidden
        if forbidden:
            msg = (
                f"parameter {name!r} is not accepted: a request cannot choose the destination, "
                "credentials or headers of a backend"
            )
        else:
            msg = f"unknown parameter {name!r}; see docs/gateway.md for the supported parameters"
        super().__init__(msg)


def models_allowing(extra: Iterable[str], allowed: Mapping[str, Iterable[str]]) -> set[str] | None:
    """The models that accept every one of the body's `extra` (non-OpenAI) fields.

    None when there are no extra fields. Raises `ParamError` for a destination field, or for a field
    no model allows (so a typo is a 400, not a silently empty pool). The set may be empty when
    each field is allowed somewhere but no model allows them all."""
    names = list(extra)
    if not names:
        return None
    for n in names:
        if n in DESTINATION_FIELDS:
            raise ParamError(n, forbidden=True)
    for n in names:
        if not any(n in params for params in allowed.values()):
            raise ParamError(n, forbidden=False)
    return {m for m, params in allowed.items() if set(names) <= set(params)}


def client_path(parts: Iterable[str | int]) -> str:
    """`("input", 0, "foo")` -> `input[0].foo`: a field's place in the body as the client wrote it."""
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def body_path(loc: Iterable[str | int], body: Any) -> str | None:
    """A validation error's location as the client's path, following the body itself: the labels a
    validator adds for union members and tags (`list[tagged-union[...]]`, `function_call`) match no
    key in the body and are skipped."""
    parts: list[str | int] = []
    node = body
    for x in loc:
        if x == "body" and not parts:
            continue
        key = isinstance(node, dict) and isinstance(x, str) and x in node
        index = isinstance(node, list) and isinstance(x, int) and 0 <= x < len(node)
        if key or index:
            parts.append(x)
            node = node[x]
        elif isinstance(node, dict | list):
            continue  # a validator's label
        else:
            break
    if not parts and loc:
        tail = [x for x in loc if x != "body"]
        return client_path(tail[-1:]) if tail else None
    return client_path(parts) or None


def screen(body: BaseModel, *, allowed: Collection[str] = (), reject: bool = False) -> list[str]:
    """Check a parsed request body against the trust boundary and drop what is unknown.

    Walks every typed object in `body`: a destination field anywhere raises `ParamError`
    (forbidden); any other field the API does not define is removed (so no later dump forwards
    it) and its client path returned — or, with `reject`, raises `ParamError`. Top-level fields in
    `allowed` (an operator's `allow_params`) stay, for the planner to route on."""
    dropped: list[str] = []
    _walk(body, None, dropped, frozenset(allowed), reject)
    if hasattr(body, "_screened"):
        body._screened = True
    return dropped


# A place in the body as a linked list, (parent, key): built for every object walked, turned into a
# path string only for a field that is reported (an agent's body has thousands of objects).
Place = tuple["Place | None", str | int] | None


def _path(place: Place) -> list[str | int]:
    parts: list[str | int] = []
    while place is not None:
        place, key = place
        parts.append(key)
    return parts[::-1]


_PLAIN = frozenset({type(None), str, int, float, bool, dict})
_OPAQUE: dict[type, bool] = {}  # per class: kept whole (class attribute OPAQUE), never walked


def _opaque(cls: type) -> bool:
    try:
        return _OPAQUE[cls]
    except KeyError:
        _OPAQUE[cls] = any(c.__dict__.get("OPAQUE", False) for c in cls.__mro__)
        return _OPAQUE[cls]


def _walk(node: BaseModel, place: Place, dropped: list[str], allowed: frozenset[str], reject: bool) -> None:
    if _opaque(type(node)):
        return  # kept whole and never forwarded (a hosted tool, an item type not translated)
    extra = node.__pydantic_extra__
    if extra:
        for name in list(extra):
            where = client_path([*_path(place), name])
            if name in DESTINATION_FIELDS:
                raise ParamError(where, forbidden=True)
            if place is None and name in allowed:
                continue
            if reject:
                raise ParamError(where, forbidden=False)
            del extra[name]
            dropped.append(where)
    for name, value in node.__dict__.items():
        kind = type(value)
        if kind in _PLAIN:
            continue
        if kind is list:
            if value and type(value[0]) not in _PLAIN:
                inner = (place, name)
                for i, v in enumerate(value):
                    if isinstance(v, BaseModel):
                        _walk(v, (inner, i), dropped, allowed, reject)
        elif isinstance(value, BaseModel):
            _walk(value, (place, name), dropped, allowed, reject)
