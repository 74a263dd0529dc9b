"""`/v1/messages`: the Anthropic Messages API (Claude Code, the `anthropic` SDK) over the same engine.

`?beta=true` (what Claude Code adds) and `anthropic-beta` headers are accepted: the body says what
the request uses, and what no backend here takes is dropped and reported like any unknown field."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Header

from adapters import ChatResult
from router.access import Caller
from router.executor import Outcome
from router.gateway import anthropic_format as A
from router.gateway.engine_client import EngineClient
from router.gateway.openai_routes import Session, caller
from router.gateway.respond import respond
from router.gateway.screening import screened
from router.gateway.strict_json import StrictJSONRoute

# Claude Code names its conversation in this header (the session key for model affinity)
CLAUDE_SESSION = Header(None, alias="x-claude-code-session-id", include_in_schema=False, max_length=256)


def anthropic_routes(engine: EngineClient) -> APIRouter:
    api = APIRouter(route_class=StrictJSONRoute)

    @api.post("/v1/messages")
    async def messages(
        body: A.MessagesRequest,
        who: Caller = Depends(caller),
        session: str | None = Session,
        claude_session: str | None = CLAUDE_SESSION,
    ):
        dropped = screened(engine, body, "messages") + A.server_tools(body)
        req = A.to_chat(body)
        return await respond(engine, req, who, session or claude_session, MessagesAnswer(), dropped=dropped)

    @api.post("/v1/messages/count_tokens")
    async def count_tokens(body: A.CountTokensRequest, who: Caller = Depends(caller)):
        """An estimate (4 characters a token, plus framing, tools and images): what routing uses."""
        screened(engine, body, "count_tokens")
        return A.count_body(A.to_chat(body))

    return api


class MessagesAnswer:
    """Anthropic's message (`respond`'s format)."""

    def body(self, result: ChatResult, outcome: Outcome) -> dict[str, Any]:
        return A.message_body(result, outcome)

    def stream(self) -> A.MessagesStream:
        return A.MessagesStream()
