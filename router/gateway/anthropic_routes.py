"""`/v1/messages`: the Anthropic Messages API (Claude Code, the `anthropic` SDK) over the same engine."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from adapters import ChatResult
from router.access import Caller
from router.executor import Outcome
from router.gateway import anthropic_format as A
from router.gateway.engine_client import EngineClient
from router.gateway.openai_routes import Session, caller
from router.gateway.respond import respond
from router.gateway.strict_json import StrictJSONRoute


def anthropic_routes(engine: EngineClient) -> APIRouter:
    api = APIRouter(route_class=StrictJSONRoute)

    @api.post("/v1/messages")
    async def messages(body: A.MessagesRequest, who: Caller = Depends(caller), session: str | None = Session):
        return await respond(engine, A.to_chat(body), who, session, MessagesAnswer())

    @api.post("/v1/messages/count_tokens")
    async def count_tokens(body: A.CountTokensRequest, who: Caller = Depends(caller)):
        """An estimate (4 characters a token, plus framing): what routing itself uses."""
        return A.count_body(A.to_chat(body))

    return api


class MessagesAnswer:
    """Anthropic's message (`respond`'s format)."""

    def body(self, result: ChatResult, outcome: Outcome) -> dict[str, Any]:
        return A.message_body(result, outcome)

    def stream(self) -> A.MessagesStream:
        return A.MessagesStream()
