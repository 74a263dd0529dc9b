"""`moe-router models`: the configured pool and what is available."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from router.cli import app
from router.cli.options import ConfigOption, load


@app.command()
def models(
    config: Path | None = ConfigOption,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """List the models in the pool, their prices and whether they can serve now."""
    cfg = load(config)
    rows = []
    for m in cfg.models:
        missing = m.missing_env()
        rows.append(
            {
                "name": m.name,
                "backend": m.backend,
                "available": not missing,
                "reason": f"set {', '.join(missing)}" if missing else "",
                "input_price_per_1m": m.input_price_per_1m,
                "output_price_per_1m": m.output_price_per_1m,
                "context_window": m.context_window,
            }
        )
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    typer.echo(f"{'model':<28} {'backend':<13} {'$/1M in':>8} {'$/1M out':>9} {'context':>8}  status")
    for r in rows:
        status = "available" if r["available"] else f"unavailable ({r['reason']})"
        typer.echo(
            f"{r['name']:<28} {r['backend']:<13} {r['input_price_per_1m']:>8g} {r['output_price_per_1m']:>9g} "
            f"{r['context_window']:>8}  {status}"
        )
