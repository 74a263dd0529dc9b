"""The edge, as pure-ASGI middleware: every request passes here before any route sees it.

- `RequestMetrics` (outermost): counts and times requests by endpoint and status, and is the last
  resort for errors: an exception no handler turned into an answer becomes an OpenAI-format 500
  with an error id (details in the log under that id), and the connection stays usable.
- `Edge`: refuses bodies over `server.max_body_bytes` (413, by Content-Length or while reading)
  and bodies not received within `server.body_timeout_s` (408); authenticates every route except
  an explicit list of public paths (fail closed: a route added later is protected without anyone
  remembering to protect it) and hands the caller to the routes in `scope["state"]["caller"]`;
  under the admin prefixes (`/admin`) only the master key passes — everyone is refused when none is
  configured; under the console prefixes (`/ui`, pages and static files that hold no data) a
  request without credentials passes, and one with credentials must carry the master key;
  refuses what a browser must not do (`browsers`: other sites' pages, rebound hostnames);
  reads any POST, PUT or PATCH body as JSON whatever its Content-Type says (`curl -d` sends a
  form type), parses it once and refuses shapes that would cost far more than their size
  (`body_shape`), in a worker thread for bodies over `OFF_LOOP_BYTES`; the parsed body is handed
  on in `scope["state"]["json"]` so the route does not parse it again.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Collection

import anyio.to_thread
import orjson

from router.errors import Forbidden, PayloadTooLarge, RequestTimeout, RouterError, ServiceUnavailable
from router.gateway.body_shape import check_shape, check_size
from router.gateway.browsers import BrowserGuard, is_json_type
from router.gateway.errors import render
from router.gateway.json_response import dumps
from router.metrics import Metrics
from router.state import StateUnavailable
from router.state.degrade import StateFault

log = logging.getLogger("moe_router.gateway")
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})  # their bodies are JSON, whatever the Content-Type
# Bodies larger than this are joined, parsed and shape-checked in a worker thread (a few ms per MB
# that the event loop, serving every other request, does not wait through); smaller ones inline,
# where a thread hand-off would cost more than it saves.
OFF_LOOP_BYTES = 1 << 20
_INVALID = object()  # a body that is not JSON

Authenticate = Callable[[str | None, bool], Awaitable[object]]


def internal_error(exc: BaseException) -> RouterError:
    """A 500 for the client that says nothing of `exc`; the log gets it under the error id."""
    error_id = secrets.token_hex(6)
    log.error("internal error %s", error_id, exc_info=exc)
    return RouterError(f"internal error (id {error_id}); the gateway's log has the details")


def state_error(exc: BaseException) -> RouterError:
    if isinstance(exc, StateUnavailable):
        return ServiceUnavailable(str(exc), code="state_unavailable", headers={"retry-after": "2"})
    return internal_error(exc)


async def send_error(send, err: RouterError, metrics: Metrics | None = None, path: str = "") -> None:
    if metrics is not None:
        metrics.errors.labels(err.type, err.code or "none").inc()
    status, shaped = render(err, path)
    body = dumps(shaped)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in err.headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def api_key(headers: dict[bytes, bytes]) -> str | None:
    """The key from `Authorization: Bearer`, `x-api-key` or `api-key` (OpenAI/Anthropic/Azure styles)."""
    auth = headers.get(b"authorization", b"").decode("latin-1")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    raw = headers.get(b"x-api-key") or headers.get(b"api-key")
    return raw.decode("latin-1").strip() or None if raw else None


class Edge:
    def __init__(
        self,
        app,
        *,
        authenticate: Authenticate,
        public_paths: Collection[str],
        operator_paths: Collection[str],
        max_bytes: int,
        body_timeout_s: float,
        metrics: Metrics | None = None,
        admin_prefixes: Collection[str] = (),
        console_prefixes: Collection[str] = (),
        shape_limits: dict[str, int] | None = None,
        browsers: BrowserGuard | None = None,
        on_refused: Callable[[RouterError, object, str], None] | None = None,
    ):
        self.app = app
        self.authenticate = authenticate
        self.public_paths = frozenset(public_paths)
        self.operator_paths = frozenset(operator_paths)
        self.admin_prefixes = tuple(admin_prefixes)
        self.console_prefixes = tuple(console_prefixes)
        self.max_bytes = max_bytes
        self.body_timeout_s = body_timeout_s
        self.metrics = metrics
        self.shape_limits = shape_limits
        self.browsers = browsers
        self.on_refused = on_refused

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        path = scope["path"]
        if self.browsers is not None and (refused := self.browsers.refusal(scope["method"], headers)):
            return await self._refuse(send, refused, path)
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._refuse(send, self._too_large(), path)
        raw = api_key(headers)
        admin = _under(path, self.admin_prefixes) or (raw is not None and _under(path, self.console_prefixes))
        if admin or (path not in self.public_paths and not _under(path, self.console_prefixes)):
            try:
                caller = await self.authenticate(raw, admin or path in self.operator_paths)
                if admin and not getattr(caller, "admin", False):
                    raise _admin_off()
            except RouterError as e:
                return await self._refuse(send, e, path)
            except (StateUnavailable, StateFault) as e:
                return await send_error(send, state_error(e), self.metrics, path)
            scope.setdefault("state", {})["caller"] = caller
        # Read the whole body first (the gateway needs all of it anyway), so an oversized or a
        # stalled body is refused before any handler starts parsing it.
        chunks: list[bytes] = []
        seen = 0
        try:
            async with asyncio.timeout(self.body_timeout_s):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    body = message.get("body", b"")
                    seen += len(body)
                    if seen > self.max_bytes:
                        return await self._refuse(send, self._too_large(), path, scope)
                    chunks.append(body)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            err = RequestTimeout(f"the request body was not received within {self.body_timeout_s:g} s")
            return await send_error(send, err, self.metrics, path)
        if scope["method"] in BODY_METHODS and seen:
            _as_json(scope, headers)
            try:
                if seen > OFF_LOOP_BYTES:  # an agent's long session: parsed where no request waits on it
                    data, parsed = await anyio.to_thread.run_sync(self._parse, chunks, path)
                else:
                    data, parsed = self._parse(chunks, path)
            except RouterError as e:
                return await self._refuse(send, e, path, scope)
            chunks = [data]
            if parsed is not _INVALID:
                scope.setdefault("state", {})["json"] = parsed
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # after the body: wait for the disconnect, as servers do

        await self.app(scope, replay, send)

    def _parse(self, chunks: list[bytes], path: str) -> tuple[bytes, object]:
        """The body and its JSON, shape-checked (RouterError when refused); `_INVALID` when it is
        not JSON (the route answers 400 invalid_json, naming the fault)."""
        data = b"".join(chunks)
        try:
            if self.shape_limits is not None:
                bound = check_size(data, max_containers=self.shape_limits["max_containers"])
            parsed = orjson.loads(data)
            if self.shape_limits is not None:
                check_shape(parsed, path, **self.shape_limits, bound=bound)
        except orjson.JSONDecodeError:
            return data, _INVALID
        return data, parsed

    async def _refuse(self, send, err: RouterError, path: str, scope=None) -> None:
        """Answer `err`, and report it as a refusal (router.refusals) with the caller if known."""
        if self.on_refused is not None:
            self.on_refused(err, (scope or {}).get("state", {}).get("caller"), path)
        await send_error(send, err, self.metrics, path)

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"request body exceeds {self.max_bytes} bytes")


def _under(path: str, prefixes: tuple[str, ...]) -> bool:
    return any(path == p or path.startswith(p + "/") for p in prefixes)


def _admin_off() -> Forbidden:
    """An admin path reached with no master key configured: the admin API is off (fail closed)."""
    return Forbidden(
        "the admin API and console need a master key: set auth.master_key (or MOE_ROUTER_MASTER_KEY)",
        code="master_key_required",
    )


def _as_json(scope, headers: dict[bytes, bytes]) -> None:
    """Every request body here is JSON: say so when the client's Content-Type did not. In place:
    the scope is the one `RequestMetrics` reads the matched route from afterwards."""
    if is_json_type(headers):
        return
    rest = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
    scope["headers"] = [*rest, (b"content-type", b"application/json")]


class RequestMetrics:
    """Counts requests by endpoint and status and times them (streams: until the last byte)."""

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = 500
        started = False

        async def tracking_send(message):
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as e:  # noqa: BLE001 - the last resort: an answer, not a dropped connection
            if isinstance(e, StateFault):
                e = e.__cause__ or e
            if not started:
                await send_error(tracking_send, internal_error(e), self.metrics, scope.get("path", ""))
            else:
                log.error("error after the response started on %s", scope.get("path"), exc_info=e)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.request_latency.labels(endpoint).observe(time.perf_counter() - t0)
