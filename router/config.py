"""The gateway's typed configuration: a YAML file (or the embedded default) plus env overrides.

Precedence, highest first: environment (`MOE_ROUTER_*`, nested with `__`, e.g.
`MOE_ROUTER_ROUTING__DEFAULT_POLICY=cheapest`), then the YAML file, then the defaults here.
Short forms for operators: `MOE_ROUTER_STATE`, `MOE_ROUTER_REQUIRE_KEYS`, `MOE_ROUTER_MASTER_KEY`.

Secrets in model params are written LiteLLM-style as `os.environ/NAME` and resolved only when
the adapter is built; a model whose variables are unset is listed as unavailable, never an error.
"""

from __future__ import annotations

import functools
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from router.model_map import check_map
from router.params import DESTINATION_FIELDS, OPENAI_PARAMS

ENV_REF = "os.environ/"
# the documented default output cap for in-process models (requests asking more get this)
LOCAL_MAX_OUTPUT_TOKENS = 512
# backends that load weights into this process (warm-up loads them before /ready says ready)
LOCAL_BACKENDS = frozenset({"transformers", "sentence-transformers"})
# the SQL ledger's embedded default (a file under ./data), and the words that turn it off
DEFAULT_LEDGER = "sqlite+aiosqlite:///data/ledger.db"
EMBEDDED = "embedded default config"
LEDGER_OFF = frozenset({"", "none", "off", "false", "no", "disabled"})


def _litellm_cached_price(model: str, input_price_per_1m: float) -> float | None:
    """litellm's cached-read price for `model` (`anthropic/claude-...`, `gpt-4o`), in USD per 1M,
    at most the configured input price; None when its cost map does not know the model."""
    costs = _litellm_cost_map()
    entry = costs.get(model) or costs.get(model.split("/", 1)[-1]) or {}
    per_token = entry.get("cache_read_input_token_cost")
    if per_token is None:
        return None
    return min(float(per_token) * 1e6, input_price_per_1m)


@functools.cache
def _litellm_cost_map() -> dict[str, Any]:
    """The cost map bundled with litellm, read as a file: importing litellm would fetch its remote
    copy first (seconds, or a stall offline) and cost ~1 s of start-up."""
    import importlib.util
    import json

    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return {}
    path = Path(spec.submodule_search_locations[0]) / "model_prices_and_context_window_backup.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(_Strict):
    """One candidate model (like an entry of LiteLLM's `model_list`)."""

    name: str = Field(min_length=1, pattern=r"^[^\s,:]+$")
    # chat: answers /v1/chat/completions (and is routed); embedding: answers /v1/embeddings only
    kind: Literal["chat", "embedding"] = "chat"
    # an adapters.BACKENDS key: openai | litellm | transformers | sentence-transformers (checked
    # where adapters are built, router/probe.py's check_backends: plugins may register more)
    backend: str
    params: dict[str, Any] = Field(default_factory=dict)  # backend-specific; `os.environ/NAME` resolved late
    input_price_per_1m: float = Field(0.0, ge=0)  # USD per 1M input tokens
    output_price_per_1m: float = Field(0.0, ge=0)  # USD per 1M output tokens
    # USD per 1M prompt tokens read from the provider's prompt cache (None: the input price)
    cached_input_price_per_1m: float | None = Field(None, ge=0)
    context_window: int = Field(8192, gt=0)
    max_output_tokens: int | None = Field(None, gt=0)
    expected_output_tokens: int = Field(256, gt=0)  # for cost prediction when max_tokens is not given
    # the most prompt tokens one image may cost at this provider (budgets reserve this much per image)
    max_image_tokens: int = Field(2000, ge=0)
    capabilities: list[str] = Field(default_factory=list)  # tools, vision, json
    tags: list[str] = Field(default_factory=list)
    quality: dict[str, float] = Field(default_factory=lambda: {"default": 0.5})  # prior per category, 0..1
    latency_ms: float | None = Field(None, gt=0)  # prior typical latency until measured
    description: str = ""
    # public benchmark scores (mmlu, gsm8k, arc_challenge, humaneval: 0..1 or percent): the `irt`
    # policy maps them to an ability when the model has no calibration (docs/learned-policies.md)
    benchmarks: dict[str, float] = Field(default_factory=dict)
    # request parameters beyond the OpenAI set that clients may send to this model (they reach
    # its backend only); names that choose a destination, credentials or headers are refused
    allow_params: list[str] = Field(default_factory=list)
    # capacity across all replicas (a provider's limits, a local server's slots): a request that
    # finds the model full is sent to the next candidate instead (docs/gateway.md, capacity)
    max_concurrency: int | None = Field(None, gt=0)  # requests in flight on this model
    tpm_limit: int | None = Field(None, gt=0)  # tokens per minute sent to it (prompt + expected output)

    @property
    def local(self) -> bool:
        """Served in-process (weights loaded at start-up), not over the network."""
        return self.backend in LOCAL_BACKENDS

    @model_validator(mode="after")
    def _cached_price_at_most_input(self) -> ModelSpec:
        # a reservation is made at the input price: a cached read may not cost more
        if (
            self.cached_input_price_per_1m is not None
            and self.cached_input_price_per_1m > self.input_price_per_1m
        ):
            raise ValueError("cached_input_price_per_1m may not exceed input_price_per_1m")
        return self

    @field_validator("allow_params")
    @classmethod
    def _no_destination_params(cls, v: list[str]) -> list[str]:
        bad = sorted(set(v) & DESTINATION_FIELDS)
        if bad:
            raise ValueError(f"allow_params may not include {bad}: they choose a destination or credentials")
        return sorted(set(v) - OPENAI_PARAMS)

    @model_validator(mode="after")
    def _local_output_cap(self) -> ModelSpec:
        if self.backend == "transformers" and self.max_output_tokens is None:
            self.max_output_tokens = LOCAL_MAX_OUTPUT_TOKENS
        return self

    @field_validator("quality")
    @classmethod
    def _quality_in_range(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: q for k, q in v.items() if not 0.0 <= q <= 1.0}
        if bad:
            raise ValueError(f"quality priors must be in 0..1, got {bad}")
        return v

    def env_refs(self) -> list[str]:
        return sorted({v[len(ENV_REF) :] for v in _walk_strings(self.params) if v.startswith(ENV_REF)})

    def missing_env(self) -> list[str]:
        return [name for name in self.env_refs() if not os.environ.get(name)]

    def missing_env_hint(self) -> str | None:
        """ "set A, B" when environment variables this model's params name are unset, else None."""
        missing = self.missing_env()
        return f"set {', '.join(missing)}" if missing else None

    def resolved_params(self) -> dict[str, Any]:
        return _resolve(self.params)

    def cost_usd(self, prompt_tokens: float, completion_tokens: float, cached_tokens: float = 0) -> float:
        """What `prompt_tokens` in and `completion_tokens` out cost at this model's prices;
        `cached_tokens` of the prompt were read from the provider's cache (`cached_input_price`)."""
        usd = (prompt_tokens * self.input_price_per_1m + completion_tokens * self.output_price_per_1m) / 1e6
        cached = self.cached_input_price() if cached_tokens else None
        if cached is not None:
            usd -= min(cached_tokens, prompt_tokens) * (self.input_price_per_1m - cached) / 1e6
        return usd

    def cache_value_usd(self, prompt_tokens: float) -> float:
        """What a cache hit on `prompt_tokens` saves at this model (0 without a cached price)."""
        cached = self.cached_input_price()
        return 0.0 if cached is None else prompt_tokens * (self.input_price_per_1m - cached) / 1e6

    def cached_input_price(self) -> float | None:
        """USD per 1M cached prompt tokens: the configured price, else litellm's cost map for this
        model (`cache_read_input_token_cost`), else None (cached tokens cost the input price)."""
        if self.cached_input_price_per_1m is not None:
            return self.cached_input_price_per_1m
        return _litellm_cached_price(str(self.params.get("model") or self.name), self.input_price_per_1m)


class PolicySpec(_Strict):
    """A named policy: a registered type with params, or a trained artifact directory."""

    type: str | None = None
    artifact: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    # artifact model name -> pool model name (router/model_map.py): serve a policy trained on
    # other names; artifact models left without a pool model are reported, not routed to
    model_map: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_source(self) -> PolicySpec:
        if bool(self.type) == bool(self.artifact):
            raise ValueError("a policy needs exactly one of 'type' or 'artifact'")
        if self.model_map and not self.artifact:
            raise ValueError("model_map renames an artifact's models; this policy has no 'artifact'")
        check_map(self.model_map)
        return self


class AffinitySettings(_Strict):
    """A conversation keeps the model it started on (provider prompt caches stay warm) unless
    switching gains more than `margin` in decision score, or that model becomes ineligible."""

    enabled: bool = True
    margin: float = Field(0.05, ge=0)  # decision-score gain that justifies leaving the model
    ttl_s: float = Field(3600.0, gt=0)  # a conversation idle this long starts afresh


class RoutingSettings(_Strict):
    # irt: pretrained, scores a model by its calibrated ability, else benchmarks, else its category priors
    default_policy: str = "irt"
    cost_weight: float = Field(0.2, ge=0, le=1)
    policies: dict[str, PolicySpec] = Field(default_factory=dict)
    # override the category policy's descriptions: {category: [example prompts]}
    categories: dict[str, list[str]] | None = None
    # regular expressions (dot matches newlines) removed from user turns before routing: blocks
    # agents inject into the user's turn that are not the person's ask
    strip_patterns: list[str] = Field(default_factory=lambda: [r"<system-reminder>.*?</system-reminder>"])
    affinity: AffinitySettings = Field(default_factory=AffinitySettings)
    # the `irt` policy's per-model abilities written by `moe-router calibrate` (read while serving;
    # default: $XDG_DATA_HOME/moe-router/abilities.json, i.e. ~/.local/share/moe-router/)
    abilities_file: str | None = None

    def abilities_path(self) -> Path:
        if self.abilities_file:
            return Path(self.abilities_file).expanduser()
        data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        return Path(data) / "moe-router" / "abilities.json"

    @field_validator("strip_patterns")
    @classmethod
    def _compiles(cls, v: list[str]) -> list[str]:
        import re

        for p in v:
            try:
                re.compile(p)
            except re.error as e:
                raise ValueError(f"strip pattern {p!r} is not a valid regular expression: {e}") from None
        return v


class ParamsSettings(_Strict):
    """Request fields no API defines (docs/gateway.md, "Parameters"): `drop` removes them before
    anything is sent and reports them (`x-moe-router-dropped-params`, the log, a metric); `reject`
    answers 400 naming the first. Fields that could choose a destination are refused either way."""

    unknown: Literal["drop", "reject"] = "drop"


class ModelAlias(_Strict):
    """A model name clients send that is not in the pool (`claude-opus-4-8`, `gpt-5-mini`): routed as
    `model` (`router`, `router:<policy>` or a pool model), with the cost weight of its tier."""

    pattern: str = Field(min_length=1)  # a glob, matched case-insensitively: claude-*haiku*
    model: str = "router"
    tier: Literal["cheap", "balanced", "quality"] = "balanced"
    cost_weight: float | None = Field(None, ge=0, le=1)  # None: the tier's (cheap 0.8, quality 0)


class ResponsesSettings(_Strict):
    """`/v1/responses`: requests with `store: true` (the API's default) are kept this long so a
    later `previous_response_id` can continue them (only by the same key); `store: false` keeps
    nothing. `store: false` here keeps nothing whatever requests say. Each response stores only
    what it added (a chain, router.state.responses); `max_stored_bytes_per_key` bounds what one key
    keeps stored at once (0: no bound), and a request past it is refused (400) before any model runs."""

    store: bool = True
    ttl_s: float = Field(86400.0, gt=0)
    max_stored_bytes_per_key: int = Field(64 * 2**20, ge=0)


class ServerSettings(_Strict):
    host: str = "127.0.0.1"
    port: int = 8080
    # larger bodies get 413; 16 MiB lets a long agent session through (the whole conversation,
    # its tools and images every turn; Anthropic's own limit is 32 MB)
    max_body_bytes: int = Field(16 * 2**20, gt=0)
    max_messages: int = Field(1024, gt=0)  # turns in `messages` (or a responses `input`): more get 400
    max_tools: int = Field(128, gt=0)  # entries in `tools`: more get 400
    # a JSON body nested deeper gets 400, one with more objects and arrays 413 (router/gateway/body_shape.py)
    max_json_depth: int = Field(64, gt=1)
    max_json_containers: int = Field(20_000, gt=0)
    # web origins (`https://app.example.com`, or `*`) whose pages may call the gateway from a browser;
    # every other site's requests that change state are refused (router/gateway/browsers.py)
    cors_origins: list[str] = Field(default_factory=list)
    # names besides localhost that a loopback-bound gateway answers to in `Host` (DNS rebinding guard)
    allowed_hosts: list[str] = Field(default_factory=list)
    body_timeout_s: float = Field(30.0, gt=0)  # a request body not received in full by then gets 408
    # load local models (and the routing encoder) at start-up, /ready answering 503 until done;
    # None: on when the pool has local models. Off: they load on their first request.
    warmup: bool | None = None
    # a second, internal port serving only the Prometheus metrics, without auth (for a scraper
    # that holds no key); off by default: /metrics on the main port needs the master key once
    # keys are required. Bound on `metrics_host` (None: the gateway's own bind address).
    metrics_port: int | None = Field(None, gt=0, lt=65536)
    metrics_host: str | None = None


class DispatchSettings(_Strict):
    # the request's one deadline: every attempt, retry and fallback until the answer (or a stream's
    # first token) shares it, and a stream that then stalls this long between chunks is ended
    timeout_s: float = Field(120.0, gt=0)
    retries: int = Field(1, ge=0)  # extra attempts on the same model for retryable errors
    backoff_s: float = Field(0.2, ge=0)  # first retry delay; doubles each time
    max_backoff_s: float = Field(5.0, ge=0)
    max_retry_after_s: float = Field(10.0, ge=0)  # honour Retry-After up to this; longer -> fall back
    max_fallbacks: int = Field(2, ge=0)  # further models tried after the chosen one fails


class CapacitySettings(_Strict):
    """Models' `max_concurrency` / `tpm_limit` (docs/gateway.md, capacity)."""

    # a slot held by a replica that died is given back this long after its holder last renewed it
    # (live requests renew theirs every third of it); None: dispatch.timeout_s + 30
    lease_ttl_s: float | None = Field(None, gt=0)
    # while Redis is unreachable each replica allows 1/outage_share of every model's limits
    # (set it to the number of replicas to keep the total; 1: the full limit on each replica)
    outage_share: int = Field(1, gt=0)


class BreakerSettings(_Strict):
    failure_threshold: int = Field(5, gt=0)  # consecutive failures that open the circuit
    reset_after_s: float = Field(30.0, gt=0)  # then one probe request is let through (half-open)


class HealthSettings(_Strict):
    ewma_alpha: float = Field(0.2, gt=0, le=1)
    window: int = Field(200, gt=0)  # recent latencies kept for p95


class EncoderSettings(_Strict):
    # None (auto): the encoder the configured policy artifacts were fitted with when they agree,
    # else minilm-onnx-int8 (the bundled all-MiniLM-L6-v2 through ONNX Runtime, int8). Or name one:
    # minilm-onnx (fp32: the same vectors as torch), all-MiniLM-L6-v2 (torch), minilm-onnx-int8,
    # minilm-onnx-int8-r3 (a faster int8 recipe),
    # minilm-static, or a local directory
    model: str | None = None
    cache_size: int = Field(4096, ge=0)
    threads: int | None = Field(None, ge=1)  # ONNX Runtime threads of batched passes (default min(2, CPUs))
    batch_window_ms: float = Field(0.0, ge=0, le=100)  # wait this long to fill a batch (0: never)


class AuthSettings(_Strict):
    require_keys: bool = False
    # operator key: accepted wherever an API key is, and the only key for operator routes
    # (`/metrics` unless public); `os.environ/NAME` allowed, or MOE_ROUTER_MASTER_KEY
    master_key: SecretStr | None = None
    public_metrics: bool = False  # serve /metrics without a key (for a scraper inside the network)

    def master(self) -> str | None:
        if self.master_key is None:
            return None
        raw = self.master_key.get_secret_value()
        return (os.environ.get(raw[len(ENV_REF) :]) if raw.startswith(ENV_REF) else raw) or None


class FeedbackSettings(_Strict):
    rpm: int = Field(600, gt=0)  # ratings per minute per key (anonymous callers share one allowance)


class LogSettings(_Strict):
    """What the request log keeps, and for how long (see docs/security.md, docs/state.md)."""

    # none: no prompt text; hash: sha256 of it; truncated: the first `prompt_chars`; full: all of it
    prompts: Literal["none", "hash", "truncated", "full"] = "truncated"
    prompt_chars: int = Field(200, gt=0)
    request_ttl_s: int = Field(7 * 86400, gt=0)  # the per-request record feedback is joined to
    max_entries: int = Field(1_000_000, gt=0)  # ledger and feedback streams, each (approximate cap)
    # one line per request on the `moe_router.requests` logger (id, key, policy, model, status,
    # tokens, cost, latency, cache; never prompt text): off, text (key=value) or json
    requests: Literal["off", "text", "json"] = "text"


class TracingSettings(_Strict):
    """OpenTelemetry traces (the `otel` extra): a span per request with embed/score/dispatch/settle
    children, exported over OTLP/HTTP. On when `enabled` or `OTEL_EXPORTER_OTLP_ENDPOINT` is set."""

    enabled: bool = False
    endpoint: str | None = None  # collector base URL (…/v1/traces is appended); default: OTEL env
    service_name: str = "moe-router"


class BudgetSpec(_Strict):
    usd: float = Field(gt=0)
    window: Literal["daily", "monthly", "total"] = "monthly"


class BudgetSettings(_Strict):
    """Spend limits beyond per-key ones (those are set with `moe-router keys create --budget-usd`)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    global_: BudgetSpec | None = Field(None, alias="global")  # all traffic through the gateway
    teams: dict[str, BudgetSpec] = Field(default_factory=dict)  # keys created with --team T
    # reserved for a request that sets no max_tokens, when the model has no max_output_tokens
    default_max_output_tokens: int = Field(1024, gt=0)


class ExactCacheSettings(_Strict):
    enabled: bool = False
    ttl_s: float = Field(3600, gt=0)


class SemanticCacheSettings(_Strict):
    enabled: bool = False
    threshold: float = Field(0.95, gt=0, le=1)  # cosine similarity of the last user message
    ttl_s: float = Field(3600, gt=0)
    max_entries: int = Field(256, gt=0)  # recent prompts compared, per key and requested model


class CacheSettings(_Strict):
    # with a cache enabled, do requests use it without asking (`routing.cache` overrides per request)?
    default: bool = False
    # anonymous callers (keys not required) have no identity to scope a cache by: they get no
    # cache unless the operator opts into one cache shared by all of them
    shared_anonymous: bool = False
    exact: ExactCacheSettings = Field(default_factory=ExactCacheSettings)
    semantic: SemanticCacheSettings = Field(default_factory=SemanticCacheSettings)


class OutageSettings(_Strict):
    """What the gateway does while Redis is unreachable (it keeps serving either way)."""

    # allowance: each replica may spend `allowance` of the last known remaining budget, then 503;
    # open: serve without a bound and reconcile later; closed: 503 for requests with a budget
    budgets: Literal["allowance", "open", "closed"] = "allowance"
    allowance: float = Field(0.1, ge=0, le=1)
    timeout_s: float = Field(0.5, gt=0)  # per Redis operation
    retry_every_s: float = Field(2.0, gt=0)  # while down, try Redis again this often
    # a stalled Redis may have run a money script whose answer timed out: ask again with the same
    # id for this long before treating it as an outage (docs/state.md "Exactly once")
    replay_s: float = Field(3.0, ge=0)
    applied_ttl_s: int = Field(86400, gt=0)  # how long an admission's / settlement's id is remembered
    spill_path: str | None = None  # where buffered records go past 100k entries (default ~/.cache/moe-router)


class JudgeSettings(_Strict):
    """Automatic feedback: rate routed answers without a user, so online policies keep learning.

    exact / contains: compare the answer with the request's `routing.reference` (requests without
    one are not judged); llm: ask `model` (a model of the pool) to grade the answer 0-10."""

    mode: Literal["off", "exact", "contains", "llm"] = "off"
    model: str | None = None
    sample_rate: float = Field(1.0, ge=0, le=1)  # share of eligible answers judged


class RouterConfig(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MOE_ROUTER_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    models: list[ModelSpec] = Field(default_factory=list)
    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    dispatch: DispatchSettings = Field(default_factory=DispatchSettings)
    capacity: CapacitySettings = Field(default_factory=CapacitySettings)
    breaker: BreakerSettings = Field(default_factory=BreakerSettings)
    health: HealthSettings = Field(default_factory=HealthSettings)
    encoder: EncoderSettings = Field(default_factory=EncoderSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    state: str = "memory"  # memory | redis://host:port/db
    # the durable SQL ledger (docs/ledger.md): sqlite+aiosqlite:///path (relative to the working
    # directory), postgresql+asyncpg://user:pass@host/db, or none/off; env MOE_ROUTER_LEDGER
    ledger: str = DEFAULT_LEDGER
    budgets: BudgetSettings = Field(default_factory=BudgetSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    outage: OutageSettings = Field(default_factory=OutageSettings)
    judge: JudgeSettings = Field(default_factory=JudgeSettings)
    feedback: FeedbackSettings = Field(default_factory=FeedbackSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    responses: ResponsesSettings = Field(default_factory=ResponsesSettings)
    params: ParamsSettings = Field(default_factory=ParamsSettings)
    # vendor model names routed (not refused) when they are not pool models; None: the defaults in
    # router/aliases.py (claude-*, gpt-*, o1/o3/o4*, codex-*), [] turns them off
    model_aliases: list[ModelAlias] | None = None
    tracing: TracingSettings = Field(default_factory=TracingSettings)
    _source: str = PrivateAttr(EMBEDDED)  # the file this was read from, for the console and logs

    @property
    def source(self) -> str:
        """The config file this gateway runs (or the embedded default): whose traffic it is."""
        return self._source

    @field_validator("ledger", mode="before")
    @classmethod
    def _ledger_url(cls, v: Any) -> str:
        if v is None or (isinstance(v, bool) and not v) or str(v).strip().lower() in LEDGER_OFF:
            return "none"
        from router.ledger_url import parse_url  # raises ValueError without echoing the URL

        parse_url(str(v))
        return str(v).strip()

    @field_serializer("ledger")
    def _ledger_shown(self, v: str) -> str:
        """`config show` and other dumps never print the database password."""
        from router.ledger_url import safe_url

        return v if v == "none" else safe_url(v)

    @property
    def ledger_enabled(self) -> bool:
        return self.ledger != "none"

    @model_validator(mode="after")
    def _consistent(self) -> RouterConfig:
        names = [m.name for m in self.models]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate model names: {dup}")
        reserved = {"router"} & set(names)
        if reserved:
            raise ValueError("'router' is reserved for routed requests; rename that model")
        if not (self.state == "memory" or self.state.startswith(("redis://", "rediss://", "unix://"))):
            raise ValueError(f"state must be 'memory' or a redis:// URL, got {self.state!r}")
        chat = [m.name for m in self.chat_models()]
        for name, spec in self.routing.policies.items():
            bad = sorted(set(spec.model_map.values()) - set(chat))
            if bad:
                raise ValueError(
                    f"routing.policies.{name}.model_map maps onto {bad}, not chat models of the pool {chat}"
                )
        if self.judge.mode == "llm" and self.judge.model not in chat:
            raise ValueError(
                f"judge.mode 'llm' needs judge.model set to a model of the pool, got {self.judge.model!r}"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # the file's content arrives as init kwargs; the environment overrides it
        return (_ShortEnv(settings_cls), env_settings, init_settings)

    def model(self, name: str) -> ModelSpec | None:
        return next((m for m in self.models if m.name == name), None)

    def chat_models(self) -> list[ModelSpec]:
        """The models that answer chat requests: the routing pool."""
        return [m for m in self.models if m.kind == "chat"]


class _ShortEnv(PydanticBaseSettingsSource):
    """`MOE_ROUTER_REQUIRE_KEYS=1`: the documented short form of `MOE_ROUTER_AUTH__REQUIRE_KEYS`."""

    def get_field_value(self, field, field_name):  # pragma: no cover - unused, required by the ABC
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        auth: dict[str, Any] = {}
        v = os.environ.get("MOE_ROUTER_REQUIRE_KEYS")
        if v is not None:
            auth["require_keys"] = v.strip().lower() in {"1", "true", "yes", "on"}
        if os.environ.get("MOE_ROUTER_MASTER_KEY"):
            auth["master_key"] = os.environ["MOE_ROUTER_MASTER_KEY"]
        return {"auth": auth} if auth else {}


def _walk_strings(obj: Any):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _walk_strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk_strings(v)


def _resolve(obj: Any) -> Any:
    if isinstance(obj, str) and obj.startswith(ENV_REF):
        return os.environ.get(obj[len(ENV_REF) :])
    if isinstance(obj, dict):
        return {k: _resolve(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_resolve(v) for v in obj]
    return obj


class ConfigError(ValueError):
    """The config file is missing, unreadable or invalid; the message says where."""


def default_config_text() -> str:
    return resources.files("router").joinpath("default_config.yaml").read_text()


def load_config(path: str | Path | None = None, **overrides: Any) -> RouterConfig:
    """Read `path` (or the embedded default), apply env overrides, validate.

    `overrides` are top-level sections merged over the file (used by tests and the SDK)."""
    if path is None:
        text, where = default_config_text(), EMBEDDED
    else:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        text, where = p.read_text(), str(p)
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML{at}: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level")
    if path is not None:
        data.setdefault("ledger", ledger_for(Path(path)))
    data.update(overrides)
    try:
        cfg = RouterConfig(**data)
    except ValueError as e:
        raise ConfigError(f"{where}: {_short_validation(e)}") from None
    cfg._source = where
    return cfg


def ledger_for(config_file: Path) -> str:
    """The default SQLite ledger of a config file that names none: one file per config name
    (`data/ledger-<name>.db`), so gateways started from one directory with different configs
    keep their traffic apart; the embedded default config keeps `data/ledger.db`."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", config_file.stem)
    return f"sqlite+aiosqlite:///data/ledger-{name}.db"


def _short_validation(e: ValueError) -> str:
    errors = getattr(e, "errors", None)
    if not callable(errors):
        return str(e)
    parts = []
    for err in errors():
        loc = ".".join(str(x) for x in err.get("loc", ()))
        parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
    return "; ".join(parts)
