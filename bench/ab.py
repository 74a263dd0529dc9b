"""A/B of the gateway's CPU per request: two source trees served side by side, alternating bursts.

    git worktree add /tmp/base <rev>
    python bench/ab.py /tmp/base . [--bursts 16] [--requests 200] [--model cheap] [--encoder minilm-static]

Both trees' gateways run at once (in-memory state, no ledger, the same config and the same mock
upstream), so a slow minute of a shared machine lands on both: each burst sends `--requests`
sequential fresh-prompt requests (`bench.load`) to one gateway, then the other (the order flips
every burst), and reads the gateway process's CPU time around it. Prints, per tree, the median
over bursts of CPU ms per request and of p50 latency, and the median of the per-burst CPU
ratio to the first tree — the number to quote: a gateway's CPU per request is its latency at one
client on this machine, and it moves far less than wall-clock time when the machine's speed does.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.gateway import load, pool_models, start, wait_http  # noqa: E402
from tests.servers import free_port  # noqa: E402


def sequential(url: str, model: str, salt: str, n: int) -> dict:
    return load(url, model, {}, mode="sequential", requests=n, salt=salt)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("trees", nargs=2, type=Path, help="two source trees (the first is the reference)")
    ap.add_argument("--bursts", type=int, default=16)
    ap.add_argument("--requests", type=int, default=200, help="sequential requests per burst")
    ap.add_argument("--model", default="cheap", help="what to ask for: a pool model or router:<policy>")
    ap.add_argument("--encoder", default="minilm-static")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="moe-ab-"))
    procs: list[subprocess.Popen] = []
    try:
        up = free_port()
        procs.append(start([sys.executable, "-m", "tests.upstream", "--port", str(up)], tmp / "upstream.log"))
        wait_http(f"http://127.0.0.1:{up}/health", procs[-1])
        cfg = {
            "models": pool_models(f"http://127.0.0.1:{up}/v1"),
            "ledger": "none",
            "encoder": {"model": args.encoder},
        }
        (tmp / "config.yaml").write_text(yaml.safe_dump(cfg))
        gateways = []
        for i, tree in enumerate(args.trees):
            tree = tree.resolve()
            port = free_port()
            env = {**os.environ, "PYTHONPATH": str(tree), "MOE_ROUTER_STATE": "memory"}
            cmd = [sys.executable, "-m", "router.cli", "serve", "--config", str(tmp / "config.yaml")]
            cmd += ["--port", str(port), "--log-level", "warning"]
            log = (tmp / f"gateway{i}.log").open("w")
            procs.append(subprocess.Popen(cmd, cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT))
            wait_http(f"http://127.0.0.1:{port}/ready", procs[-1], ok_only=True)
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            sequential(url, args.model, "warm", 300)
            gateways.append((f"[{i}] {tree}", url, psutil.Process(procs[-1].pid)))  # two trees may be one
        cpu: dict[str, list[float]] = {t: [] for t, _, _ in gateways}
        p50: dict[str, list[float]] = {t: [] for t, _, _ in gateways}
        for b in range(args.bursts):
            for tree, url, proc in gateways if b % 2 == 0 else gateways[::-1]:
                c0 = sum(proc.cpu_times()[:2])
                out = sequential(url, args.model, f"b{b}", args.requests)
                used = sum(proc.cpu_times()[:2]) - c0
                cpu[tree].append(used * 1000 / max(1, len(out["latencies_ms"])))
                p50[tree].append(statistics.median(out["latencies_ms"]))
        ref = gateways[0][0]
        for tree, _, _ in gateways:
            ratio = statistics.median(a / b for a, b in zip(cpu[tree], cpu[ref], strict=True))
            print(
                f"{tree}: CPU {statistics.median(cpu[tree]):.3f} ms/request, "
                f"p50 {statistics.median(p50[tree]):.3f} ms, CPU ratio to the first {ratio:.3f}"
            )
    finally:
        for p in reversed(procs):
            p.terminate()


if __name__ == "__main__":
    main()
