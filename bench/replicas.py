"""Replicas sharing Redis vs one replica in memory mode: added latency and throughput.

    python bench/replicas.py [--requests 300] [--duration 10] [--out bench/results/replicas.json]

Everything runs on this machine: the mock OpenAI-compatible upstream (answers at once), a private
redis-server on a free port, and `moe-router serve` processes. Setups:

1. one replica, in-memory state, no API keys (the README's default);
2. one replica, in-memory state, with an API key that has a budget and a rate limit (created
   through `/admin/keys`): the same work as 3, in process memory;
3. one replica on Redis with the same kind of key (every request then authenticates, checks the
   rate limit, reserves and settles budget and appends to the ledger in Redis);
4. two replicas on the same Redis and key, requests spread round-robin (what a load balancer does).

"What Redis adds" is 3 minus 2: the same key, budget and rate limit, kept in Redis instead of in
memory.

Measured: latency at concurrency 1 (added over calling the upstream directly) and requests/s at
concurrency 32 for `duration` seconds. All requests name the model (`router:cheapest` would add
nothing Redis-specific). On a 2-core machine the replicas, Redis, the upstream and the load
generator share the same two cores, so two replicas cannot show more throughput than one here;
the numbers show what Redis costs per request, and that replicas share one budget correctly.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from gateway import pct, start, wait_http  # noqa: E402

from tests.redis_server import RedisServer  # noqa: E402
from tests.servers import free_port  # noqa: E402

BODY = {
    "messages": [{"role": "user", "content": "Summarise the plot of Hamlet in one line."}],
    "max_tokens": 16,
}


async def sequential(url: str, model: str, n: int, headers: dict) -> list[float]:
    """Latencies (ms) of n requests one after another (after 20 warm-up requests)."""
    out = []
    async with httpx.AsyncClient(timeout=30) as c:
        for i in range(n + 20):
            t0 = time.perf_counter()
            r = await c.post(url, json={**BODY, "model": model}, headers=headers)
            dt = (time.perf_counter() - t0) * 1000
            r.raise_for_status()
            if i >= 20:
                out.append(dt)
    return out


async def saturate_many(
    urls: list[str], model: str, seconds: float, headers: dict, concurrency: int = 32
) -> dict:
    lat: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency * 2)
    async with httpx.AsyncClient(timeout=60, limits=limits) as c:

        async def worker(i: int):
            nonlocal errors
            n = i
            while time.perf_counter() < stop:
                url = urls[n % len(urls)]
                n += 1
                t0 = time.perf_counter()
                try:
                    ok = (
                        await c.post(url, json={**BODY, "model": model}, headers=headers)
                    ).status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    lat.append((time.perf_counter() - t0) * 1000)
                else:
                    errors += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - t0
    return {"rps": len(lat) / elapsed, "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "errors": errors}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=300, help="sequential requests per setup")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of saturation per setup")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "replicas.json")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="moe-bench-replicas-"))
    procs: list[subprocess.Popen] = []
    redis = RedisServer().start()
    up_port = free_port()
    upstream = f"http://127.0.0.1:{up_port}/v1"
    try:
        procs.append(
            start([sys.executable, "-m", "tests.upstream", "--port", str(up_port)], tmp / "upstream.log")
        )
        wait_http(f"http://127.0.0.1:{up_port}/health", procs[-1])
        cfg = tmp / "moe.yaml"
        cfg.write_text(
            yaml.safe_dump(
                {
                    "models": [
                        {
                            "name": "cheap",
                            "backend": "openai",
                            "params": {"model": "cheap", "base_url": upstream},
                            "input_price_per_1m": 0.1,
                            "output_price_per_1m": 0.3,
                        }
                    ],
                    "routing": {"default_policy": "cheapest"},
                }
            )
        )
        redis_env = {
            "MOE_ROUTER_STATE": redis.url,
            "MOE_ROUTER_REQUIRE_KEYS": "1",
            "MOE_ROUTER_CONFIG": str(cfg),
        }

        def serve(name: str, env: dict) -> str:
            port = free_port()
            cmd = ["moe-router", "serve", "--config", str(cfg), "--port", str(port), "--log-level", "warning"]
            procs.append(start(cmd, tmp / f"{name}.log", env=env))
            wait_http(f"http://127.0.0.1:{port}/health", procs[-1])
            return f"http://127.0.0.1:{port}/v1/chat/completions"

        memory = serve("memory", {"MOE_ROUTER_STATE": "memory"})
        master = "sk-bench-master"
        memory_keyed = serve(
            "memory-keyed",
            {"MOE_ROUTER_STATE": "memory", "MOE_ROUTER_REQUIRE_KEYS": "1", "MOE_ROUTER_MASTER_KEY": master},
        )
        made = httpx.post(
            memory_keyed.replace("/v1/chat/completions", "/admin/keys"),
            json={"name": "bench", "budget_usd": 1000, "rpm": 1000000},
            headers={"authorization": f"Bearer {master}"},
        )
        made.raise_for_status()
        memory_auth = {"authorization": f"Bearer {made.json()['key']}"}
        r1, r2 = serve("redis-1", redis_env), serve("redis-2", redis_env)
        created = subprocess.run(
            ["moe-router", "keys", "create", "--name", "bench", "--budget-usd", "1000", "--rpm", "1000000"],
            env={**os.environ, **redis_env},
            capture_output=True,
            text=True,
            check=True,
        )
        auth = {"authorization": f"Bearer {created.stdout.strip().splitlines()[-1]}"}

        direct = asyncio.run(sequential(f"{upstream}/chat/completions", "cheap", args.requests, {}))
        setups = {
            "1 replica, in-memory state": ([memory], {}),
            "1 replica, in-memory state (key with budget + rpm)": ([memory_keyed], memory_auth),
            "1 replica, Redis (key with budget + rpm)": ([r1], auth),
            "2 replicas, one Redis, same key": ([r1, r2], auth),
        }
        results = {}
        for name, (urls, headers) in setups.items():
            seq = asyncio.run(sequential(urls[0], "cheap", args.requests, headers))
            sat = asyncio.run(saturate_many(urls, "cheap", args.duration, headers))
            results[name] = {
                "p50_ms": pct(seq, 50),
                "p99_ms": pct(seq, 99),
                "added_p50_ms": pct(seq, 50) - pct(direct, 50),
                "added_p99_ms": pct(seq, 99) - pct(direct, 99),
                "rps_at_32": sat["rps"],
                "p50_at_32_ms": sat["p50_ms"],
                "errors_at_32": sat["errors"],
            }
        redis_adds = (
            results["1 replica, Redis (key with budget + rpm)"]["p50_ms"]
            - results["1 replica, in-memory state (key with budget + rpm)"]["p50_ms"]
        )
        out = {
            "redis_adds_p50_ms": redis_adds,
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "requests": args.requests,
            "duration_s": args.duration,
            "direct_p50_ms": pct(direct, 50),
            "setups": results,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2))
        print("| setup | p50 ms | p99 ms | added p50 | added p99 | RPS @32 | p50 @32 | errors @32 |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for name, r in results.items():
            print(
                f"| {name} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['added_p50_ms']:.2f} | "
                f"{r['added_p99_ms']:.2f} | {r['rps_at_32']:.0f} | {r['p50_at_32_ms']:.1f} | {r['errors_at_32']} |"
            )
        print(f"\nRedis adds {redis_adds:.2f} ms p50 over in-memory state (same key, budget and rpm)")
        print(f"raw results: {args.out}")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        redis.stop()


if __name__ == "__main__":
    main()
