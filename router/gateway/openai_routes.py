"""OpenAI-compatible endpoints: chat completions, legacy completions, embeddings, models, plus the
router's own `/v1/route` and `/v1/feedback`."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import Response

from router.access import Caller
from router.gateway import openai_format as fmt
from router.gateway.engine_client import EngineClient
from router.gateway.json_response import JSONResponse
from router.gateway.respond import respond
from router.gateway.strict_json import StrictJSONRoute
from router.planner import external_id
from router.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingsRequest,
    FeedbackRequest,
    RouteRequest,
)

SESSION_HEADER = "x-moe-router-session"


async def caller(request: Request) -> Caller:
    """Who is calling: authenticated by the edge before any route runs. (`async`: FastAPI runs a
    plain `def` dependency in a thread pool, a thread hand-off on every request.)"""
    return request.state.caller


Session = Header(None, alias=SESSION_HEADER, description="conversation id for model affinity", max_length=256)


def openai_routes(engine: EngineClient) -> APIRouter:
    api = APIRouter(route_class=StrictJSONRoute)

    @api.post("/v1/chat/completions")
    async def chat_completions(
        body: ChatCompletionRequest, who: Caller = Depends(caller), session: str | None = Session
    ) -> Response:
        return await respond(engine, body, who, session, fmt.ChatAnswer(body))

    @api.post("/v1/completions")
    async def completions(
        body: CompletionRequest, who: Caller = Depends(caller), session: str | None = Session
    ) -> Response:
        req = body.as_chat()
        return await respond(engine, req, who, session, fmt.ChatAnswer(req, legacy=True))

    @api.post("/v1/embeddings")
    async def embeddings(body: EmbeddingsRequest, who: Caller = Depends(caller)):
        result, outcome = await engine.embed(body, who)
        out = fmt.embeddings_body(result.vectors, outcome.model, outcome.usage, body.encoding_format)
        headers = fmt.outcome_headers(outcome)
        headers[fmt.HEADER_PREFIX + "request-id"] = external_id(outcome.request_id, "embd-")
        return JSONResponse(out, headers=headers)

    @api.get("/v1/models")
    async def list_models(who: Caller = Depends(caller)):
        data = [
            {
                "id": "router",
                "object": "model",
                "created": 0,
                "owned_by": "moe-router",
                "policy": engine.policies.default,
            }
        ]
        data += [
            {"id": f"router:{p}", "object": "model", "created": 0, "owned_by": "moe-router", "policy": p}
            for p in engine.policies.names
        ]
        for spec in engine.config.models:
            data.append(
                {
                    "id": spec.name,
                    "object": "model",
                    "created": 0,
                    "owned_by": spec.backend,
                    "kind": spec.kind,
                    "available": spec.name not in engine.unavailable,
                    "unavailable_reason": engine.unavailable.get(spec.name),
                    "context_window": spec.context_window,
                    "input_price_per_1m": spec.input_price_per_1m,
                    "output_price_per_1m": spec.output_price_per_1m,
                    "capabilities": spec.capabilities,
                    "tags": spec.tags,
                }
            )
        return {"object": "list", "data": data}

    @api.post("/v1/route")
    async def route(body: RouteRequest, who: Caller = Depends(caller), session: str | None = Session):
        plan = await engine.plan(body, who, session)
        out = {
            "id": plan.request_id,
            "routed": plan.routed,
            "routing_text": plan.prompt,
            "affinity": plan.affinity,
            **plan.decision.as_dict(),
        }
        if engine.capacity.limits:  # models with max_concurrency / tpm_limit: what dispatch would find
            out["capacity"] = await engine.capacity.status()
        return JSONResponse(out)

    @api.post("/v1/feedback")
    async def feedback(body: FeedbackRequest, who: Caller = Depends(caller)):
        fb = await engine.feedback(who, body.id, body.rating, body.comment)
        return {
            "object": "feedback",
            "id": fb.request_id,
            "model": fb.model,
            "rating": fb.rating,
            "recorded": True,
        }

    return api
