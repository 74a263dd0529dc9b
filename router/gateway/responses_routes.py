"""`/v1/responses`: the OpenAI Responses API (Codex CLI, `client.responses.create`) over the same engine."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, WebSocket

from router.access import Caller
from router.engine import Engine
from router.executor import Outcome
from router.gateway import openai_format as fmt
from router.gateway import responses_format as R
from router.gateway.json_response import JSONResponse
from router.gateway.openai_routes import Session, caller
from router.gateway.screening import report, screened
from router.gateway.streaming import SettledStreamingResponse
from router.gateway.strict_json import StrictJSONRoute


def responses_routes(engine: Engine) -> APIRouter:
    api = APIRouter(route_class=StrictJSONRoute)
    settings = engine.config.responses
    sessions = engine.store.sessions

    async def prior(body: R.ResponsesRequest, who: Caller) -> list[dict[str, Any]]:
        if body.previous_response_id is None:
            return []
        stored = await sessions.get("resp:" + body.previous_response_id) if settings.store else None
        return R.previous(stored, who.scope, body.previous_response_id)

    def keep(body: R.ResponsesRequest, who: Caller, conversation: list[dict[str, Any]]):
        """Store the finished conversation (`store: true`) for a later `previous_response_id`."""

        def done(out: R.Output, outcome: Outcome) -> None:
            if not (body.store and settings.store):
                return
            value = {"owner": who.scope, "messages": [*conversation, out.assistant_message()]}
            engine.account.spawn(sessions.put("resp:" + R.outcome_id(outcome), value, settings.ttl_s))

        return done

    @api.websocket("/v1/responses")
    async def responses_websocket(websocket: WebSocket):
        """Codex tries a WebSocket here first: refused at once with 426 (no retries, no 403), so it
        falls back to plain HTTP (this route) straight away."""
        body = {
            "error": {
                "message": "use HTTP POST /v1/responses",
                "type": "invalid_request_error",
                "param": None,
                "code": "websocket_not_supported",
            }
        }
        await websocket.send_denial_response(JSONResponse(body, status_code=426))

    @api.post("/v1/responses")
    async def responses(
        request: Request,
        body: R.ResponsesRequest,
        who: Caller = Depends(caller),
        session: str | None = Session,
    ):
        dropped = screened(engine, body, "responses")
        tools = R.tool_map(body)
        dropped += tools.dropped
        req, conversation = R.to_chat(body, await prior(body, who), tools)
        # Codex names its conversation in a `session-id` header and in `prompt_cache_key`
        session = session or request.headers.get("session-id") or body.prompt_cache_key
        on_complete = keep(body, who, conversation)
        if req.stream:
            handle = await engine.stream(req, who, session)
            headers = fmt.plan_headers(handle.plan, handle.model, handle.fallbacks, handle.spilled)
            headers = report(dropped, handle.plan.request_id, headers)
            return SettledStreamingResponse(
                handle, R.ResponsesStream(body, on_complete, tools), engine.metrics, headers
            )
        result, outcome = await engine.chat(req, who, session)
        rid = R.outcome_id(outcome)
        out = R.answer_output(result, rid, tools)
        on_complete(out, outcome)
        body_out = R.response_body(
            body, rid, outcome.model, out.items(), outcome.usage, "completed", out.finish
        )
        return JSONResponse(
            body_out, headers=report(dropped, outcome.request_id, fmt.outcome_headers(outcome))
        )

    return api
