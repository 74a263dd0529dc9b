"""The HTTP gateway, built by a factory from a config (no global state).

One engine, thin format translators at the edge: OpenAI chat/completions/embeddings
(`openai_routes`), Anthropic messages (`anthropic_routes`) and OpenAI responses
(`responses_routes`) all go through the same admission, budgets, caches, ledger and feedback.
Authentication, body limits and read timeouts happen once, at the edge (`middleware.Edge`), for
every route but the public ones; errors answer in the caller's API format (`errors.render`).
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from router.config import RouterConfig, load_config
from router.engine import Engine
from router.errors import RouterError
from router.gateway.admin_routes import admin_routes
from router.gateway.anthropic_routes import anthropic_routes
from router.gateway.browsers import BrowserGuard
from router.gateway.console import console_routes
from router.gateway.errors import render
from router.gateway.json_response import JSONResponse
from router.gateway.metrics_port import serve_metrics
from router.gateway.middleware import Edge, RequestMetrics, state_error
from router.gateway.openai_routes import openai_routes
from router.gateway.responses_routes import responses_routes
from router.gateway.strict_json import StrictJSONRoute, unknown_field_error
from router.params import DESTINATION_FIELDS
from router.state import StateUnavailable
from router.state.degrade import StateFault

log = logging.getLogger("moe_router.gateway")

PUBLIC_PATHS = ("/health", "/ready")
OPERATOR_PATHS = ("/metrics",)
ADMIN_PREFIXES = ("/admin",)  # the master key only (none configured: refused)
CONSOLE_PREFIXES = ("/ui",)  # no data: open without credentials, the master key with them


def create_app(config: RouterConfig | None = None, *, engine: Engine | None = None) -> FastAPI:
    engine = engine or Engine(config or load_config())
    metrics = engine.metrics

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        server = engine.config.server
        stop_metrics = None
        if server.metrics_port is not None:
            stop_metrics = serve_metrics(metrics, server.metrics_host or server.host, server.metrics_port)
        await engine.start()
        try:
            yield
        finally:
            await engine.aclose()
            if stop_metrics is not None:
                stop_metrics()

    app = FastAPI(
        title="moe-router",
        version="0.1.0",
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
        default_response_class=JSONResponse,
    )
    app.router.route_class = StrictJSONRoute
    app.state.engine = engine

    def error_response(err: RouterError, request: Request) -> JSONResponse:
        metrics.errors.labels(err.type, err.code or "none").inc()
        status, body = render(err, request.url.path)
        return JSONResponse(body, status_code=status, headers=err.headers)

    @app.exception_handler(RouterError)
    async def _router_error(request: Request, err: RouterError):
        engine.refusals.note(err, request.scope.get("state", {}).get("caller"), request.url.path)
        return error_response(err, request)

    @app.exception_handler(StateUnavailable)
    @app.exception_handler(StateFault)
    async def _state_error(request: Request, err: Exception):
        return error_response(state_error(err), request)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            msg = next(e.get("ctx", {}).get("error", "") for e in errors if e.get("type") == "json_invalid")
            err = RouterError(f"malformed JSON body: {msg}", status=400, code="invalid_json")
            return error_response(err, request)
        unknown = unknown_field_error(errors, DESTINATION_FIELDS)
        if unknown is not None:
            return error_response(unknown, request)
        first = errors[0] if errors else {}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        param = ".".join(loc) or None
        message = "; ".join(
            f"{'.'.join(str(x) for x in e.get('loc', ()) if x != 'body') or 'body'}: {e.get('msg')}"
            for e in errors[:5]
        )
        err = RouterError(message, status=422, param=param, code="invalid_request_schema")
        err.type = "invalid_request_error"
        return error_response(err, request)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        err = RouterError(str(exc.detail), status=exc.status_code, code=code)
        err.type = "invalid_request_error"
        return error_response(err, request)

    app.include_router(openai_routes(engine))
    app.include_router(anthropic_routes(engine))
    app.include_router(responses_routes(engine))
    app.include_router(admin_routes(engine))
    app.include_router(console_routes())

    # ---- operations ----------------------------------------------------------------------------
    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/ready")
    async def ready():
        r = await engine.readiness()
        return JSONResponse(r, status_code=503 if r["status"] in ("unready", "warming_up") else 200)

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), media_type=metrics.content_type)

    auth, server = engine.config.auth, engine.config.server
    app.add_middleware(
        Edge,
        authenticate=engine.authenticate,
        public_paths=PUBLIC_PATHS + (OPERATOR_PATHS if auth.public_metrics else ()),
        operator_paths=() if auth.public_metrics else OPERATOR_PATHS,
        max_bytes=server.max_body_bytes,
        body_timeout_s=server.body_timeout_s,
        metrics=metrics,
        admin_prefixes=ADMIN_PREFIXES,
        console_prefixes=CONSOLE_PREFIXES,
        shape_limits={
            "max_depth": server.max_json_depth,
            "max_containers": server.max_json_containers,
            "max_messages": server.max_messages,
            "max_tools": server.max_tools,
        },
        on_refused=engine.refusals.note,
        browsers=BrowserGuard(
            bind_host=server.host, cors_origins=server.cors_origins, allowed_hosts=server.allowed_hosts
        ),
    )
    app.add_middleware(RequestMetrics, metrics=metrics)
    if server.cors_origins:  # outermost: answers the preflights of the allowed origins' pages
        app.add_middleware(
            CORSMiddleware,
            allow_origins=server.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["authorization", "content-type", "x-api-key", "api-key", "x-moe-router-session"],
            expose_headers=["*"],
        )
    return app
