"""Redis memory per request: what the gateway's shared state costs, measured.

    python -m bench.memory [--requests 2000] [--learned 300] [--out bench/results/memory.json]

Starts a private redis-server on a free port and the mock OpenAI-compatible upstream, then for
each `log.prompts` mode builds an `Engine` on that Redis (FLUSHALL first) and sends requests
through `engine.chat` in-process, as an API key with a budget (so each request also writes a
`reserve` event). Prompts are varied, 300-1000 characters, every one different.

Runs:

- `log.prompts` none / hash / truncated (the default, 200 characters) / full, the model named
  (`cheap`): a `moe:req:<id>` string (TTL `log.request_ttl_s`), a `request` and a `reserve`
  entry in the `moe:ledger` stream;
- `router:thompson` with the default `truncated`: the same, and each record carries the online
  policy's `learn` vector (context + prior quality); then one rating per request
  (`moe:rating:<id>:<rater>` string + a `moe:feedback` entry + the bandit's own stream).

Redis `INFO memory` `used_memory` is read after a warm-up (the engine's connections, the key,
model health and budget counters exist then) and again after the run, each time after the
connections have been idle `--settle` seconds; the growth, less that of the connections'
buffers (`mem_clients_normal`), divided by the requests is bytes per request. `MEMORY USAGE` of
the ledger stream and of a sample of request keys splits it into the part the stream cap bounds
and the part the TTL bounds.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import redis  # noqa: E402
import redis.asyncio as aioredis  # noqa: E402

from policies.encoders import PromptEncoder  # noqa: E402
from router.engine import Engine  # noqa: E402
from router.errors import RouterError  # noqa: E402
from router.schemas import ChatCompletionRequest  # noqa: E402
from router.state.keys import new_key  # noqa: E402
from tests.conftest import make_config  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402
from tests.upstream import MockUpstream  # noqa: E402

DEFAULT_OUT = ROOT / "bench" / "results" / "memory.json"

# ---- prompts ----------------------------------------------------------------------------------
OPENERS = [
    "Can you help me with the following?",
    "I have a question about a project at work.",
    "Please explain step by step.",
    "Quick one, but I need a careful answer.",
    "Context first, then the question.",
    "I'm preparing for an interview and got stuck on this.",
]
TASKS = [
    "Write a Python function that parses a CSV file of orders (id, customer, amount, date) and "
    "returns the total amount per customer for each month, skipping malformed rows.",
    "Summarise the main causes of the 2008 financial crisis for a reader who knows nothing about "
    "mortgage-backed securities, in under three paragraphs.",
    "A train leaves at 14:05 and travels 312 km at an average of 96 km/h, stopping twice for "
    "seven minutes each. When does it arrive, and what would the average speed need to be to "
    "arrive twenty minutes earlier?",
    "Draft a polite email to a supplier asking to move a delivery from Tuesday to Thursday "
    "because our warehouse will be closed for an inspection.",
    "Explain the difference between a mutex and a semaphore, with an example where using the "
    "wrong one causes a deadlock or a race condition.",
    "Translate the following paragraph into French, keeping the formal tone: 'We are pleased to "
    "inform you that your application has been accepted for the next stage of the process.'",
    "Prove that the square root of two is irrational, and then explain why the same argument "
    "does not work for the square root of four.",
    "Review this SQL query for performance problems: SELECT * FROM events e JOIN users u ON "
    "u.id = e.user_id WHERE date(e.created_at) = '2024-05-01' ORDER BY e.created_at DESC;",
    "Write a short story (about 150 words) about a lighthouse keeper who finds a message in a "
    "bottle written in their own handwriting.",
    "What are the trade-offs between event sourcing and a conventional CRUD database for an "
    "accounting system that must keep an audit trail?",
    "My React component re-renders on every keystroke even though I wrapped it in React.memo. "
    "The parent passes an inline arrow function as onChange. Why, and how do I fix it?",
    "Compare the nutritional value of lentils, chickpeas and black beans per 100 g cooked, and "
    "suggest a weekly meal plan that uses all three.",
]
DETAILS = [
    "Keep the answer concise but do not skip important edge cases.",
    "Assume the reader is a beginner and define any jargon you use.",
    "Use a numbered list where it helps, and finish with a one-sentence summary.",
    "If there are several reasonable answers, list them and say which you would choose and why.",
    "I already tried searching for this but the answers I found contradicted each other.",
    "Our team uses Python 3.11, PostgreSQL 15 and deploys to Kubernetes, if that matters.",
    "Please mention any assumptions you make about missing information.",
    "This is for internal documentation, so accuracy matters more than style.",
]


def make_prompts(n: int, seed: int = 0) -> list[str]:
    """`n` different prompts of 300-1000 characters: an opener, one or two tasks, details and a
    request number (so no two are the same)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        target = rng.randint(300, 1000)
        parts = [rng.choice(OPENERS), rng.choice(TASKS)]
        while len(" ".join(parts)) < target:
            parts.append(rng.choice(DETAILS + TASKS))
        text = " ".join(parts)[: target - 12].rstrip()
        out.append(f"{text} (ref #{i:06d})")
    return out


# ---- measuring --------------------------------------------------------------------------------
async def used_memory(r: aioredis.Redis) -> dict[str, int]:
    info = await r.info("memory")
    return {k: int(info[k]) for k in ("used_memory", "mem_clients_normal")}


def grown(before: dict[str, int], after: dict[str, int]) -> int:
    """Growth of `used_memory`, less the connections' query/reply buffers (they come and go with
    the traffic of the moment, not with what is stored)."""
    used = after["used_memory"] - before["used_memory"]
    return used - (after["mem_clients_normal"] - before["mem_clients_normal"])


async def stream_bytes(r: aioredis.Redis, name: str) -> int:
    return int(await r.memory_usage(name, samples=0) or 0)


async def bandit_stream_bytes(r: aioredis.Redis) -> int:
    total = 0
    async for key in r.scan_iter(match="moe:bandit:*:stream", count=1000):
        total += await stream_bytes(r, key)
    return total


async def sample_keys(r: aioredis.Redis, pattern: str, n: int = 300) -> list[bytes]:
    keys = []
    async for key in r.scan_iter(match=pattern, count=1000):
        keys.append(key)
        if len(keys) >= n:
            break
    return keys


async def key_bytes(r: aioredis.Redis, pattern: str) -> float:
    """Mean `MEMORY USAGE` of a sample of keys matching `pattern` (it leaves out the TTL entry)."""
    sizes = [int(await r.memory_usage(k, samples=0) or 0) for k in await sample_keys(r, pattern)]
    return sum(sizes) / len(sizes) if sizes else 0.0


async def run_one(
    name: str,
    redis_url: str,
    upstream_url: str,
    encoder: PromptEncoder,
    prompts: list[str],
    *,
    model: str,
    log_settings: dict[str, Any],
    concurrency: int,
    rate: bool,
    settle_s: float,
) -> dict[str, Any]:
    r = aioredis.from_url(redis_url)
    await r.flushall()
    # ratings per minute per key: high enough that the benchmark's burst of ratings is admitted
    cfg = make_config(upstream_url, state=redis_url, log=log_settings, feedback={"rpm": 1_000_000})
    engine = Engine(cfg, encoder=encoder)
    await engine.wait_started()
    raw, rec = new_key("bench-memory", budget_usd=1_000_000.0)
    await engine.store.keys.put(rec)
    caller = await engine.authenticate(raw)
    ids: list[str] = []
    errors = {False: 0, True: 0}  # warm-up, measured

    async def send_all(batch: list[str], keep: bool) -> None:
        sem = asyncio.Semaphore(concurrency)

        async def one(text: str) -> None:
            async with sem:
                req = ChatCompletionRequest(
                    model=model, messages=[{"role": "user", "content": text}], max_tokens=64
                )
                try:
                    _, outcome = await engine.chat(req, caller)
                except RouterError:  # still recorded (status error); counted, not rated
                    errors[keep] += 1
                    return
                if keep:
                    ids.append(outcome.request_id)

        await asyncio.gather(*(one(t) for t in batch))

    warm = min(2 * concurrency, 100)
    await send_all([f"warm-up {i}: " + prompts[i % len(prompts)] for i in range(warm)], keep=False)
    await asyncio.sleep(settle_s)
    before = await used_memory(r)
    ledger0 = await r.xlen("moe:ledger")
    keys0 = await r.dbsize()
    ledger_bytes0 = await stream_bytes(r, "moe:ledger")
    t0 = time.perf_counter()
    await send_all(prompts, keep=True)
    elapsed = time.perf_counter() - t0
    await asyncio.sleep(settle_s)
    after = await used_memory(r)
    n = len(prompts)
    ledger_entries = await r.xlen("moe:ledger") - ledger0
    records = [await r.get(k) for k in await sample_keys(r, "moe:req:*")]
    prompts_kept = [len(json.loads(v)["prompt"]) for v in records]
    out: dict[str, Any] = {
        "run": name,
        "model": model,
        "log": log_settings,
        "requests": n,
        "seconds": round(elapsed, 2),
        "requests_per_s": round(n / elapsed, 1),
        "errors": errors[True],
        "ledger_entries": ledger_entries,
        "new_keys": await r.dbsize() - keys0,
        "bytes_per_request": round(grown(before, after) / n),
        "used_memory_delta": after["used_memory"] - before["used_memory"],
        "client_buffers_delta": after["mem_clients_normal"] - before["mem_clients_normal"],
        "ledger_bytes_per_request": round((await stream_bytes(r, "moe:ledger") - ledger_bytes0) / n),
        "request_key_bytes": round(await key_bytes(r, "moe:req:*")),
        # over a sample of the records: their JSON size, the prompt kept, and an online policy's vector
        "record_json_bytes": round(sum(map(len, records)) / len(records)),
        "record_prompt_chars": round(sum(prompts_kept) / len(records)),
        "record_has_learn": all(json.loads(v).get("learn") is not None for v in records),
    }
    out["bytes_per_million_requests"] = out["bytes_per_request"] * 1_000_000
    if rate:
        mem0 = await used_memory(r)
        feedback0 = await stream_bytes(r, "moe:feedback")
        bandit0 = await bandit_stream_bytes(r)
        sem = asyncio.Semaphore(concurrency)

        async def rate_one(i: int, rid: str) -> None:
            async with sem:
                await engine.feedback(caller, rid, (i % 5) / 4)

        t0 = time.perf_counter()
        await asyncio.gather(*(rate_one(i, rid) for i, rid in enumerate(ids)))
        rate_s = time.perf_counter() - t0
        await asyncio.sleep(settle_s)
        mem1 = await used_memory(r)
        out["ratings"] = {
            "ratings": len(ids),
            "seconds": round(rate_s, 2),
            "bytes_per_rating": round(grown(mem0, mem1) / len(ids)),
            "feedback_stream_bytes_per_rating": round(
                (await stream_bytes(r, "moe:feedback") - feedback0) / len(ids)
            ),
            "rating_key_bytes": round(await key_bytes(r, "moe:rating:*")),
            # the online policy's observation stream: capped (snapshot and trim every 5000 entries)
            "bandit_stream_bytes_per_rating": round((await bandit_stream_bytes(r) - bandit0) / len(ids)),
        }
    await engine.aclose()
    await r.aclose()
    return out


def table(runs: list[dict[str, Any]]) -> str:
    rows = [
        "| run | prompt kept (mean chars) | bytes/request | ledger stream | `moe:req` key | per 1M (bytes x 1e6) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for x in runs:
        rows.append(
            f"| {x['run']} | {x['record_prompt_chars']} | {x['bytes_per_request']:,} | "
            f"{x['ledger_bytes_per_request']:,} | {x['request_key_bytes']:,} | "
            f"{x['bytes_per_million_requests'] / 1e9:.2f} GB |"
        )
    for x in runs:
        if "ratings" in x:
            g = x["ratings"]
            rows.append(
                f"| one rating each ({x['run']}) | - | {g['bytes_per_rating']:,} per rating | "
                f"{g['feedback_stream_bytes_per_rating']:,} (`moe:feedback`) + "
                f"{g['bandit_stream_bytes_per_rating']:,} (bandit stream) | "
                f"{g['rating_key_bytes']:,} (`moe:rating`) | "
                f"{g['bytes_per_rating'] * 1e6 / 1e9:.2f} GB |"
            )
    return "\n".join(rows)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    prompts = make_prompts(args.requests, seed=1)
    learned_prompts = make_prompts(args.learned, seed=2)
    srv = RedisServer().start()
    up = MockUpstream().start()
    encoder = PromptEncoder()
    encoder.load()
    try:
        version = redis.Redis(port=srv.port).info("server")["redis_version"]
        runs = []
        common = dict(concurrency=args.concurrency, settle_s=args.settle)
        for mode in args.modes:
            runs.append(
                await run_one(
                    f"prompts={mode}",
                    srv.url,
                    up.base_url,
                    encoder,
                    prompts,
                    model="cheap",
                    log_settings={"prompts": mode},
                    rate=False,
                    **common,
                )
            )
            print(
                f"  {runs[-1]['run']}: {runs[-1]['bytes_per_request']} B/request, {runs[-1]['seconds']} s",
                flush=True,
            )
        if args.learned:
            runs.append(
                await run_one(
                    "router:thompson, prompts=truncated",
                    srv.url,
                    up.base_url,
                    encoder,
                    learned_prompts,
                    model="router:thompson",
                    log_settings={"prompts": "truncated"},
                    rate=True,
                    **common,
                )
            )
            print(
                f"  {runs[-1]['run']}: {runs[-1]['bytes_per_request']} B/request, {runs[-1]['seconds']} s",
                flush=True,
            )
    finally:
        up.stop()
        srv.stop()
    return {"redis_version": version, "runs": runs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=2000, help="requests per log.prompts mode")
    ap.add_argument("--learned", type=int, default=300, help="router:thompson requests, then rated (0: skip)")
    ap.add_argument("--modes", nargs="+", default=["none", "hash", "truncated", "full"])
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--settle", type=float, default=2.5, help="seconds idle before reading INFO")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    t0 = time.perf_counter()
    result = asyncio.run(main_async(args))
    seconds = time.perf_counter() - t0
    report = {
        "command": " ".join(["python -m bench.memory", *sys.argv[1:]]),
        "date": dt.date.today().isoformat(),
        "requests": args.requests,
        "learned_requests": args.learned,
        "concurrency": args.concurrency,
        "settle_s": args.settle,
        "redis_version": result["redis_version"],
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "seconds": round(seconds, 1),
        "defaults": {"request_ttl_s": 7 * 86400, "max_entries": 1_000_000, "prompt_chars": 200},
        "prompt_chars": {"min": 300, "max": 1000},
        "runs": result["runs"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(result["runs"]))
    print(f"redis {report['redis_version']}, {seconds:.0f} s, written to {args.out}")


if __name__ == "__main__":
    main()
