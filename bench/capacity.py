"""Capacity-aware routing under load: the best model has 4 slots, 32 clients want it.

    python bench/capacity.py [--duration 10] [--clients 32] [--slots 4] [--delay 0.05]
                             [--out bench/results/capacity.json]

Everything runs on this machine: the mock OpenAI-compatible upstream (in this process, so it can
count the requests it holds at once; every answer waits `delay` seconds) and `moe-router serve`
processes. The pool is three models ranked by the `cheapest` policy: `best` (max_concurrency =
`slots`), then `next` and `last` (no limits). Setups:

0. baseline: one replica, in-memory state, `best` without a limit (everything goes to it);
1. one replica, in-memory state;
2. two replicas on one Redis (private redis-server on a free port), clients spread round-robin:
   the slots are shared, so `best` still never holds more than `slots` requests.

Each of `clients` workers sends requests back to back for `duration` seconds. Reported: errors,
requests/s, p50/p99 latency, the share of requests spilled off `best` (answered by another model
with `x-moe-router-spilled`), and the most requests `best` held at once, counted at the upstream.
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
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.redis_server import RedisServer  # noqa: E402
from tests.servers import free_port  # noqa: E402
from tests.upstream import MockUpstream  # noqa: E402

BODY = {
    "messages": [{"role": "user", "content": "Summarise the plot of Hamlet in one line."}],
    "max_tokens": 16,
}


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


def start(cmd: list[str], log: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env={**os.environ, **env})


def wait_http(url: str, proc: subprocess.Popen, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"no answer from {url}")


async def load(urls: list[str], seconds: float, clients: int) -> dict:
    lat: list[float] = []
    statuses: Counter[int] = Counter()
    models: Counter[str] = Counter()
    failures: Counter[str] = Counter()  # client-side errors (no HTTP status), by exception
    spilled = 0
    stop = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients * 2, max_keepalive_connections=clients * 2)
    async with httpx.AsyncClient(timeout=60, limits=limits) as c:

        async def worker(i: int):
            nonlocal spilled
            n = i
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                try:
                    r = await c.post(
                        urls[n % len(urls)] + "/v1/chat/completions", json={**BODY, "model": "router"}
                    )
                    status = r.status_code
                except httpx.HTTPError as e:
                    status = 0
                    failures[type(e).__name__] += 1
                lat.append((time.perf_counter() - t0) * 1000)
                statuses[status] += 1
                if status == 200:
                    models[r.headers["x-moe-router-model"]] += 1
                    spilled += "x-moe-router-spilled" in r.headers
                n += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(clients)))
        wall = time.perf_counter() - t0
    total = sum(statuses.values())
    return {
        "requests": total,
        "errors": total - statuses[200],
        "statuses": {str(k): v for k, v in statuses.items()},
        "client_errors": dict(failures),
        "rps": round(total / wall, 1),
        "p50_ms": round(pct(lat, 50), 1),
        "p99_ms": round(pct(lat, 99), 1),
        "max_ms": round(max(lat), 1) if lat else None,
        "by_model": dict(models),
        "spilled_share": round(spilled / max(1, statuses[200]), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--slots", type=int, default=4)
    ap.add_argument("--delay", type=float, default=0.05)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "capacity.json"))
    args = ap.parse_args()

    up = MockUpstream().start()
    for m in ("best", "next", "last"):
        up.behave(m, delay=args.delay)
    redis = RedisServer().start()
    procs = []
    results: dict = {}
    try:
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)

            def model(name: str, price: float, **kw) -> dict:
                params = {"model": name, "base_url": up.base_url, "api_key": "none"}
                return {
                    "name": name,
                    "backend": "openai",
                    "params": params,
                    "input_price_per_1m": price,
                    **kw,
                }

            def write(name: str, slots: int | None) -> Path:
                cfg = tmp / name
                body = {
                    "models": [
                        model("best", 0.1, max_concurrency=slots),
                        model("next", 1.0),
                        model("last", 10.0),
                    ],
                    "routing": {"default_policy": "cheapest"},
                    "ledger": "none",
                    "log": {"requests": "off"},
                }
                cfg.write_text(yaml.safe_dump(body))
                return cfg

            limited, unlimited = write("capacity.yaml", args.slots), write("baseline.yaml", None)

            def serve(name: str, env: dict, cfg: Path = limited) -> str:
                port = free_port()
                cmd = [
                    "moe-router",
                    "serve",
                    "--config",
                    str(cfg),
                    "--port",
                    str(port),
                    "--log-level",
                    "warning",
                ]
                p = start(cmd, tmp / f"{name}.log", env={"HF_HUB_OFFLINE": "1", **env})
                procs.append(p)
                wait_http(f"http://127.0.0.1:{port}/health", p)
                return f"http://127.0.0.1:{port}"

            setups = {
                "baseline: no limit on best": [serve("baseline", {"MOE_ROUTER_STATE": "memory"}, unlimited)],
                "one replica, memory state": [serve("memory", {"MOE_ROUTER_STATE": "memory"})],
                "two replicas, Redis state": [
                    serve(f"redis-{i}", {"MOE_ROUTER_STATE": redis.url}) for i in range(2)
                ],
            }
            for name, urls in setups.items():
                asyncio.run(load(urls, 1.0, 4))  # warm the connections and the encoder-free path
                up.reset()
                for m in ("best", "next", "last"):
                    up.behave(m, delay=args.delay)
                res = asyncio.run(load(urls, args.duration, args.clients))
                res["best_peak_in_flight_at_upstream"] = up.peak_in_flight("best")
                results[name] = res
                print(name, json.dumps(res))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(20)
        redis.stop()
        up.stop()
    out = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared)",
        "duration_s": args.duration,
        "clients": args.clients,
        "slots": args.slots,
        "upstream_delay_s": args.delay,
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
