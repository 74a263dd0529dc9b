"""Any OpenAI-compatible `/v1/chat/completions` server over a pooled httpx client.

Covers OpenAI itself, vLLM, Ollama, llama.cpp's `llama-server`, LM Studio, TGI and most hosted
providers' compatibility endpoints. Streams are read as server-sent events; usage is asked for
with `stream_options.include_usage` (turn off with `stream_usage: false` for servers that reject it).
"""

from __future__ import annotations

import contextlib
import email.utils
import http.cookiejar
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson

from adapters.aiohttp_transport import AiohttpTransport
from adapters.base import ChatChunk, ChatRequest, ChatResult, EmbedResult, Usage, merge_params
from adapters.errors import (
    BackendError,
    BackendNotConfigured,
    BackendRateLimited,
    BackendRejected,
    BackendTimeout,
    BackendUnavailable,
)
from adapters.redact import redact, secret_values

JSON = {"content-type": "application/json"}


class OpenAICompatAdapter:
    def __init__(
        self,
        model: str,
        base_url: str = "https://api.openai.com/v1",
        api_key: str | None = None,
        timeout: float = 120.0,
        connect_timeout: float = 5.0,
        headers: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,  # defaults merged into every request body
        stream_usage: bool = True,
        max_connections: int = 200,
    ):
        if not model:
            raise ValueError("an openai backend needs 'model'")
        self.model = model
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._secrets = secret_values({"api_key": api_key, "headers": headers or {}, "base_url": base_url})
        self._timeout = httpx.Timeout(timeout, connect=connect_timeout)
        self._headers = dict(headers or {})
        self._params = dict(params or {})
        self._stream_usage = stream_usage
        self._limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        self._client: httpx.AsyncClient | None = None
        self._transport = AiohttpTransport(self._limits)  # its aiohttp session opens on first use
        # parsed once: httpx would parse and merge a relative path with base_url on every request
        self._urls = {p: httpx.URL(self.base_url + p) for p in ("/chat/completions", "/embeddings")}
        self._post_headers = httpx.Headers()  # the client's headers and JSON's content type
        self._extensions = {"timeout": self._timeout.as_dict()}

    # ---- lifecycle -----------------------------------------------------------------------------
    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            headers = {"user-agent": "moe-router", **self._headers}
            if self._api_key:
                headers["authorization"] = f"Bearer {self._api_key}"
            self._client = httpx.AsyncClient(
                base_url=self.base_url,
                headers=headers,
                timeout=self._timeout,
                transport=self._transport,
                cookies=no_cookies(),
            )
            self._post_headers = httpx.Headers({**self._client.headers, **JSON})
        return self._client

    async def start(self) -> None:
        _ = self.client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def probe(self, timeout_s: float = 3.0) -> tuple[bool | None, str]:
        """Is the server there? `GET /models` (free: no tokens), for `moe-router models` and
        `config validate --check`. Any answer below 500 means reachable."""
        try:
            async with httpx.AsyncClient(timeout=timeout_s, headers=self.client.headers) as c:
                r = await c.get(self.base_url + "/models")
        except httpx.HTTPError as e:
            return False, f"{self.base_url} unreachable ({type(e).__name__}{': ' + str(e) if str(e) else ''})"
        if r.status_code >= 500:
            return False, f"{self.base_url} answers HTTP {r.status_code}"
        if r.status_code in (401, 403):
            return True, f"{self.base_url} reachable, but refuses the API key (HTTP {r.status_code})"
        return True, f"{self.base_url} reachable"

    async def health(self) -> bool:
        """Reachable and not failing: `GET /models` answers below 500 (401 still means "up")."""
        try:
            r = await self.client.get("/models", timeout=3.0)
        except httpx.HTTPError:
            return False
        return r.status_code < 500

    # ---- requests ------------------------------------------------------------------------------
    def _body(self, request: ChatRequest, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            **merge_params(request, self._params),
            "model": self.model,
            "messages": request.messages,
        }
        if stream:
            body["stream"] = True
            if self._stream_usage:
                body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        else:
            body.pop("stream", None)
            body.pop("stream_options", None)
        return body

    async def _send(self, path: str, body: dict[str, Any]) -> httpx.Response:
        """POST `body` as JSON straight to the transport; the response's body not read yet.

        What `AsyncClient.send` adds around the transport, this client never needs per request
        (no auth flow, no redirects to follow, a cookie jar that keeps nothing), yet it cost ~10%
        of a named-model request's CPU (`Cookies.extract_cookies` alone 4.5%: docs/benchmarks.md).
        The same request: the client's headers, JSON's content type, the client's timeouts."""
        _ = self.client  # made on first use, and with it `_post_headers`
        request = httpx.Request(
            "POST",
            self._urls[path],
            headers=self._post_headers,
            content=orjson.dumps(body),
            extensions=self._extensions,
        )
        return await self._transport.handle_async_request(request)

    async def _post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        """One non-streaming POST; transport failures and error statuses become `BackendError`s."""
        try:
            r = await self._send(path, body)
            try:
                await r.aread()
            finally:
                await r.aclose()
        except httpx.HTTPError as e:
            raise _transport_error(e, self._secrets) from None
        if r.status_code >= 400:
            raise _status_error(r.status_code, r.headers, r.text, self._secrets)
        return r

    async def chat(self, request: ChatRequest) -> ChatResult:
        r = await self._post("/chat/completions", self._body(request, stream=False))
        try:
            data = r.json()
            choice = data["choices"][0]
            message = dict(choice.get("message") or {})
        except (ValueError, KeyError, IndexError, TypeError):
            raise BackendError(
                f"malformed completion from {self.base_url}: {r.text[:200]!r}", secrets=self._secrets
            ) from None
        message.setdefault("role", "assistant")
        return ChatResult(message=message, finish_reason=choice.get("finish_reason"), usage=_usage(data))

    async def embed(self, texts: list[str], dimensions: int | None = None) -> EmbedResult:
        """`POST /embeddings` (configured `params` win over the request's `dimensions`)."""
        body = {"dimensions": dimensions} if dimensions else {}
        body |= {**self._params, "model": self.model, "input": texts, "encoding_format": "float"}
        r = await self._post("/embeddings", body)
        try:
            data = r.json()
            rows = sorted(data["data"], key=lambda d: d["index"])
            vectors = [[float(x) for x in d["embedding"]] for d in rows]
        except (ValueError, KeyError, TypeError):
            raise BackendError(
                f"malformed embeddings from {self.base_url}: {r.text[:200]!r}", secrets=self._secrets
            ) from None
        if len(vectors) != len(texts):
            raise BackendError(f"{len(vectors)} embeddings for {len(texts)} inputs from {self.base_url}")
        return EmbedResult(vectors, _usage(data) or Usage(0, 0))

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        body = self._body(request, stream=True)
        try:
            r = await self._send("/chat/completions", body)
            async with contextlib.aclosing(r):
                if r.status_code >= 400:
                    text = (await r.aread()).decode(errors="replace")
                    raise _status_error(r.status_code, r.headers, text, self._secrets)
                async for data in _sse_data(r):
                    if data == "[DONE]":
                        return
                    try:
                        event = json.loads(data)
                    except ValueError:
                        raise BackendError(
                            f"malformed stream event: {data[:200]!r}", secrets=self._secrets
                        ) from None
                    if event.get("error"):
                        err = event["error"]
                        raise BackendError(
                            f"upstream stream error: {err.get('message', err)}", secrets=self._secrets
                        )
                    usage = _usage(event)
                    choices = event.get("choices") or []
                    if not choices:
                        if usage is not None:
                            yield ChatChunk(delta={}, usage=usage)
                        continue
                    choice = choices[0]
                    yield ChatChunk(
                        delta=choice.get("delta") or {},
                        finish_reason=choice.get("finish_reason"),
                        usage=usage,
                    )
        except httpx.HTTPError as e:
            raise _transport_error(e, self._secrets) from None


async def _sse_data(response: httpx.Response) -> AsyncIterator[str]:
    """The `data:` payloads of a server-sent-event stream (multi-line data joined with newlines)."""
    lines: list[str] = []
    async for line in response.aiter_lines():
        if not line:
            if lines:
                yield "\n".join(lines)
                lines = []
        elif line.startswith("data:"):
            lines.append(line[5:].lstrip(" "))
        # comments (":") and other fields (event, id, retry) carry nothing we use
    if lines:
        yield "\n".join(lines)


def _usage(data: dict[str, Any]) -> Usage | None:
    u = data.get("usage")
    if not isinstance(u, dict):
        return None
    details = u.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else 0
    return Usage(int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0), int(cached or 0))


def retry_after_seconds(value: str | None) -> float | None:
    """Parse Retry-After: delta-seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _error_message(text: str) -> str:
    try:
        err = json.loads(text).get("error")
        if isinstance(err, dict):
            return str(err.get("message") or err)
        if err:
            return str(err)
    except (ValueError, AttributeError):
        pass
    return text[:300] or "no body"


def _status_error(status: int, headers: httpx.Headers, text: str, secrets: frozenset[str]) -> BackendError:
    msg = redact(f"upstream answered {status}: {_error_message(text)}", secrets)
    retry_after = retry_after_seconds(headers.get("retry-after"))
    if status == 429:
        return BackendRateLimited(msg, retry_after=retry_after, upstream_status=status)
    if status in (401, 403):
        return BackendNotConfigured(msg, upstream_status=status)
    if status == 408:
        return BackendTimeout(msg, upstream_status=status)
    if status in (502, 503, 504, 529):
        return BackendUnavailable(msg, retry_after=retry_after, upstream_status=status)
    if status >= 500:
        return BackendError(msg, retry_after=retry_after, upstream_status=status)
    return BackendRejected(msg, upstream_status=status)


def _transport_error(e: httpx.HTTPError, secrets: frozenset[str]) -> BackendError:
    if isinstance(e, httpx.TimeoutException):
        return BackendTimeout(f"upstream timed out ({type(e).__name__})")
    if isinstance(e, httpx.ConnectError):
        return BackendUnavailable(f"cannot connect to upstream: {e}", secrets=secrets)
    return BackendUnavailable(f"upstream connection failed: {type(e).__name__}: {e}", secrets=secrets)


def no_cookies() -> http.cookiejar.CookieJar:
    """A jar that keeps nothing: one client serves every caller, so a cookie an upstream sets for
    one request must not ride along on another caller's requests. (A bare jar: httpx copies the
    cookies of an `httpx.Cookies` into a default jar, dropping its policy.)"""
    return http.cookiejar.CookieJar(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
