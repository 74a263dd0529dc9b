"""An httpx transport over aiohttp's connection pool: the same `httpx.AsyncClient` API, half the CPU.

Profiling the gateway under load (docs/benchmarks.md, "Where the CPU goes") put about half of a
named-model request's CPU in httpx/httpcore's pure-Python HTTP/1.1 pool (h11 parsing, a
readability poll of every pooled connection on every request). aiohttp parses in C and hands out
keep-alive connections without polling them, which doubles requests/s through the gateway.
Adapters keep talking httpx (requests, responses, streams, timeouts); only the bytes move here.

Errors come back as the httpx exceptions the adapters already map, by what went wrong:
connecting (`ConnectError`, `ConnectTimeout`), waiting for bytes (`ReadTimeout`), the server
hanging up mid-answer (`RemoteProtocolError`), anything else on the wire (`ReadError`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Iterator

import aiohttp
import certifi
import httpx

# most specific first: several aiohttp errors subclass each other (and asyncio.TimeoutError)
_ERRORS: tuple[tuple[type[BaseException], type[httpx.TransportError]], ...] = (
    (aiohttp.ConnectionTimeoutError, httpx.ConnectTimeout),
    (aiohttp.SocketTimeoutError, httpx.ReadTimeout),
    (aiohttp.ServerTimeoutError, httpx.ReadTimeout),
    (aiohttp.ClientConnectorError, httpx.ConnectError),
    (aiohttp.ServerDisconnectedError, httpx.RemoteProtocolError),
    (aiohttp.ClientPayloadError, httpx.RemoteProtocolError),
    (aiohttp.ClientResponseError, httpx.RemoteProtocolError),
    (aiohttp.InvalidURL, httpx.UnsupportedProtocol),
    (aiohttp.ClientError, httpx.ReadError),
    (asyncio.TimeoutError, httpx.ReadTimeout),
)


@contextlib.contextmanager
def _as_httpx(request: httpx.Request) -> Iterator[None]:
    try:
        yield
    except httpx.HTTPError:
        raise
    except Exception as e:
        for kind, mapped in _ERRORS:
            if isinstance(e, kind):
                raise mapped(str(e) or type(e).__name__, request=request) from e
        raise


class _Body(httpx.AsyncByteStream):
    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request):
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _as_httpx(self._request):
            async for chunk in self._response.content.iter_any():
                yield chunk

    async def aclose(self) -> None:
        if self._response.content.is_eof():
            self._response.release()  # read to the end: the connection goes back to the pool
        else:
            self._response.close()  # abandoned mid-answer: hang up, as httpx does


class AiohttpTransport(httpx.AsyncBaseTransport):
    """`httpx.AsyncClient(transport=AiohttpTransport(limits))`: one aiohttp session, made on first use
    (inside the event loop that uses it)."""

    def __init__(self, limits: httpx.Limits | None = None, verify: bool = True):
        self._limits = limits or httpx.Limits()
        self._verify = verify
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        tls: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=certifi.where()) if self._verify else False
        )
        connector = aiohttp.TCPConnector(
            limit=self._limits.max_connections or 0,
            limit_per_host=0,
            keepalive_timeout=self._limits.keepalive_expiry or 5.0,
            ssl=tls,
        )
        # cookies are httpx's job: one jar, not two
        return aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,  # httpx decodes content-encoding itself
            skip_auto_headers=("user-agent", "accept-encoding", "accept", "content-type"),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._session is None or self._session.closed:
            self._session = self._open()
        timeout = request.extensions.get("timeout", {})
        try:
            data: bytes | httpx.AsyncByteStream | None = request.content or None
        except httpx.RequestNotRead:  # a streamed upload: aiohttp frames it itself
            data = request.stream
            request.headers.pop("transfer-encoding", None)
        with _as_httpx(request):
            response = await self._session.request(
                request.method,
                str(request.url),
                headers=request.headers.multi_items(),
                data=data,
                allow_redirects=False,
                compress=None,
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=timeout.get("pool"),
                    sock_connect=timeout.get("connect"),
                    sock_read=timeout.get("read"),
                ),
            )
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=_Body(response, request),
            request=request,
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
