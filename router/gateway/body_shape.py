"""Bounds on a JSON body's shape, checked once at the edge before any handler parses it.

A body within `server.max_body_bytes` can still cost far more than its size downstream: a
thousand-deep nesting recurses through validation and serialisation, and a million tiny
containers become a million Python and pydantic objects. So the edge counts the body's brackets
(outside strings) before parsing it, parses it once (orjson, in C) and walks its containers with an
explicit stack (no recursion), refusing

- nesting deeper than `server.max_json_depth` (400 `json_too_deep`),
- more than `server.max_json_containers` objects and arrays (413 `request_too_complex`),
- more than `server.max_messages` turns in `messages` (or a responses request's `input`), and
  more than `server.max_tools` entries in `tools` (400 `too_many_messages` / `too_many_tools`),

each before the body reaches pydantic or the engine. The walk touches each container once and
looks at scalars only through C-level `map(type, ...)`: linear in the body, a few ms per MB.
"""

from __future__ import annotations

import re
from typing import Any

from router.errors import BadRequest, PayloadTooLarge

_CONTAINERS = (dict, list)
# a JSON string, or an unterminated one up to the end: every `"` starts a match and nothing is
# backtracked (possessive quantifiers), so removing strings is one linear pass
_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+(?:"|\\?\Z)', re.DOTALL)
# top-level lists of conversation turns, by route (`input` is a list of texts on /v1/embeddings)
_TURNS = {"messages": None, "input": "/v1/responses"}


def check_size(raw: bytes, *, max_containers: int) -> int:
    """Refuse, before parsing, a body with more objects and arrays than allowed: parsing alone
    costs about half a microsecond per container (a 1 MB body can hold 300k). Brackets are counted
    outside strings; the cheap count with them is tried first. Returns an upper bound on the
    body's containers."""
    bound = raw.count(b"{") + raw.count(b"[")
    if bound <= max_containers:
        return bound
    bare = _STRING.sub(b"", raw)
    bound = bare.count(b"{") + bare.count(b"[")
    if bound > max_containers:
        raise _too_many(max_containers)
    return bound


def _too_many(max_containers: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the request body has more than {max_containers} JSON objects and arrays", code="request_too_complex"
    )


def check_shape(
    body: Any,
    path: str,
    *,
    max_depth: int,
    max_containers: int,
    max_messages: int,
    max_tools: int,
    bound: int | None = None,
) -> None:
    """Raise a RouterError when `body` (parsed JSON) is deeper or larger in shape than allowed.
    `bound`: at most this many containers (`check_size`): when that is within the depth bound too,
    nothing needs walking (a body cannot nest deeper than it has containers)."""
    if isinstance(body, dict):
        _check_lengths(body, path, max_messages, max_tools)
    if bound is not None and bound <= min(max_depth, max_containers):
        return
    seen = 0
    stack: list[tuple[Any, int]] = [(body, 1)]
    while stack:
        node, depth = stack.pop()
        if type(node) not in _CONTAINERS:
            continue
        seen += 1
        if seen > max_containers:
            raise _too_many(max_containers)
        if depth > max_depth:
            raise BadRequest(f"the request body nests deeper than {max_depth} levels", code="json_too_deep")
        children = node.values() if type(node) is dict else node
        if _CONTAINERS[0] in (kinds := set(map(type, children))) or _CONTAINERS[1] in kinds:
            stack.extend((c, depth + 1) for c in children if type(c) in _CONTAINERS)


def _check_lengths(body: dict, path: str, max_messages: int, max_tools: int) -> None:
    for field, only_on in _TURNS.items():
        turns = body.get(field)
        if isinstance(turns, list) and (only_on is None or path == only_on) and len(turns) > max_messages:
            raise BadRequest(
                f"too many messages in {field!r} (max {max_messages})", param=field, code="too_many_messages"
            )
    tools = body.get("tools")
    if isinstance(tools, list) and len(tools) > max_tools:
        raise BadRequest(f"too many tools (max {max_tools})", param="tools", code="too_many_tools")
