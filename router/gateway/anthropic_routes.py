"""`/v1/messages`: the Anthropic Messages API (Claude Code, the `anthropic` SDK) over the same engine.

`?beta=true` (what Claude Code adds) and `anthropic-beta` headers are accepted: the body says what
the request uses, and what no backend here takes is dropped and reported like any unknown field."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Header

from router.access import Caller
from router.engine import Engine
from router.gateway import anthropic_format as A
from router.gateway import openai_format as fmt
from router.gateway.json_response import JSONResponse
from router.gateway.openai_routes import Session, caller
from router.gateway.screening import report, screened
from router.gateway.streaming import SettledStreamingResponse
from router.gateway.strict_json import StrictJSONRoute

# Claude Code names its conversation in this header (the session key for model affinity)
CLAUDE_SESSION = Header(None, alias="x-claude-code-session-id", include_in_schema=False, max_length=256)


def anthropic_routes(engine: Engine) -> APIRouter:
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
        session = session or claude_session
        if req.stream:
            handle = await engine.stream(req, who, session)
            headers = fmt.plan_headers(handle.plan, handle.model, handle.fallbacks, handle.spilled)
            headers = report(dropped, handle.plan.request_id, headers)
            return SettledStreamingResponse(handle, A.MessagesStream(), engine.metrics, headers)
        result, outcome = await engine.chat(req, who, session)
        headers = report(dropped, outcome.request_id, fmt.outcome_headers(outcome))
        return JSONResponse(A.message_body(result, outcome), headers=headers)

    @api.post("/v1/messages/count_tokens")
    async def count_tokens(body: A.CountTokensRequest, who: Caller = Depends(caller)):
        """An estimate (4 characters a token, plus framing, tools and images): what routing uses."""
        screened(engine, body, "count_tokens")
        return A.count_body(A.to_chat(body))

    return api
