"""The OpenAI-compatible HTTP gateway, built by a factory from a config (no global state).

Authentication, body limits and read timeouts happen once, at the edge (`middleware.Edge`), for
every route but the public ones; routes read the authenticated caller from the request state.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from adapters import BackendError
from router.access import Caller
from router.config import RouterConfig, load_config
from router.dispatch import error_code
from router.engine import Engine, StreamHandle
from router.errors import RouterError, UpstreamFailed
from router.gateway import openai_format as fmt
from router.gateway.middleware import Edge, RequestMetrics, state_error
from router.gateway.strict_json import StrictJSONRoute, unknown_field_error
from router.params import DESTINATION_FIELDS
from router.schemas import ChatCompletionRequest, CompletionRequest, FeedbackRequest, RouteRequest
from router.state import StateUnavailable
from router.state.degrade import StateFault

log = logging.getLogger("moe_router.gateway")

PUBLIC_PATHS = ("/health", "/ready")
OPERATOR_PATHS = ("/metrics",)


class SettledStreamingResponse(StreamingResponse):
    """A stream response that ends its engine stream however the response ends — even if the
    body was never iterated (the client left before the first byte)."""

    def __init__(self, handle: StreamHandle, content, **kw):
        super().__init__(content, **kw)
        self.handle = handle

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.handle.finish()  # synchronous: cannot be cancelled


def create_app(config: RouterConfig | None = None, *, engine: Engine | None = None) -> FastAPI:
    engine = engine or Engine(config or load_config())
    metrics = engine.metrics

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await engine.start()
        try:
            yield
        finally:
            await engine.aclose()

    app = FastAPI(title="moe-router", version="0.1.0", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.router.route_class = StrictJSONRoute
    app.state.engine = engine

    def error_response(err: RouterError) -> JSONResponse:
        metrics.errors.labels(err.type, err.code or "none").inc()
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    @app.exception_handler(RouterError)
    async def _router_error(request: Request, err: RouterError):
        return error_response(err)

    @app.exception_handler(StateUnavailable)
    @app.exception_handler(StateFault)
    async def _state_error(request: Request, err: Exception):
        return error_response(state_error(err))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            msg = next(e.get("ctx", {}).get("error", "") for e in errors if e.get("type") == "json_invalid")
            return error_response(RouterError(f"malformed JSON body: {msg}", status=400, code="invalid_json"))
        unknown = unknown_field_error(errors, DESTINATION_FIELDS)
        if unknown is not None:
            return error_response(unknown)
        first = errors[0] if errors else {}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        param = ".".join(loc) or None
        message = "; ".join(
            f"{'.'.join(str(x) for x in e.get('loc', ()) if x != 'body') or 'body'}: {e.get('msg')}"
            for e in errors[:5]
        )
        err = RouterError(message, status=422, param=param, code="invalid_request_schema")
        err.type = "invalid_request_error"
        return error_response(err)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        err = RouterError(str(exc.detail), status=exc.status_code, code=code)
        err.type = "invalid_request_error"
        return error_response(err)

    def caller(request: Request) -> Caller:
        """Who is calling: authenticated by the edge before any route runs."""
        return request.state.caller

    # ---- OpenAI endpoints ----------------------------------------------------------------------
    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, who: Caller = Depends(caller)):
        return await _answer(body, who, legacy=False)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, who: Caller = Depends(caller)):
        return await _answer(body.as_chat(), who, legacy=True)

    async def _answer(req: ChatCompletionRequest, who: Caller, legacy: bool) -> Response:
        if req.stream:
            handle = await engine.stream(req, who)
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            headers = fmt.plan_headers(handle.plan, handle.model, handle.fallbacks)
            if handle.cache is not None:
                headers |= fmt.cache_headers(handle.cache)
            return SettledStreamingResponse(
                handle,
                _sse(handle, include_usage, legacy),
                media_type="text/event-stream",
                headers=headers | {"cache-control": "no-cache"},
            )
        result, outcome = await engine.chat(req, who)
        body = fmt.completion_body(result, outcome) if legacy else fmt.chat_body(result, outcome)
        return JSONResponse(body, headers=fmt.outcome_headers(outcome))

    async def _sse(handle: StreamHandle, include_usage: bool, legacy: bool) -> AsyncIterator[bytes]:
        rid, created = handle.plan.request_id, int(time.time())
        try:
            async for chunk in handle.chunks:
                if chunk.delta or chunk.finish_reason:
                    yield fmt.sse(fmt.chunk_body(rid, handle.model, created, chunk, legacy))
        except BackendError as e:
            # after the first token there is no falling back: end the stream with an error event
            err = UpstreamFailed(f"{handle.model} failed mid-stream ({error_code(e)})", status=e.status)
            metrics.errors.labels(err.type, err.code).inc()
            yield fmt.sse(err.body())
            yield fmt.SSE_DONE
            return
        except Exception:  # noqa: BLE001 - never leak a traceback into a stream
            log.exception("request %s: stream relay failed", rid)
            err = RouterError("internal error while streaming")
            metrics.errors.labels(err.type, err.code).inc()
            yield fmt.sse(err.body())
            yield fmt.SSE_DONE
            return
        if include_usage and handle.outcome is not None:
            yield fmt.sse(
                {
                    "id": rid,
                    "object": "text_completion" if legacy else "chat.completion.chunk",
                    "created": created,
                    "model": handle.model,
                    "choices": [],
                    "usage": fmt.usage_body(handle.outcome.usage),
                }
            )
        yield fmt.SSE_DONE

    @app.get("/v1/models")
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

    # ---- routing-specific endpoints ------------------------------------------------------------
    @app.post("/v1/route")
    async def route(body: RouteRequest, who: Caller = Depends(caller)):
        plan = await engine.plan(body, who)
        return {"id": plan.request_id, "routed": plan.routed, **plan.decision.as_dict()}

    @app.post("/v1/feedback")
    async def feedback(body: FeedbackRequest, who: Caller = Depends(caller)):
        fb = await engine.feedback(who, body.id, body.rating, body.comment)
        return {
            "object": "feedback",
            "id": fb.request_id,
            "model": fb.model,
            "rating": fb.rating,
            "recorded": True,
        }

    # ---- operations ----------------------------------------------------------------------------
    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/ready")
    async def ready():
        r = await engine.readiness()
        return JSONResponse(r, status_code=200 if r["status"] != "unready" else 503)

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), media_type=metrics.content_type)

    auth = engine.config.auth
    app.add_middleware(
        Edge,
        authenticate=engine.authenticate,
        public_paths=PUBLIC_PATHS + (OPERATOR_PATHS if auth.public_metrics else ()),
        operator_paths=() if auth.public_metrics else OPERATOR_PATHS,
        max_bytes=engine.config.server.max_body_bytes,
        body_timeout_s=engine.config.server.body_timeout_s,
        metrics=metrics,
    )
    app.add_middleware(RequestMetrics, metrics=metrics)
    return app
