"""CPU time the gateway spends on crafted 1 MB request bodies (issue 24), per MB.

    python bench/body_shapes.py [--repeats 5] [--out bench/results/body_shapes.json]

Each body of `tests/crafted_bodies.py` (repeated open tags, complete tags, deep nesting, many
small containers, 10k messages, 10k tools, the largest body the default bounds accept) is sent
`--repeats` times to an in-process gateway (ASGI, no sockets) on `POST /v1/route`: the whole
request path short of an upstream call (edge, JSON parse and shape bounds, validation, routing
text, encoder, policy, constraints). The gateway's process CPU time (`time.process_time`, all
threads) per request is reported with its answer's status, and divided by the body's size in MB.
The target (issue 24) is at most 50 ms of CPU per MB for the worst shape.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from router.engine import Engine  # noqa: E402
from router.gateway import create_app  # noqa: E402
from tests.conftest import make_config, priced_model  # noqa: E402
from tests.crafted_bodies import SHAPES  # noqa: E402

POOL = (("cheap", 0.1), ("mid", 1.0), ("big", 10.0))  # big context windows: every body is routed


async def run(repeats: int) -> dict:
    base = "http://127.0.0.1:9/v1"  # never called: /v1/route plans without dispatching
    models = [
        priced_model(base, n, pin, pin * 2, context_window=2_000_000, capabilities=["tools"])
        for n, pin in POOL
    ]
    engine = Engine(make_config(base, models=models))
    app = create_app(engine=engine)
    await engine.start()
    rows = {}
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost", timeout=600) as client:
            warm = {"model": "router", "messages": [{"role": "user", "content": "hello"}]}
            for _ in range(3):
                await client.post("/v1/route", json=warm)
            for name, make in SHAPES.items():
                body = make()
                cpu = []
                for _ in range(repeats):
                    t0 = time.process_time()
                    r = await client.post(
                        "/v1/route", content=body, headers={"content-type": "application/json"}
                    )
                    cpu.append(time.process_time() - t0)
                mb = len(body) / 1e6
                best = min(cpu)
                rows[name] = {
                    "bytes": len(body),
                    "status": r.status_code,
                    "code": (r.json().get("error") or {}).get("code") if r.status_code >= 400 else None,
                    "message": (r.json().get("error") or {}).get("message", "")[:200]
                    if r.status_code >= 400
                    else None,
                    "cpu_ms_min": round(best * 1000, 2),
                    "cpu_ms_median": round(sorted(cpu)[len(cpu) // 2] * 1000, 2),
                    "cpu_ms_per_mb": round(best * 1000 / mb, 2),
                }
                print(
                    f"{name:22s} {r.status_code} {rows[name]['code'] or '':22s} "
                    f"{rows[name]['cpu_ms_min']:8.2f} ms  {rows[name]['cpu_ms_per_mb']:8.2f} ms/MB",
                    flush=True,
                )
    finally:
        await engine.aclose()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "bench/results/body_shapes.json"))
    args = ap.parse_args()
    rows = asyncio.run(run(args.repeats))
    worst = max(rows, key=lambda k: rows[k]["cpu_ms_per_mb"])
    out = {
        "machine": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "repeats": args.repeats,
        "shapes": rows,
        "worst": worst,
    }
    print(f"worst: {worst} at {rows[worst]['cpu_ms_per_mb']} ms of CPU per MB")
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
