"""`/v1/responses`: the OpenAI Responses API (Codex CLI, `client.responses.create`) over the same
engine, and its stored responses: `GET`/`DELETE /v1/responses/{id}`, `GET .../input_items`
(each only for the key that made the response: any other gets a 404)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query

from router.access import Caller
from router.gateway import responses_format as R
from router.gateway.engine_client import EngineClient
from router.gateway.json_response import JSONResponse
from router.gateway.openai_routes import Session, caller
from router.gateway.respond import respond
from router.gateway.strict_json import StrictJSONRoute

ResponseId = Annotated[str, Path(max_length=128)]


def responses_routes(engine: EngineClient) -> APIRouter:
    api = APIRouter(route_class=StrictJSONRoute)
    conversations = engine.conversations

    @api.post("/v1/responses")
    async def responses(
        body: R.ResponsesRequest, who: Caller = Depends(caller), session: str | None = Session
    ):
        prior: list[dict[str, Any]] = []
        if body.previous_response_id is not None:
            chain = await conversations.chain(body.previous_response_id, who, "previous_response_id")
            prior = R.replay([e.body for e in chain])
        req, conversation = R.to_chat(body, prior)
        turns = conversation[len(prior) :]  # what this request adds to the stored conversation
        keep = None
        if conversations.stores(body.store):
            await conversations.make_room(who, turns)

            async def keep(response: dict[str, Any]) -> None:
                entry = R.stored_entry(turns, response)
                await conversations.keep(who, response["id"], body.previous_response_id, entry)

        answer = R.ResponseAnswer(body)
        return await respond(engine, req, who, session or body.prompt_cache_key, answer, keep)

    @api.get("/v1/responses/{response_id}")
    async def get_response(response_id: ResponseId, who: Caller = Depends(caller)):
        return JSONResponse((await conversations.find(response_id, who)).body["response"])

    @api.delete("/v1/responses/{response_id}")
    async def delete_response(response_id: ResponseId, who: Caller = Depends(caller)):
        await conversations.delete(response_id, who)
        return JSONResponse({"id": response_id, "object": "response", "deleted": True})

    @api.get("/v1/responses/{response_id}/input_items")
    async def input_items(
        response_id: ResponseId,
        who: Caller = Depends(caller),
        limit: int = Query(20, ge=1, le=100),
        order: Literal["asc", "desc"] = "desc",
        after: str | None = Query(None, max_length=256),
        before: str | None = Query(None, max_length=256),
    ):
        chain = await conversations.chain(response_id, who)
        items = R.input_items([(e.id, e.body) for e in chain])
        return JSONResponse(R.item_page(items, order, after, before, limit))

    return api
