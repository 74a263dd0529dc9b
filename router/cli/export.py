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
    cfg = load(config)
    if cfg.ledger_enabled:
        answered = _from_ledger(cfg)
    elif cfg.state != "memory":
        answered = _from_streams(cfg)
    else:
        raise UserError(
            "export reads the SQL ledger (config `ledger`) or, with `ledger: none`, the Redis streams: "
            "set MOE_ROUTER_LEDGER=... or MOE_ROUTER_STATE=redis://... as for 'serve'"
        )

    async def run() -> tuple[int, int, int]:
        n = rated = textless = 0
        with out.open("w") as f:
            async for r, quality in answered:
                # the judge's own calls are the gateway's spend, not traffic to learn routing from
                if (only_rated and quality is None) or r.owner == "judge":
                    continue
                f.write(json.dumps(_row(r, quality)) + "\n")
                n += 1
                rated += quality is not None
                textless += not r.prompt or r.prompt.startswith("sha256:")
        return n, rated, textless

    n, rated, textless = asyncio.run(run())
    if cfg.ledger_enabled:
        from router.ledger import safe_url

        source = f"the ledger {safe_url(cfg.ledger)}"
    else:
        source = "the Redis streams"
    typer.echo(f"wrote {n} rows ({rated} with feedback) to {out}, from {source}")
    # a policy trained on these rows reads their prompt text, and reads whole prompts when serving
    notes = (
        [f"{textless} rows have no prompt text (logged with log.prompts hash or none)"] if textless else []
    )
    if cfg.log.prompts == "truncated":
        notes.append(f"this config logs only the first {cfg.log.prompt_chars} characters of a prompt")
    elif cfg.log.prompts != "full":
        notes.append(f"this config logs prompts as {cfg.log.prompts!r}")
    if notes:
        typer.echo(
            f"note: {'; '.join(notes)}: to train on traffic, set log.prompts: full on the gateway", err=True
        )


def _row(r, quality: float | None) -> dict:
    return {
        "prompt_id": prompt_id(r.prompt),
        "prompt": r.prompt,
        "model": r.model,
        "quality": quality,
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


async def _from_ledger(cfg):
    """Answered requests and their mean rating, from the SQL ledger (any state)."""
    from router.ledger import Ledger, LedgerUnavailable

    ledger = Ledger(cfg.ledger, models=cfg.models)
    try:
        try:
            await ledger.open()
        except LedgerUnavailable as e:
            raise UserError(str(e)) from None
        async for item in ledger.answered():
            yield item
    finally:
        await ledger.aclose()


async def _from_streams(cfg):
    """The same from Redis's ledger and feedback streams (`ledger: none`): what they still hold."""
    from router.engine import build_store
    from router.metrics import Metrics
    from router.state import StateUnavailable

    store = build_store(cfg, Metrics())
    try:
        # each rater's latest rating counts (a later rating replaces an earlier one)
        latest: dict[tuple[str, str], float] = {}
        async for fb in store.log.iter_feedback():
            latest[(fb.request_id, fb.rater)] = fb.rating
        ratings: dict[str, list[float]] = {}
        for (rid, _), rating in latest.items():
            ratings.setdefault(rid, []).append(rating)
        async for r in store.log.iter_requests():
            if r.status != "ok" or r.model is None or r.cache:
                continue
            q = ratings.get(r.id)
            yield r, (sum(q) / len(q) if q else None)
    except StateUnavailable as e:
        raise UserError(str(e)) from None
    finally:
        await store.aclose()
