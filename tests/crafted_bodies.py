"""Request bodies of about 1 MB crafted to cost the gateway more than their size (issue 24).

Each is a chat-completions body (`model` `router`) as bytes; `SHAPES` names them. Shared by
tests/test_body_shapes.py (the loop keeps serving while each is processed) and
bench/body_shapes.py (CPU time per MB).
"""

from __future__ import annotations

import json
from collections.abc import Callable

MB = 1_000_000
ASK = "Write a Python function that reverses a string."


def _body(**fields) -> bytes:
    return json.dumps({"model": "router", **fields}, separators=(",", ":")).encode()


def repeated_open_tags(size: int = MB) -> bytes:
    """`<system-reminder>` with no closing tag, over and over: quadratic for `.*?` regexes."""
    tag = "<system-reminder>"
    return _body(messages=[{"role": "user", "content": tag * (size // len(tag)) + ASK}])


def repeated_closed_tags(size: int = MB) -> bytes:
    """Many complete injected blocks, the ask after them."""
    block = "<system-reminder>keep going</system-reminder>"
    return _body(messages=[{"role": "user", "content": block * (size // len(block)) + ASK}])


def deep_nesting(size: int = MB, depth: int = 1000) -> bytes:
    """Arrays nested `depth` deep (under orjson's limit of 1024) in a tool's parameters, the text
    of the ask padding the body to `size`."""
    nest = "[" * depth + "]" * depth
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "x": None}}}
    raw = _body(messages=[{"role": "user", "content": "z" * (size - 2 * depth - 200) + ASK}], tools=[tool])
    return raw.replace(b"null", nest.encode())


def bracket_flood(size: int = MB) -> bytes:
    """Nothing but opening brackets: as deep and as many containers as the bytes allow."""
    return b'{"model":"router","messages":' + b"[" * (size - 40)


def wide_nesting(size: int = MB) -> bytes:
    """Objects nested 60 deep (under the depth bound), repeated: many small containers."""
    unit: object = [1]
    for _ in range(29):
        unit = {"a": [unit]}
    one = json.dumps(unit)
    props = [unit] * max(1, size // len(one))
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "x": props}}}
    return _body(messages=[{"role": "user", "content": ASK}], tools=[tool])


def many_messages(size: int = MB, count: int = 10_000) -> bytes:
    """`count` turns, padded to `size`."""
    pad = "x" * max(1, size // count - 40)
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": pad} for i in range(count - 1)]
    return _body(messages=[*turns, {"role": "user", "content": ASK}])


def many_tools(size: int = MB, count: int = 10_000) -> bytes:
    """`count` tool definitions, padded to `size`."""
    pad = "d" * max(1, size // count - 70)
    tools = [{"type": "function", "function": {"name": f"t{i}", "description": pad}} for i in range(count)]
    return _body(messages=[{"role": "user", "content": ASK}], tools=tools)


def at_the_limits(size: int = MB) -> bytes:
    """The largest body the default bounds accept: 1024 turns, 128 tools, text in between."""
    tools = [
        {"type": "function", "function": {"name": f"t{i}", "parameters": {"type": "object"}}}
        for i in range(128)
    ]
    pad = "y" * max(1, (size - 20_000) // 1024 - 40)
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": pad} for i in range(1023)]
    return _body(messages=[*turns, {"role": "user", "content": ASK}], tools=tools)


SHAPES: dict[str, Callable[[], bytes]] = {
    "repeated_open_tags": repeated_open_tags,
    "repeated_closed_tags": repeated_closed_tags,
    "deep_nesting": deep_nesting,
    "bracket_flood": bracket_flood,
    "wide_nesting": wide_nesting,
    "many_messages": many_messages,
    "many_tools": many_tools,
    "at_the_limits": at_the_limits,
}
