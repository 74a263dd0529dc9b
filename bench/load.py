"""The load generator of `bench/gateway.py`: a process of its own, one raw HTTP/1.1 connection per client.

    python -m bench.load --url http://127.0.0.1:8080/v1/chat/completions --model cheap \\
        --mode saturate --concurrency 32 --duration 10 --salt t3

Runs in its own process so the gateway under test does not share an event loop (or a core's time
slice) with the client, and each concurrent client owns one keep-alive connection (no shared pool
to queue behind). The client is deliberately thin: requests are pre-framed bytes, responses are
parsed by httptools (the parser uvicorn uses), and nothing is decoded beyond the status line.

Prompts: `--prompts fresh` (default) sends a different prompt on every request — the same
deterministic base text for index i on every target, so the upstream sees the same work, prefixed
by `--salt` and i so that no cache in any gateway (an encoder's, a response cache) can answer it;
`--prompts repeat` sends one prompt every time (what a cache sees at its best).

Prints one JSON object: latencies in ms (after warm-up), errors, elapsed seconds, statuses seen.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections import Counter
from urllib.parse import urlsplit

import httptools
import orjson

REPEATED = "Summarise the plot of Hamlet in one line."
MAX_TOKENS = 16

# A small vocabulary of task phrasings and subjects: prompts read like requests (so a category
# classifier has something to do) and vary in length like real ones (12-60 words).
TASKS = (
    "Write a Python function that",
    "Explain step by step why",
    "Prove or disprove that",
    "Summarise in two sentences how",
    "Translate into French the idea that",
    "Write a short poem about how",
    "What is the capital city where",
    "Debug this snippet, which fails because",
    "Compute the expected value when",
    "Give three arguments for and against the claim that",
)
TEXT = (
    "the cache invalidates stale entries after a timeout while the scheduler retries failed jobs "
    "with exponential backoff and a bounded queue of pending requests across two regions "
    "a triangle has angles summing to one hundred eighty degrees and a circle inscribed in it "
    "the river floods every spring so farmers plant late and harvest rice before the monsoon "
    "interest compounds monthly on a loan of ten thousand dollars at five percent per year "
    "the parser reads tokens from a stream and builds a tree of nested expressions lazily"
)
WORDS = TEXT.split()


def prompt(i: int, salt: str, fresh: bool) -> str:
    if not fresh:
        return REPEATED
    rng = random.Random(i)  # the base text depends on i only: every target gets the same list
    words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 52)))
    return f"[{salt}-{i}] {rng.choice(TASKS)} {words}."


def body(path: str, model: str, text: str) -> bytes:
    """The request in the format of the endpoint at `path`."""
    if path.endswith("/v1/responses"):
        obj = {"model": model, "input": text, "max_output_tokens": MAX_TOKENS}
    else:  # chat completions and Anthropic messages share this shape
        obj = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": MAX_TOKENS}
    return orjson.dumps(obj)


class Connection:
    """One keep-alive HTTP/1.1 connection that sends one request at a time."""

    def __init__(self, host: str, port: int, path: str, headers: dict[str, str]):
        self.host, self.port, self.path = host, port, path
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.head = (
            f"POST {path} HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-type: application/json\r\n"
            f"{extra}content-length: "
        ).encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, payload: bytes) -> int:
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(self.head + str(len(payload)).encode() + b"\r\n\r\n" + payload)
        done = keep_alive = False

        class Callbacks:
            def on_headers_complete(self) -> None:
                nonlocal keep_alive  # llhttp answers False once the message is complete
                keep_alive = parser.should_keep_alive()

            def on_message_complete(self) -> None:
                nonlocal done
                done = True

        parser = httptools.HttpResponseParser(Callbacks())
        while not done:
            data = await self.reader.read(65536)
            if not data:
                raise ConnectionError("the server closed the connection mid-response")
            parser.feed_data(data)
        if not keep_alive:
            self.writer.close()
            self.writer = None
        return parser.get_status_code()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def run(args) -> dict:
    url = urlsplit(args.url)
    headers = dict(h.split(":", 1) for h in args.header)
    headers = {k.strip(): v.strip() for k, v in headers.items()}
    fresh = args.prompts == "fresh"
    counter = iter(range(args.start, sys.maxsize))
    lat: list[float] = []
    statuses: Counter[int] = Counter()
    errors = 0

    async def one(conn: Connection, record: bool) -> None:
        nonlocal errors
        payload = body(url.path, args.model, prompt(next(counter), args.salt, fresh))
        t0 = time.perf_counter()
        try:
            status = await conn.post(payload)
        except (OSError, ConnectionError, httptools.HttpParserError):
            conn.writer = None
            errors += 1
            return
        statuses[status] += 1
        if status != 200:
            errors += 1
        elif record:
            lat.append((time.perf_counter() - t0) * 1000)

    conns = [Connection(url.hostname, url.port, url.path, headers) for _ in range(args.concurrency)]
    for i in range(args.warmup):  # warm-up: spread over the connections, not recorded
        await one(conns[i % len(conns)], False)
    t0 = time.perf_counter()
    if args.mode == "sequential":
        for _ in range(args.requests):
            await one(conns[0], True)
    else:
        stop = t0 + args.duration

        async def client(conn: Connection) -> None:
            while time.perf_counter() < stop:
                await one(conn, True)

        await asyncio.gather(*(client(c) for c in conns))
    elapsed = time.perf_counter() - t0
    for c in conns:
        c.close()
    return {
        "latencies_ms": lat,
        "errors": errors,
        "elapsed_s": elapsed,
        "statuses": {str(k): v for k, v in statuses.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--mode", choices=("sequential", "saturate"), default="sequential")
    ap.add_argument("--requests", type=int, default=400, help="sequential: requests recorded")
    ap.add_argument("--duration", type=float, default=10.0, help="saturate: seconds")
    ap.add_argument("--concurrency", type=int, default=1, help="saturate: clients, one connection each")
    ap.add_argument("--warmup", type=int, default=20, help="requests sent first and not recorded")
    ap.add_argument("--prompts", choices=("fresh", "repeat"), default="fresh")
    ap.add_argument("--salt", default="", help="fresh prompts: makes this run's prompts unique")
    ap.add_argument("--start", type=int, default=0, help="fresh prompts: index of the first one")
    ap.add_argument("--header", action="append", default=[], help="'name: value', repeatable")
    args = ap.parse_args()
    if args.mode == "sequential":
        args.concurrency = 1
    try:
        import uvloop

        result = uvloop.run(run(args))
    except ImportError:
        result = asyncio.run(run(args))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
