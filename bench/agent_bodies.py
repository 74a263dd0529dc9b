"""How long an agent-sized request body holds the gateway's event loop (issue 23).

    python bench/agent_bodies.py [--mib 8 15] [--inline]

A long coding-agent session's body (turns of ~32 KB of tool output, up to the 16 MiB default
`server.max_body_bytes`) is posted to an in-process gateway (ASGI, no sockets) on `/v1/route` and
`/v1/messages/count_tokens`: the request path short of an upstream call. A task on the same loop
yields in a tight loop and records the longest gap between its turns: the longest time any other
request (or `/health`) would have waited. `--inline` parses every body on the loop (the edge's
worker-thread hand-off above 1 MiB turned off), for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import router.gateway.middleware as edge  # noqa: E402
from router.engine import Engine  # noqa: E402
from router.gateway import create_app  # noqa: E402
from tests.conftest import make_config, priced_model  # noqa: E402


def session(mib: float, anthropic: bool) -> bytes:
    turn = "a line of a file the agent read\n" * 1000
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": turn} for i in range(int(mib * 32))]
    body = {"model": "router", "messages": [*turns, {"role": "user", "content": "now fix it"}]}
    if anthropic:
        body["max_tokens"] = 1000
    return orjson.dumps(body)


async def longest_hold(client: httpx.AsyncClient, path: str, raw: bytes) -> tuple[int, float]:
    gaps: list[float] = []
    done = False

    async def tick() -> None:
        last = time.perf_counter()
        while not done:
            await asyncio.sleep(0)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0)
    r = await client.post(path, content=raw)
    done = True
    await ticker
    return r.status_code, max(gaps)


async def run(sizes: list[float]) -> None:
    base = "http://127.0.0.1:9/v1"  # never called
    models = [
        priced_model(base, n, p, p * 2, context_window=200_000_000)
        for n, p in (("cheap", 0.1), ("big", 10.0))
    ]
    engine = Engine(make_config(base, models=models))
    app = create_app(engine=engine)
    await engine.start()
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8080", timeout=600) as c:
            for path, anthropic in (("/v1/route", False), ("/v1/messages/count_tokens", True)):
                for mib in sizes:
                    raw = session(mib, anthropic)
                    await c.post(path, content=raw)  # warm
                    holds = [await longest_hold(c, path, raw) for _ in range(3)]
                    status, best = min(holds, key=lambda h: h[1])
                    print(
                        f"{path:28s} {len(raw) / 2**20:5.1f} MiB {status}  longest loop hold {best * 1000:6.1f} ms"
                    )
    finally:
        await engine.aclose()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=float, nargs="+", default=[8, 15])
    ap.add_argument("--inline", action="store_true", help="parse every body on the event loop")
    args = ap.parse_args()
    if args.inline:
        edge.OFF_LOOP_BYTES = 1 << 62
    asyncio.run(run(args.mib))


if __name__ == "__main__":
    main()
