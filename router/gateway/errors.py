"""Error bodies in the caller's own API format: OpenAI's everywhere, Anthropic's on `/v1/messages`.

OpenAI: `{"error": {"message", "type", "param", "code"}}`. Anthropic:
`{"type": "error", "error": {"type", "message"}}` with Anthropic's type names, and 400 for a body
that does not match the schema (Anthropic has no 422).
"""

from __future__ import annotations

import re
from typing import Any

from router.errors import RouterError

ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def anthropic_path(path: str) -> bool:
    return path == "/v1/messages" or path.startswith("/v1/messages/")


# Anthropic's wording for the conditions its clients act on (Claude Code compacts the conversation
# on "prompt is too long", and reads "x-api-key" and "model:" messages for its own hints)
_WINDOW = re.compile(r"context window is (\d+) tokens; this request needs ~(\d+)")


def anthropic_message(err: RouterError) -> str:
    if err.code == "context_length_exceeded":
        m = _WINDOW.search(err.message)
        if m:
            return f"prompt is too long: {m.group(2)} tokens > {m.group(1)} maximum"
        return f"prompt is too long: {err.message}"
    if err.code == "model_not_found" and err.param == "model":
        return f"model: {err.message}"
    if err.status == 401:
        return f"invalid x-api-key: {err.message}"
    return err.message


def render(err: RouterError, path: str) -> tuple[int, dict[str, Any]]:
    """(status, body) for `err` answering a request to `path`."""
    if not anthropic_path(path):
        return err.status, err.body()
    status = 400 if err.status == 422 else err.status
    kind = ANTHROPIC_TYPES.get(status, "api_error")
    return status, {"type": "error", "error": {"type": kind, "message": anthropic_message(err)}}
