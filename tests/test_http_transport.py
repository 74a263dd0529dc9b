"""The aiohttp-backed httpx transport: answers, streams and each way a connection can fail."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from adapters.aiohttp_transport import AiohttpTransport
from tests.servers import free_port


async def raw_server(handler) -> tuple[asyncio.AbstractServer, str]:
    """A TCP server on 127.0.0.1 that answers each connection with `handler(reader, writer)`."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        ),
        0,
    )
    return head + await reader.readexactly(length)


def client(**kw) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=AiohttpTransport(), **kw)


async def test_a_post_and_a_chunked_stream_arrive_whole_with_status_and_headers():
    seen: list[bytes] = []

    async def handler(reader, writer):
        while True:
            try:
                req = await read_request(reader)
            except asyncio.IncompleteReadError:
                return writer.close()
            seen.append(req)
            if b"/stream" in req.split(b"\r\n")[0]:
                writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-up: 1\r\n\r\n")
                for part in (b"data: a\n\n", b"data: b\n\n"):
                    writer.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                    await writer.drain()
                writer.write(b"0\r\n\r\n")
            else:
                body = b'{"ok":true}'
                writer.write(
                    b"HTTP/1.1 201 Created\r\ncontent-length: %d\r\nx-up: 2\r\n\r\n" % len(body) + body
                )
            await writer.drain()

    server, url = await raw_server(handler)
    async with server, client(base_url=url, headers={"authorization": "Bearer k"}) as c:
        r = await c.post("/v1/x", json={"a": 1})
        assert (r.status_code, r.json(), r.headers["x-up"]) == (201, {"ok": True}, "2")
        async with c.stream("POST", "/v1/stream", json={"s": True}) as s:
            lines = [line async for line in s.aiter_lines() if line]
        assert (s.status_code, s.headers["x-up"], lines) == (200, "1", ["data: a", "data: b"])
    first = seen[0].lower()
    assert b"authorization: bearer k" in first and first.endswith(b'{"a":1}')
    assert len(seen) == 2  # both on one keep-alive connection's handler


async def test_connection_refused_is_a_connect_error():
    async with client() as c:
        with pytest.raises(httpx.ConnectError):
            await c.post(f"http://127.0.0.1:{free_port()}/v1/x", json={})


async def test_a_silent_server_is_a_read_timeout_and_a_hang_up_a_protocol_error():
    async def silent(reader, writer):
        await read_request(reader)
        await asyncio.sleep(5)
        writer.close()

    async def hang_up(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
        await writer.drain()
        writer.close()

    s1, slow_url = await raw_server(silent)
    s2, rude_url = await raw_server(hang_up)
    async with s1, s2, client(timeout=httpx.Timeout(0.3, connect=2)) as c:
        with pytest.raises(httpx.ReadTimeout):
            await c.post(slow_url, json={})
        with pytest.raises(httpx.RemoteProtocolError):
            r = await c.post(rude_url, json={})
            r.read()


async def test_the_adapter_sends_its_headers_and_never_an_upstream_cookie():
    """The adapter posts straight to the transport: every request still carries the configured
    headers, the key, JSON's content type and length, and never a cookie an upstream set."""
    from adapters.openai_compat import OpenAICompatAdapter

    heads: list[bytes] = []

    async def handler(reader, writer):
        while True:
            try:
                req = await read_request(reader)
            except asyncio.IncompleteReadError:
                return writer.close()
            heads.append(req.lower())
            body = b'{"choices":[{"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}]}'
            writer.write(
                b"HTTP/1.1 200 OK\r\nset-cookie: session=caller-a; Path=/\r\n"
                b"content-length: %d\r\n\r\n" % len(body) + body
            )
            await writer.drain()

    server, url = await raw_server(handler)
    adapter = OpenAICompatAdapter(model="m", base_url=url + "/v1", api_key="sk-up", headers={"X-Org": "acme"})
    try:
        from adapters.base import ChatRequest

        for _ in range(2):
            await adapter.chat(ChatRequest(messages=[{"role": "user", "content": "hi"}]))
    finally:
        await adapter.aclose()
        server.close()
    assert len(heads) == 2 and b"cookie:" not in heads[1] and b"caller-a" not in heads[1]
    for req in heads:
        head, _, body = req.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        assert lines[0] == b"post /v1/chat/completions http/1.1"
        fields = dict(line.split(b": ", 1) for line in lines[1:])
        assert fields[b"authorization"] == b"bearer sk-up" and fields[b"x-org"] == b"acme"
        assert fields[b"user-agent"] == b"moe-router" and fields[b"content-type"] == b"application/json"
        assert fields[b"host"] == url.split("//")[1].encode() and int(fields[b"content-length"]) == len(body)
        assert b'"model":"m"' in body and b'"content":"hi"' in body
