"""Typed request bodies at the HTTP edge (OpenAI chat-completions shape + our routing controls)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class RoutingControls(BaseModel):
    """`extra_body={"routing": {...}}`: per-request constraints and trade-off."""

    model_config = ConfigDict(extra="forbid")

    max_cost_usd: float | None = Field(None, ge=0)
    max_latency_ms: float | None = Field(None, gt=0)
    min_quality: float | None = Field(None, ge=0, le=1)
    cost_weight: float | None = Field(None, ge=0, le=1)
    allowed_models: list[str] | None = None
    excluded_models: list[str] = Field(default_factory=list)
    cache: bool | None = None  # opt in/out of the response caches (when configured)
    # the expected answer, for an automatic judge in exact/contains mode (config `judge`)
    reference: str | None = Field(None, max_length=10_000)


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None

    @model_validator(mode="after")
    def _content_needed(self) -> Message:
        if self.content is None and self.role in {"system", "developer", "user"}:
            raise ValueError(f"a {self.role} message needs content")
        return self

    def text(self) -> str:
        if isinstance(self.content, list):
            return " ".join(str(p.get("text", "")) for p in self.content if p.get("type") == "text")
        return self.content or ""

    def has_image(self) -> bool:
        return isinstance(self.content, list) and any(
            p.get("type") in {"image_url", "input_image", "image"} for p in self.content
        )


class ChatCompletionRequest(BaseModel):
    """Fields we act on are typed; other OpenAI fields pass through to the backend (`extra`)."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    n: int = Field(1, ge=1, le=1, description="only n=1 is supported")
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    stop: str | list[str] | None = None
    tools: list[dict[str, Any]] | None = None
    response_format: dict[str, Any] | None = None
    user: str | None = None
    routing: RoutingControls | None = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v: str | list[str] | None) -> list[str] | None:
        return [v] if isinstance(v, str) else v

    def output_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def passthrough(self) -> dict[str, Any]:
        """OpenAI fields the router does not interpret, for the backend."""
        out = dict(self.model_extra or {})
        for k in ("tools", "response_format"):
            v = getattr(self, k)
            if v is not None:
                out[k] = v
        return out


class CompletionRequest(BaseModel):
    """Legacy `/v1/completions`: a prompt string, answered as a one-message chat."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    n: int = Field(1, ge=1, le=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    stop: str | list[str] | None = None
    user: str | None = None
    routing: RoutingControls | None = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v: str | list[str]) -> str:
        if isinstance(v, list):
            if len(v) != 1:
                raise ValueError("exactly one prompt is supported")
            return v[0]
        return v

    def as_chat(self) -> ChatCompletionRequest:
        return ChatCompletionRequest(
            model=self.model,
            messages=[Message(role="user", content=self.prompt)],
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stream=self.stream,
            stream_options=self.stream_options,
            stop=self.stop,
            user=self.user,
            routing=self.routing,
        )


class RouteRequest(ChatCompletionRequest):
    """`POST /v1/route`: the body of a chat completion (model defaults to "router"); nothing is dispatched."""

    model: str = Field("router", min_length=1)


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, description="the response id returned by /v1/chat/completions")
    rating: float = Field(ge=0, le=1, description="quality of the answer, 0 (bad) .. 1 (good)")
    comment: str | None = Field(None, max_length=4000)
    source: Literal["user", "judge"] = "user"
