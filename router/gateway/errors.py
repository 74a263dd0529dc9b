"""Error bodies in the caller's own API format: OpenAI's everywhere, Anthropic's on `/v1/messages`.

OpenAI: `{"error": {"message", "type", "param", "code"}}`. Anthropic:
`{"type": "error", "error": {"type", "message"}}` with Anthropic's type names, and 400 for a body
that does not match the schema (Anthropic has no 422).
"""

from __future__ import annotations

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


def render(err: RouterError, path: str) -> tuple[int, dict[str, Any]]:
    """(status, body) for `err` answering a request to `path`."""
    if not anthropic_path(path):
        return err.status, err.body()
    status = 400 if err.status == 422 else err.status
    kind = ANTHROPIC_TYPES.get(status, "api_error")
    return status, {"type": "error", "error": {"type": kind, "message": err.message}}
