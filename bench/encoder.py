"""Prompt-encoder speed: torch vs ONNX fp32 vs ONNX int8, and the embed batcher's window.

    python bench/encoder.py [--builds all-MiniLM-L6-v2,minilm-onnx,minilm-onnx-int8]
                            [--threads 2] [--windows 0,1,2,5] [--clients 1,4,16] [--repeat 3]
                            [--data ../shared/data] [--json out.json]

Prompts: RouterDC MMLU test questions (fresh every call: the encoder's LRU cache is off).
- single: one prompt per call, p50 / p95 in ms;
- batch32: 32 prompts in one call, median ms per call;
- batcher (the ONNX fp32 build): N clients each awaiting one prompt at a time through
  `router.embed_batcher.EmbedBatcher` with each window; prompts per second and p50 / p95 latency
  (median of `--repeat` runs, the settings interleaved).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from policies.encoders import PromptEncoder  # noqa: E402
from router.embed_batcher import EmbedBatcher  # noqa: E402


def prompts(data: Path) -> list[str]:
    rows = json.loads((data / "routerdc_7model" / "mmlu_test.json").read_text())
    return [r["question"] for r in rows]


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def speed(enc: PromptEncoder, texts: list[str], n_single: int, n_batch: int) -> dict:
    enc.encode(texts[:32])  # warm up (loads, and exports on first use)
    it = iter(texts[32:])
    single = []
    for _ in range(n_single):
        t = next(it)
        s = time.perf_counter()
        enc.encode([t])
        single.append((time.perf_counter() - s) * 1000)
    batch = []
    for _ in range(n_batch):
        b = [next(it) for _ in range(32)]
        s = time.perf_counter()
        enc.encode(b)
        batch.append((time.perf_counter() - s) * 1000)
    return {"single_p50_ms": pct(single, 50), "single_p95_ms": pct(single, 95), "batch32_ms": pct(batch, 50)}


async def batcher(
    enc: PromptEncoder, texts: list[str], window_ms: float, clients: int, seconds: float
) -> dict:
    b = EmbedBatcher(enc, window_ms=window_ms)
    it = iter(texts)
    lat: list[float] = []
    stop = time.perf_counter() + seconds

    async def client() -> None:
        while time.perf_counter() < stop:
            t = next(it)
            s = time.perf_counter()
            await b.encode(t)
            lat.append((time.perf_counter() - s) * 1000)

    s = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - s
    await b.aclose()
    return {"prompts_per_s": len(lat) / wall, "p50_ms": pct(lat, 50), "p95_ms": pct(lat, 95)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--builds", default="all-MiniLM-L6-v2,minilm-onnx,minilm-onnx-int8")
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (default min(2, CPUs))")
    ap.add_argument("--windows", default="0,1,2,5", help="batch windows (ms) to try; empty: skip")
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--seconds", type=float, default=3.0, help="per batcher setting and repeat")
    ap.add_argument("--repeat", type=int, default=3, help="batcher runs per setting (median reported)")
    ap.add_argument("--single", type=int, default=200)
    ap.add_argument("--batches", type=int, default=10)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    texts = prompts(a.data) * 20  # fresh strings are not needed: the LRU cache is off
    out: dict = {"cpus": os.cpu_count(), "load_avg": os.getloadavg()[0], "speed": {}, "batcher": []}
    print("| build | single prompt p50 (ms) | p95 (ms) | 32 prompts (ms) |\n|---|---|---|---|")
    for m in [x for x in a.builds.split(",") if x]:
        enc = PromptEncoder(m, cache_size=0, threads=a.threads)
        r = speed(enc, texts, a.single, a.batches)
        out["speed"][f"{m} ({enc.build})"] = r
        print(
            f"| {m} ({enc.build}) | {r['single_p50_ms']:.2f} | {r['single_p95_ms']:.2f} | {r['batch32_ms']:.1f} |"
        )
    windows = [float(w) for w in a.windows.split(",") if w]
    if windows:
        enc = PromptEncoder("minilm-onnx", cache_size=0, threads=a.threads)
        enc.encode(texts[:8])
        settings = [(int(c), w) for c in a.clients.split(",") for w in windows]
        runs: dict = {s: [] for s in settings}
        for _ in range(a.repeat):  # settings interleaved, so load from elsewhere hits them alike
            for c, w in settings:
                runs[(c, w)].append(asyncio.run(batcher(enc, texts, w, c, a.seconds)))
        print("\n| clients | window (ms) | prompts/s | p50 (ms) | p95 (ms) |\n|---|---|---|---|---|")
        for (c, w), rs in runs.items():
            r = {k: float(np.median([x[k] for x in rs])) for k in rs[0]}
            out["batcher"].append({"clients": c, "window_ms": w, **r})
            print(f"| {c} | {w:g} | {r['prompts_per_s']:.0f} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} |")
    print(f"\nload average at start {out['load_avg']:.2f}, {out['cpus']} CPUs")
    if a.json:
        a.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
