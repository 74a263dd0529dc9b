"""Which request parameters may reach a backend: the trust boundary of a request body.

A client's body never chooses where a request goes, which credentials it carries or which headers
are sent: only the documented OpenAI chat-completions parameters below pass (typed and validated
in `router.schemas`), plus what an operator allows per model (`allow_params` in config). Any other
field is refused with a 400 that names it, before anything is sent anywhere. Adapters then merge
the request's parameters *under* the configured ones, so configuration always wins.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

# The OpenAI parameters a backend receives as they are.
FORWARDED = (
    "seed",
    "frequency_penalty",
    "presence_penalty",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "reasoning_effort",
    "user",
)

# Every parameter `ChatCompletionRequest` types: those the router acts on itself (the output cap
# and sampling options go to the backend through `ChatRequest`), plus the forwarded ones.
OPENAI_PARAMS = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "n",
        "stream",
        "stream_options",
        "stop",
        *FORWARDED,
    }
)

# Fields that would choose a destination, credentials, headers or the client library's behaviour
# (LiteLLM, OpenAI SDK and provider-specific names). Never accepted from a client, and an operator
# cannot allow them either: configure them on the model instead.
DESTINATION_FIELDS = frozenset(
    {
        "api_base",
        "base_url",
        "api_key",
        "api_version",
        "api_type",
        "azure_ad_token",
        "azure_ad_token_provider",
        "azure_endpoint",
        "deployment_id",
        "custom_llm_provider",
        "extra_headers",
        "extra_query",
        "extra_body",
        "headers",
        "default_headers",
        "organization",
        "project",
        "http_client",
        "client",
        "timeout",
        "num_retries",
        "max_retries",
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "aws_region_name",
        "aws_profile_name",
        "aws_role_name",
        "aws_web_identity_token",
        "aws_bedrock_runtime_endpoint",
        "vertex_project",
        "vertex_location",
        "vertex_credentials",
        "vertex_ai_project",
        "vertex_ai_location",
        "watsonx_project",
        "region_name",
        "endpoint",
        "url",
        "proxy",
        "callbacks",
        "success_callback",
        "failure_callback",
        "logger_fn",
        "litellm_params",
        "litellm_logging_obj",
        "metadata",
        "model_list",
        "fallbacks",
        "mock_response",
        "input_cost_per_token",
        "output_cost_per_token",
    }
)


class ParamError(ValueError):
    """A body field that may not reach any backend (`forbidden`: it would choose a destination)."""

    def __init__(self, name: str, forbidden: bool):
        self.name, self.forbidden = name, forbidden
        if forbidden:
            msg = (
                f"parameter {name!r} is not accepted: a request cannot choose the destination, "
                "credentials or headers of a backend"
            )
        else:
            msg = f"unknown parameter {name!r}; see docs/gateway.md for the supported parameters"
        super().__init__(msg)


def models_allowing(extra: Iterable[str], allowed: Mapping[str, Iterable[str]]) -> set[str] | None:
    """The models that accept every one of the body's `extra` (non-OpenAI) fields.

    None when there are no extra fields. Raises `ParamError` for a destination field, or for a field
    no model allows (so a typo is a 400, not a silently empty pool). The set may be empty when
    each field is allowed somewhere but no model allows them all."""
    names = list(extra)
    if not names:
        return None
    for n in names:
        if n in DESTINATION_FIELDS:
            raise ParamError(n, forbidden=True)
    for n in names:
        if not any(n in params for params in allowed.values()):
            raise ParamError(n, forbidden=False)
    return {m for m, params in allowed.items() if set(names) <= set(params)}
