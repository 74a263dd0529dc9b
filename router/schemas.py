"""Typed request bodies at the HTTP edge: the OpenAI chat-completions shape plus our routing controls.

Every field that can reach a backend is typed here (see `router.params` for the trust boundary).
Fields no API defines are kept in each object's `model_extra` only until `router.params.screen`
removes (and reports) them, at any depth; at the top level, the ones an operator allowed for a
model stay for the planner to route on.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from router.params import FORWARDED


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Known(BaseModel):
    """A part of an API's body: the fields it defines are typed; others wait in `model_extra` for
    `router.params.screen` (forbidden ones refused, unknown ones dropped and reported)."""

    model_config = ConfigDict(extra="allow")


class RoutingControls(_Strict):
    """`extra_body={"routing": {...}}`: per-request constraints and trade-off."""

    max_cost_usd: float | None = Field(None, ge=0)
    max_latency_ms: float | None = Field(None, gt=0)
    min_quality: float | None = Field(None, ge=0, le=1)
    cost_weight: float | None = Field(None, ge=0, le=1)
    allowed_models: list[str] | None = Field(None, max_length=256)
    excluded_models: list[str] = Field(default_factory=list, max_length=256)
    cache: bool | None = None  # opt in/out of the response caches (when configured)
    # the expected answer, for an automatic judge in exact/contains mode (config `judge`)
    reference: str | None = Field(None, max_length=10_000)


# ---- messages ------------------------------------------------------------------------------------
IMAGE_SCHEMES = ("https://", "data:image/")


class TextPart(_Known):
    type: Literal["text"]
    text: str
    # a prompt-cache mark (Anthropic's): sent only to models with the `cache_control` capability
    cache_control: dict[str, Any] | None = None


class ImageURL(_Known):
    url: str = Field(min_length=1)
    detail: Literal["auto", "low", "high"] | None = None

    @field_validator("url")
    @classmethod
    def _scheme(cls, v: str) -> str:
        # a backend fetches the URL itself: a local vLLM server must not be pointed at the
        # operator's network (http://10.0.0.1/...) or files by a client
        if not v.startswith(IMAGE_SCHEMES):
            raise ValueError("image URLs must be https:// or data:image/... URLs")
        return v


class ImagePart(_Known):
    type: Literal["image_url"]
    image_url: ImageURL


class RefusalPart(_Known):
    type: Literal["refusal"]
    refusal: str


ContentPart = Annotated[TextPart | ImagePart | RefusalPart, Field(discriminator="type")]


class FunctionCall(_Known):
    name: str = Field(min_length=1, max_length=256)
    arguments: str


class ToolCall(_Known):
    id: str = Field(min_length=1, max_length=256)
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(_Known):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = Field(None, max_length=256)
    tool_calls: list[ToolCall] | None = None  # assistant
    tool_call_id: str | None = Field(None, max_length=256)  # tool
    refusal: str | None = None  # assistant
    # assistant: an Anthropic model's thinking (with signatures), sent back to models with the
    # `thinking` capability (Anthropic's API wants it back beside tool calls), left out for others
    thinking_blocks: list[dict[str, Any]] | None = None
    # tool: a prompt-cache mark on the tool result (Anthropic's, where litellm reads it); sent
    # only to models with the `cache_control` capability
    cache_control: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _shape(self) -> Message:
        role = self.role
        if self.content is None and role in {"system", "developer", "user", "tool"}:
            raise ValueError(f"a {role} message needs content")
        if role == "assistant" and self.content is None and not self.tool_calls and self.refusal is None:
            raise ValueError("an assistant message needs content, tool_calls or refusal")
        if role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs tool_call_id")
        if role != "tool" and self.tool_call_id is not None:
            raise ValueError("only tool messages carry tool_call_id")
        if role != "assistant" and (
            self.tool_calls is not None or self.refusal is not None or self.thinking_blocks is not None
        ):
            raise ValueError("only assistant messages carry tool_calls, refusal or thinking_blocks")
        if isinstance(self.content, list):
            kinds = {p.type for p in self.content}
            allowed = {"user": {"text", "image_url"}, "assistant": {"text", "refusal"}}.get(role, {"text"})
            if kinds - allowed:
                raise ValueError(
                    f"a {role} message may not contain {', '.join(sorted(kinds - allowed))} parts"
                )
        return self

    def text(self) -> str:
        if isinstance(self.content, list):
            return " ".join(p.text for p in self.content if isinstance(p, TextPart))
        return self.content or ""

    def has_image(self) -> bool:
        return isinstance(self.content, list) and any(isinstance(p, ImagePart) for p in self.content)

    def images(self) -> int:
        return sum(isinstance(p, ImagePart) for p in self.content) if isinstance(self.content, list) else 0


# ---- tools and output formats --------------------------------------------------------------------
class FunctionDef(_Known):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Known):
    type: Literal["function"]
    function: FunctionDef
    # a prompt-cache mark on the tool definition (Anthropic's): sent only to models with the
    # `cache_control` capability
    cache_control: dict[str, Any] | None = None


class NamedFunction(_Known):
    name: str = Field(min_length=1, max_length=64)


class NamedToolChoice(_Known):
    type: Literal["function"]
    function: NamedFunction


class JSONSchemaFormat(_Known):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None

    model_config = ConfigDict(extra="allow", populate_by_name=True, serialize_by_alias=True)


class ResponseFormat(_Known):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None


class StreamOptions(_Known):
    include_usage: bool | None = None


# ---- requests ------------------------------------------------------------------------------------
def stop_list(v: str | list[str] | None) -> list[str] | None:
    v = [v] if isinstance(v, str) else v
    if v is not None and len(v) > 4:
        raise ValueError("at most 4 stop sequences")
    return v


class ChatCompletionRequest(BaseModel):
    """The documented chat-completions parameters, typed; anything else lands in `model_extra`
    and is refused by the engine unless the operator allowed it for a model (`allow_params`)."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=256)
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    n: int = Field(1, ge=1, le=1, description="only n=1 is supported")
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = Field(None, max_length=1024)
    tools: list[Tool] | None = Field(None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    # Anthropic's extended thinking ({"type": "enabled", "budget_tokens": N}), as litellm takes it:
    # sent to models with the `thinking` capability, which get it instead of reasoning_effort
    thinking: dict[str, Any] | None = None
    user: str | None = Field(None, max_length=256)
    routing: RoutingControls | None = None
    # known OpenAI parameters the gateway accepts and does not forward (docs/gateway.md): they
    # describe the client's own bookkeeping or a provider-side feature no backend here shares
    metadata: dict[str, str] | None = Field(None, max_length=16)
    store: bool | None = None
    service_tier: str | None = Field(None, max_length=64)
    prompt_cache_key: str | None = Field(None, max_length=256)
    safety_identifier: str | None = Field(None, max_length=256)
    verbosity: Literal["low", "medium", "high"] | None = None
    modalities: list[str] | None = Field(None, max_length=4)
    prediction: dict[str, Any] | None = None
    web_search_options: dict[str, Any] | None = None

    _stop = field_validator("stop")(classmethod(lambda cls, v: stop_list(v)))
    # set once `router.params.screen` went through it (the edge did, or a translator built it)
    _screened: bool = PrivateAttr(False)

    def output_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def forwarded(self) -> dict[str, Any]:
        """The OpenAI parameters the router does not act on itself, as a backend receives them."""
        out = {k: getattr(self, k) for k in FORWARDED if getattr(self, k) is not None}
        return {k: _plain(v) for k, v in out.items()}

    def extra_params(self) -> dict[str, Any]:
        """Body fields outside the OpenAI set (refused unless allowed per model)."""
        return dict(self.model_extra or {})


def _plain(v: Any) -> Any:
    if isinstance(v, BaseModel):
        return v.model_dump(exclude_none=True)
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


class CompletionRequest(BaseModel):
    """Legacy `/v1/completions`: a prompt string, answered as a one-message chat."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=256)
    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    n: int = Field(1, ge=1, le=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = Field(None, max_length=1024)
    user: str | None = Field(None, max_length=256)
    routing: RoutingControls | None = None

    _stop = field_validator("stop")(classmethod(lambda cls, v: stop_list(v)))

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v: str | list[str]) -> str:
        if isinstance(v, list):
            if len(v) != 1:
                raise ValueError("exactly one prompt is supported")
            return v[0]
        return v

    def as_chat(self) -> ChatCompletionRequest:
        fields = self.model_dump(exclude={"prompt"}, exclude_none=True)
        return ChatCompletionRequest(**fields, messages=[Message(role="user", content=self.prompt)])


class RouteRequest(ChatCompletionRequest):
    """`POST /v1/route`: the body of a chat completion (model defaults to "router"); nothing is dispatched."""

    model: str = Field("router", min_length=1, max_length=256)


class EmbeddingsRequest(_Strict):
    """`POST /v1/embeddings`: one or more texts, embedded by a model of `kind: embedding`."""

    model: str = Field(min_length=1, max_length=256)
    input: str | list[Annotated[str, Field(min_length=1)]] = Field(min_length=1)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = Field(None, max_length=256)

    @field_validator("input")
    @classmethod
    def _bounded(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and len(v) > 2048:
            raise ValueError("at most 2048 inputs per request")
        return v

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class FeedbackRequest(_Strict):
    id: str = Field(
        min_length=1, max_length=128, description="the response id returned by /v1/chat/completions"
    )
    rating: float = Field(ge=0, le=1, description="quality of the answer, 0 (bad) .. 1 (good)")
    comment: str | None = Field(None, max_length=4000)
    # clients rate as users; only the gateway's own judge records `judge` ratings
    source: Literal["user"] = "user"
