"""`/v1/messages`: the Anthropic Messages API (Claude Code, the `anthropic` SDK) over the same engine."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from router.access import Caller
from router.engine import Engine
from router.gateway import anthropic_format as A
from router.gateway import openai_format as fmt
from router.gateway.json_response import JSONResponse
from router.gateway.openai_routes import Session, caller
from router.gateway.streaming import SettledStreamingResponse
from router.gateway.strict_json import StrictJSONRoute


def anthropic_routes(engine: Engine) -> APIRouter:
    api = APIRouter(route_class=StrictJSONRoute)

    @api.post("/v1/messages")
    async def messages(body: A.MessagesRequest, who: Caller = Depends(caller), session: str | None = Session):
        req = A.to_chat(body)
        if req.stream:
            handle = await engine.stream(req, who, session)
            headers = fmt.plan_headers(handle.plan, handle.model, handle.fallbacks, handle.spilled)
            return SettledStreamingResponse(handle, A.MessagesStream(), engine.metrics, headers)
        result, outcome = await engine.chat(req, who, session)
        return JSONResponse(A.message_body(result, outcome), headers=fmt.outcome_headers(outcome))

    @api.post("/v1/messages/count_tokens")
    async def count_tokens(body: A.CountTokensRequest, who: Caller = Depends(caller)):
        """An estimate (4 characters a token, plus framing): what routing itself uses."""
        return A.count_body(A.to_chat(body))

    return api
