"""OpenTelemetry traces: one `moe_router.request` span per request, with `embed`, `score`,
`dispatch` and `settle` children, exported over OTLP/HTTP (the optional `otel` extra).

The engine's whole API is four calls: `request()` starts a request's span, `use(span)` makes it
current while the request runs, module-level `span(name)` opens a child wherever the work happens
(the planner, the engine), and `annotate(record)` writes what the ledger record says (policy,
model, predicted vs actual cost and latency, status) on the current request's span. Off (the
default), `request()` returns None and every call is a no-op costing one context-variable read.

Each engine builds its own `TracerProvider` (no global state), so tests wire an in-memory
exporter through `Tracing(settings, exporter=...)`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from typing import Any

from router.config import TracingSettings
from router.state import RequestRecord

log = logging.getLogger("moe_router")

REQUEST_SPAN = "moe_router.request"
# the tracer and the request span of the request running in this context (None: not traced)
_tracer: ContextVar[Any] = ContextVar("moe_router_tracer", default=None)
_request: ContextVar[Any] = ContextVar("moe_router_request_span", default=None)
_NULL = nullcontext()


class Tracing:
    def __init__(self, settings: TracingSettings | None = None, *, exporter: Any = None):
        settings = settings or TracingSettings()
        self._provider: Any = None
        self._tracer: Any = None
        env_endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        if exporter is None and not (settings.enabled or env_endpoint):
            return
        try:
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        except ImportError:
            log.warning(
                "tracing is configured but OpenTelemetry is not installed: pip install 'moe-router[otel]'"
            )
            return
        provider = TracerProvider(resource=Resource.create({"service.name": settings.service_name}))
        if exporter is not None:
            provider.add_span_processor(SimpleSpanProcessor(exporter))
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            endpoint = settings.endpoint or env_endpoint
            provider.add_span_processor(
                BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url(endpoint) if endpoint else None))
            )
        self._provider = provider
        self._tracer = provider.get_tracer("moe_router")

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    def request(self, kind: str) -> Any:
        """Start a request's span (`kind`: chat, stream, embeddings); None when tracing is off."""
        if self._tracer is None:
            return None
        from opentelemetry.trace import SpanKind

        return self._tracer.start_span(
            REQUEST_SPAN, kind=SpanKind.SERVER, attributes={"moe_router.kind": kind}
        )

    @contextmanager
    def use(self, request_span: Any) -> Iterator[None]:
        """Make `request_span` current: children opened meanwhile (and in tasks spawned meanwhile,
        such as the settlement) belong to it. Does not end it."""
        if request_span is None:
            yield
            return
        from opentelemetry import trace

        tokens = _tracer.set(self._tracer), _request.set(request_span)
        try:
            with trace.use_span(request_span, end_on_exit=False):
                yield
        finally:
            _request.reset(tokens[1])
            _tracer.reset(tokens[0])

    @staticmethod
    def end(request_span: Any, error: BaseException | None = None) -> None:
        if request_span is None:
            return
        if error is not None and not request_span.status.status_code.value:  # unset: say why
            _set_error(request_span, f"{type(error).__name__}: {getattr(error, 'message', error)}")
        request_span.end()

    def force_flush(self) -> None:
        if self._provider is not None:
            self._provider.force_flush()

    def shutdown(self) -> None:
        """Export what is buffered and stop (the engine calls this on close)."""
        if self._provider is not None:
            self._provider.shutdown()
            self._provider = self._tracer = None


def span(name: str):
    """A child span of the current request's span (a no-op when the request is not traced)."""
    tracer = _tracer.get()
    return _NULL if tracer is None else tracer.start_as_current_span(name)


def annotate(rec: RequestRecord) -> None:
    """Write the request's ledger record on its span: what was predicted and what happened."""
    s = _request.get()
    if s is None:
        return
    attrs: dict[str, Any] = {
        "moe_router.request_id": rec.id,
        "moe_router.status": rec.status,
        "moe_router.cost_usd": rec.cost_usd,
        "moe_router.latency_ms": rec.latency_ms,
        "moe_router.prompt_tokens": rec.prompt_tokens,
        "moe_router.completion_tokens": rec.completion_tokens,
    }
    optional = {
        "moe_router.model": rec.model,
        "moe_router.policy": rec.policy,
        "moe_router.key": rec.key,
        "moe_router.cache": rec.cache,
        "moe_router.fallbacks": list(rec.fallbacks) or None,
    }
    for k, v in (rec.predicted or {}).items():
        optional[f"moe_router.predicted.{k}"] = v
    attrs.update({k: v for k, v in optional.items() if v is not None})
    s.set_attributes(attrs)
    if rec.status == "error":
        _set_error(s, rec.error or "error")


def _set_error(s: Any, message: str) -> None:
    from opentelemetry.trace import Status, StatusCode

    s.set_status(Status(StatusCode.ERROR, message))


def traces_url(endpoint: str) -> str:
    """A collector's base URL -> its OTLP/HTTP traces URL (as the OTEL_EXPORTER_OTLP_ENDPOINT rule)."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith("/v1/traces") else endpoint + "/v1/traces"
