"""Gateway overhead, throughput and routing-decision latency, beside LiteLLM's proxy.

    python bench/gateway.py [--requests 400] [--duration 10] [--out bench/results/gateway.json]

Everything runs on this machine against the same mock OpenAI-compatible upstream (a separate
process: `python -m tests.upstream`, answering at once):

1. added latency at concurrency 1: p50/p95/p99 of (via proxy) − (direct to the upstream), for
   moe-router with a non-embedding policy (`router:cheapest`), an embedding policy
   (`router:category`), a named model (no routing) — also through `/v1/messages` and
   `/v1/responses`, to measure the format translation — and LiteLLM's proxy (no routing);
2. max throughput at concurrency 32 for `duration` seconds (requests/s, p50 latency);
3. routing-decision latency in-process (`Engine.plan`: embed + score + constraints) for single
   prompts and 32 concurrent ones, with fresh prompts (no encoder cache hits).

LiteLLM's proxy runs from its own venv (`.venv-litellm`, created on first run with
`pip install 'litellm[proxy]==1.108.7'`) because its proxy extra pins versions that clash with
ours; it refuses to start without a master key, so the config sets one.
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
import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.servers import free_port  # noqa: E402

LITELLM_VERSION = "1.108.7"
MASTER_KEY = "sk-bench-master-key"
BODY = {
    "messages": [{"role": "user", "content": "Summarise the plot of Hamlet in one line."}],
    "max_tokens": 16,
}


def body_for(url: str, model: str) -> dict:
    """The same request in the format of the endpoint `url` serves."""
    if url.endswith("/v1/responses"):
        return {
            "model": model,
            "input": BODY["messages"][0]["content"],
            "max_output_tokens": BODY["max_tokens"],
        }
    return {**BODY, "model": model}  # chat completions and Anthropic messages share this shape


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


def wait_http(url: str, proc: subprocess.Popen, seconds: float = 180, headers: dict | None = None) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before answering {url}")
        try:
            if httpx.get(url, timeout=1, headers=headers).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"no answer from {url}")


def start(cmd: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
    )


def litellm_python() -> Path:
    venv = ROOT / ".venv-litellm"
    py = venv / "bin" / "python"
    if not (venv / "bin" / "litellm").exists():
        print(f"creating {venv} with litellm[proxy]=={LITELLM_VERSION} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(py), "-m", "pip", "install", "-q", f"litellm[proxy]=={LITELLM_VERSION}"], check=True
        )
    return venv / "bin" / "litellm"


async def sequential(url: str, model: str, n: int, headers: dict) -> list[float]:
    """Latencies (ms) of n requests one after another (after 20 warm-up requests)."""
    out = []
    async with httpx.AsyncClient(timeout=30) as c:
        for i in range(n + 20):
            t0 = time.perf_counter()
            r = await c.post(url, json=body_for(url, model), headers=headers)
            dt = (time.perf_counter() - t0) * 1000
            r.raise_for_status()
            if i >= 20:
                out.append(dt)
    return out


async def saturate(url: str, model: str, seconds: float, headers: dict, concurrency: int = 32) -> dict:
    lat: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency * 2)
    async with httpx.AsyncClient(timeout=60, limits=limits) as c:

        async def worker():
            nonlocal errors
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                try:
                    r = await c.post(url, json=body_for(url, model), headers=headers)
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    lat.append((time.perf_counter() - t0) * 1000)
                else:
                    errors += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    return {"rps": len(lat) / elapsed, "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "errors": errors}


def decision_latency(n: int = 300) -> dict:
    """In-process Engine.plan() latency: the routing decision alone, with fresh prompts."""
    from router.config import load_config
    from router.engine import Engine
    from router.schemas import ChatCompletionRequest

    models = [
        {
            "name": f"m{i}",
            "backend": "openai",
            "params": {"model": f"m{i}", "base_url": "http://127.0.0.1:9/v1"},
            "input_price_per_1m": 0.1 * (i + 1),
            "output_price_per_1m": 0.3 * (i + 1),
            "quality": {"default": 0.4 + 0.1 * i, "code": 0.3 + 0.15 * i},
        }
        for i in range(5)
    ]
    engine = Engine(load_config(None, models=models))
    engine.encoder.load()
    words = [
        "alpha",
        "beta",
        "gamma",
        "delta",
        "epsilon",
        "zeta",
        "eta",
        "theta",
        "iota",
        "kappa",
        "lambda",
        "mu",
    ]
    rng = np.random.default_rng(0)

    def prompt() -> ChatCompletionRequest:
        text = " ".join(rng.choice(words, 12)) + f" {rng.integers(1e9)}: write code to sort these words"
        return ChatCompletionRequest(model="router", messages=[{"role": "user", "content": text}])

    async def run(policy: str, concurrency: int) -> list[float]:
        out: list[float] = []

        async def one():
            req = prompt()
            req.model = f"router:{policy}"
            t0 = time.perf_counter()
            await engine.plan(req)
            out.append((time.perf_counter() - t0) * 1000)

        for _ in range(10):  # warm-up
            await one()
        out.clear()
        for _ in range(n // concurrency):
            await asyncio.gather(*(one() for _ in range(concurrency)))
        return out

    res = {}
    for policy in ("cheapest", "category"):
        for conc in (1, 32):
            xs = asyncio.run(run(policy, conc))
            res[f"{policy}@{conc}"] = {"p50_ms": pct(xs, 50), "p99_ms": pct(xs, 99), "n": len(xs)}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=400, help="sequential requests per target")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of saturation per target")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gateway.json")
    ap.add_argument("--skip-litellm", action="store_true")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="moe-bench-"))
    procs: list[subprocess.Popen] = []
    up_port, gw_port, ll_port = free_port(), free_port(), free_port()
    upstream = f"http://127.0.0.1:{up_port}/v1"
    try:
        procs.append(
            start([sys.executable, "-m", "tests.upstream", "--port", str(up_port)], tmp / "upstream.log")
        )
        wait_http(f"http://127.0.0.1:{up_port}/health", procs[-1])

        cfg = {
            "models": [
                {
                    "name": n,
                    "backend": "openai",
                    "params": {"model": n, "base_url": upstream},
                    "input_price_per_1m": p,
                    "output_price_per_1m": 3 * p,
                    "quality": {"default": q, "code": q, "chat": q},
                }
                for n, p, q in (("cheap", 0.1, 0.5), ("mid", 1.0, 0.7), ("big", 10.0, 0.9))
            ],
        }
        (tmp / "moe.yaml").write_text(yaml.safe_dump(cfg))
        procs.append(
            start(
                [
                    "moe-router",
                    "serve",
                    "--config",
                    str(tmp / "moe.yaml"),
                    "--port",
                    str(gw_port),
                    "--log-level",
                    "warning",
                ],
                tmp / "gateway.log",
            )
        )
        wait_http(f"http://127.0.0.1:{gw_port}/health", procs[-1])

        targets = {
            "direct upstream": (f"{upstream}/chat/completions", "cheap", {}),
            "moe-router, named model": (f"http://127.0.0.1:{gw_port}/v1/chat/completions", "cheap", {}),
            "moe-router, router:cheapest": (
                f"http://127.0.0.1:{gw_port}/v1/chat/completions",
                "router:cheapest",
                {},
            ),
            "moe-router, router:category": (
                f"http://127.0.0.1:{gw_port}/v1/chat/completions",
                "router:category",
                {},
            ),
            # the same named-model request through the format translators
            "moe-router, named model, /v1/messages": (f"http://127.0.0.1:{gw_port}/v1/messages", "cheap", {}),
            "moe-router, named model, /v1/responses": (
                f"http://127.0.0.1:{gw_port}/v1/responses",
                "cheap",
                {},
            ),
        }
        if not args.skip_litellm:
            ll_cfg = {
                "model_list": [
                    {
                        "model_name": "cheap",
                        "litellm_params": {"model": "openai/cheap", "api_base": upstream, "api_key": "x"},
                    }
                ],
                "general_settings": {"master_key": MASTER_KEY},
            }
            (tmp / "litellm.yaml").write_text(yaml.safe_dump(ll_cfg))
            procs.append(
                start(
                    [
                        str(litellm_python()),
                        "--config",
                        str(tmp / "litellm.yaml"),
                        "--port",
                        str(ll_port),
                        "--num_workers",
                        "1",
                    ],
                    tmp / "litellm.log",
                    env={"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"},
                )
            )
            auth = {"authorization": f"Bearer {MASTER_KEY}"}
            wait_http(f"http://127.0.0.1:{ll_port}/health/liveliness", procs[-1], 300)
            targets["LiteLLM proxy (no routing)"] = (
                f"http://127.0.0.1:{ll_port}/v1/chat/completions",
                "cheap",
                auth,
            )

        seq = {
            name: asyncio.run(sequential(url, m, args.requests, h)) for name, (url, m, h) in targets.items()
        }
        base = seq["direct upstream"]
        overhead = {}
        for name, xs in seq.items():
            overhead[name] = {
                "p50_ms": pct(xs, 50),
                "p95_ms": pct(xs, 95),
                "p99_ms": pct(xs, 99),
                "added_p50_ms": pct(xs, 50) - pct(base, 50),
                "added_p95_ms": pct(xs, 95) - pct(base, 95),
                "added_p99_ms": pct(xs, 99) - pct(base, 99),
            }
        throughput = {
            name: asyncio.run(saturate(url, m, args.duration, h)) for name, (url, m, h) in targets.items()
        }
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()

    decisions = decision_latency()
    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "requests": args.requests,
        "duration_s": args.duration,
        "overhead_concurrency_1": overhead,
        "throughput_concurrency_32": throughput,
        "decision_latency": decisions,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))

    print("\n| target | p50 ms | p95 ms | p99 ms | added p50 | added p95 | added p99 | RPS @32 | p50 @32 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, o in overhead.items():
        t = throughput[name]
        print(
            f"| {name} | {o['p50_ms']:.2f} | {o['p95_ms']:.2f} | {o['p99_ms']:.2f} | {o['added_p50_ms']:.2f} | "
            f"{o['added_p95_ms']:.2f} | {o['added_p99_ms']:.2f} | {t['rps']:.0f} | {t['p50_ms']:.1f} |"
        )
    print("\n| routing decision (in-process) | p50 ms | p99 ms |")
    print("| --- | ---: | ---: |")
    for name, d in decisions.items():
        policy, conc = name.split("@")
        print(f"| {policy}, {conc} concurrent | {d['p50_ms']:.2f} | {d['p99_ms']:.2f} |")
    print(f"\nraw results: {args.out}")


if __name__ == "__main__":
    main()
