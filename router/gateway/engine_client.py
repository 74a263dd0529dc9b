"""What the API routes may ask of the engine: one narrow interface (as vLLM's OpenAI handlers talk
to an engine-client protocol), so a route cannot reach into the engine's parts (its store, its
account, its dispatcher) and the engine can change behind it. The operator's routes (admin, health)
use the engine itself."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from adapters import ChatResult, EmbedResult
from router.access import Caller
from router.capacity import Capacity
from router.config import RouterConfig
from router.conversations import Conversations
from router.executor import Outcome, StreamHandle
from router.metrics import Metrics
from router.planner import Plan
from router.policy_set import PolicySet
from router.schemas import ChatCompletionRequest, EmbeddingsRequest
from router.state import FeedbackRecord


class EngineClient(Protocol):
    config: RouterConfig
    metrics: Metrics
    policies: PolicySet
    unavailable: Mapping[str, str]  # model -> why it cannot serve
    capacity: Capacity
    conversations: Conversations  # stored Responses-API responses

    async def chat(
        self, req: ChatCompletionRequest, caller: Caller | None = None, session: str | None = None
    ) -> tuple[ChatResult, Outcome]: ...

    async def stream(
        self, req: ChatCompletionRequest, caller: Caller | None = None, session: str | None = None
    ) -> StreamHandle: ...

    async def embed(
        self, req: EmbeddingsRequest, caller: Caller | None = None
    ) -> tuple[EmbedResult, Outcome]: ...

    async def plan(
        self, req: ChatCompletionRequest, caller: Caller | None = None, session: str | None = None
    ) -> Plan: ...

    async def feedback(
        self, caller: Caller | None, request_id: str, rating: float, comment: str | None = None
    ) -> FeedbackRecord: ...
