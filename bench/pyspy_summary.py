"""Where the CPU goes, from a `py-spy record --format raw` profile: shares by package and by function.

    py-spy record --pid <gateway pid> --duration 10 --rate 250 --format raw -o named.txt
    python bench/pyspy_summary.py named.txt [--top 15]

Self time (the sampled frame itself) is grouped by package: the gateway's own code (`router/`,
`policies/`, `adapters/`), the web stack, the upstream HTTP client, the encoder, the event loop.
Inclusive time (the frame or anything it called) is listed for the functions that explain a
request's path. Shares are of all samples py-spy took of non-idle threads.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

# (group, file-path fragments): the first match of a frame's file names its group
GROUPS = (
    ("moe-router: gateway edge, engine, state", ("router/",)),
    ("moe-router: policies (decision, scoring)", ("policies/",)),
    ("moe-router: adapters", ("adapters/",)),
    ("uvicorn + httptools (server protocol, socket writes)", ("uvicorn/", "httptools")),
    ("FastAPI / Starlette (routing, dependencies, responses)", ("fastapi/", "starlette/")),
    ("pydantic (request validation)", ("pydantic",)),
    ("upstream client: httpx / httpcore / h11", ("httpx/", "httpcore/", "h11/")),
    ("upstream client: aiohttp", ("aiohttp/", "multidict", "yarl/")),
    ("anyio (thread hand-offs, cancel scopes)", ("anyio/",)),
    (
        "encoder: torch / transformers / tokenizers",
        ("torch/", "transformers/", "sentence_transformers/", "tokenizers"),
    ),
    ("onnxruntime", ("onnxruntime",)),
    ("numpy", ("numpy/",)),
    ("prometheus_client", ("prometheus_client/",)),
    ("JSON (json, orjson)", ("json/", "orjson")),
    ("event loop, threads, stdlib", ("asyncio/", "threading.py", "queue.py", "concurrent/", "selectors.py")),
)
FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^():]+)(?::\d+)?\)$")


def parse(path: Path) -> list[tuple[list[str], int]]:
    out = []
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if stack:
            out.append((stack.split(";"), int(n)))
    return out


WAITS = ("Condition.wait", "Event.wait", "Queue.get", "EpollSelector.select")


def group(frame: str) -> str:
    m = FRAME.match(frame)
    file = m["file"] if m else frame
    if m and m["func"] in WAITS:  # a thread py-spy caught between wake-ups: hand-off, not work
        return "threads waiting (thread-pool hand-offs)"
    for name, parts in GROUPS:
        if any(p in file for p in parts):
            return name
    return "other"


def summarise(samples: list[tuple[list[str], int]], top: int) -> str:
    total = sum(n for _, n in samples) or 1
    by_group: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, n in samples:
        by_group[group(frames[-1])] += n
        for f in {re.sub(r":\d+\)$", ")", f) for f in frames}:
            inclusive[f] += n
    lines = [f"{total} samples", "", "| self time by package | share |", "| --- | ---: |"]
    lines += [f"| {g} | {100 * n / total:.1f}% |" for g, n in by_group.most_common()]
    ours = [
        (f, n)
        for f, n in inclusive.most_common()
        if any(p in f for p in ("router/", "policies/", "adapters/", "httpx/_client", "fastapi/dependencies"))
        and "router/cli/" not in f
    ]
    lines += ["", "| inclusive (the function and what it calls) | share |", "| --- | ---: |"]
    lines += [f"| `{f}` | {100 * n / total:.1f}% |" for f, n in ours[:top]]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("profile", type=Path)
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args()
    print(summarise(parse(args.profile), args.top))


if __name__ == "__main__":
    main()
