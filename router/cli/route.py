"""`moe-router route "prompt"`: show the routing decision without calling a model."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import typer

from router.cli import app
from router.cli.options import ConfigOption, UserError, load


@app.command()
def route(
    prompt: str = typer.Argument(..., help="the user message to route"),
    policy: str = typer.Option(None, "--policy", "-p", help="policy name (default: routing.default_policy)"),
    cost_weight: float = typer.Option(None, min=0, max=1, help="0 = best quality ... 1 = cheapest"),
    max_cost_usd: float = typer.Option(None, min=0),
    max_latency_ms: float = typer.Option(None, min=0),
    min_quality: float = typer.Option(None, min=0, max=1),
    max_tokens: int = typer.Option(None, min=1),
    config: Path | None = ConfigOption,
    as_json: bool = typer.Option(False, "--json", help="print the full decision as JSON"),
    url: str = typer.Option(
        None,
        "--url",
        envvar="MOE_ROUTER_URL",
        help="ask a running gateway (its POST /v1/route: its health, budgets and bandits) instead of "
        "building an engine here",
    ),
    api_key: str = typer.Option(
        None, "--api-key", envvar="MOE_ROUTER_API_KEY", help="key for --url", show_default=False
    ),
) -> None:
    """Rank the candidate models for PROMPT, with predictions and exclusion reasons."""

    routing = {
        k: v
        for k, v in dict(
            cost_weight=cost_weight,
            max_cost_usd=max_cost_usd,
            max_latency_ms=max_latency_ms,
            min_quality=min_quality,
        ).items()
        if v is not None
    }
    body = {
        "model": f"router:{policy}" if policy else "router",
        "messages": [{"role": "user", "content": prompt}],
        **({"max_tokens": max_tokens} if max_tokens is not None else {}),
        **({"routing": routing} if routing else {}),
    }
    d = _ask(url, api_key, body) if url else _plan_here(config, body)
    if as_json:
        typer.echo(json.dumps(d, indent=2))
        return
    typer.echo(f"policy {d['policy']} (cost_weight {d['cost_weight']:g}) -> {d['model']}")
    typer.echo(f"{'model':<28} {'quality':>8} {'cost $':>11} {'latency ms':>10}  score / excluded")
    for c in d["candidates"]:
        lat = "-" if c["predicted_latency_ms"] is None else f"{c['predicted_latency_ms']:.0f}"
        typer.echo(
            f"{c['model']:<28} {c['predicted_quality']:>8.3f} {c['predicted_cost_usd']:>11.3g} {lat:>10}  {c['score']:.4f}"
            + (f"  (quality: {c['quality_source']})" if "quality_source" in c else "")
        )
    for c in d["excluded"]:
        why = "; ".join(e["message"] for e in c["excluded"])
        typer.echo(f"{c['model']:<28} {'':>8} {'':>11} {'':>10}  excluded: {why}")


def _plan_here(config: Path | None, body: dict) -> dict:
    from router.engine import Engine
    from router.errors import RouterError
    from router.schemas import ChatCompletionRequest

    engine = Engine(load(config))
    try:
        plan = asyncio.run(engine.plan(ChatCompletionRequest(**body)))
    except RouterError as e:
        raise UserError(e.message) from None
    return plan.decision.as_dict()


def _ask(url: str, api_key: str | None, body: dict) -> dict:
    """POST /v1/route on a running gateway; its errors are this command's one-line errors."""
    import httpx

    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        r = httpx.post(url.rstrip("/") + "/v1/route", json=body, headers=headers, timeout=30)
    except httpx.HTTPError as e:
        raise UserError(f"cannot reach the gateway at {url}: {type(e).__name__}: {e}") from None
    try:
        data = r.json()
    except ValueError:
        raise UserError(
            f"{url} answered HTTP {r.status_code} without JSON: is it a moe-router gateway?"
        ) from None
    if r.status_code != 200:
        message = (data.get("error") or {}).get("message") if isinstance(data, dict) else None
        raise UserError(f"the gateway answered HTTP {r.status_code}: {message or data}")
    return data
