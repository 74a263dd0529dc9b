"""`moe-router models`: the configured pool and what can serve now."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import typer

from router.cli import app
from router.cli.options import ConfigOption, load


@app.command()
def models(
    config: Path | None = ConfigOption,
    as_json: bool = typer.Option(False, "--json"),
    check: bool = typer.Option(
        True, "--check/--no-check", help="probe each endpoint (free); --no-check: only look at keys"
    ),
    timeout_s: float = typer.Option(3.0, "--timeout", min=0.1, help="seconds per probe"),
) -> None:
    """List the models in the pool, their prices and whether they can serve now: keys set, and
    (unless --no-check) their server reachable or their weights on disk."""
    from router.probe import REACHABLE, ModelProbe, probe_models

    cfg = load(config)
    if check:
        probes = asyncio.run(probe_models(cfg.models, timeout_s))
    else:
        probes = [
            ModelProbe(m.name, m.backend, "unavailable", hint)
            if (hint := m.missing_env_hint())
            else ModelProbe(m.name, m.backend, "not probed", "--no-check")
            for m in cfg.models
        ]
    sources = _quality_sources(cfg)
    rows = []
    for m, p in zip(cfg.models, probes, strict=True):
        rows.append(
            {
                "name": m.name,
                "kind": m.kind,
                "backend": m.backend,
                "available": p.usable,
                "status": p.status,
                "reason": "" if p.status == REACHABLE else p.detail,
                "input_price_per_1m": m.input_price_per_1m,
                "output_price_per_1m": m.output_price_per_1m,
                "context_window": m.context_window,
                "quality_source": sources.get(m.name),
            }
        )
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    typer.echo(
        f"{'model':<28} {'backend':<21} {'$/1M in':>8} {'$/1M out':>9} {'context':>8} {'quality':<10}  status"
    )
    for r in rows:
        status = "available" if r["status"] == REACHABLE else f"{r['status']} ({r['reason']})"
        typer.echo(
            f"{r['name']:<28} {r['backend']:<21} {r['input_price_per_1m']:>8g} {r['output_price_per_1m']:>9g} "
            f"{r['context_window']:>8} {r['quality_source'] or '-':<10}  {status}"
        )


def _quality_sources(cfg) -> dict[str, str]:
    """Where the irt policy takes each chat model's quality from: trained, calibrated (`moe-router
    calibrate`), benchmarks (config), or prior (the category priors); {} without an irt policy."""
    from policies.irt import planned_sources
    from router.policy_set import model_info

    spec = cfg.routing.policies.get("irt")
    artifact = spec.artifact if spec is not None else None
    try:
        return planned_sources(
            [model_info(m) for m in cfg.chat_models()], artifact, cfg.routing.abilities_path()
        )
    except (OSError, ValueError):
        return {}
