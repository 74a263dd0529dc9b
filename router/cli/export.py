"""`moe-router export`: the gateway's logged traffic + feedback as canonical routing-data JSONL."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import typer

from router.cli import app
from router.cli.options import ConfigOption, UserError, load


def prompt_id(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@app.command()
def export(
    out: Path = typer.Option(..., "--out", "-o", help="JSONL file to write"),
    config: Path | None = ConfigOption,
    only_rated: bool = typer.Option(False, help="keep only requests that received feedback"),
) -> None:
    """Write one row per answered request: prompt, model, quality (mean of each rater's latest rating, or null),
    cost, latency and tokens — the canonical format `moe-router train --format jsonl` reads — plus
    the routing policy, its propensity and cost weight, which `moe-router ope` reads."""
    from router.engine import build_store
    from router.metrics import Metrics
    from router.state import StateUnavailable

    cfg = load(config)
    if cfg.state == "memory":
        raise UserError("export reads the shared ledger: set MOE_ROUTER_STATE=redis://... as for 'serve'")
    store = build_store(cfg, Metrics())

    async def run() -> tuple[int, int]:
        try:
            # each rater's latest rating counts (a later rating replaces an earlier one)
            latest: dict[tuple[str, str], float] = {}
            async for fb in store.log.iter_feedback():
                latest[(fb.request_id, fb.rater)] = fb.rating
            ratings: dict[str, list[float]] = {}
            for (rid, _), rating in latest.items():
                ratings.setdefault(rid, []).append(rating)
            n = rated = 0
            with out.open("w") as f:
                async for r in store.log.iter_requests():
                    if r.status != "ok" or r.model is None or r.cache:
                        continue
                    q = ratings.get(r.id)
                    if only_rated and not q:
                        continue
                    row = {
                        "prompt_id": prompt_id(r.prompt),
                        "prompt": r.prompt,
                        "model": r.model,
                        "quality": sum(q) / len(q) if q else None,
                        "cost_usd": r.cost_usd,
                        "latency_ms": r.latency_ms,
                        "prompt_tokens": r.prompt_tokens,
                        "completion_tokens": r.completion_tokens,
                        "source": "gateway",
                        "request_id": r.id,
                        "policy": r.policy,
                        "propensity": r.propensity,
                        "cost_weight": r.cost_weight,
                        "created": r.created,
                    }
                    f.write(json.dumps(row) + "\n")
                    n += 1
                    rated += bool(q)
            return n, rated
        except StateUnavailable as e:
            raise UserError(str(e)) from None
        finally:
            await store.aclose()

    n, rated = asyncio.run(run())
    typer.echo(f"wrote {n} rows ({rated} with feedback) to {out}")
